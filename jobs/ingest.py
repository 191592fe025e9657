"""spark-submit entry point for ingestion.

    spark-submit --packages io.delta:delta-spark_4.2_2.13:4.4.0 jobs/ingest.py \
        /data/exports --warehouse /data/warehouse

Same arguments as ``medspark ingest``; no logic lives here.
"""

import sys

from medspark.cli import main

if __name__ == "__main__":
    sys.exit(main(["ingest", *sys.argv[1:]]))
