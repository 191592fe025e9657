"""Whole-table comparisons for the tests: one helper instead of a sorted-tuples loop per test.

``assert_rows_equal(actual, expected, keys=...)`` takes Spark DataFrames, pandas DataFrames or
lists of rows (dicts or Spark Rows), pairs the rows on their key columns and fails naming the
keys that are missing or extra and, for a row that differs, the key, the column and both
values. ``approx`` names float columns (or arrays of floats) compared with a tolerance, for
model scores that differ by the float noise of batching. Like chispa's
``assert_df_equality``, but ordered by key rather than by position, and without a dependency.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from medspark.tables.schemas import BOOKKEEPING_COLUMNS

#: Columns that differ between two runs by design: which run wrote the row, and when.
RUN_COLUMNS = BOOKKEEPING_COLUMNS


def rows_of(table: Any, columns: Sequence[str] | None = None, drop: Iterable[str] = ()) -> list:
    """The rows of ``table`` as dicts of the chosen columns (all but ``drop`` by default)."""
    if hasattr(table, "toPandas") and hasattr(table, "collect"):  # a Spark DataFrame
        cols = list(columns or [c for c in table.columns if c not in set(drop)])
        return [r.asDict(recursive=True) for r in table.select(*cols).collect()]
    if hasattr(table, "to_dict") and hasattr(table, "columns"):  # a pandas DataFrame
        records = table.to_dict("records")
    else:
        records = [r.asDict(recursive=True) if hasattr(r, "asDict") else dict(r) for r in table]
    skip = set(drop)
    return [{c: r[c] for c in (columns or [c for c in r if c not in skip])} for r in records]


def _close(a: Any, b: Any, tol: float) -> bool:
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_close(x, y, tol) for x, y in zip(a, b, strict=True))
    if isinstance(a, float | int) and isinstance(b, float | int):
        return math.isclose(a, b, rel_tol=tol, abs_tol=tol)
    return a == b


def _by_key(rows: list[dict], keys: Sequence[str], side: str) -> dict[tuple, dict]:
    out: dict[tuple, dict] = {}
    for row in rows:
        key = tuple(row[k] for k in keys)
        assert key not in out, f"{side}: two rows with key {dict(zip(keys, key, strict=True))}"
        out[key] = row
    return out


def assert_rows_equal(
    actual: Any,
    expected: Any,
    keys: Sequence[str],
    *,
    columns: Sequence[str] | None = None,
    drop: Iterable[str] = (),
    approx: Iterable[str] = (),
    tol: float = 1e-5,
    what: str = "table",
    allow_empty: bool = False,
) -> None:
    """Fail unless ``actual`` and ``expected`` hold the same rows, paired on ``keys``.

    ``columns`` (default: all of ``expected``'s but ``drop``) are compared, and the two sides
    must have the same set. An empty ``expected`` fails unless ``allow_empty``: comparing two
    empty tables proves nothing.
    """
    drop = set(drop)
    exp = rows_of(expected, columns, drop)
    act = rows_of(actual, columns, drop)
    if not allow_empty:
        assert exp, f"{what}: expected no rows, so the comparison would prove nothing"
    if exp and act:
        assert set(exp[0]) == set(act[0]), f"{what}: columns {sorted(act[0])} != {sorted(exp[0])}"
    exp_by, act_by = _by_key(exp, keys, "expected"), _by_key(act, keys, "actual")
    missing = [k for k in exp_by if k not in act_by]
    extra = [k for k in act_by if k not in exp_by]
    assert not missing and not extra, (
        f"{what} ({', '.join(keys)}): {len(missing)} row(s) missing, e.g. {missing[:3]}; "
        f"{len(extra)} extra, e.g. {extra[:3]}"
    )
    close = set(approx)
    for key, want in exp_by.items():
        got = act_by[key]
        for col, value in want.items():
            same = _close(got[col], value, tol) if col in close else got[col] == value
            assert same, f"{what} row {key}, column {col}: {got[col]!r} != expected {value!r}"


def scans_row(path: Path) -> dict[str, Any]:
    """The ``scans`` row ingest would make of the loose file at ``path`` (before
    de-identification): the parsed header plus its location and SHA-256."""
    import hashlib

    from medspark.dicom.header import parse_header
    from medspark.sources.archives import to_uri

    data = path.read_bytes()
    row = parse_header(data, to_uri(path))
    row.update(
        source_uri=to_uri(path), archive_member=None, sha256=hashlib.sha256(data).hexdigest()
    )
    return row


def table_versions(paths: dict[str, Any]) -> dict[str, int]:
    """``{name: current Delta version}`` of the tables at ``paths`` (read with delta-rs: no
    Spark job). Equal before and after a run: the run committed nothing to them."""
    from deltalake import DeltaTable

    return {name: DeltaTable(str(path)).version() for name, path in paths.items()}
