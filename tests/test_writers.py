"""The idempotent Delta writers: the counts they return are Delta's, and they match the table."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest

from medspark.tables.schemas import INGEST_ERRORS
from medspark.tables.writers import delete_matching, merge_into

pytestmark = pytest.mark.spark


def _errors(spark, rows: list[tuple[str, str | None, str]]):
    """``ingest_errors`` rows from (source_uri, archive_member, error_class)."""
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    data = [
        (uri, member, 1, None, "plain", cls, f"{uri}: {cls}", "run", now)
        for uri, member, cls in rows
    ]
    return spark.createDataFrame(data, INGEST_ERRORS)


def test_first_load_counts_come_from_the_append_commit(spark, tmp_path):
    path = str(tmp_path / "ingest_errors")
    rows = [("file:///a.dcm", None, "truncated"), ("file:///b.zip", "x/1.dcm", "not_dicom")]

    assert merge_into(spark, _errors(spark, rows), path, "ingest_errors") == {}
    assert spark.read.format("delta").load(path).count() == 2

    path2 = str(tmp_path / "again")
    counts = merge_into(spark, _errors(spark, rows), path2, "ingest_errors", metrics=True)
    assert counts["numTargetRowsInserted"] == 2


def test_merge_counts_updates_inserts_and_deletes(spark, tmp_path):
    path = str(tmp_path / "ingest_errors")
    merge_into(spark, _errors(spark, [("file:///a.dcm", None, "truncated")]), path, "ingest_errors")

    # a.dcm again (null member: matched null-safely, so updated), plus one new member.
    again = _errors(
        spark, [("file:///a.dcm", None, "not_dicom"), ("file:///b.zip", "x/1.dcm", "truncated")]
    )
    counts = merge_into(spark, again, path, "ingest_errors")
    assert counts == {
        "numTargetRowsInserted": 1,
        "numTargetRowsUpdated": 1,
        "numTargetRowsDeleted": 0,
    }
    table = {
        (r["source_uri"], r["archive_member"]): r["error_class"]
        for r in spark.read.format("delta").load(path).collect()
    }
    assert table == {
        ("file:///a.dcm", None): "not_dicom",
        ("file:///b.zip", "x/1.dcm"): "truncated",
    }

    keys = _errors(spark, [("file:///a.dcm", None, "x"), ("file:///c.dcm", None, "x")])
    assert delete_matching(spark, keys, path, "ingest_errors") == 1
    left = spark.read.format("delta").load(path).select("source_uri").collect()
    assert [r["source_uri"] for r in left] == ["file:///b.zip"]
    assert delete_matching(spark, keys, str(tmp_path / "missing"), "ingest_errors") == 0


def test_a_table_another_writer_is_creating_is_a_race_not_a_failure(spark, tmp_path):
    """The state a writer sees while another creates the table: its folder and ``_delta_log``
    exist, no commit yet. Delta reads that as DELTA_TABLE_NOT_FOUND; the writers retry it (the
    concurrent-ingest test failed on ``scanner_utilization`` in about half of CI runs)."""
    from pyspark.errors import AnalysisException

    from medspark.tables.writers import lost_commit_race

    half = tmp_path / "scanner_utilization"
    (half / "_delta_log").mkdir(parents=True)
    with pytest.raises(AnalysisException) as caught:
        spark.read.format("delta").load(str(half)).count()
    assert "DELTA_TABLE_NOT_FOUND" in str(caught.value)
    assert lost_commit_race(caught.value)
    assert lost_commit_race(ValueError("unrelated")) is False


def test_three_writers_creating_the_same_tables_all_succeed(spark, tmp_path):
    """Three threads replace (first: create) each of three new tables at once; every write
    ends, and each table holds one writer's rows. Before the fix, all three blind first
    appends landed (3 rows, every time), and about 2 in 30 such tables failed a writer with
    DELTA_TABLE_NOT_FOUND (measured with this loop over 30 tables)."""
    import threading

    from medspark.tables.writers import replace_table

    rows = _errors(spark, [("file:///a.dcm", None, "truncated")])
    failures: list[str] = []

    def write(path: str) -> None:
        try:
            replace_table(spark, rows, path, "ingest_errors")
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            failures.append(f"{type(exc).__name__}: {str(exc)[:300]}")

    for i in range(3):
        path = str(tmp_path / f"t{i}")
        threads = [threading.Thread(target=write, args=(path,)) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert spark.read.format("delta").load(path).count() == 1
    assert not failures, failures


@pytest.mark.parametrize("second", ["ingest", "ingest_stream"])
def test_two_concurrent_ingests_into_a_new_warehouse_both_land(spark, tmp_path, test_files, second):
    """Two ingests of different inputs at once, into a warehouse that does not exist yet: each
    loser of a commit race retries, and every item of both ends in scans or ingest_errors. The
    second writer is a batch ``ingest`` or a streaming ``ingest-stream`` over a landing folder
    (its micro-batches are ``ingest`` calls too, racing the batch run's commits)."""
    import dataclasses
    import shutil
    import threading

    import pydicom

    from medspark.config import PipelineConfig, with_overrides
    from medspark.pipeline import ingest
    from medspark.stream import StreamResult, ingest_stream

    # Files with SOP Instance UIDs of their own, and one file in both inputs: the same UID
    # ingested by both at once is one scan and one duplicate_copy error, whichever run wins.
    seen: set[str] = set()
    names = []
    for path in sorted(test_files.glob("*.dcm")):
        try:
            uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        except Exception:  # noqa: BLE001 - broken files are fine here: they are errors
            uid = path.name
        if uid not in seen and len(names) < 25:
            seen.add(uid)
            names.append(path.name)
    shared = names.pop()  # SC_rgb_jpeg_dcmtk.dcm, a valid instance
    inputs = [tmp_path / "a", tmp_path / "b"]
    for i, folder in enumerate(inputs):
        folder.mkdir()
        for name in [*names[i::2], shared]:
            shutil.copyfile(test_files / name, folder / name)
    base = with_overrides(PipelineConfig(), warehouse=str(tmp_path / "wh"))
    # Small micro-batches: the stream commits several times while the batch run writes.
    config = dataclasses.replace(
        base, ingest=dataclasses.replace(base.ingest, stream_max_files_per_trigger=4)
    )
    results: dict[int, Any] = {}
    failures: list[BaseException] = []

    def run(i: int) -> None:
        try:
            if i == 1 and second == "ingest_stream":
                streamed = ingest_stream(spark, str(inputs[i]), config)
                assert len(streamed.batches) > 1, streamed.summary()
                results[i] = streamed
            else:
                results[i] = ingest(spark, [str(inputs[i])], config)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, [f"{type(e).__name__}: {str(e)[:2000]}" for e in failures]
    scans = spark.read.format("delta").load(config.table_path("scans"))
    errors = spark.read.format("delta").load(config.table_path("ingest_errors"))
    from urllib.parse import unquote

    from medspark.pipeline import with_paths

    located = with_paths(
        spark,
        config,
        scans.select("source_uri", "archive_member").union(
            errors.select("source_uri", "archive_member")
        ),
    )
    got = {unquote("/".join(r.source_uri.rsplit("/", 2)[-2:])) for r in located.collect()}
    assert got == {f"{f.name}/{n}" for i, f in enumerate(inputs) for n in [*names[i::2], shared]}
    assert sum(r.items for r in results.values()) == len(names) + 2
    assert scans.count() + errors.count() == len(names) + 2  # each item exactly once
    copies = errors.where("error_class = 'duplicate_copy'").collect()
    assert len(copies) == 1, copies  # the shared file: one scan, one duplicate
    # A stream's own counts are its micro-batches' ingest results.
    parts = []
    for result in results.values():
        streamed = isinstance(result, StreamResult)
        parts += [b.ingested for b in result.batches] if streamed else [result]
    assert sum(p.errors_by_class.get("duplicate_copy", 0) for p in parts) == 1
