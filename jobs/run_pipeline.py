"""spark-submit entry point for the whole flow (ingest, preprocess, infer) in one application.

    spark-submit --packages io.delta:delta-spark_4.2_2.13:4.4.0 jobs/run_pipeline.py \
        /data/exports --warehouse /data/warehouse

Same arguments as ``medspark run``; no logic lives here.
"""

import sys

from medspark.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
