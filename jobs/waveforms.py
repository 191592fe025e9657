"""spark-submit entry point for the waveforms step (scans -> waveforms, ecg_metrics).

    spark-submit --packages io.delta:delta-spark_4.2_2.13:4.4.0 jobs/waveforms.py \
        --warehouse /data/warehouse

Same arguments as ``medspark waveforms``; no logic lives here.
"""

import sys

from medspark.cli import main

if __name__ == "__main__":
    sys.exit(main(["waveforms", *sys.argv[1:]]))
