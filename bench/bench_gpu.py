"""Inference on a GPU against the CPU, without Spark: the functions Spark's Python workers run.

    python bench/bench_gpu.py [--n 8192] [--batch-sizes 64 512] [--json out.json]

Made for a GPU machine that has torch but neither Spark nor Java (pydicom and MONAI are
installed from wheels beside it), so it times what runs inside a Python worker, not Spark:

``2d``        the bundled demonstration model on ``--n`` random 224x224 uint8 tensors (as in
              ``images``), batch by batch:
              - ``plain_cpu`` / ``plain_gpu``: what a user's own script does: bytes -> tensor
                -> normalise -> model -> softmax (fp32; on the GPU a plain ``.to("cuda")``);
              - ``medspark_cpu`` / ``medspark_gpu``: medspark's own predict function, the one
                ``predict_batch_udf`` caches per worker
                (:func:`medspark.inference.predict.make_predict_fn_factory`), ``device`` cpu
                or auto, ``precision`` auto (bf16 autocast on a GPU that supports it) and fp32.
              CPU variants use all cores (torch's default thread count), as a one-task-per-
              machine executor would. Agreement: labels of each GPU variant against
              ``medspark_cpu``, and the largest probability difference.
``saliency``  the predict function with ``inference.saliency`` on (Grad-CAM, overlay PNG,
              boxes) on 64 preprocessed synthetic CT slices repeated to 1024 rows, CPU and GPU,
              against inference alone on the same device.
``volume``    :func:`medspark.volumes.segment.segment` (MONAI sliding window, the bundled 3D
              demonstration model) on a synthetic chest volume resampled as ``medspark
              volumes`` does, CPU (all cores) and GPU; agreement of the two label volumes.

Every timing is the best of ``--repeat`` runs after one warm-up; GPU timings end with
``torch.cuda.synchronize()`` (the predict function copies results to the host anyway).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def _best(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """(best seconds of ``repeat`` runs after a warm-up, the last result)."""
    import torch

    out = fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return min(times), out


def _plain(tensors: np.ndarray, batch_size: int, device: str) -> np.ndarray:
    """A user's own script: the demo model, fp32, batch by batch; probabilities."""
    import torch

    from medspark.config import ModelConfig
    from medspark.inference.model import load_model
    from medspark.inference.predict import decode_batch

    cfg = ModelConfig()
    models = _plain.models  # type: ignore[attr-defined]
    if device not in models:
        models[device] = load_model(cfg, device)
    model = models[device]
    out = []
    with torch.inference_mode():
        for start in range(0, len(tensors), batch_size):
            x = torch.from_numpy(decode_batch(tensors[start : start + batch_size], cfg))
            x = (x.to(device).permute(0, 3, 1, 2).float() - cfg.mean) / cfg.std
            out.append(torch.softmax(model(x), dim=1).cpu().numpy())
    return np.concatenate(out)


_plain.models = {}  # type: ignore[attr-defined]


def _predict_fn(device: str, precision: str, saliency: bool = False) -> Callable[..., Any]:
    from medspark.config import ModelConfig
    from medspark.inference.predict import PredictSettings, make_predict_fn_factory

    # Outside a Spark task the function would take one thread: give it the machine's cores,
    # as spark.task.cpus would on an executor that runs one task at a time.
    threads = os.cpu_count() or 1
    settings = PredictSettings(
        model=ModelConfig(),
        device=device,
        precision=precision,
        saliency=saliency,
        torch_threads=threads,
    )
    return make_predict_fn_factory(settings)()


def _medspark(fn: Callable[..., Any], columns: list[np.ndarray], batch_size: int) -> np.ndarray:
    out = []
    for start in range(0, len(columns[0]), batch_size):
        part = [c[start : start + batch_size] for c in columns]
        out.append(fn(*part)["probabilities"])
    return np.concatenate(out)


def bench_2d(n: int, batch_sizes: list[int], repeat: int, gpu: bool) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    tensors = np.empty(n, dtype=object)
    tensors[:] = [rng.integers(0, 256, (224, 224), dtype=np.uint8).tobytes() for _ in range(n)]
    rows: list[dict[str, Any]] = []
    for bs in batch_sizes:
        fns = {"medspark_cpu": _predict_fn("cpu", "fp32")}
        if gpu:
            fns |= {
                "medspark_gpu_fp32": _predict_fn("auto", "fp32"),
                "medspark_gpu_auto": _predict_fn("auto", "auto"),
            }
        variants: dict[str, Callable[[], np.ndarray]] = {
            "plain_cpu": lambda bs=bs: _plain(tensors, bs, "cpu"),
            **{name: lambda bs=bs, f=f: _medspark(f, [tensors], bs) for name, f in fns.items()},
        }
        if gpu:
            variants["plain_gpu"] = lambda bs=bs: _plain(tensors, bs, "cuda")
        results = {}
        for name, fn in variants.items():
            seconds, probs = _best(fn, repeat)
            results[name] = probs
            rows.append(
                {"part": "2d", "variant": name, "batch_size": bs, "n": n, "seconds": seconds}
            )
        reference = results["medspark_cpu"]
        for row in rows[-len(variants) :]:
            probs = results[row["variant"]]
            row["images_per_s"] = n / row["seconds"]
            row["labels_equal_cpu"] = float((probs.argmax(1) == reference.argmax(1)).mean())
            row["max_abs_prob_diff_cpu"] = float(np.abs(probs - reference).max())
    return rows


