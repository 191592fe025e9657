"""Idempotent Delta writers.

:func:`merge_into` creates a table with the schema from :mod:`medspark.tables.schemas` if it is
missing, then MERGEs on the table's key: a re-run on the same input updates rows in place and
adds none. Each MERGE is one atomic Delta commit, so a job that dies leaves the table as it was.
Key columns may be null (``archive_member`` of a loose file); they are compared null-safely.
"""

from __future__ import annotations

from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from medspark.tables.schemas import TABLES

TABLE_PROPERTIES = {
    # Readers other than Spark (delta-rs, DuckDB through delta-rs, polars) must be able to
    # read every table, so no feature beyond what they support is enabled here.
    "delta.appendOnly": "false",
}


def conform(df: DataFrame, table: str) -> DataFrame:
    """Select ``df``'s columns in the declared order and types of ``table``'s schema."""
    schema, _ = TABLES[table]
    return df.select([F.col(f.name).cast(f.dataType).alias(f.name) for f in schema.fields])


def ensure_table(spark: Any, path: str, table: str) -> Any:
    """Create the Delta table at ``path`` with its declared schema if it does not exist."""
    from delta.tables import DeltaTable

    schema, _ = TABLES[table]
    builder = DeltaTable.createIfNotExists(spark).location(path).addColumns(schema)
    for key, value in TABLE_PROPERTIES.items():
        builder = builder.property(key, value)
    builder.execute()
    return DeltaTable.forPath(spark, path)


def merge_into(spark: Any, df: DataFrame, path: str, table: str) -> dict[str, int]:
    """MERGE ``df`` into the Delta table at ``path`` on the table's key; returns Delta's metrics.

    Matching rows are updated (a re-run refreshes ``run_id``), others inserted. The returned
    dict holds Delta's own operation metrics for the commit (``numTargetRowsInserted``,
    ``numTargetRowsUpdated``, ...), read from the table history, not counted again.
    """
    _, keys = TABLES[table]
    target = ensure_table(spark, path, table)
    source = conform(df, table)
    condition = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in keys)
    (
        target.alias("t")
        .merge(source.alias("s"), condition)
        .whenMatchedUpdateAll()
        .whenNotMatchedInsertAll()
        .execute()
    )
    last = target.history(1).select("operation", "operationMetrics").collect()[0]
    metrics = last["operationMetrics"] or {}
    return {k: int(v) for k, v in metrics.items() if str(v).lstrip("-").isdigit()}
