"""Inference throughput: predict_batch_udf against a direct torch loop, same tensors, same run.

    python bench/bench_infer.py --n 4000 [--batch-size 64] [--repeat 2] [--json out.json]

Variants (all on the bundled demonstration model, 224x224 uint8 tensors as in ``images``):

``direct``          one Python process: bytes -> ``decode_batch`` -> float -> model -> softmax, in
                    batches of ``--batch-size``, torch with its default thread count (all cores).
``spark_cold``      ``predict_frames(images)`` written to the ``noop`` sink, first run (Python
                    workers start and load the model).
``spark``           the same, later runs (workers and the cached model reused).

The tensors are random uint8 (inference cost does not depend on content). The ``images``
DataFrame is a Delta table written before timing starts; partitions = Spark's parallelism.
Prints a table and writes JSON with the numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from typing import Any

import numpy as np


def direct(tensors: list[bytes], batch_size: int) -> float:
    import torch

    from medspark.config import ModelConfig
    from medspark.inference.model import load_model
    from medspark.inference.predict import decode_batch

    cfg = ModelConfig()
    model = load_model(cfg)
    arr = np.array(tensors, dtype=object)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(arr), batch_size):
            x = torch.from_numpy(decode_batch(arr[start : start + batch_size], cfg))
            x = (x.permute(0, 3, 1, 2).float() - cfg.mean) / cfg.std
            torch.softmax(model(x), dim=1).numpy()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument(
        "--arrow-batch", type=int, default=None, help="spark.arrow_max_records_per_batch"
    )
    parser.add_argument("--json")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    tensors = [rng.integers(0, 256, (224, 224), dtype=np.uint8).tobytes() for _ in range(args.n)]
    rows: list[dict[str, Any]] = []

    direct(tensors[: args.batch_size], args.batch_size)  # warm-up: model load, first kernels
    runs = [direct(tensors, args.batch_size) for _ in range(args.repeat)]
    rows.append({"variant": "direct", "runs": runs})

    from medspark.config import PipelineConfig, SparkConfig, with_overrides
    from medspark.pipeline import predict_frames
    from medspark.session import build_session

    cores = os.cpu_count() or 1
    spark_config = SparkConfig(master=f"local[{cores}]", log_level="ERROR")
    if args.arrow_batch:
        spark_config = dataclasses.replace(
            spark_config, arrow_max_records_per_batch=args.arrow_batch
        )
    spark = build_session(spark_config)
    arrow_batch = spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch")
    with tempfile.TemporaryDirectory() as tmp:
        config = with_overrides(PipelineConfig(), warehouse=tmp)
        config = dataclasses.replace(
            config,
            inference=dataclasses.replace(config.inference, batch_size=args.batch_size),
        )
        images_path = os.path.join(tmp, "images")
        spark.createDataFrame(
            [(f"1.2.{i}", 0, t) for i, t in enumerate(tensors)],
            "sop_instance_uid string, frame int, tensor binary",
        ).repartition(spark.sparkContext.defaultParallelism).write.format("delta").save(images_path)
        images = spark.read.format("delta").load(images_path)

        def spark_run() -> float:
            t0 = time.perf_counter()
            predict_frames(images, config).write.format("noop").mode("overwrite").save()
            return time.perf_counter() - t0

        rows.append({"variant": "spark_cold", "runs": [spark_run()]})
        rows.append({"variant": "spark", "runs": [spark_run() for _ in range(args.repeat)]})
    spark.stop()

    reference = args.n / min(rows[0]["runs"])
    print(
        f"N={args.n} batch_size={args.batch_size} arrow batch={arrow_batch} cores={cores} "
        "(seconds = best run)"
    )
    print(f"{'variant':<12} {'seconds':>8} {'images/s':>9} {'x direct':>9}  runs (s)")
    for row in rows:
        best = min(row["runs"])
        row.update(seconds=best, images_per_s=args.n / best, ratio=args.n / best / reference)
        runs = ", ".join(f"{r:.2f}" for r in row["runs"])
        print(
            f"{row['variant']:<12} {best:>8.2f} {row['images_per_s']:>9.1f} "
            f"{row['ratio']:>9.2f}  {runs}"
        )
    if args.json:
        import torch

        with open(args.json, "w") as fh:
            json.dump(
                {
                    "n": args.n,
                    "batch_size": args.batch_size,
                    "arrow_max_records_per_batch": arrow_batch,
                    "cores": cores,
                    "torch": torch.__version__,
                    "torch_threads_direct": torch.get_num_threads(),
                    "device": "cpu",
                    "rows": rows,
                },
                fh,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
