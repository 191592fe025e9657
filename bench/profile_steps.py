"""Where ingest and preprocess spend their time: per-write seconds and Spark's job list.

Runs ``ingest`` then ``preprocess`` on SOURCE ``--runs`` times in one ``local[cores]`` session,
each run into a fresh warehouse, and prints for every run the seconds of each Delta write
(``merge_into`` and the utilisation rebuild, wrapped with a timer) and of each step, then, from
Spark's monitoring REST API, how many jobs the last run started, their summed duration, and
the slowest ones. The first run of a session is JIT-cold; later runs show the steady state.

Usage: ``python bench/profile_steps.py SOURCE [--runs 2] [--cores 2] [--conf YAML] [--all-jobs]``
(``--all-jobs``: every job of the last run in submission order, with its start offset);
SOURCE as for ``medspark ingest`` (e.g. a directory from ``bench/synth.py``).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import medspark.pipeline as pipeline
from medspark.config import PipelineConfig, SparkConfig, load_config, with_overrides


def _timed(module: Any, name: str, label: Callable[..., str]) -> None:
    """Replace ``module.name`` with a wrapper that prints its seconds."""
    fn = getattr(module, name)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            print(f"    {label(*args):<40} {time.perf_counter() - start:6.2f} s", flush=True)

    setattr(module, name, wrapper)


def _jobs(spark: Any, group: str) -> list[dict[str, Any]]:
    sc = spark.sparkContext
    url = f"{sc.uiWebUrl}/api/v1/applications/{sc.applicationId}/jobs"
    with urllib.request.urlopen(url, timeout=10) as response:
        jobs = json.load(response)
    fmt = "%Y-%m-%dT%H:%M:%S.%fGMT"
    out = []
    for job in jobs:
        if job.get("jobGroup") != group or "completionTime" not in job:
            continue
        submitted = datetime.strptime(job["submissionTime"], fmt)
        seconds = (datetime.strptime(job["completionTime"], fmt) - submitted).total_seconds()
        out.append({"id": job["jobId"], "seconds": seconds, "tasks": job["numTasks"],
                    "name": job["name"], "submitted": submitted.timestamp()})  # fmt: skip
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--conf", type=Path, default=None, help="pipeline YAML (default: defaults)")
    parser.add_argument("--all-jobs", action="store_true", help="list every job of the last run")
    args = parser.parse_args(argv)

    _timed(pipeline, "merge_into", lambda spark, df, path, table: f"write {table}")
    _timed(pipeline, "_rebuild_utilization", lambda *a: "rebuild scanner_utilization")

    from medspark.session import build_session

    workdir = Path(tempfile.mkdtemp(prefix="medspark-profile-", dir=args.workdir))
    start = time.perf_counter()
    spark = build_session(SparkConfig(master=f"local[{args.cores}]", log_level="ERROR"))
    print(f"session: {time.perf_counter() - start:.2f} s")
    try:
        for i in range(args.runs):
            base = load_config(args.conf) if args.conf else PipelineConfig()
            config = with_overrides(base, warehouse=str(workdir / f"wh{i}"))
            group = f"profile-run-{i}"
            spark.sparkContext.setJobGroup(group, group)
            print(f"run {i + 1}:")
            t0 = time.perf_counter()
            items = pipeline.ingest(spark, [args.source], config).items
            t1 = time.perf_counter()
            frames = pipeline.preprocess(spark, config).frames
            t2 = time.perf_counter()
            print(f"  ingest {t1 - t0:.2f} s ({items} items), preprocess {t2 - t1:.2f} s "
                  f"({frames} frames)")  # fmt: skip
        jobs = _jobs(spark, group)
        print(
            f"last run: {len(jobs)} Spark jobs, {sum(j['seconds'] for j in jobs):.1f} s summed "
            "(jobs of concurrent writes overlap)"
        )
        if args.all_jobs and jobs:
            print("in submission order (start offset, duration):")
            first = min(j["submitted"] for j in jobs)
            for job in sorted(jobs, key=lambda j: j["submitted"]):
                at = job["submitted"] - first
                print(f"  +{at:6.2f} s {job['seconds']:6.2f} s  job {job['id']:<4} "
                      f"{job['tasks']:>3} tasks  {job['name'][:60]}")  # fmt: skip
        print("slowest:")
        for job in sorted(jobs, key=lambda j: -j["seconds"])[:8]:
            print(f"  {job['seconds']:6.2f} s  job {job['id']:<4} {job['tasks']:>3} tasks  "
                  f"{job['name'][:70]}")  # fmt: skip
    finally:
        spark.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
