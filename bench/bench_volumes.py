"""``medspark volumes`` on one large series against a plain script doing the same work.

The input: one synthetic chest CT series (:mod:`medspark.volumes.synthetic`: body, lungs,
vessels, a nodule), 300 slices of 512 x 512 (1.0 mm apart, 0.7 mm pixels; 150 MiB of DICOM),
written as one real CT file per slice into a temporary folder.

``medspark``
    The folder is ingested (``medspark.pipeline.ingest``, not timed), then
    ``medspark.volumes.steps.volumes`` runs twice in the same Spark session (local[2]) with
    the bundled demonstration 3D model (2 mm isotropic, [-1000, 400] HU, sliding window
    32 x 64 x 64): the first run pays the Python worker's start and its torch + MONAI
    imports, the second finds the worker warm. Timed: the ``volumes`` call (series table
    rebuild + one task: re-read, SHA-256 check, decode, stack, 3D chain, model, DICOM SEG,
    MERGE of series_segments). Peak memory: the largest VmHWM (peak resident set) of any
    Python process under the driver's JVM (the Python workers), polled every 0.2 s.
``plain``
    ``python bench/bench_volumes.py --plain DIR``, a fresh process: pydicom reads the files,
    sorts them by Image Position (Patient) along the slice normal, stacks modality values
    (Rescale Slope/Intercept) in a float32 array, then the same
    :func:`medspark.volumes.transforms.preprocess_volume` and
    :func:`medspark.volumes.segment.segment` (same model, same sliding window, torch on one
    thread as in a Spark task of one core) and :func:`label_statistics`; then, timed apart, a
    DICOM SEG of the mask from the read datasets (same highdicom code). MONAI, highdicom and
    the model are loaded before its clock starts (timed apart), as in medspark's warm run.
    Peak memory: its own VmHWM.

Usage: ``python bench/bench_volumes.py [--slices 300] [--size 512] [--json out.json]``. Run it
under ``flock /tmp/medspark-bench.lock nice -n 5`` on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

SPACING = (1.0, 0.7, 0.7)
STUDY = "1.2.826.0.1.3680043.8.498.77"
SERIES = "1.2.826.0.1.3680043.8.498.771"


def _vm_hwm(pid: int) -> int:
    """Peak resident set (VmHWM) of a process, bytes (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def write_input(target: Path, slices: int, size: int) -> dict[str, Any]:
    from medspark.volumes.synthetic import chest_hu, random_chest, write_series

    shape = (slices, size, size)
    extent = tuple(n * s for n, s in zip(shape, SPACING, strict=True))
    chest = random_chest(3, extent, max_nodules=1, nodule_radius_mm=(8.0, 10.0))
    t0 = time.perf_counter()
    hu = chest_hu(chest, shape, SPACING, supersample=1, seed=3)
    write_series(target, hu, SPACING, series_uid=SERIES, study_uid=STUDY)
    return {
        "seconds_generate": round(time.perf_counter() - t0, 1),
        "nodules_ml": [round(v, 3) for v in chest.nodule_volumes_ml()],
        "bytes": sum(p.stat().st_size for p in target.iterdir()),
    }


def demo_volume_settings() -> tuple[Any, Any]:
    from medspark.volumes.segment import VolumeModel
    from medspark.volumes.train import DEFAULT_MODEL_FILE, DEMO_MODEL
    from medspark.volumes.transforms import VolumePreprocess

    pre = VolumePreprocess(
        orientation=DEMO_MODEL["orientation"],
        target_spacing=tuple(DEMO_MODEL["target_spacing"]),
        intensity_range=tuple(DEMO_MODEL["intensity_range"]),
    )
    model = VolumeModel(
        name=DEMO_MODEL["name"],
        version=DEMO_MODEL["version"],
        path=str(DEFAULT_MODEL_FILE),
        labels=tuple(DEMO_MODEL["labels"]),
        roi_size=tuple(DEMO_MODEL["roi_size"]),
        device="cpu",
    )
    return pre, model


def plain(folder: Path) -> dict[str, Any]:
    """The plain script: read, sort, stack, preprocess, segment, statistics; then a SEG."""
    import numpy as np
    import pydicom
    import torch

    from medspark.volumes.dicom_seg import segmentation_dataset, write_atomically
    from medspark.volumes.geometry import slice_normal
    from medspark.volumes.segment import label_statistics, segment
    from medspark.volumes.transforms import preprocess_volume

    torch.set_num_threads(1)
    pre, model = demo_volume_settings()
    t_import = time.perf_counter()
    import highdicom  # noqa: F401 - imported before the clock starts, as in a warm worker
    import monai.inferers  # noqa: F401
    import monai.transforms  # noqa: F401

    from medspark.volumes.segment import load_volume_model

    load_volume_model(model.path, "cpu")
    t0 = time.perf_counter()
    datasets = [pydicom.dcmread(p) for p in sorted(folder.iterdir())]
    normal = slice_normal([float(v) for v in datasets[0].ImageOrientationPatient])
    datasets.sort(key=lambda d: float(np.dot([float(v) for v in d.ImagePositionPatient], normal)))
    rows, cols = int(datasets[0].Rows), int(datasets[0].Columns)
    volume = np.empty((len(datasets), rows, cols), dtype=np.float32)
    for k, ds in enumerate(datasets):
        volume[k] = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        del ds.PixelData  # the SEG below needs the headers only
        for keyword in (  # type 2 attributes a SEG copies; the synthetic files lack them
            "PatientBirthDate",
            "PatientSex",
            "StudyID",
            "AccessionNumber",
            "ReferringPhysicianName",
        ):
            if keyword not in ds:
                setattr(ds, keyword, "")
    first = [float(v) for v in datasets[0].ImagePositionPatient]
    last = [float(v) for v in datasets[-1].ImagePositionPatient]
    row_dir = np.array([float(v) for v in datasets[0].ImageOrientationPatient[:3]])
    col_dir = np.array([float(v) for v in datasets[0].ImageOrientationPatient[3:]])
    spacing = [float(v) for v in datasets[0].PixelSpacing]
    affine = np.eye(4)
    affine[:3, 0] = (np.array(last) - np.array(first)) / (len(datasets) - 1)
    affine[:3, 1] = col_dir * spacing[0]
    affine[:3, 2] = row_dir * spacing[1]
    affine[:3, 3] = first
    t1 = time.perf_counter()
    image, out_affine = preprocess_volume(volume, affine, pre)
    del volume
    t2 = time.perf_counter()
    labels = segment(image, model)
    t3 = time.perf_counter()
    stats = label_statistics(labels, out_affine, model.labels)
    t4 = time.perf_counter()
    from medspark.volumes.dicom_seg import labels_on_grid

    on_grid = labels_on_grid(labels, out_affine, affine, (len(datasets), rows, cols))
    seg = segmentation_dataset(
        datasets,
        on_grid,
        model.labels,
        model=model.name,
        version=model.version,
        software_version="bench",
    )
    with tempfile.TemporaryDirectory() as tmp:
        write_atomically(seg, Path(tmp) / "seg.dcm")
    t5 = time.perf_counter()
    return {
        "seconds_imports_and_model_load": round(t0 - t_import, 2),
        "seconds_read_stack": round(t1 - t0, 2),
        "seconds_preprocess": round(t2 - t1, 2),
        "seconds_infer": round(t3 - t2, 2),
        "seconds_statistics": round(t4 - t3, 2),
        "seconds_without_seg": round(t4 - t0, 2),
        "seconds_seg": round(t5 - t4, 2),
        "seconds_total": round(t5 - t0, 2),
        "peak_rss_mib": round(_vm_hwm(os.getpid()) / 2**20),
        "volumes_ml": {s["label"]: round(s["volume_ml"], 3) for s in stats},
    }


class _WorkerPeak:
    """Polls the VmHWM of every Python process under this process (Spark's Python workers
    hang under the JVM, which hangs under the driver)."""

    def __init__(self) -> None:
        import psutil

        self._me = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for child in self._me.children(recursive=True):
                    try:
                        if "python" in child.name():
                            self.peak = max(self.peak, _vm_hwm(child.pid))
                    except Exception:  # noqa: BLE001 - a process that just ended
                        continue
            except Exception:  # noqa: BLE001
                pass
            self._stop.wait(0.2)

    def __enter__(self) -> _WorkerPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def medspark_runs(folder: Path, warehouse: Path, repeat: int) -> dict[str, Any]:
    import dataclasses

    from medspark.config import PipelineConfig, SparkConfig, with_overrides
    from medspark.demo import demo_volumes_config
    from medspark.pipeline import ingest
    from medspark.session import build_session
    from medspark.volumes.steps import volumes

    config = with_overrides(PipelineConfig(), warehouse=str(warehouse))
    config = dataclasses.replace(config, spark=SparkConfig(master="local[2]", log_level="ERROR"))
    config = demo_volumes_config(config)
    spark = build_session(config.spark, extra_conf={"spark.ui.enabled": "false"})
    out: dict[str, Any] = {"runs": []}
    try:
        t0 = time.perf_counter()
        ingest(spark, [str(folder)], config)
        out["seconds_ingest"] = round(time.perf_counter() - t0, 1)
        for n in range(repeat):
            with _WorkerPeak() as peak:
                t0 = time.perf_counter()
                result = volumes(spark, config, f"bench-volumes-{n}")
                seconds = time.perf_counter() - t0
            segs = spark.read.format("delta").load(config.table_path("series_segments"))
            out["runs"].append(
                {
                    "seconds": round(seconds, 2),
                    "series_per_second": round(result.segmented / seconds, 4),
                    "segmented": result.segmented,
                    "errors": result.errors_by_class,
                    "worker_peak_rss_mib": round(peak.peak / 2**20),
                    "worker_rss_after_series_mib": round((result.peak_rss_bytes or 0) / 2**20),
                    "volumes_ml": {r["label"]: round(r["volume_ml"], 3) for r in segs.collect()},
                }
            )
    finally:
        spark.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plain", help="(internal) run the plain script on this folder")
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args(argv)
    if args.plain:
        print(json.dumps(plain(Path(args.plain))))
        return 0
    os.environ.setdefault("MEDSPARK_DEID_SECRET", "medspark-bench-secret")
    results: dict[str, Any] = {"slices": args.slices, "size": args.size, "spacing_mm": SPACING}
    results["uptime_before"] = Path("/proc/loadavg").read_text().strip()
    with tempfile.TemporaryDirectory(prefix="medspark-bench-volumes-") as tmp:
        folder = Path(tmp) / "series"
        results["input"] = write_input(folder, args.slices, args.size)
        print(f"input: {results['input']}", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, __file__, "--plain", str(folder)],
            capture_output=True,
            text=True,
            check=True,
        )
        results["plain"] = json.loads(proc.stdout.strip().splitlines()[-1])
        results["plain"]["seconds_process"] = round(time.perf_counter() - t0, 2)
        print(f"plain: {results['plain']}", flush=True)
        results["medspark"] = medspark_runs(folder, Path(tmp) / "warehouse", args.repeat)
        print(f"medspark: {results['medspark']}", flush=True)
    results["uptime_after"] = Path("/proc/loadavg").read_text().strip()
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
