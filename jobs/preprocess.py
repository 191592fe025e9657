"""spark-submit entry point for preprocessing (scans -> images).

    spark-submit --packages io.delta:delta-spark_4.2_2.13:4.4.0 jobs/preprocess.py \
        --warehouse /data/warehouse

Same arguments as ``medspark preprocess``; no logic lives here.
"""

import sys

from medspark.cli import main

if __name__ == "__main__":
    sys.exit(main(["preprocess", *sys.argv[1:]]))
