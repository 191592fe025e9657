"""Peak memory of Spark's Python workers during ingest + preprocess of two large inputs.

Inputs (generated, synthetic CT content):

``multiframe``
    One Enhanced CT Image Storage file with ``--frames`` frames of 512x512 16-bit pixels
    (500 frames: 262 MB of pixel data), Rescale Slope/Intercept and Pixel Spacing in the Shared
    Functional Groups Sequence (5200,9229).
``zip``
    One ``ZIP_STORED`` zip of 512x512 single-frame CT slices, about ``--zip-gb`` GB.

For each input, a fresh ``local[cores]`` session runs ``ingest`` then ``preprocess`` while a
sampler thread reads the peak resident set size (``VmHWM`` in ``/proc/PID/status``) of every
Python worker process of the JVM (``pyspark.daemon`` and the workers it forks) every 0.1 s.
Printed and written as JSON: the largest peak of any one worker, the driver's own peak, and
the frames written. Linux only.

Usage: ``python bench/bench_memory.py [--frames 500] [--zip-gb 1.0] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from bench_preprocess import log, machine, versions, write_json
from synth import make_ct_series

from medspark.config import PipelineConfig, SparkConfig, with_overrides
from medspark.synthetic import SliceSpec, ct_slice_hu

ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"


def multiframe_file(path: Path, frames: int, size: int = 512) -> int:
    """Write one Enhanced CT file with ``frames`` frames; returns its size in bytes."""
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
    from pydicom.sequence import Sequence as Seq
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ENHANCED_CT
    meta.MediaStorageSOPInstanceUID = sop = generate_uid(entropy_srcs=["bench-mf", str(frames)])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = ENHANCED_CT, sop
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["bench-mf-study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["bench-mf-series"])
    ds.PatientID, ds.PatientName, ds.Modality = "BENCH-MF", "Bench^Multiframe", "CT"
    ds.StudyDate, ds.StudyTime = "20260105", "090000"
    ds.Rows = ds.Columns = size
    ds.NumberOfFrames = frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [0.7, 0.7]
    measures.SliceThickness = 1.0
    transform = Dataset()
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = 1, -1024, "HU"
    voi = Dataset()
    voi.WindowCenter, voi.WindowWidth = -600, 1500
    shared.PixelMeasuresSequence = Seq([measures])
    shared.PixelValueTransformationSequence = Seq([transform])
    shared.FrameVOILUTSequence = Seq([voi])
    ds.SharedFunctionalGroupsSequence = Seq([shared])
    pixels = bytearray()
    for i in range(frames):
        hu = ct_slice_hu(SliceSpec(nodule=i % 7 == 0, seed=i), size)
        pixels += (hu.astype(np.int32) + 1024).astype(np.int16).tobytes()
    ds.PixelData = bytes(pixels)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    path.write_bytes(buf.getvalue())
    return path.stat().st_size


def _python_workers() -> list[int]:
    """PIDs of Spark's Python worker processes (the daemon and its forks)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if b"pyspark.daemon" in cmd or b"pyspark.worker" in cmd:
            pids.append(int(entry))
    return pids


def _hwm_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Sampler(threading.Thread):
    """Tracks the largest VmHWM of any Python worker while it runs."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = 0
        self.workers_seen: set[int] = set()
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            for pid in _python_workers():
                self.workers_seen.add(pid)
                self.peak = max(self.peak, _hwm_bytes(pid))
            time.sleep(0.1)

    def stop(self) -> None:
        self._done.set()
        self.join()


def measure(name: str, source: Path, workdir: Path, cores: int) -> dict[str, Any]:
    from medspark.pipeline import ingest, preprocess
    from medspark.session import build_session

    config = with_overrides(PipelineConfig(), warehouse=str(workdir / f"wh_{name}"))
    spark = build_session(SparkConfig(master=f"local[{cores}]", log_level="ERROR"))
    sampler = Sampler()
    sampler.start()
    start = time.perf_counter()
    try:
        ingested = ingest(spark, [str(source)], config)
        pre = preprocess(spark, config)
    finally:
        seconds = time.perf_counter() - start
        sampler.stop()
        spark.stop()
    result = {
        "input": name,
        "input_bytes": source.stat().st_size,
        "items": ingested.items,
        "ingest_errors": ingested.errors,
        "frames": pre.frames,
        "preprocess_errors": sum(pre.errors_by_class.values()),
        "seconds": seconds,
        "python_workers_seen": len(sampler.workers_seen),
        "worker_peak_rss_bytes": sampler.peak,
    }
    log(
        f"{name}: {result['input_bytes'] / 1e9:.2f} GB, {pre.frames} frames in {seconds:.1f} s; "
        f"largest Python worker peak RSS {sampler.peak / 2**20:.0f} MiB "
        f"({len(sampler.workers_seen)} worker process(es) seen)"
    )
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=500)
    parser.add_argument("--zip-gb", type=float, default=1.0)
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="medspark-mem-", dir=args.workdir))
    try:
        mf = workdir / "multiframe.dcm"
        size = multiframe_file(mf, args.frames)
        log(f"multiframe: {args.frames} frames, {size / 1e6:.0f} MB")
        slices = max(1, int(args.zip_gb * 1e9 / (512 * 512 * 2 + 2048)))
        zpath = make_ct_series(workdir / "zip", slices, zipped=True)
        log(f"zip: {slices} slices, {zpath.stat().st_size / 1e9:.2f} GB")
        results = [
            measure("multiframe", mf, workdir, args.cores),
            measure("zip", zpath, workdir, args.cores),
        ]
        print(f"\n{'input':<12}{'GB':>6}{'frames':>8}{'seconds':>9}{'worker peak MiB':>17}")
        for r in results:
            print(
                f"{r['input']:<12}{r['input_bytes'] / 1e9:>6.2f}{r['frames']:>8}"
                f"{r['seconds']:>9.1f}{r['worker_peak_rss_bytes'] / 2**20:>17.0f}"
            )
        driver_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(f"driver (this process) peak RSS: {driver_peak / 2**20:.0f} MiB")
        if args.json:
            payload = {
                "frames": args.frames,
                "zip_gb": args.zip_gb,
                "cores": args.cores,
                "machine": machine(),
                "versions": versions(),
                "driver_peak_rss_bytes": driver_peak,
                "results": results,
            }
            write_json(args.json, payload)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
