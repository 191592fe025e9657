"""End-to-end throughput: ingest + decode + preprocess, medspark on Spark against a process pool.

One run generates a synthetic CT series (:mod:`synth`) and measures, on the same input:

``pool_cold`` / ``pool``
    ``multiprocessing.Pool(cores)`` doing each item's work: read the bytes, SHA-256, parse the
    header (:func:`medspark.dicom.header.parse_header`, what ingest does per item), then
    ``process_item`` (decode, window, OpenCV chain, mask statistics, thumbnail). Cold: pool
    start included; warm: later passes. **``pool`` is the reference of the ratio column.**
``spark_e2e_cold`` / ``spark_e2e``
    ``medspark.pipeline.ingest`` then ``preprocess`` in one session, each run into a fresh
    warehouse (every table a first load). Cold: the session's first run.
``pool_launch`` / ``spark_launch``
    The whole thing from process launch, in a child process timed from the parent: interpreter
    start and imports for both; for Spark also the JVM, the Delta session and the Python
    workers (``build_session`` with the cached Delta jars, then ingest and preprocess).
``spark_e2e_local1`` (``--scaling``)
    ``spark_e2e`` warm on ``local[1]`` after the ``local[cores]`` runs, for the scaling ratio.

Spark does more than the pool: it de-identifies, resolves duplicates, and writes the ``scans``,
``ingest_errors``, ``restricted_acquisitions``, ``scanner_utilization``, ``images``,
``preprocess_errors`` and ``worker_metrics`` Delta tables; the pool returns tallies only.

Usage: ``python bench/bench_e2e.py --n 2000 [--compression jpeg2000] [--zipped] [--scaling]
[--json out.json]``.
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

from bench_preprocess import (
    Item,
    ItemReader,
    Measurement,
    Tally,
    cpu_text,
    default_settings,
    expect,
    generate,
    log,
    machine,
    pool_passes,
    table,
    timed,
    timed_cpu,
    versions,
    write_json,
)
from synth import COMPRESSIONS

from medspark.config import PipelineConfig, SparkConfig, with_overrides

BENCH = Path(__file__).resolve().parent

# --------------------------------------------------------------------------------------
# The pool
# --------------------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _init(settings: Any) -> None:
    import cv2

    cv2.setNumThreads(1)  # as medspark's tasks: one OpenCV thread per process, one per core
    _WORKER["reader"] = ItemReader()
    _WORKER["settings"] = settings


def _task(item: Item) -> Tally:
    from medspark.dicom.header import ItemError, parse_header
    from medspark.preprocess.udf import process_item

    path, member = item
    data = _WORKER["reader"].read(item)
    uri = Path(path).absolute().as_uri()
    location = uri if member is None else f"{uri}!{member}"
    hashlib.sha256(data).hexdigest()
    try:
        header = parse_header(data, location)
    except ItemError:
        return Tally(0, 1, 0)
    key = {
        "sop_instance_uid": header.get("sop_instance_uid"),
        "source_uri": uri,
        "archive_member": member,
    }
    frames = errors = nbytes = 0
    for row in process_item(data, key, _WORKER["settings"]):
        if row.get("error_class") is None:
            frames += 1
            nbytes += len(row["tensor"])
        else:
            errors += 1
    return Tally(frames, errors, nbytes)


def run_pool(pool: Any, items: Sequence[Item], processes: int) -> Tally:
    chunksize = max(1, min(16, len(items) // (processes * 8)))
    total = Tally()
    for tally in pool.imap_unordered(_task, items, chunksize=chunksize):
        total += tally
    return total


def bench_pool(items: Sequence[Item], repeat: int, cores: int) -> list[Measurement]:
    settings = default_settings(PipelineConfig())
    start = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(cores, _init, (settings,)) as pool:
        return list(pool_passes(lambda: run_pool(pool, items, cores), len(items), repeat, start))


# --------------------------------------------------------------------------------------
# Spark
# --------------------------------------------------------------------------------------


def spark_e2e(spark: Any, source: str, warehouse: Path) -> int:
    """ingest + preprocess into ``warehouse``; returns the frames written."""
    from medspark.pipeline import ingest, preprocess

    config = with_overrides(PipelineConfig(), warehouse=str(warehouse))
    ingested = ingest(spark, [source], config)
    if ingested.errors:
        print(f"WARNING: ingest: {ingested.summary()}", file=sys.stderr)
    return preprocess(spark, config).frames


def bench_spark(
    source: str, n: int, workdir: Path, cores: int, repeat: int, scaling: bool
) -> tuple[list[Measurement], float]:
    from medspark.session import build_session

    rows = []
    masters = [cores] + ([1] if scaling and cores > 1 else [])
    session_seconds = 0.0
    for c in masters:
        seconds, spark = timed(
            lambda c=c: build_session(SparkConfig(master=f"local[{c}]", log_level="ERROR"))
        )
        if c == cores:
            session_seconds = seconds
            log(f"session local[{c}] started in {seconds:.2f} s")
        try:
            suffix = "" if c == cores else f"_local{c}"
            if c == cores:
                cold = Measurement("spark_e2e_cold", images=n, note="first run of the session")
                seconds, frames = timed(lambda s=spark: spark_e2e(s, source, workdir / "wh_cold"))
                cold.runs.append(seconds)
                log(f"spark_e2e cold: {seconds:.2f} s ({frames} frames)")
                rows.append(cold)
            else:
                spark_e2e(spark, source, workdir / f"wh_warmup{suffix}")  # warm the workers
            warm = Measurement(f"spark_e2e{suffix}", images=n, note=f"warm, local[{c}]")
            for i in range(repeat):
                wh = workdir / f"wh{suffix}_{i}"
                seconds, cpu, frames = timed_cpu(lambda wh=wh, s=spark: spark_e2e(s, source, wh))
                if frames != n:
                    print(f"WARNING: spark_e2e wrote {frames} frames, not {n}", file=sys.stderr)
                warm.add_run(seconds, cpu)
                log(f"spark_e2e{suffix} run {i + 1}: {seconds:.2f} s, CPU {cpu_text(cpu)}")
            rows.append(warm)
        finally:
            spark.stop()
    return rows, session_seconds


# --------------------------------------------------------------------------------------
# From launch: a child process per variant
# --------------------------------------------------------------------------------------


def child(kind: str, source: str, items_file: str, warehouse: str, cores: int) -> None:
    if kind == "pool":
        items = [tuple(i) for i in json.loads(Path(items_file).read_text())]
        settings = default_settings(PipelineConfig())
        with multiprocessing.get_context("spawn").Pool(cores, _init, (settings,)) as pool:
            expect("pool_launch", run_pool(pool, items, cores), len(items))
        return
    from medspark.session import build_session

    spark = build_session(SparkConfig(master=f"local[{cores}]", log_level="ERROR"))
    try:
        spark_e2e(spark, source, Path(warehouse))
    finally:
        spark.stop()


def bench_launch(
    items: Sequence[Item], source: str, workdir: Path, cores: int
) -> list[Measurement]:
    items_file = workdir / "items.json"
    items_file.write_text(json.dumps(list(items)))
    rows = []
    for kind in ("pool", "spark"):
        m = Measurement(f"{kind}_launch", images=len(items), note="child process, from launch")
        cmd = [sys.executable, str(BENCH / "bench_e2e.py"), "--child", kind, "--child-source",
               source, "--child-items", str(items_file), "--child-warehouse",
               str(workdir / "wh_launch"), "--cores", str(cores)]  # fmt: skip
        seconds, proc = timed(lambda cmd=cmd: subprocess.run(cmd, capture_output=True, text=True))
        if proc.returncode != 0:
            print(f"WARNING: {kind}_launch failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        m.runs.append(seconds)
        log(f"{kind}_launch: {seconds:.2f} s")
        rows.append(m)
    return rows


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=400, help="slices to generate (default 400)")
    parser.add_argument("--size", type=int, default=512, help="rows = columns (default 512)")
    parser.add_argument("--compression", choices=sorted(COMPRESSIONS), default=None)
    parser.add_argument("--zipped", action="store_true", help="all slices in one ZIP_STORED zip")
    parser.add_argument("--repeat", type=int, default=2, help="timed warm runs per variant")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="pool / local[N]")
    parser.add_argument("--scaling", action="store_true", help="also spark_e2e on local[1]")
    parser.add_argument("--skip-launch", action="store_true", help="no from-launch variants")
    parser.add_argument("--workdir", type=Path, default=None, help="parent of the work dir")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    for name in ("child", "child-source", "child-items", "child-warehouse"):
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        child(args.child, args.child_source, args.child_items, args.child_warehouse, args.cores)
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="medspark-e2e-", dir=args.workdir))
    try:
        items, source, gen_seconds = generate(
            workdir, args.n, args.size, args.compression, args.zipped
        )
        input_bytes = sum(os.path.getsize(p) for p in {path for path, _ in items})
        log(f"generated {args.n} slice(s), {input_bytes / 1e6:.1f} MB, in {gen_seconds:.1f} s")
        rows = bench_pool(items, args.repeat, args.cores)
        spark_rows, session_seconds = bench_spark(
            source, args.n, workdir, args.cores, args.repeat, args.scaling
        )
        rows += spark_rows
        if not args.skip_launch:
            rows += bench_launch(items, source, workdir, args.cores)
        reference = next(m for m in rows if m.variant == "pool")
        by_name = {m.variant: m for m in rows}
        print(
            f"\nN={args.n} size={args.size} compression={args.compression or 'none'} "
            f"zipped={args.zipped} cores={args.cores} (seconds = best run)"
        )
        print(table(rows, reference))
        print(f"session start (build_session, cached jars): {session_seconds:.2f} s")
        ratios: dict[str, float] = {}
        if "spark_launch" in by_name:
            ratios["launch_spark_over_pool"] = (
                by_name["spark_launch"].images_per_s / by_name["pool_launch"].images_per_s
            )
        if "spark_e2e_local1" in by_name:
            ratios["scaling_local_n_over_local1"] = (
                by_name["spark_e2e"].images_per_s / by_name["spark_e2e_local1"].images_per_s
            )
        for name, value in ratios.items():
            print(f"{name}: {value:.2f}")
        if args.json:
            payload = {
                "n": args.n,
                "size": args.size,
                "compression": args.compression,
                "zipped": args.zipped,
                "repeat": args.repeat,
                "cores": args.cores,
                "input_bytes": input_bytes,
                "machine": machine(),
                "versions": versions(),
                "session_seconds": session_seconds,
                "ratios": ratios,
                "results": [m.as_json(reference) for m in rows],
            }
            write_json(args.json, payload)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
