"""The idempotent Delta writers: the counts they return are Delta's, and they match the table."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from medspark.tables.schemas import INGEST_ERRORS
from medspark.tables.writers import delete_matching, merge_into

pytestmark = pytest.mark.spark


def _errors(spark, rows: list[tuple[str, str | None, str]]):
    """``ingest_errors`` rows from (source_uri, archive_member, error_class)."""
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    data = [(uri, member, 1, None, cls, f"{uri}: {cls}", "run", now) for uri, member, cls in rows]
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
