#!/usr/bin/env bash
# Spark GPU discovery script: prints the GPUs this worker offers, as Spark expects
# ({"name": "gpu", "addresses": ["0", "1", ...]}). Needs nvidia-smi on the worker.
set -euo pipefail
addresses=$(nvidia-smi --query-gpu=index --format=csv,noheader | sed -e 's/^/"/' -e 's/$/"/' | paste -sd, -)
echo "{\"name\": \"gpu\", \"addresses\": [${addresses}]}"
