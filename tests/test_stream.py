"""Streaming ingest over a landing directory: files dropped in two rounds, each taken once."""

from __future__ import annotations

import dataclasses
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest
from helpers import assert_rows_equal

from medspark.config import PipelineConfig, with_overrides
from medspark.errors import MedsparkError
from medspark.pipeline import ingest
from medspark.sources.archives import to_uri
from medspark.stream import default_checkpoint, ingest_stream, uri_to_path

pytestmark = pytest.mark.spark


def _locations(spark, warehouse: Path) -> list[tuple[str, str | None]]:
    rows = []
    for table in ("scans", "ingest_errors"):
        df = spark.read.format("delta").load(str(warehouse / table))
        rows += [(r[0], r[1]) for r in df.select("source_uri", "archive_member").collect()]
    return rows


@pytest.fixture(scope="module")
def rounds(spark, tmp_path_factory, test_files):
    """Two drops into one landing directory, each followed by a streaming run; then a third
    run with nothing new. Small micro-batches, so the first round takes two."""
    root = tmp_path_factory.mktemp("stream")
    landing, warehouse = root / "landing", root / "warehouse"
    (landing / "day1").mkdir(parents=True)
    dicoms = sorted(test_files.glob("*.dcm"))
    base = with_overrides(PipelineConfig(), warehouse=str(warehouse))
    config = dataclasses.replace(
        base, ingest=dataclasses.replace(base.ingest, stream_max_files_per_trigger=12)
    )

    # Round 1: 20 loose files, a zip of 10, a file that is not DICOM.
    for p in dicoms[:20]:
        shutil.copyfile(p, landing / "day1" / p.name)
    with zipfile.ZipFile(landing / "day1" / "series.zip", "w") as zf:
        for p in dicoms[20:30]:
            zf.write(p, f"export/{p.name}")
    shutil.copyfile(test_files / "README.txt", landing / "day1" / "notes.txt")
    first = ingest_stream(spark, str(landing), config)
    after_first = _locations(spark, warehouse)

    # Round 2: a tar.gz and loose files, plus a copy still in progress under a hidden name.
    (landing / "day2").mkdir()
    with tarfile.open(landing / "day2" / "pacs.tar.gz", "w:gz") as tf:
        for p in dicoms[30:45]:
            tf.add(p, arcname=f"study/{p.name}")
    for p in dicoms[45:]:
        shutil.copyfile(p, landing / "day2" / p.name)
    shutil.copyfile(dicoms[0], landing / "day2" / ".copying.part")
    second = ingest_stream(spark, str(landing), config)
    third = ingest_stream(spark, str(landing), config)
    return {
        "landing": landing,
        "warehouse": warehouse,
        "config": config,
        "dicoms": dicoms,
        "first": first,
        "second": second,
        "third": third,
        "after_first": after_first,
    }


def test_first_round_takes_every_file_once_in_small_batches(rounds):
    first = rounds["first"]
    assert first.files == 22  # 20 loose + zip + notes.txt
    assert [b.files for b in first.batches] == [12, 10]
    assert first.items == 20 + 10 + 1
    locations = rounds["after_first"]
    assert len(locations) == len(set(locations)) == 31
    by_class = [b.ingested.errors_by_class for b in first.batches]
    assert sum(c.get("not_dicom", 0) for c in by_class) == 1  # notes.txt


def test_second_round_takes_only_the_new_files(rounds, spark):
    second, landing = rounds["second"], rounds["landing"]
    assert second.files == 1 + len(rounds["dicoms"][45:])  # the hidden .part is not taken
    assert second.items == 15 + len(rounds["dicoms"][45:])
    locations = _locations(spark, rounds["warehouse"])
    assert len(locations) == len(set(locations)), "an item landed twice"
    assert set(rounds["after_first"]) <= set(locations)
    assert len(locations) == rounds["first"].items + second.items
    assert (to_uri(landing / "day2" / ".copying.part"), None) not in set(locations)
    # Rows of the first round were not ingested again: they keep their micro-batch run ids.
    scans = spark.read.format("delta").load(str(rounds["warehouse"] / "scans"))
    run_ids = {r[0] for r in scans.select("run_id").distinct().collect()}
    first_ids = {f"{rounds['first'].run_id}-b{b.batch_id}" for b in rounds["first"].batches}
    assert first_ids <= run_ids


def test_nothing_new_means_no_batch(rounds):
    assert rounds["third"].batches == []
    assert rounds["third"].checkpoint == rounds["first"].checkpoint


def test_streamed_tables_equal_a_batch_ingest_of_the_same_files(rounds, spark, tmp_path):
    """Same instances, same items accounted for, same error rows; only which copy of a
    duplicated SOP Instance UID is kept may differ (across micro-batches the first to arrive
    stays, in one batch the smallest location)."""
    config = with_overrides(PipelineConfig(), warehouse=str(tmp_path))
    landing = rounds["landing"]
    files = sorted(str(p) for p in landing.rglob("*") if p.is_file() and not p.name.startswith("."))
    ingest(spark, files, config)

    def table(wh: Path, name: str):
        return spark.read.format("delta").load(str(wh / name))

    streamed, batch = rounds["warehouse"], tmp_path
    sops = ["sop_instance_uid"]
    assert_rows_equal(table(streamed, "scans"), table(batch, "scans"), sops, columns=sops)
    assert _locations(spark, batch) and sorted(_locations(spark, batch)) == sorted(
        _locations(spark, streamed)
    )
    not_duplicates = "error_class NOT LIKE 'duplicate%'"
    assert_rows_equal(
        table(streamed, "ingest_errors").where(not_duplicates),
        table(batch, "ingest_errors").where(not_duplicates),
        keys=["source_uri", "archive_member"],
        columns=["source_uri", "archive_member", "error_class"],
        what="ingest_errors",
    )


def test_checkpoint_is_per_landing_directory(tmp_path):
    config = with_overrides(PipelineConfig(), warehouse=str(tmp_path / "wh"))
    a = default_checkpoint(config, str(tmp_path / "a"))
    b = default_checkpoint(config, str(tmp_path / "b"))
    assert a != b
    assert Path(a).parent == tmp_path / "wh" / "_checkpoints"


def test_uri_to_path_decodes_spark_file_uris():
    assert uri_to_path("file:/data/landing/a%20b.dcm") == "/data/landing/a b.dcm"
    assert uri_to_path("file:///data/x.zip") == "/data/x.zip"
    with pytest.raises(MedsparkError, match="s3a"):
        uri_to_path("s3a://bucket/x.dcm")


def test_a_remote_landing_directory_fails_before_spark_starts_a_query(tmp_path):
    config = with_overrides(PipelineConfig(), warehouse=str(tmp_path))
    with pytest.raises(MedsparkError, match="mount the landing directory"):
        ingest_stream(None, "s3a://bucket/landing", config)
