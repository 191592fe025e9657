"""Ingestion through Spark on pydicom's real files: no loss, idempotence, typed values."""

from __future__ import annotations

import datetime
import os
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest
from deltalake import DeltaTable
from helpers import table_versions
from pyspark.sql import functions as F

from medspark.config import PipelineConfig, with_overrides
from medspark.pipeline import ingest
from medspark.sources.archives import to_uri

pytestmark = pytest.mark.spark


def _location(uri: str, member: str | None) -> tuple[str, str | None]:
    """The location keys the analyst tables hold for a path (deid.keep_paths off)."""
    from medspark.dicom.deid import pseudonymizer_from_config

    return pseudonymizer_from_config(PipelineConfig().deid).location_keys(uri, member)


#: Export folders are often named after the patient: this one must reach no analyst table.
PATIENT_FOLDER = "DOE^JOHN_12345"


@pytest.fixture(scope="module")
def layout(tmp_path_factory, test_files):
    """Inputs as a hospital export looks, and the item locations expected from them."""
    root = tmp_path_factory.mktemp("input")
    dicoms = sorted(test_files.glob("*.dcm"))
    loose = root / PATIENT_FOLDER
    (loose / "nested").mkdir(parents=True)
    for p in dicoms[:20]:
        shutil.copyfile(p, loose / p.name)
    shutil.copyfile(test_files / "CT_small.dcm", loose / "nested" / "ct_no_extension")
    shutil.copyfile(test_files / "README.txt", loose / "notes.txt")
    (loose / "empty.dcm").write_bytes(b"")
    zpath = root / "series.zip"
    with zipfile.ZipFile(zpath, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for p in dicoms[20:50]:
            zf.write(p, f"export/{p.name}")
        zf.write(test_files / "CT_small.dcm", "export/copy_of_ct.dcm")  # same bytes again
        zf.writestr("export/readme.txt", "not a scan")
    tpath = root / "pacs.tar.gz"
    with tarfile.open(tpath, "w:gz") as tf:
        for p in dicoms[50:]:
            tf.add(p, arcname=f"study/{p.name}")
    broken = root / "broken.zip"
    broken.write_bytes(b"PK\x03\x04" + os.urandom(64))

    paths: set[tuple[str, str | None]] = set()
    for dirpath, _, files in os.walk(loose):
        for f in files:
            if f and not Path(dirpath, f).name.endswith(".zip"):
                paths.add((to_uri(Path(dirpath, f)), None))
    with zipfile.ZipFile(zpath) as zf:
        paths |= {(to_uri(zpath), n) for n in zf.namelist()}
    with tarfile.open(tpath) as tf:
        paths |= {(to_uri(tpath), m.name) for m in tf.getmembers() if m.isfile()}
    paths.add((to_uri(broken), None))
    return {
        "sources": [str(loose), str(zpath), str(tpath), str(broken)],
        "paths": paths,
        "expected": {_location(*p) for p in paths},
    }


@pytest.fixture(scope="module")
def warehouse(spark, layout, tmp_path_factory):
    wh = tmp_path_factory.mktemp("warehouse")
    config = with_overrides(PipelineConfig(), warehouse=str(wh))
    first = ingest(spark, layout["sources"], config)
    versions = _versions(wh)
    second = ingest(spark, layout["sources"], config)
    from medspark.dicom.deid import pseudonymizer_from_config

    ct_sop = pseudonymizer_from_config(config.deid).uid(CT_SMALL_SOP)
    return {
        "path": wh,
        "config": config,
        "first": first,
        "second": second,
        "ct_sop": ct_sop,
        "versions": (versions, _versions(wh)),
    }


#: The data tables ingest writes (job_runs and the metrics tables record every run).
INGEST_TABLES = ("scans", "ingest_errors", "series", "scanner_utilization")


def _versions(wh) -> dict[str, int]:
    return table_versions({name: wh / name for name in INGEST_TABLES})


def _table(spark, wh, name):
    return spark.read.format("delta").load(str(wh["path"] / name))


def test_every_input_item_lands_in_exactly_one_table(spark, layout, warehouse):
    scans = _table(spark, warehouse, "scans").select("source_uri", "archive_member").collect()
    errors = (
        _table(spark, warehouse, "ingest_errors").select("source_uri", "archive_member").collect()
    )
    locations = [(r[0], r[1]) for r in scans + errors]
    assert len(locations) == len(set(locations)), "an item landed twice"
    assert set(locations) == layout["expected"]
    assert warehouse["first"].items == len(layout["expected"])
    # Where each key points: in restricted_locations, for data engineers.
    config = warehouse["config"]
    restricted = spark.read.format("delta").load(config.table_path("restricted_locations"))
    mapped = {
        (r.source_uri, r.archive_member): (r.original_source_uri, r.original_archive_member)
        for r in restricted.collect()
    }
    assert restricted.count() == len(mapped) == len(layout["paths"])
    assert set(mapped.values()) == layout["paths"]
    assert all(_location(*path) == key for key, path in mapped.items())


def test_a_rerun_of_the_same_input_commits_nothing(spark, warehouse):
    first, second = warehouse["first"], warehouse["second"]
    assert second.items == first.items
    assert second.scans_inserted == 0
    assert second.scans_updated == 0  # every row was there, equal but for bookkeeping
    assert second.errors_by_class == first.errors_by_class
    assert _table(spark, warehouse, "scans").count() == first.scans_inserted
    assert _table(spark, warehouse, "ingest_errors").count() == first.errors
    # No data table got a new version, and each row keeps the id of the run that wrote it.
    before, after = warehouse["versions"]
    assert after == before
    for table in ("scans", "ingest_errors", "series"):
        ids = {r[0] for r in _table(spark, warehouse, table).select("run_id").distinct().collect()}
        assert ids == {first.run_id}, table


CT_SMALL_SOP = "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"


def test_ct_small_typed_columns(spark, layout, warehouse, pseudo):
    rows = (
        _table(spark, warehouse, "scans")
        .where(F.col("sop_instance_uid") == pseudo.uid(CT_SMALL_SOP))
        .collect()
    )
    assert len(rows) == 1
    ct = rows[0]
    assert ct.modality == "CT" and (ct.rows, ct.columns) == (128, 128)
    assert ct.pixel_spacing == pytest.approx([0.661468, 0.661468])
    assert ct.slice_thickness == pytest.approx(5.0)
    # Study Date (0008,0020) 2004-01-19, shifted back by the patient's secret offset.
    shift = pseudo.date_shift_days(ct.patient_id)
    assert str(ct.study_date) == str(datetime.date(2004, 1, 19) + datetime.timedelta(days=shift))
    assert ct.patient_id != "1CT1" and ct.institution_name is None
    assert ct.has_pixels is True
    assert (
        len(ct.sha256) == 64
        and ct.size == (Path(layout["sources"][0]) / "CT_small.dcm").stat().st_size
    )
    # Deterministic choice among the three copies: the smallest location key (source_uri, then
    # archive_member, loose file first).
    loose = Path(layout["sources"][0])
    copies = [
        _location(to_uri(loose / "CT_small.dcm"), None),
        _location(to_uri(loose / "nested" / "ct_no_extension"), None),
        _location(to_uri(Path(layout["sources"][1])), "export/copy_of_ct.dcm"),
    ]
    assert (ct.source_uri, ct.archive_member) == min(copies, key=lambda k: (k[0], k[1] or ""))


def _file_names(spark, warehouse) -> dict[tuple[str, str | None], str]:
    """Location key -> the file name it stands for (from restricted_locations)."""
    table = warehouse["config"].table_path("restricted_locations")
    return {
        (r.source_uri, r.archive_member): (
            r.original_archive_member or r.original_source_uri
        ).rsplit("/", 1)[-1]
        for r in spark.read.format("delta").load(table).collect()
    }


def test_error_classes_of_broken_inputs(spark, layout, warehouse):
    rows = _table(spark, warehouse, "ingest_errors").collect()
    names = _file_names(spark, warehouse)
    by_name = {names[(r.source_uri, r.archive_member)]: (r.error_class, r.message) for r in rows}
    assert by_name["MR_truncated.dcm"][0] == "truncated"
    assert by_name["rtplan_truncated.dcm"][0] == "truncated"
    assert by_name["notes.txt"][0] == "not_dicom"
    assert by_name["readme.txt"][0] == "not_dicom"
    assert by_name["empty.dcm"][0] == "empty_file"
    assert by_name["broken.zip"][0] == "broken_archive"
    assert by_name["meta_missing_tsyntax.dcm"][0] == "missing_sop_instance_uid"
    (kept,) = (
        _table(spark, warehouse, "scans")
        .where(F.col("sop_instance_uid") == warehouse["ct_sop"])
        .collect()
    )
    kept_location = kept.source_uri + (f"!{kept.archive_member}" if kept.archive_member else "")
    duplicates = [
        by_name[n] for n in ("copy_of_ct.dcm", "ct_no_extension", "CT_small.dcm") if n in by_name
    ]
    assert len(duplicates) == 2  # three copies, one kept
    for cls, msg in duplicates:
        assert cls == "duplicate_copy" and f"{kept_location} (kept)" in msg
    # Every message names the item it is about.
    for r in rows:
        assert (r.archive_member or r.source_uri) in r.message, r


def test_same_uid_different_content_is_duplicate_sop_instance(spark, warehouse):
    dup = (
        _table(spark, warehouse, "ingest_errors")
        .where("error_class = 'duplicate_sop_instance'")
        .collect()
    )
    assert dup, "pydicom's MR_small variants share one SOP Instance UID with different bytes"
    for row in dup:
        assert "already taken by different content in loc-" in row.message


def test_non_image_instances_are_scans_without_pixels(spark, warehouse):
    rows = {
        r.modality: r.has_pixels
        for r in _table(spark, warehouse, "scans")
        .where("modality in ('RTPLAN','SR','ECG')")
        .collect()
    }
    assert rows and not any(rows.values())


def test_delta_rs_reads_the_same_tables(spark, warehouse):
    for name in ("scans", "ingest_errors"):
        path = str(warehouse["path"] / name)
        arrow = DeltaTable(path).to_pyarrow_table()
        assert arrow.num_rows == _table(spark, warehouse, name).count()
    scans = DeltaTable(str(warehouse["path"] / "scans")).to_pyarrow_table()
    assert "acquisition_datetime" in scans.column_names


def test_second_source_with_same_uid_is_rejected_against_existing_table(
    spark, tmp_path, test_files
):
    config = with_overrides(PipelineConfig(), warehouse=str(tmp_path / "wh"))
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    shutil.copyfile(test_files / "MR_small.dcm", a / "mr.dcm")
    shutil.copyfile(test_files / "MR_small_implicit.dcm", b / "mr.dcm")  # same UID, other bytes
    ingest(spark, [str(b)], config)
    result = ingest(spark, [str(a)], config)  # a sorts first, but b is already in the table
    assert result.errors_by_class == {"duplicate_sop_instance": 1}
    kept = spark.read.format("delta").load(config.table_path("scans")).collect()
    assert [r.source_uri for r in kept] == [_location(to_uri(b / "mr.dcm"), None)[0]]


def test_a_repaired_file_leaves_ingest_errors(spark, tmp_path, test_files):
    """A truncated copy fails; the same path holding the whole file later is a scan, and only
    a scan: its old error row goes."""
    config = with_overrides(PipelineConfig(), warehouse=str(tmp_path / "wh"))
    src = tmp_path / "in"
    src.mkdir()
    data = (test_files / "CT_small.dcm").read_bytes()
    (src / "ct.dcm").write_bytes(data[: len(data) // 2])
    shutil.copyfile(test_files / "README.txt", src / "notes.txt")
    first = ingest(spark, [str(src)], config)
    assert first.errors == 2 and first.scans == 0
    (src / "ct.dcm").write_bytes(data)
    second = ingest(spark, [str(src)], config)
    assert second.scans == 1 and second.errors_cleared == 1
    errors = spark.read.format("delta").load(config.table_path("ingest_errors")).collect()
    assert [(r.source_uri, r.error_class) for r in errors] == [
        (_location(to_uri(src / "notes.txt"), None)[0], "not_dicom")
    ]
    scans = spark.read.format("delta").load(config.table_path("scans")).collect()
    assert [r.source_uri for r in scans] == [_location(to_uri(src / "ct.dcm"), None)[0]]


IDENTIFYING = (
    "PatientName",
    "PatientID",
    "OtherPatientIDs",
    "PatientBirthDate",
    "PatientAddress",
    "InstitutionName",
    "InstitutionAddress",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
    "AccessionNumber",
    "StudyID",
    "DeviceSerialNumber",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "FrameOfReferenceUID",
)


def _identifying_values(test_files) -> set[str]:
    import pydicom

    values: set[str] = set()
    kept: set[str] = set()
    for path in test_files.glob("*.dcm"):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        except Exception:
            continue
        for keyword in IDENTIFYING:
            try:
                value = ds.get(keyword)
            except Exception:
                continue
            for v in value if isinstance(value, list | pydicom.multival.MultiValue) else [value]:
                text = str(v or "").strip()
                if len(text) >= 6 and not text.startswith("1.2.840.10008."):
                    values.add(text)
        kept.update(
            str(ds.get(k) or "").strip()
            for k in ("Manufacturer", "ManufacturerModelName", "StationName")
        )
    # Device identity is kept on purpose (option "Retain Device Identity"): a value found in
    # some file's manufacturer, model or station (e.g. "TOSHIBA") is not a leak.
    return {v for v in values if not any(v in k for k in kept)}


def test_no_identifying_value_in_any_analyst_table(spark, warehouse, test_files):
    originals = _identifying_values(test_files) | {PATIENT_FOLDER, "DOE^JOHN", "pacs.tar.gz"}
    assert len(originals) > 50  # names, IDs, institutions and UIDs of pydicom's real files
    for name in ("scans", "ingest_errors"):
        for row in _table(spark, warehouse, name).collect():
            for column, value in row.asDict().items():
                if not isinstance(value, str):
                    continue
                leaked = [o for o in originals if o in value]
                assert not leaked, (name, column, leaked[:3])
