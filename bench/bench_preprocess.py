"""Preprocessing throughput: medspark on Spark against plain-Python baselines, same input.

One run generates a synthetic CT series (:mod:`synth`), then measures images/s for:

``loop``
    One Python process: read each item's bytes, ``process_item(bytes, key, settings)`` with the
    default ``PipelineConfig().preprocess`` chain (settings built as ``preprocess_frames`` builds
    them), consuming every row.
``pool``
    The same per-item work in ``multiprocessing.Pool(os.cpu_count())`` (``imap_unordered``);
    each task returns only (frames, error rows, tensor bytes) so result pickling stays small.
``spark_transform``
    medspark's Spark path without Delta writes: ``preprocess_frames(pixel_instances(scans))``
    into the ``noop`` sink. The first run (cold Python workers) is reported separately.
``spark_preprocess``
    The full ``medspark.pipeline.preprocess`` (Delta MERGE into ``images`` and
    ``preprocess_errors`` included), warm; every run writes fresh tables.

``ingest`` (items/s) is timed once, untimed for everything else.

For ``--zipped`` input the baselines read members from the zip, opening the ZipFile once per
process (the loop's process or each pool worker), as medspark's executors open it once per
partition.

Usage: ``python bench/bench_preprocess.py --n 400 [--compression jpeg2000|rle] [--zipped]
[--repeat 2] [--json out.json]``.

``--ops fourier,median_blur,...`` measures single ops instead (no Spark, one process): the
generated slices are decoded and windowed to uint8 once, then every op runs over all of them
in turn, the ops alternated round after round (``--repeat`` rounds, the best kept), and the
cost per frame is reported beside the first op named (the baseline: put ``median_blur``
first). Each op is written ``name`` (defaults) or ``name:key=value:key=value``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing
import os
import platform
import shutil
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from synth import COMPRESSIONS, make_ct_series

from medspark.config import PipelineConfig, SparkConfig, with_overrides
from medspark.preprocess.udf import PreprocessSettings, process_item

# An item: (path on disk, zip member or None).
Item = tuple[str, str | None]


@dataclass(frozen=True)
class Tally:
    """What one pass produced: frames with a tensor, error rows, total tensor bytes."""

    frames: int = 0
    errors: int = 0
    tensor_bytes: int = 0

    def __add__(self, other: Tally) -> Tally:
        return Tally(
            self.frames + other.frames,
            self.errors + other.errors,
            self.tensor_bytes + other.tensor_bytes,
        )


@dataclass
class Measurement:
    variant: str
    runs: list[float] = field(default_factory=list)  # seconds of each timed run
    images: int = 0  # frames produced per run (the images/s numerator)
    note: str = ""
    cpu: list[dict[str, float]] = field(default_factory=list)  # CPU seconds of each run

    def add_run(self, seconds: float, cpu: dict[str, float]) -> None:
        self.runs.append(seconds)
        self.cpu.append(cpu)

    @property
    def seconds(self) -> float:
        """The best (smallest) run."""
        return min(self.runs)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def as_json(self, reference: Measurement | None) -> dict[str, Any]:
        """The JSON row of this variant; the ratio is to ``reference`` (null without one)."""
        ref = reference.images_per_s if reference else None
        return {
            "variant": self.variant,
            "seconds": self.seconds,
            "runs": self.runs,
            "images": self.images,
            "images_per_s": self.images_per_s,
            "ratio_to_pool": self.images_per_s / ref if ref else None,
            "cpu_seconds": self.cpu,
            "note": self.note,
        }

    def best_cpu(self) -> dict[str, float]:
        """CPU seconds of the best run (empty when not measured)."""
        if not self.cpu:
            return {}
        return self.cpu[self.runs.index(self.seconds)]


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write a bench result file (parent directories created) and say so on stderr."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    log(f"wrote {path}")


def default_settings(config: PipelineConfig) -> PreprocessSettings:
    """Exactly as :func:`medspark.pipeline.preprocess_frames` builds them."""
    from medspark.steps import preprocess_settings

    return preprocess_settings(config)


# --------------------------------------------------------------------------------------
# Plain-Python baselines
# --------------------------------------------------------------------------------------


class ItemReader:
    """Reads loose files, or members of zips opened once each and kept open."""

    def __init__(self) -> None:
        self._zips: dict[str, zipfile.ZipFile] = {}

    def read(self, item: Item) -> bytes:
        path, member = item
        if member is None:
            return Path(path).read_bytes()
        zf = self._zips.get(path)
        if zf is None:
            zf = self._zips[path] = zipfile.ZipFile(path)
        return zf.read(member)

    def close(self) -> None:
        for zf in self._zips.values():
            zf.close()
        self._zips.clear()


def process_one(item: Item, reader: ItemReader, settings: PreprocessSettings) -> Tally:
    """medspark's per-item work: read the bytes, run ``process_item``, consume every row."""
    path, member = item
    uri = Path(path).absolute().as_uri()
    # sop_instance_uid is only copied into the rows; the location stands in for it here.
    key = {"sop_instance_uid": f"{uri}!{member}", "source_uri": uri, "archive_member": member}
    frames = errors = nbytes = 0
    for row in process_item(reader.read(item), key, settings):
        if row.get("error_class") is None:
            frames += 1
            nbytes += len(row["tensor"])
        else:
            errors += 1
    return Tally(frames, errors, nbytes)


