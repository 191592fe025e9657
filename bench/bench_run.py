"""``medspark run`` from launch against a plain script doing the same per-image work.

For each size (default 20, 2000 and 8000 synthetic CT slices, :mod:`synth`), in one run of this
bench, on the same files and the same cores:

``plain``
    ``python bench/bench_run.py --plain DIR OUT``: what a data engineer's own script does. A
    ``multiprocessing.Pool(cores)`` over chunks of files; each worker reads a file, hashes it
    (SHA-256), parses the header and writes it as DICOM JSON
    (:func:`medspark.dicom.header.parse_header`), decodes, rescales and windows the pixels,
    runs the OpenCV chain (median, CLAHE, Otsu, opening, mask area, resize-pad 224) and the PNG
    thumbnail (:func:`medspark.preprocess.udf.process_item`), runs the bundled TorchScript model
    on the chunk's tensors, and writes one Parquet file per chunk with the header, tensor,
    thumbnail, statistics, label and score of each image.
``medspark``
    ``medspark run DIR --warehouse W`` into a fresh warehouse: the same work plus
    de-identification, duplicate and burned-in checks, and the Delta tables ``scans``,
    ``ingest_errors``, ``restricted_acquisitions``, ``scanner_utilization``, ``images``,
    ``preprocess_errors``, ``predictions``, ``job_runs``, ``stage_metrics``, ``worker_metrics``.

Both are timed from process launch by this parent (interpreter start, imports, for medspark the
JVM and the Python workers). Printed: seconds and the ratio plain/medspark per size (higher is
better for medspark, 1.0 = parity), the fixed cost (the 20-slice run), the marginal ratio
between the two largest sizes ((plain(b) - plain(a)) / (medspark(b) - medspark(a)): the
extra images per extra second of medspark against the script's), the same ``run`` again on
the smallest size's input and warehouse (a re-run of unchanged input, which commits nothing),
and the Spark jobs a first-load ``run`` and its re-run start (counted in-process on the
smallest size, with their call sites).

Usage: ``python bench/bench_run.py [--sizes 20 2000 8000] [--repeat 1] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CHUNK = 64  # files per pool task (and per model batch, as inference.batch_size)


# --------------------------------------------------------------------------------------
# The plain script (run as a child process: --plain)
# --------------------------------------------------------------------------------------

_STATE: dict[str, Any] = {}


def _plain_init() -> None:
    import cv2
    import torch

    from medspark.config import PipelineConfig
    from medspark.inference.model import load_model
    from medspark.steps import preprocess_settings

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    config = PipelineConfig()
    _STATE["settings"] = preprocess_settings(config)
    model_cfg = config.inference.model_config(None)
    _STATE["cfg"] = model_cfg
    _STATE["model"] = load_model(model_cfg, "cpu")


def _plain_chunk(args: tuple[int, list[str], str]) -> int:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from medspark.dicom.header import parse_header
    from medspark.inference.predict import decode_batch
    from medspark.preprocess.udf import process_item

    index, paths, out_dir = args
    cfg, model = _STATE["cfg"], _STATE["model"]
    rows: list[dict[str, Any]] = []
    for path in paths:
        data = Path(path).read_bytes()
        header = parse_header(data, path)
        key = {"sop_instance_uid": header["sop_instance_uid"], "source_uri": path}
        for frame in process_item(data, {**key, "archive_member": None}, _STATE["settings"]):
            rows.append(
                {
                    **key,
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "header_json": header["header_json"],
                    "frame": frame["frame"],
                    "tensor": frame["tensor"],
                    "thumbnail_png": frame["thumbnail_png"],
                    "mask_area_px": frame["mask_area_px"],
                    "mask_area_mm2": frame["mask_area_mm2"],
                }
            )
    tensors = np.empty(len(rows), dtype=object)
    tensors[:] = [r["tensor"] for r in rows]
    batch = torch.from_numpy(decode_batch(tensors, cfg))
    mean, std = torch.tensor(cfg.mean), torch.tensor(cfg.std)
    with torch.inference_mode():
        x = (batch.permute(0, 3, 1, 2).float() - mean) / std
        probs = torch.softmax(model(x).float(), dim=1).numpy()
    for r, p in zip(rows, probs, strict=True):
        r["label"] = cfg.class_names[int(p.argmax())]
        r["score"] = float(p.max())
    pq.write_table(pa.Table.from_pylist(rows), Path(out_dir) / f"part-{index:05d}.parquet")
    return len(rows)


def plain_main(src: str, out: str, processes: int) -> int:
    paths = sorted(str(p) for p in Path(src).rglob("*.dcm"))
    Path(out).mkdir(parents=True, exist_ok=True)
    chunks = [(i, paths[s : s + CHUNK], out) for i, s in enumerate(range(0, len(paths), CHUNK))]
    with multiprocessing.Pool(processes, initializer=_plain_init) as pool:
        n = sum(pool.imap_unordered(_plain_chunk, chunks))
    print(f"plain: {n} images")
    return 0 if n == len(paths) else 1


# --------------------------------------------------------------------------------------
# The bench
# --------------------------------------------------------------------------------------


def _timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stdout}\n{done.stderr}")
    return seconds


def _count_rows(warehouse: Path, table: str) -> int:
    from deltalake import DeltaTable

    return DeltaTable(str(warehouse / table)).to_pyarrow_dataset().count_rows()


def spark_jobs(src: Path, workdir: Path) -> dict[str, list[str]]:
    """The Spark jobs of a first-load ``run`` on ``src`` (``first``) and of a second ``run`` of
    the same input into the same warehouse (``rerun``), by call site."""
    import urllib.request

    from medspark.config import load_config, with_overrides
    from medspark.metrics.runs import recorded_run
    from medspark.pipeline import new_run_id, run_all
    from medspark.session import build_session

    warehouse = workdir / "jobs_wh"
    shutil.rmtree(warehouse, ignore_errors=True)  # a first load, as the timed runs
    shutil.rmtree(workdir / "jobs_wh_restricted", ignore_errors=True)
    config = with_overrides(load_config(None), warehouse=str(warehouse))
    spark = build_session(config.spark)
    try:
        groups: dict[str, str] = {}
        for which in ("first", "rerun"):
            with recorded_run(spark, config, "run", new_run_id()) as record:
                run_all(spark, [str(src)], config, record)
            groups[which] = record.run_id
        tracker = spark.sparkContext.statusTracker()
        sc = spark.sparkContext
        app = f"{sc.uiWebUrl}/api/v1/applications/{sc.applicationId}"
        with urllib.request.urlopen(f"{app}/jobs") as resp:  # noqa: S310 - local driver UI
            names = {j["jobId"]: j["name"] for j in json.loads(resp.read())}
        return {
            which: [f"{i}: {names.get(i, '?')}" for i in sorted(tracker.getJobIdsForGroup(g))]
            for which, g in groups.items()
        }
    finally:
        spark.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20, 2000, 8000])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--plain", nargs=2, metavar=("SRC", "OUT"))
    args = parser.parse_args(argv)
    if args.plain:
        return plain_main(args.plain[0], args.plain[1], args.cores)

    sys.path.insert(0, str(HERE))
    from synth import make_ct_series

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_run_"))
    env = {**os.environ, "MEDSPARK_DEID_SECRET": os.environ.get("MEDSPARK_DEID_SECRET", "bench")}
    medspark = str(Path(sys.executable).with_name("medspark"))
    results: list[dict[str, Any]] = []
    jobs: dict[str, list[str]] = {}
    for n in sorted(args.sizes):
        src = workdir / f"ct{n}"
        if not src.exists():
            t = time.perf_counter()
            make_ct_series(src, n)
            print(f"[{n}] generated in {time.perf_counter() - t:.1f} s", flush=True)
        if not jobs:
            jobs = spark_jobs(src, workdir)
        for r in range(args.repeat):
            out = workdir / "plain_out"
            shutil.rmtree(out, ignore_errors=True)
            plain = _timed(
                [
                    sys.executable,
                    __file__,
                    "--plain",
                    str(src),
                    str(out),
                    "--cores",
                    str(args.cores),
                ],
                env,
            )
            wh = workdir / "wh"
            shutil.rmtree(wh, ignore_errors=True)
            shutil.rmtree(workdir / "wh_restricted", ignore_errors=True)
            ms = _timed(
                [
                    medspark,
                    "run",
                    str(src),
                    "--warehouse",
                    str(wh),
                    "--master",
                    f"local[{args.cores}]",
                ],
                env,
            )
            images = _count_rows(wh, "images")
            predictions = _count_rows(wh, "predictions")
            if images != n or predictions != n:
                sys.exit(f"medspark wrote {images} images, {predictions} predictions for {n}")
            row = {"slices": n, "repeat": r, "plain_s": plain, "medspark_s": ms}
            if n == min(args.sizes):  # the same command again on the same input and warehouse
                row["rerun_s"] = _timed(
                    [medspark, "run", str(src), "--warehouse", str(wh)]
                    + ["--master", f"local[{args.cores}]"],
                    env,
                )
            results.append(row)
            print(
                f"[{n}] plain {plain:.2f} s, medspark {ms:.2f} s, ratio {plain / ms:.2f}x"
                + (f"; re-run {row['rerun_s']:.2f} s" if "rerun_s" in row else ""),
                flush=True,
            )

    def best(n: int, key: str) -> float:
        return min(r[key] for r in results if r["slices"] == n)

    sizes = sorted(args.sizes)
    print("\n| slices | plain s | medspark s | plain/medspark |")
    print("|---:|---:|---:|---:|")
    for n in sizes:
        print(
            f"| {n} | {best(n, 'plain_s'):.2f} | {best(n, 'medspark_s'):.2f} | "
            f"{best(n, 'plain_s') / best(n, 'medspark_s'):.2f}x |"
        )
    summary: dict[str, Any] = {
        "fixed_cost_s": best(sizes[0], "medspark_s"),
        "fixed_cost_plain_s": best(sizes[0], "plain_s"),
    }
    if len(sizes) >= 2:
        a, b = sizes[-2], sizes[-1]
        marginal = (best(b, "plain_s") - best(a, "plain_s")) / (
            best(b, "medspark_s") - best(a, "medspark_s")
        )
        summary.update(
            marginal_ratio=marginal,
            marginal_between=[a, b],
            whole_ratio_largest=best(b, "plain_s") / best(b, "medspark_s"),
        )
    print(
        f"\nfixed cost (the {sizes[0]}-slice run): medspark {summary['fixed_cost_s']:.2f} s, "
        f"plain {summary['fixed_cost_plain_s']:.2f} s "
        f"({summary['fixed_cost_s'] / summary['fixed_cost_plain_s']:.1f}x)"
    )
    if "marginal_ratio" in summary:
        print(
            f"marginal ratio {summary['marginal_between']}: {summary['marginal_ratio']:.2f}x; "
            f"whole command at {sizes[-1]}: {summary['whole_ratio_largest']:.2f}x"
        )
    summary["rerun_s"] = min(r["rerun_s"] for r in results if "rerun_s" in r)
    print(
        f"re-run of the {sizes[0]}-slice run (same input and warehouse): {summary['rerun_s']:.2f} s"
    )
    for which, listed in jobs.items():
        print(f"Spark jobs of the {which} run on {sizes[0]} slices: {len(listed)}")
        for j in listed:
            print(f"  {j}")
    if args.json:
        args.json.write_text(
            json.dumps({"results": results, "summary": summary, "jobs": jobs}, indent=2) + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
