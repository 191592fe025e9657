"""Inference throughput: predict_batch_udf against a direct torch loop, same tensors, same run.

    python bench/bench_infer.py --n 4000 [--batch-size 64] [--repeat 2] [--json out.json]
    python bench/bench_infer.py --saliency --n 1000 [--repeat 2]     # the cost of saliency

Variants (all on the bundled demonstration model, 224x224 uint8 tensors as in ``images``):

``direct``          one Python process: bytes -> ``decode_batch`` -> float -> model -> softmax, in
                    batches of ``--batch-size``, torch with its default thread count (all cores).
``spark_cold``      ``predict_frames(images)`` written to the ``noop`` sink, first run (Python
                    workers start and load the model).
``spark``           the same, later runs (workers and the cached model reused).

The tensors are random uint8 (inference cost does not depend on content). The ``images``
DataFrame is a Delta table written before timing starts; partitions = Spark's parallelism.
Prints a table and writes JSON with the numbers.

``--saliency`` measures what ``inference.saliency: true`` costs, as a ratio to inference
without it in the same run, on real inputs: 64 synthetic CT slices (the demo model's kind, with
and without a nodule) preprocessed by the pipeline's own ``process_item`` (tensor, thumbnail,
frame size), repeated to ``--n`` rows. Variants ``direct`` / ``direct_saliency`` (one process:
forward, then Grad-CAM + overlay PNG + boxes for the same batch) and ``spark`` /
``spark_saliency`` (``predict_frames`` with saliency off / on, warm workers, ``noop`` sink),
alternated run by run so that a change of machine load hits both. ``direct_saliency`` is
Grad-CAM (the demo model has ``features``/``head``); ``direct_occlusion`` is the same with
``inference.saliency_method: occlusion`` (``--occlusion-patch``, ``--occlusion-stride``, default
16 / 16), in the same rounds on the first ``--occlusion-n`` rows only (default 64: it costs a
forward pass per patch position), so its figure is compared per frame: the table's ``ms/frame``.
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


def direct_saliency(
    rows: list[tuple[bytes, bytes, int, int]],
    batch_size: int,
    method: str = "auto",
    patch: int = 16,
    stride: int = 16,
) -> float:
    """``direct`` plus the saliency fields of every row, as the executors compute them
    (``method``: ``inference.saliency_method``)."""
    import torch

    from medspark.config import ModelConfig
    from medspark.inference.model import load_model
    from medspark.inference.predict import (
        CPU_CHUNK,
        PredictSettings,
        decode_batch,
        saliency_columns,
    )

    cfg = ModelConfig()
    model = load_model(cfg)
    names = np.array(cfg.class_names, dtype=object)
    settings = PredictSettings(
        cfg, saliency=True, saliency_method=method, occlusion_patch=patch, occlusion_stride=stride
    )
    t0 = time.perf_counter()
    for start in range(0, len(rows), batch_size):
        part = rows[start : start + batch_size]
        tensors = np.empty(len(part), dtype=object)
        tensors[:] = [r[0] for r in part]
        with torch.inference_mode():
            x = torch.from_numpy(decode_batch(tensors, cfg))
            x = (x.permute(0, 3, 1, 2).float() - cfg.mean) / cfg.std
            probs = torch.softmax(model(x), dim=1).numpy()
        beside = [np.empty(len(part), dtype=object) for _ in range(3)]
        for i in range(3):
            beside[i][:] = [r[i + 1] for r in part]
        saliency_columns(
            model, x, probs.argmax(1), names, tuple(beside), cfg, 128, CPU_CHUNK, settings
        )
    return time.perf_counter() - t0


def synthetic_rows(n: int) -> list[tuple[bytes, bytes, int, int]]:
    """(tensor, thumbnail PNG, frame rows, frame columns) of 64 preprocessed synthetic CT
    slices (half with a nodule), repeated to ``n`` rows."""
    from medspark.config import PipelineConfig
    from medspark.preprocess.udf import PreprocessSettings, process_item
    from medspark.synthetic import SliceSpec, ct_slice_bytes

    pre = PipelineConfig().preprocess
    settings = PreprocessSettings(pre.chain(), pre.window_value(), pre.thumbnail_size, 64)
    key = {"sop_instance_uid": "bench", "source_uri": "synthetic", "archive_member": None}
    base = []
    for seed in range(64):
        (r,) = process_item(ct_slice_bytes(SliceSpec(bool(seed % 2), seed)), key, settings)
        base.append((r["tensor"], r["thumbnail_png"], r["frame_rows"], r["frame_columns"]))
    return [base[i % len(base)] for i in range(n)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument(
        "--arrow-batch", type=int, default=None, help="spark.arrow_max_records_per_batch"
    )
    parser.add_argument("--json")
    parser.add_argument(
        "--saliency", action="store_true", help="measure inference.saliency against without"
    )
    parser.add_argument("--occlusion-n", type=int, default=64, help="rows for direct_occlusion")
    parser.add_argument("--occlusion-patch", type=int, default=16)
    parser.add_argument("--occlusion-stride", type=int, default=16)
    args = parser.parse_args(argv)

    rows: list[dict[str, Any]] = []
    if args.saliency:
        inputs = synthetic_rows(args.n)
        tensors = [r[0] for r in inputs]
        direct(tensors[: args.batch_size], args.batch_size)  # warm-up
        direct_saliency(inputs[: args.batch_size], args.batch_size)
        occluded = inputs[: args.occlusion_n]
        patch, stride = args.occlusion_patch, args.occlusion_stride
        direct_saliency(occluded[:2], args.batch_size, "occlusion", patch, stride)
        plain, salient, occlusion = [], [], []
        for _ in range(args.repeat):  # alternated: a change of load hits all three
            plain.append(direct(tensors, args.batch_size))
            salient.append(direct_saliency(inputs, args.batch_size))
            occlusion.append(direct_saliency(occluded, args.batch_size, "occlusion", patch, stride))
        rows.append({"variant": "direct", "runs": plain, "n": args.n})
        rows.append({"variant": "direct_saliency", "runs": salient, "n": args.n})
        rows.append(
            {
                "variant": "direct_occlusion",
                "runs": occlusion,
                "n": len(occluded),
                "patch": patch,
                "stride": stride,
            }
        )
    else:
        rng = np.random.default_rng(0)
        tensors = [
            rng.integers(0, 256, (224, 224), dtype=np.uint8).tobytes() for _ in range(args.n)
        ]
        inputs = []
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
        if args.saliency:
            data = spark.createDataFrame(
                [(f"1.2.{i}", 0, *r) for i, r in enumerate(inputs)],
                "sop_instance_uid string, frame int, tensor binary, thumbnail_png binary, "
                "frame_rows int, frame_columns int",
            )
        else:
            data = spark.createDataFrame(
                [(f"1.2.{i}", 0, t) for i, t in enumerate(tensors)],
                "sop_instance_uid string, frame int, tensor binary",
            )
        data.repartition(spark.sparkContext.defaultParallelism).write.format("delta").save(
            images_path
        )
        images = spark.read.format("delta").load(images_path)
        with_saliency = dataclasses.replace(
            config, inference=dataclasses.replace(config.inference, saliency=True)
        )

        def spark_run(cfg: Any = config) -> float:
            t0 = time.perf_counter()
            predict_frames(images, cfg).write.format("noop").mode("overwrite").save()
            return time.perf_counter() - t0

        rows.append({"variant": "spark_cold", "runs": [spark_run()]})
        if args.saliency:
            spark_run(with_saliency)  # its workers' first batch (a new UDF: model loaded again)
            plain, salient = [], []
            for _ in range(args.repeat):
                plain.append(spark_run())
                salient.append(spark_run(with_saliency))
            rows.append({"variant": "spark", "runs": plain})
            rows.append({"variant": "spark_saliency", "runs": salient})
        else:
            rows.append({"variant": "spark", "runs": [spark_run() for _ in range(args.repeat)]})
    spark.stop()

    reference = args.n / min(rows[0]["runs"])
    print(
        f"N={args.n} batch_size={args.batch_size} arrow batch={arrow_batch} cores={cores} "
        "(seconds = best run)"
    )
    print(
        f"{'variant':<16} {'rows':>5} {'seconds':>8} {'images/s':>9} {'ms/frame':>9} "
        f"{'x direct':>9}  runs (s)"
    )
    for row in rows:
        best = min(row["runs"])
        n = row.setdefault("n", args.n)
        row.update(
            seconds=best,
            images_per_s=n / best,
            ms_per_frame=best * 1000 / n,
            ratio=n / best / reference,
        )
        runs = ", ".join(f"{r:.2f}" for r in row["runs"])
        print(
            f"{row['variant']:<16} {n:>5} {best:>8.2f} {row['images_per_s']:>9.1f} "
            f"{row['ms_per_frame']:>9.2f} {row['ratio']:>9.2f}  {runs}"
        )
    if args.saliency:
        best = {row["variant"]: row["seconds"] for row in rows}
        for base in ("direct", "spark"):
            ratio = best[f"{base}_saliency"] / best[base]
            print(f"saliency cost, {base}: {ratio:.2f}x the time of inference without it")
        per = {row["variant"]: row["ms_per_frame"] for row in rows}
        print(
            f"occlusion cost, direct: {per['direct_occlusion'] / per['direct']:.1f}x inference "
            f"alone, {per['direct_occlusion'] / per['direct_saliency']:.1f}x with Grad-CAM "
            "(per frame)"
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
                    "saliency": args.saliency,
                    "load": os.getloadavg(),
                    "rows": rows,
                },
                fh,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
