"""``medspark serve`` and ``medspark export`` on a warehouse of many instances.

Builds ``--studies`` synthetic CT series of ``--slices`` slices each (``--size`` pixels square;
:mod:`synth`; one patient per study), ingests them with ``medspark ingest`` into a fresh
warehouse, starts ``medspark serve`` as a user would (its own process, 127.0.0.1), and
measures, in one run of this bench:

``qido``
    the latency of QIDO-RS searches over the whole warehouse (all studies; by PatientID; by a
    StudyDate range; the series of a study; the instances of a series), median and 95th
    percentile of ``--repeat`` requests each, with ``requests`` (HTTP keep-alive).
``frames``
    WADO-RS frames, one request per instance, over one whole series: cold (each instance is
    re-read from its source, checked against its SHA-256 and de-identified on first request)
    and warm (the server's cache; median of three passes), in frames per second, against the
    plain baseline.
``metadata``
    the series metadata of a fresh series (every instance made once), seconds.
``export``
    ``medspark export --series`` of one series from launch, instances per second.
``plain``
    what a user's own script does to get the same frames: for each file, ``pydicom.dcmread``
    and the frame's bytes from Pixel Data (no de-identification, no HTTP), frames per second
    (median of three passes over the same series' files).

Usage: ``python bench/bench_serve.py [--studies 100 --slices 100 --size 256] [--json out]``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _medspark(*args: str, **kw: Any) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "medspark.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, check=True, **kw)


def build(root: Path, studies: int, slices: int, size: int) -> tuple[Path, float, float]:
    """Write the series and ingest them; returns the warehouse, seconds to write, to ingest."""
    from synth import make_ct_series

    source = root / "in"
    t0 = time.perf_counter()
    for seed in range(studies):
        make_ct_series(source / f"study{seed:04d}", slices, size=size, seed=seed)
    written = time.perf_counter() - t0
    warehouse = root / "warehouse"
    t0 = time.perf_counter()
    _medspark("ingest", str(source), "--warehouse", str(warehouse), "--quiet")
    return warehouse, written, time.perf_counter() - t0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _timed(session: Any, url: str, repeat: int, **kw: Any) -> dict[str, float]:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        response = session.get(url, timeout=120, **kw)
        times.append(time.perf_counter() - t0)
        response.raise_for_status()
    times.sort()
    return {
        "median_ms": round(statistics.median(times) * 1000, 2),
        "p95_ms": round(times[int(0.95 * (len(times) - 1))] * 1000, 2),
        "results": len(response.json()) if "json" in response.headers["content-type"] else None,
    }


def _frames_per_second(session: Any, base: str, study: str, series: str, sops: list[str]) -> float:
    t0 = time.perf_counter()
    for sop in sops:
        r = session.get(
            f"{base}/studies/{study}/series/{series}/instances/{sop}/frames/1",
            headers={"Accept": 'multipart/related; type="application/octet-stream"'},
            timeout=120,
        )
        r.raise_for_status()
    return len(sops) / (time.perf_counter() - t0)


def plain_frames_per_second(files: list[Path]) -> float:
    import pydicom

    t0 = time.perf_counter()
    for path in files:
        ds = pydicom.dcmread(path)
        frame = int(ds.Rows) * int(ds.Columns) * int(ds.BitsAllocated) // 8
        _ = ds.PixelData[:frame]
    return len(files) / (time.perf_counter() - t0)


def serve_measures(warehouse: Path, source: Path, repeat: int) -> dict[str, Any]:
    import requests

    port = _free_port()
    env = {**os.environ}
    t0 = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, "-m", "medspark.cli", "serve", "--warehouse", str(warehouse)]
        + ["--port", str(port), "--quiet"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}/dicomweb"
    session = requests.Session()
    try:
        while True:
            try:
                session.get(base + "/studies?limit=1", timeout=5).raise_for_status()
                break
            except requests.ConnectionError:
                if server.poll() is not None or time.perf_counter() - t0 > 300:
                    raise RuntimeError("medspark serve did not start") from None
                time.sleep(0.1)
        started = time.perf_counter() - t0
        studies = session.get(base + "/studies", timeout=60).json()
        first = studies[0]
        study = first["0020000D"]["Value"][0]
        key = first["00100020"]["Value"][0]
        date = first["00080020"]["Value"][0]
        series = session.get(f"{base}/studies/{study}/series", timeout=60).json()
        se = series[0]["0020000E"]["Value"][0]
        qido = {
            "all studies": _timed(session, base + "/studies", repeat),
            "studies by PatientID": _timed(session, f"{base}/studies?PatientID={key}", repeat),
            "studies by StudyDate range": _timed(
                session, f"{base}/studies?StudyDate={date}-{date}&limit=25", repeat
            ),
            "series of a study": _timed(session, f"{base}/studies/{study}/series", repeat),
            "instances of a series": _timed(
                session, f"{base}/studies/{study}/series/{se}/instances", repeat
            ),
        }
        instances = session.get(f"{base}/studies/{study}/series/{se}/instances", timeout=60).json()
        sops = [i["00080018"]["Value"][0] for i in instances]
        cold = _frames_per_second(session, base, study, se, sops)
        warm = statistics.median(
            _frames_per_second(session, base, study, se, sops) for _ in range(3)
        )
        other = studies[1]["0020000D"]["Value"][0]
        other_series = session.get(f"{base}/studies/{other}/series", timeout=60).json()
        ose = other_series[0]["0020000E"]["Value"][0]
        t0 = time.perf_counter()
        session.get(f"{base}/studies/{other}/series/{ose}/metadata", timeout=600).raise_for_status()
        metadata_s = time.perf_counter() - t0
    finally:
        server.terminate()
        server.wait(timeout=30)
    files = sorted((source / "study0000").glob("*.dcm"))
    plain = statistics.median(plain_frames_per_second(files) for _ in range(3))
    return {
        "server_start_s": round(started, 2),
        "qido": qido,
        "frames_per_s_cold": round(cold, 1),
        "frames_per_s_warm": round(warm, 1),
        "frames_per_s_plain": round(plain, 1),
        "ratio_cold_vs_plain": round(cold / plain, 3),
        "ratio_warm_vs_plain": round(warm / plain, 3),
        "series_metadata_cold_s": round(metadata_s, 2),
        "instances_per_series": len(sops),
        "third_series": ose,
        "third_study": other,
    }


def export_measure(warehouse: Path, root: Path, series: str, n: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    _medspark("export", "--warehouse", str(warehouse), "--out", str(root / "export"))
    whole = time.perf_counter() - t0
    t0 = time.perf_counter()
    _medspark(
        "export", "--warehouse", str(warehouse), "--out", str(root / "one"), "--series", series
    )
    one = time.perf_counter() - t0
    return {
        "export_all_s": round(whole, 2),
        "export_all_instances_per_s": round(n / whole, 1),
        "export_one_series_s": round(one, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--studies", type=int, default=100)
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_serve_") as tmp:
        root = Path(tmp)
        warehouse, written, ingested = build(root, args.studies, args.slices, args.size)
        n = args.studies * args.slices
        result: dict[str, Any] = {
            "instances": n,
            "size": args.size,
            "write_inputs_s": round(written, 1),
            "ingest_s": round(ingested, 1),
        }
        result.update(serve_measures(warehouse, root / "in", args.repeat))
        result.update(export_measure(warehouse, root, result.pop("third_series"), n))
        result.pop("third_study")
        result["cores"] = os.cpu_count()
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
