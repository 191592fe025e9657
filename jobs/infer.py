"""spark-submit entry point for inference (images -> predictions).

    spark-submit --packages io.delta:delta-spark_4.2_2.13:4.4.0 jobs/infer.py \
        --warehouse /data/warehouse [--model NAME]

Same arguments as ``medspark infer``; no logic lives here.
"""

import sys

from medspark.cli import main

if __name__ == "__main__":
    sys.exit(main(["infer", *sys.argv[1:]]))
