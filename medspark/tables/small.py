"""Small bookkeeping tables written from the driver with delta-rs, without a Spark job.

``job_runs``, ``stage_metrics`` and ``worker_metrics`` hold a few rows per run. Written
through Spark, each cost 1-5 s and one to three Spark jobs (a Delta append or MERGE plans and
runs like any other query); written with delta-rs (the ``deltalake`` package) from the driver
they cost milliseconds. Each of these tables is written by delta-rs only, and stays readable
by Spark, delta-rs and DuckDB: the schema is the declared one (:mod:`medspark.tables.schemas`),
converted to Arrow as Spark converts it (timestamps in UTC).

Runs have unique ids, so an append is all most rows need; delta-rs retries a commit that loses
a race with another writer's append (appends never conflict), so concurrent runs both land.
``job_runs`` rows are written twice (``running`` at start, the outcome at the end):
:func:`upsert_row` replaces the row by its key and retries a commit that lost a race.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from medspark.tables.schemas import TABLES


def arrow_schema(table: str) -> Any:
    """The Arrow schema of a declared table, as Spark maps its types (UTC timestamps)."""
    from pyspark.sql.pandas.types import to_arrow_schema

    schema = TABLES[table].schema
    return to_arrow_schema(schema, timezone="UTC")


def _as_arrow(table: str, rows: Sequence[dict[str, Any]]) -> Any:
    import pyarrow as pa

    schema = arrow_schema(table)
    return pa.Table.from_pylist(
        [{name: row.get(name) for name in schema.names} for row in rows], schema=schema
    )


def ensure_schema(path: str, table: str) -> bool:
    """Bring a table written by an earlier release to the declared schema; True if it did.

    Columns added since, or made nullable since (``job_runs.ended_at`` became nullable when
    runs started to be recorded as ``running``), cannot be appended to as they are: the table
    is rewritten once with the declared schema, every row kept (a new table version; the old
    one stays readable by time travel). These tables hold a few rows per run.
    """
    from deltalake import DeltaTable, write_deltalake

    if not DeltaTable.is_deltatable(path):
        return False
    declared = arrow_schema(table)
    current = DeltaTable(path).schema().to_arrow()
    fields = {f.name: f for f in current}
    if all(f.name in fields and (fields[f.name].nullable or not f.nullable) for f in declared):
        return False
    rows = DeltaTable(path).to_pyarrow_table().to_pylist()
    write_deltalake(path, _as_arrow(table, rows), mode="overwrite", schema_mode="overwrite")
    return True


def upsert_row(path: str, table: str, row: dict[str, Any], attempts: int = 6) -> None:
    """Insert ``row``, or replace the row with its key (:func:`upsert_rows` of one row)."""
    upsert_rows(path, table, [row], attempts)


def upsert_rows(path: str, table: str, rows: Sequence[dict[str, Any]], attempts: int = 6) -> None:
    """Insert ``rows``, or replace the rows with their keys (the table's declared key
    columns), in one commit.

    A MERGE that loses a commit race with another run's write is retried (bounded, with
    backoff): runs have distinct keys, so the retry never undoes anyone's row.
    """
    import time

    from deltalake import DeltaTable
    from deltalake.exceptions import CommitFailedError

    keys = TABLES[table].key
    predicate = " AND ".join(f"t.{k} = s.{k}" for k in keys)
    create_if_missing(path, table)
    for attempt in range(attempts):
        try:
            (
                DeltaTable(path)
                .merge(_as_arrow(table, rows), predicate, source_alias="s", target_alias="t")
                .when_matched_update_all()
                .when_not_matched_insert_all()
                .execute()
            )
            return
        except CommitFailedError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.05 * 2**attempt)


def create_if_missing(path: str, table: str) -> None:
    """Create the table, empty, with its declared schema and properties
    (:func:`medspark.tables.writers.table_properties`: no statistics of string columns)."""
    from deltalake import DeltaTable, write_deltalake

    from medspark.tables.writers import table_properties

    if DeltaTable.is_deltatable(path):
        return
    try:
        write_deltalake(
            path, _as_arrow(table, []), mode="append", configuration=table_properties(table)
        )
    except Exception:  # noqa: BLE001 - a concurrent writer created it first
        if not DeltaTable.is_deltatable(path):
            raise


def delete_keys(path: str, table: str, keys: Sequence[dict[str, Any]], attempts: int = 6) -> int:
    """Delete the rows with these keys (dicts of the table's key columns); how many went.

    A MERGE with the keys as its source: the commit records the join condition only, never a
    key's value (a delete predicate would keep the values in the log).
    """
    import time

    import pyarrow as pa
    from deltalake import DeltaTable
    from deltalake.exceptions import CommitFailedError

    names = TABLES[table].key
    if not keys:
        return 0
    schema = arrow_schema(table)
    source = pa.Table.from_pylist(
        [{k: row[k] for k in names} for row in keys],
        schema=pa.schema([schema.field(k) for k in names]),
    )
    predicate = " AND ".join(f"t.{k} = s.{k}" for k in names)
    for attempt in range(attempts):
        try:
            metrics = (
                DeltaTable(path)
                .merge(source, predicate, source_alias="s", target_alias="t")
                .when_matched_delete()
                .execute()
            )
            return int(metrics.get("num_target_rows_deleted", 0))
        except CommitFailedError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.05 * 2**attempt)
    return 0


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def read_rows(
    path: str, columns: Sequence[str], where_in: dict[str, Sequence[str]] | None = None
) -> Any:
    """The ``columns`` of the Delta table at ``path`` as a pyarrow Table, only the rows whose
    column is one of the given values (``where_in``: ORed; None or empty: every row).

    Read by delta-rs's own query engine (DataFusion, in Rust). Not through
    ``DeltaTable.to_pyarrow_dataset``: that dataset's Python file system can still be read
    by Arrow's threads while the interpreter exits, which aborts the process ("terminate
    called without an active exception"; seen on every ``medspark export``).
    """
    import pyarrow as pa
    from deltalake import DeltaTable, QueryBuilder

    names = ", ".join(f'"{c}"' for c in columns)
    conditions = [
        f'"{column}" IN ({", ".join(_literal(v) for v in values)})'
        for column, values in (where_in or {}).items()
        if values
    ]
    where = f" WHERE {' OR '.join(conditions)}" if conditions else ""
    reader = QueryBuilder().register("t", DeltaTable(path)).execute(f"SELECT {names} FROM t{where}")
    return pa.RecordBatchReader.from_stream(reader).read_all()


def append_rows(path: str, table: str, rows: Sequence[dict[str, Any]]) -> None:
    """Append ``rows`` (dicts by column name; missing columns null) to the table at ``path``.

    Creates the table with its declared schema if it does not exist, even for no rows, so a
    reader finds every bookkeeping table after the first run.
    """
    from deltalake import write_deltalake

    write_deltalake(path, _as_arrow(table, rows), mode="append")