def run_loop(items: Sequence[Item], settings: PreprocessSettings) -> Tally:
    reader = ItemReader()
    try:
        total = Tally()
        for item in items:
            total += process_one(item, reader, settings)
        return total
    finally:
        reader.close()


# Per-worker state of the pool, set by the initializer (one ZipFile per worker).
_WORKER: dict[str, Any] = {}


def _pool_init(settings: PreprocessSettings) -> None:
    import cv2

    # Same as medspark's Spark tasks: one OpenCV thread per worker process, one process per core.
    cv2.setNumThreads(1)
    _WORKER["reader"] = ItemReader()
    _WORKER["settings"] = settings


def _pool_task(item: Item) -> Tally:
    return process_one(item, _WORKER["reader"], _WORKER["settings"])


def _pool_task_rows(item: Item) -> list[dict[str, Any]]:
    """Like ``_pool_task`` but returns every output row, as a pipeline that keeps them must."""
    path, member = item
    uri = Path(path).absolute().as_uri()
    key = {"sop_instance_uid": f"{uri}!{member}", "source_uri": uri, "archive_member": member}
    return list(process_item(_WORKER["reader"].read(item), key, _WORKER["settings"]))


def run_pool_rows(pool: Any, items: Sequence[Item], processes: int) -> Tally:
    chunksize = max(1, min(16, len(items) // (processes * 8)))
    total = Tally()
    for rows in pool.imap_unordered(_pool_task_rows, items, chunksize=chunksize):
        for row in rows:
            ok = row.get("error_class") is None
            total += Tally(int(ok), int(not ok), len(row["tensor"]) if ok else 0)
    return total


def run_pool(pool: Any, items: Sequence[Item], processes: int) -> Tally:
    chunksize = max(1, min(16, len(items) // (processes * 8)))
    total = Tally()
    for tally in pool.imap_unordered(_pool_task, items, chunksize=chunksize):
        total += tally
    return total


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def cpu_seconds() -> dict[str, float]:
    """CPU seconds (user + system) used so far by this process and its live descendants.

    ``self``: this process (the loop, the pool's parent, Spark's Python driver); ``jvm``:
    descendant ``java`` processes (Spark's driver and executors in local mode); ``python``: the
    other descendants (pool workers, Spark's Python daemon and workers). Read from
    ``/proc/PID/stat``, so Linux only (empty elsewhere). A process that exits between two
    readings takes its seconds with it; the pool's and Spark's workers live for the whole run.
    """
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    procs: dict[int, tuple[int, str, float]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        comm = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        # After the command: state, ppid, ... utime and stime are fields 14 and 15 of stat(5).
        procs[int(stat.parent.name)] = (
            int(fields[1]),
            comm,
            (int(fields[11]) + int(fields[12])) / tick,
        )
    me = os.getpid()
    if me not in procs:
        return {}
    out = {"self": procs[me][2], "jvm": 0.0, "python": 0.0}
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    todo = list(children.get(me, []))
    while todo:
        pid = todo.pop()
        _, comm, cpu = procs[pid]
        out["jvm" if comm == "java" else "python"] += cpu
        todo.extend(children.get(pid, []))
    return out


def timed_cpu(fn: Callable[[], Any]) -> tuple[float, dict[str, float], Any]:
    """Like :func:`timed`, plus the CPU seconds of :func:`cpu_seconds` spent meanwhile."""
    before = cpu_seconds()
    seconds, result = timed(fn)
    after = cpu_seconds()
    return seconds, {k: round(after[k] - before.get(k, 0.0), 2) for k in after}, result


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for dist in (
        "medspark",
        "pyspark",
        "delta-spark",
        "pydicom",
        "numpy",
        "pandas",
        "pyarrow",
        "opencv-python-headless",
        "pylibjpeg",
        "pylibjpeg-openjpeg",
        "pylibjpeg-rle",
    ):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "not installed"
    return out


def machine() -> dict[str, Any]:
    import cv2

    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "opencv_threads": cv2.getNumThreads(),
        "mp_start_method": "spawn",
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


def expect(variant: str, tally: Tally, n: int) -> None:
    if tally.frames != n or tally.errors:
        print(
            f"WARNING: {variant} produced {tally.frames} frame(s) and {tally.errors} error "
            f"row(s); expected {n} and 0",
            file=sys.stderr,
        )


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------


def generate(
    workdir: Path, n: int, size: int, compression: str | None, zipped: bool
) -> tuple[list[Item], str, float]:
    """Write the input; return the items, the ingest source and the generation seconds."""
    seconds, out = timed(
        lambda: make_ct_series(
            workdir / "input", n, size=size, compression=compression, zipped=zipped
        )
    )
    if isinstance(out, Path):  # one zip
        with zipfile.ZipFile(out) as zf:
            members = sorted(i.filename for i in zf.infolist() if not i.is_dir())
        return [(str(out), m) for m in members], str(out), seconds
    return [(str(p), None) for p in out], str(workdir / "input"), seconds


def repeated(
    name: str, run: Callable[[], Tally], n: int, repeat: int, note: str = ""
) -> Measurement:
    """``repeat`` timed passes of ``run``, each checked for ``n`` frames and no error row."""
    m = Measurement(name, images=n, note=note)
    for i in range(repeat):
        seconds, cpu, tally = timed_cpu(run)
        expect(name, tally, n)
        m.add_run(seconds, cpu)
        log(f"{name} run {i + 1}: {seconds:.2f} s, CPU {cpu_text(cpu)}")
    return m


def cpu_text(cpu: dict[str, float]) -> str:
    """CPU seconds as self/jvm/python, or ``-`` when not measured."""
    return "/".join(f"{cpu[k]:.1f}" for k in ("self", "jvm", "python")) if cpu else "-"


def pool_passes(
    run: Callable[[], Tally], n: int, repeat: int, started: float
) -> tuple[Measurement, Measurement]:
    """A pool's first pass, timed from ``started`` (before the pool started), then warm ones."""
    tally = run()
    cold = Measurement(
        "pool_cold",
        runs=[time.perf_counter() - started],
        images=n,
        note="first pass, Pool start included (spawned workers)",
    )
    expect("pool_cold", tally, n)
    log(f"pool cold: {cold.runs[0]:.2f} s")
    return cold, repeated("pool", run, n, repeat, "same Pool, later passes")


def bench_baselines(
    items: Sequence[Item], settings: PreprocessSettings, repeat: int, processes: int
) -> list[Measurement]:
    n = len(items)
    # One untimed item first: imports and OpenCV/decoder initialisation are not per-item work.
    run_loop(items[:1], settings)
    loop = repeated("loop", lambda: run_loop(items, settings), n, repeat)
    start = time.perf_counter()
    # spawn, not fork: forking after OpenCV's thread pool has run can deadlock the children
    # (seen here: cv2.setNumThreads in a forked worker hung), and Spark's Python workers are
    # fresh processes too.
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(processes, initializer=_pool_init, initargs=(settings,)) as pool:
        pool_cold, pool_warm = pool_passes(
            lambda: run_pool(pool, items, processes), n, repeat, start
        )
        pool_rows = repeated(
            "pool_rows",
            lambda: run_pool_rows(pool, items, processes),
            n,
            repeat,
            "same Pool, every row pickled back to the parent",
        )
    return [loop, pool_cold, pool_warm, pool_rows]


def bench_spark(
    source: str,
    n: int,
    workdir: Path,
    cores: int,
    repeat: int,
    partitions: int | None,
) -> tuple[list[Measurement], Measurement, dict[str, Any]]:
    from medspark.pipeline import ingest, pixel_instances, preprocess, preprocess_frames
    from medspark.session import build_session

    config = with_overrides(PipelineConfig(), warehouse=str(workdir / "warehouse"))
    spark = build_session(SparkConfig(master=f"local[{cores}]", log_level="ERROR"))
    try:
        parallelism = spark.sparkContext.defaultParallelism
        seconds, result = timed(lambda: ingest(spark, [source], config))
        log(f"ingest: {result.items} item(s) in {seconds:.2f} s ({result.errors} error(s))")
        if result.errors or result.scans_inserted != n:
            print(f"WARNING: ingest: {result.summary()}", file=sys.stderr)
        ingested = Measurement(
            "ingest", runs=[seconds], images=result.items, note="cold, one run, items/s"
        )

        scans = spark.read.format("delta").load(config.table_path("scans"))
        # The same partition count preprocess() picks, unless given.
        parts = (
            partitions
            or config.preprocess.partitions
            or max(2 * parallelism, min(-(-n // 200), 64 * parallelism))
        )

        def transform() -> None:
            frames = preprocess_frames(pixel_instances(scans), config, parts)
            frames.write.format("noop").mode("overwrite").save()

        cold = Measurement("spark_transform_cold", images=n, note="first run: cold Python workers")
        seconds, _ = timed(transform)
        cold.runs.append(seconds)
        log(f"spark_transform cold: {seconds:.2f} s ({parts} partitions)")
        warm = Measurement("spark_transform", images=n, note=f"noop sink, {parts} partitions")
        for i in range(repeat):
            seconds, cpu, _ = timed_cpu(transform)
            warm.add_run(seconds, cpu)
            log(f"spark_transform run {i + 1}: {seconds:.2f} s, CPU {cpu_text(cpu)}")

        full = Measurement("spark_preprocess", note="Delta MERGE into fresh tables each run")
        for i in range(repeat):
            # Fresh table names per run: every run is a first (insert-only) preprocess.
            tables = dataclasses.replace(
                config.tables, images=f"images_r{i}", preprocess_errors=f"preprocess_errors_r{i}"
            )
            run_config = with_overrides(config, tables=tables)
            seconds, cpu, res = timed_cpu(lambda c=run_config: preprocess(spark, c))
            if res.frames != n or sum(res.errors_by_class.values()):
                print(f"WARNING: spark_preprocess: {res.summary()}", file=sys.stderr)
            full.add_run(seconds, cpu)
            full.images = res.frames
            log(
                f"spark_preprocess run {i + 1}: {seconds:.2f} s ({res.frames} frames), "
                f"CPU {cpu_text(cpu)}"
            )
        spark_info = {
            "master": spark.sparkContext.master,
            "default_parallelism": parallelism,
            "preprocess_partitions": parts,
        }
    finally:
        spark.stop()
    return [cold, warm, full], ingested, spark_info


def table(rows: Sequence[Measurement], reference: Measurement | None) -> str:
    """The results table; ``CPU s`` is the best run's self/jvm/python CPU seconds."""
    lines = [f"{'variant':<22}{'seconds':>9}{'images/s':>11}{'x pool':>8}  {'CPU s':<16}  runs (s)"]
    for m in rows:
        ratio = m.images_per_s / reference.images_per_s if reference else math.nan
        runs = ", ".join(f"{s:.2f}" for s in m.runs)
        cpu = cpu_text(m.best_cpu())
        lines.append(
            f"{m.variant:<22}{m.seconds:>9.2f}{m.images_per_s:>11.1f}{ratio:>8.2f}  {cpu:<16}  "
            f"{runs}"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="medspark preprocessing throughput against plain-Python baselines."
    )
    parser.add_argument("--n", type=int, default=400, help="slices to generate (default 400)")
    parser.add_argument("--size", type=int, default=512, help="rows = columns (default 512)")
    parser.add_argument("--compression", choices=sorted(COMPRESSIONS), default=None)
    parser.add_argument("--zipped", action="store_true", help="all slices in one ZIP_STORED zip")
    parser.add_argument("--repeat", type=int, default=2, help="timed warm runs per variant")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="pool / local[N]")
    parser.add_argument("--partitions", type=int, default=None, help="spark_transform override")
    parser.add_argument("--skip-spark", action="store_true", help="baselines only")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="parent of the fresh work dir (default: TMPDIR)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument(
        "--ops",
        default=None,
        help="time single ops instead, e.g. median_blur,fourier,fourier:mode=highpass:low=0.05",
    )
    args = parser.parse_args(argv)
    if args.n < 1 or args.repeat < 1 or args.cores < 1:
        parser.error("--n, --repeat and --cores must be >= 1")
    return args


def parse_op(text: str) -> tuple[str, dict[str, Any]]:
    """``name:key=value:...`` -> (name, params); values parsed as YAML scalars."""
    import yaml

    name, *pairs = text.split(":")
    params = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        params[key] = yaml.safe_load(value)
    return name, params


def bench_ops(items: Sequence[Item], specs: Sequence[str], repeat: int) -> list[dict[str, Any]]:
    """Milliseconds per frame of each op over the decoded frames (best of ``repeat`` rounds,
    the ops alternated within a round); the first op is the baseline of ``ratio``."""
    from medspark.dicom.pixels import iter_frames, to_display
    from medspark.preprocess.chain import build_chain

    frames = []
    for path, _ in items:
        for frame in iter_frames(path):
            frames.append(to_display(frame, "auto"))
    ops = []
    for text in specs:
        name, params = parse_op(text)
        (step,) = build_chain([{"op": name, **params}]).steps  # validated like the config
        ops.append((text, step))
    best = {text: math.inf for text, _ in ops}
    for r in range(repeat):
        for text, step in ops:
            t0 = time.perf_counter()
            for f in frames:
                step.run(f)
            seconds = time.perf_counter() - t0
            best[text] = min(best[text], seconds)
            log(f"round {r + 1} {text}: {seconds * 1000 / len(frames):.2f} ms/frame")
    base = best[ops[0][0]]
    return [
        {
            "op": text,
            "params": dict(step.params),
            "frames": len(frames),
            "shape": list(frames[0].shape),
            "ms_per_frame": best[text] * 1000 / len(frames),
            "ratio": best[text] / base,
        }
        for text, step in ops
    ]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.ops:
        return main_ops(args)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    # Always a fresh directory, so no warehouse of an earlier run is reused.
    workdir = Path(tempfile.mkdtemp(prefix="medspark-bench-", dir=args.workdir))
    try:
        items, source, gen_seconds = generate(
            workdir, args.n, args.size, args.compression, args.zipped
        )
        input_bytes = sum(os.path.getsize(p) for p in {path for path, _ in items})
        log(
            f"generated {args.n} slice(s) ({args.compression or 'uncompressed'}"
            f"{', zipped' if args.zipped else ''}, {input_bytes / 1e6:.1f} MB) "
            f"in {gen_seconds:.1f} s under {workdir}"
        )
        settings = default_settings(PipelineConfig())
        rows = bench_baselines(items, settings, args.repeat, args.cores)
        ingested: Measurement | None = None
        spark_info: dict[str, Any] = {}
        if not args.skip_spark:
            spark_rows, ingested, spark_info = bench_spark(
                source, args.n, workdir, args.cores, args.repeat, args.partitions
            )
            rows += spark_rows
        reference = next((m for m in rows if m.variant == "pool"), None)

        print(
            f"\nN={args.n} size={args.size} compression={args.compression or 'none'} "
            f"zipped={args.zipped} cores={args.cores} repeat={args.repeat} "
            f"(seconds = best run)"
        )
        print(table(rows, reference))
        if ingested is not None:
            print(
                f"ingest: {ingested.images} item(s) in {ingested.seconds:.2f} s "
                f"({ingested.images_per_s:.1f} items/s, cold, not part of the table)"
            )

        if args.json:
            payload = {
                "n": args.n,
                "size": args.size,
                "compression": args.compression,
                "zipped": args.zipped,
                "repeat": args.repeat,
                "cores": args.cores,
                "input_bytes": input_bytes,
                "generate_seconds": gen_seconds,
                "machine": machine(),
                "versions": versions(),
                "spark": spark_info,
                "results": [m.as_json(reference) for m in rows],
                "ingest": None
                if ingested is None
                else {
                    "seconds": ingested.seconds,
                    "items": ingested.images,
                    "items_per_s": ingested.images_per_s,
                },
            }
            write_json(args.json, payload)
    finally:
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def main_ops(args: argparse.Namespace) -> int:
    """``--ops``: single-op costs per frame (see the module docstring)."""
    workdir = Path(tempfile.mkdtemp(prefix="medspark-bench-ops-", dir=args.workdir))
    try:
        items, _, _ = generate(workdir, args.n, args.size, args.compression, False)
        rows = bench_ops(items, args.ops.split(","), args.repeat)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    load = os.getloadavg()
    print(f"\nN={args.n} size={args.size} repeat={args.repeat} load {load[0]:.2f} (1 min)")
    print("| op | params | ms/frame | x first op |")
    print("|---|---|---:|---:|")
    for r in rows:
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items())
        print(
            f"| {r['op'].split(':')[0]} | {params} | {r['ms_per_frame']:.2f} | {r['ratio']:.1f} |"
        )
    if args.json:
        write_json(
            args.json,
            {
                "n": args.n,
                "size": args.size,
                "repeat": args.repeat,
                "load": load,
                "ops": rows,
                "machine": machine(),
                "versions": versions(),
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
