"""``medspark demo``: a sample archive from pydicom's bundled real files, run through the flow.

pydicom ships real DICOM files (CT, MR, US, NM, RT, SR, ECG waveform; many transfer syntaxes)
and deliberately broken ones. The demo lays them out the way hospital exports arrive: some loose
(with and without ``.dcm``), some in a zip, some in a tar.gz, plus a text file and an empty
file, then ingests everything and prints what landed where.

The files are read from pydicom's package folder directly: ``get_testdata_file`` may try the
network for files that are not bundled.
"""

from __future__ import annotations

import shutil
import tarfile
import zipfile
from pathlib import Path
from typing import Any

from pyspark.sql import functions as F

from medspark.config import PipelineConfig


def pydicom_test_files() -> Path:
    """The folder of real DICOM files bundled with pydicom."""
    import pydicom

    return Path(pydicom.__file__).parent / "data" / "test_files"


def build_sample_input(target: Path) -> list[Path]:
    """Write the sample inputs under ``target`` (replacing it) and return the paths to ingest."""
    src = pydicom_test_files()
    dicoms = sorted(p for p in src.glob("*.dcm") if p.is_file())
    if target.exists():
        shutil.rmtree(target)
    loose = target / "loose"
    loose.mkdir(parents=True)
    # Split deterministically: every third file loose, the rest between a zip and a tar.gz.
    loose_files = dicoms[0::3]
    zip_files = dicoms[1::3]
    tar_files = dicoms[2::3]
    for i, path in enumerate(loose_files):
        name = path.stem if i % 2 else path.name  # half of them without an extension
        shutil.copyfile(path, loose / name)
    shutil.copyfile(src / "README.txt", loose / "notes.txt")  # not DICOM
    (loose / "empty.dcm").write_bytes(b"")
    zip_path = target / "series_export.zip"
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in zip_files:
            zf.write(path, f"export/{path.name}")
    tar_path = target / "pacs_export.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tf:
        for path in tar_files:
            tf.add(path, arcname=f"study/{path.name}")
    return [loose, zip_path, tar_path]


def run_demo(spark: Any, config: PipelineConfig, workdir: Path) -> None:
    """Build the sample input under ``workdir/input``, ingest it, and print the outcome."""
    from medspark.pipeline import ingest, preprocess

    inputs = build_sample_input(workdir / "input")
    print(f"sample input: {workdir / 'input'} (from {pydicom_test_files()})")
    result = ingest(spark, [str(p) for p in inputs], config)
    print(result.summary())
    scans = spark.read.format("delta").load(config.table_path("scans"))
    print("\nscans by modality:")
    scans.groupBy("modality").agg(F.count("*").alias("instances")).orderBy("modality").show(
        50, truncate=False
    )
    print("a few scans:")
    scans.select(
        "modality", "rows", "columns", "number_of_frames", "transfer_syntax_uid", "archive_member"
    ).orderBy("archive_member").show(8, truncate=40)
    errors = spark.read.format("delta").load(config.table_path("ingest_errors"))
    print("ingest_errors:")
    errors.select("error_class", "message").orderBy("error_class").show(50, truncate=110)

    print("preprocessing frames (decode, window, OpenCV chain, mask statistics):")
    pre = preprocess(spark, config)
    print(pre.summary())
    images = spark.read.format("delta").load(config.table_path("images"))
    images.select(
        "frame", "tensor_shape", "window", "mask_area_px", "mask_area_mm2", "mask_components"
    ).orderBy(F.desc("mask_area_px")).show(8, truncate=False)
    pre_errors = spark.read.format("delta").load(config.table_path("preprocess_errors"))
    pre_errors.select("frame", "error_class", "message").show(20, truncate=110)
    print(f"warehouse: {config.warehouse}")
