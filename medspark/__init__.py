"""medspark: medical-imaging data engineering on Apache Spark."""

__version__ = "0.1.0"
