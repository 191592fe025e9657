"""spark-submit entry point for incremental ingest of a landing directory.

    spark-submit --packages io.delta:delta-spark_4.2_2.13:4.4.0 jobs/ingest_stream.py \
        /data/landing --warehouse /data/warehouse

Takes the files that arrived since the last run (Structured Streaming, availableNow trigger,
checkpoint under the warehouse), then exits. Same arguments as ``medspark ingest-stream``.
"""

import sys

from medspark.cli import main

if __name__ == "__main__":
    sys.exit(main(["ingest-stream", *sys.argv[1:]]))
