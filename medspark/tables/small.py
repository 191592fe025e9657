"""Small bookkeeping tables written from the driver with delta-rs, without a Spark job.

``job_runs``, ``stage_metrics`` and ``worker_metrics`` hold a few rows per run. Written
through Spark, each cost 1-5 s and one to three Spark jobs (a Delta append or MERGE plans and
runs like any other query); written with delta-rs (the ``deltalake`` package) from the driver
they cost milliseconds. Each of these tables is written by delta-rs only, and stays readable
by Spark, delta-rs and DuckDB: the schema is the declared one (:mod:`medspark.tables.schemas`),
converted to Arrow as Spark converts it (timestamps in UTC).

Runs have unique ids, so an append is all a run needs; delta-rs retries a commit that loses a
race with another writer's append (appends never conflict), so concurrent runs both land.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from medspark.tables.schemas import TABLES


def arrow_schema(table: str) -> Any:
    """The Arrow schema of a declared table, as Spark maps its types (UTC timestamps)."""
    from pyspark.sql.pandas.types import to_arrow_schema

    schema, _ = TABLES[table]
    return to_arrow_schema(schema, timezone="UTC")


def append_rows(path: str, table: str, rows: Sequence[dict[str, Any]]) -> None:
    """Append ``rows`` (dicts by column name; missing columns null) to the table at ``path``.

    Creates the table with its declared schema if it does not exist, even for no rows, so a
    reader finds every bookkeeping table after the first run.
    """
    import pyarrow as pa
    from deltalake import write_deltalake

    schema = arrow_schema(table)
    data = pa.Table.from_pylist(
        [{name: row.get(name) for name in schema.names} for row in rows], schema=schema
    )
    write_deltalake(path, data, mode="append")