def bench_saliency(n: int, repeat: int, gpu: bool) -> list[dict[str, Any]]:
    sys.path.insert(0, os.path.dirname(__file__))
    from bench_infer import synthetic_rows

    base = synthetic_rows(n)
    cols = [np.empty(n, dtype=object) for _ in range(4)]
    for i in range(4):
        cols[i][:] = [r[i] for r in base]
    rows = []
    probs = {}
    variants = [("cpu", "fp32")] + ([("auto", "fp32"), ("auto", "auto")] if gpu else [])
    for device, precision in variants:
        for saliency in (False, True):
            fn = _predict_fn(device, precision, saliency)
            use = cols if saliency else cols[:1]
            seconds, out = _best(lambda fn=fn, use=use: _medspark(fn, use, 64), repeat)
            name = f"{'gpu_' + precision if device == 'auto' else 'cpu'}"
            row = {
                "part": "saliency",
                "variant": name + ("_saliency" if saliency else ""),
                "batch_size": 64,
                "n": n,
                "seconds": seconds,
                "images_per_s": n / seconds,
            }
            if not saliency:  # agreement on real preprocessed slices (random tensors saturate)
                probs[name] = out
                row["labels_equal_cpu"] = float((out.argmax(1) == probs["cpu"].argmax(1)).mean())
                row["max_abs_prob_diff_cpu"] = float(np.abs(out - probs["cpu"]).max())
            rows.append(row)
    return rows


def bench_volume(repeat: int, gpu: bool, slices: int, size: int) -> list[dict[str, Any]]:
    import dataclasses

    import torch

    sys.path.insert(0, os.path.dirname(__file__))
    from bench_volumes import SPACING, demo_volume_settings

    from medspark.volumes.segment import segment
    from medspark.volumes.synthetic import chest_hu, random_chest
    from medspark.volumes.transforms import preprocess_volume

    pre, model = demo_volume_settings()
    try:
        torch.jit.load(model.path)
    except RuntimeError as exc:
        # A TorchScript file scripted by a newer torch can name ops an older one lacks (seen:
        # the bundled model, scripted by torch 2.15, on torch 2.11). The same architecture,
        # scripted here with random weights, costs the same to run.
        import tempfile

        from medspark.volumes.train import tiny_unet3d

        print(
            f"bundled 3D model not loadable here ({str(exc).strip()[:80]}...): timing the "
            "same architecture with random weights"
        )
        path = os.path.join(tempfile.mkdtemp(), "model.ts")
        torch.jit.save(torch.jit.script(tiny_unet3d().eval()), path)
        model = dataclasses.replace(model, path=path)
    extent = (slices * SPACING[0], size * SPACING[1], size * SPACING[2])
    hu = chest_hu(random_chest(7, extent), (slices, size, size), SPACING, supersample=1)
    affine = np.zeros((4, 4))  # axial: k along z, j along y (columns' direction), i along x
    affine[3, 3] = 1.0
    affine[0, 2], affine[1, 1], affine[2, 0] = SPACING[2], SPACING[1], SPACING[0]
    image, _ = preprocess_volume(hu.astype(np.float32), affine, pre)
    rows = []
    labels = {}
    for device in ["cpu", "cuda"] if gpu else ["cpu"]:
        m = dataclasses.replace(model, device=device)
        seconds, labels[device] = _best(lambda m=m: segment(image, m), repeat)
        rows.append(
            {
                "part": "volume",
                "variant": device,
                "volume_shape": list(image.shape),
                "source_shape": [slices, size, size],
                "seconds": seconds,
                "torch_threads": torch.get_num_threads(),
            }
        )
    if gpu:
        rows[-1]["labels_equal_cpu"] = float((labels["cpu"] == labels["cuda"]).mean())
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=8192)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--saliency-n", type=int, default=1024)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--parts", nargs="+", default=["2d", "saliency", "volume"])
    parser.add_argument("--json")
    args = parser.parse_args(argv)

    import torch

    gpu = torch.cuda.is_available()
    info = {
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if gpu else None,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }
    print(json.dumps(info))
    rows: list[dict[str, Any]] = []
    parts = {
        "2d": lambda: bench_2d(args.n, args.batch_sizes, args.repeat, gpu),
        "saliency": lambda: bench_saliency(args.saliency_n, args.repeat, gpu),
        "volume": lambda: bench_volume(args.repeat, gpu, args.slices, args.size),
    }
    for part in args.parts:
        for row in parts[part]():  # printed as each part ends: a later part may fail
            rows.append(row)
            print(
                json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
            )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": info, "rows": rows}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
