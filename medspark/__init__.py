"""medspark: medical-imaging data engineering on Apache Spark."""

from medspark.logs import install_default

__version__ = "0.1.0"

install_default()  # warnings as one "medspark:" line until the application configures logging
