"""spark-submit entry point for series as volumes (scans -> series, series_segments,
series_errors).

    spark-submit --packages io.delta:delta-spark_4.2_2.13:4.4.0 jobs/volumes.py \
        --warehouse /data/warehouse --conf conf/pipeline.yaml

Same arguments as ``medspark volumes``; no logic lives here.
"""

import sys

from medspark.cli import main

if __name__ == "__main__":
    sys.exit(main(["volumes", *sys.argv[1:]]))
