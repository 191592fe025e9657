"""Idempotent Delta writers.

:func:`merge_into` creates a table with the schema from :mod:`medspark.tables.schemas` if it is
missing, then MERGEs on the table's key: a re-run on the same input updates rows in place and
adds none. Each MERGE is one atomic Delta commit, so a job that dies leaves the table as it was.
Key columns may be null (``archive_member`` of a loose file); they are compared null-safely.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import stat
import time
from collections.abc import Callable, Sequence
from functools import reduce
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from medspark.errors import ConfigError
from medspark.failures import committed
from medspark.tables.schemas import BOOKKEEPING_COLUMNS, TABLES

LOG = logging.getLogger(__name__)

if TYPE_CHECKING:
    from medspark.config import PipelineConfig

T = TypeVar("T")

TABLE_PROPERTIES = {
    # Readers other than Spark (delta-rs, DuckDB through delta-rs, polars) must be able to
    # read every table, so no feature beyond what they support is enabled here.
    "delta.appendOnly": "false",
}


#: Column types whose minimum and maximum Delta may keep in its log (numbers, dates, times;
#: Delta keeps none for booleans).
_STATS_TYPES = ("tinyint", "smallint", "int", "bigint", "float", "double", "date")


def _has_stats_type(f: Any) -> bool:
    return f.dataType.simpleString() in _STATS_TYPES or f.dataType.typeName().startswith(
        "timestamp"
    )


def table_properties(table: str) -> dict[str, str]:
    """The Delta properties a table is created with: :data:`TABLE_PROPERTIES`, and column
    statistics (``delta.dataSkippingStatsColumns``) only for columns of numbers, dates and
    times. Delta keeps each data file's column minimum and maximum in the transaction log,
    for as long as the log is kept (30 days by default), whatever later deletes and vacuums
    do to the file: a string column's statistics would keep patient keys, original ids,
    UIDs and file paths there, out of reach of ``medspark forget --purge``. Strings (and
    binary, nested) columns get none; queries on them read more files. A restricted table
    keeps statistics of its bookkeeping columns only (when a row was written): its true
    dates (``restricted_acquisitions.acquired_at``) are identifying too."""
    spec = TABLES[table]
    kept = [
        f.name
        for f in spec.schema.fields
        if (f.name in BOOKKEEPING_COLUMNS if spec.restricted else _has_stats_type(f))
    ]
    if not kept:
        return {**TABLE_PROPERTIES, "delta.dataSkippingNumIndexedCols": "0"}
    return {**TABLE_PROPERTIES, "delta.dataSkippingStatsColumns": ",".join(kept)}


def ensure_restricted_root(config: PipelineConfig) -> Path:
    """Create the root of the ``restricted_*`` tables owner-only (mode 0700) if it is missing.

    The mode of the root is what keeps the tables below it private: Spark and Hadoop create
    the tables' own directories and files with the process umask, but nobody else can enter
    the root. An existing root that group or others can enter is used with one warning (a
    data engineer may have granted a group on purpose: docs/deid.md, "Restricted tables"). Tables
    that an earlier medspark wrote inside the analyst warehouse are refused with the command
    that moves them, so a run never starts a second, partial copy of them.
    """
    root = config.restricted_root()
    for name in ("restricted_acquisitions", "restricted_phi_map"):
        old = Path(config.table_path("scans")).parent / getattr(config.tables, name)
        new = Path(config.table_path(name))
        if old.exists() and not new.exists():
            raise ConfigError(
                "restricted_warehouse",
                str(root),
                f"the place of {old.name} (found inside the analyst warehouse, where earlier "
                f"versions wrote it; move it first: mkdir -m 700 -p {root} && mv {old} {new})",
            )
    if not root.exists():
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(root, 0o700)  # mkdir's mode is filtered by the umask
    elif stat.S_IMODE(root.stat().st_mode) & (stat.S_IRWXG | stat.S_IRWXO):
        LOG.warning(
            "warning: restricted tables root %s is open to group or others (mode %04o); "
            "restrict it with: chmod 700 %s",
            root,
            stat.S_IMODE(root.stat().st_mode),
            root,
        )
    return root


def conform(df: DataFrame, table: str) -> DataFrame:
    """Select ``df``'s columns in the declared order and types of ``table``'s schema."""
    schema = TABLES[table].schema
    return df.select([F.col(f.name).cast(f.dataType).alias(f.name) for f in schema.fields])


def ensure_table(spark: Any, path: str, table: str) -> Any:
    """Create the Delta table at ``path`` with its declared schema if it does not exist
    (retried when another writer creates it at the same moment)."""
    return with_retries(lambda: _ensure_table_once(spark, path, table), table)


#: Seconds after which a ``_delta_log`` folder without a commit is a leftover of a creation
#: that died, not one another writer is making right now (a creation commits within seconds).
STALE_EMPTY_LOG_S = 60.0


def _clear_stale_empty_log(path: str) -> None:
    """Remove the ``_delta_log`` folder of a table whose creation died before its first commit
    (a full disk, a kill): Delta calls such a folder a table that "doesn't exist" and will not
    create one there either, so every later write failed on it. Only a local folder, with no
    commit or checkpoint in its log and nothing beside the log, untouched for
    :data:`STALE_EMPTY_LOG_S` (a writer creating it now is left alone)."""
    if "://" in path:
        return
    folder = Path(path)
    log = folder / "_delta_log"
    if not log.is_dir() or any(p.name != "_delta_log" for p in folder.iterdir()):
        return
    names = [p.name for p in log.rglob("*")]
    if any(n.endswith(".json") or ".checkpoint" in n for n in names):
        return
    if time.time() - max([log.stat().st_mtime, *(p.stat().st_mtime for p in log.rglob("*"))]) > (
        STALE_EMPTY_LOG_S
    ):
        shutil.rmtree(log)


def _ensure_table_once(spark: Any, path: str, table: str) -> Any:
    """Create the Delta table at ``path`` with its declared schema if it does not exist."""
    from delta.tables import DeltaTable

    _clear_stale_empty_log(path)
    schema = TABLES[table].schema
    builder = DeltaTable.createIfNotExists(spark).location(path).addColumns(schema)
    for key, value in table_properties(table).items():
        builder = builder.property(key, value)
    builder.execute()
    return DeltaTable.forPath(spark, path)


def merge_into(
    spark: Any,
    df: DataFrame,
    path: str,
    table: str,
    metrics: bool = False,
    fresh: bool = False,
    only_changed: bool = True,
    update_if: str | None = None,
) -> dict[str, int]:
    """:func:`_merge_into_once`, retried when it loses a commit race (:func:`with_retries`).

    A retry asks Delta again whether the table exists and has rows, so an append planned on a
    fresh table becomes a MERGE once another writer has filled it: the result is the same as
    if the two writers had run one after the other.
    """
    counts = _retried_fresh_first(
        lambda first: _merge_into_once(
            spark, df, path, table, metrics, first, only_changed, update_if
        ),
        fresh,
        table,
    )
    committed(table)
    return counts


def _merge_into_once(
    spark: Any,
    df: DataFrame,
    path: str,
    table: str,
    metrics: bool = False,
    fresh: bool = False,
    only_changed: bool = True,
    update_if: str | None = None,
) -> dict[str, int]:
    """MERGE ``df`` into the Delta table at ``path`` on the table's key; returns Delta's metrics.

    Matching rows are updated (a re-run refreshes ``run_id``), others inserted. The returned
    dict holds Delta's own counts for the commit (``numTargetRowsInserted``,
    ``numTargetRowsUpdated``, ``numTargetRowsDeleted``), not counted again: a MERGE returns them
    itself.

    A table created by this call (a first load) gets a plain append instead: with nothing to
    match, a MERGE would insert every row anyway, after a join and a second pass over the
    source. The result is the same rows in one atomic commit. An append returns no counts, so
    with ``metrics=True`` its ``numOutputRows`` is read from the table history (one more Spark
    job, which callers that ignore the counts do not pay) and reported as
    ``numTargetRowsInserted``; otherwise the dict is empty. (Asking Delta whether an existing
    table has files costs more than the MERGE saves, so an existing empty table still gets a
    MERGE.) ``fresh`` says the caller created the table empty in this run
    (:func:`create_tables`): append at once, without asking Delta.

    ``only_changed`` (the default) merges only the rows of ``df`` that differ from the table's
    in some column other than :data:`~medspark.tables.schemas.BOOKKEEPING_COLUMNS`, and commits
    nothing when none does: a re-run on the same input then leaves the table at its version and
    each row with the ``run_id`` of the run that wrote it (Delta's MERGE commits, and rewrites
    every file a match touches, even when an update condition keeps all rows as they were).
    The comparison is one anti-join against the table, whose result is cached for the MERGE;
    a table that lacks a declared column (written by an older release) is merged whole, so
    that the MERGE adds the column.

    ``update_if`` (SQL over ``t``, the table, and ``s``, the new rows) limits which matched rows
    are updated; the others stay as they are (and are not counted as updated).
    """
    from delta.tables import DeltaTable

    keys = TABLES[table].key
    existed = not fresh and DeltaTable.isDeltaTable(spark, path)
    if not fresh:
        ensure_table(spark, path, table)
    source = conform(df, table)
    if not existed:
        source.write.format("delta").mode("append").save(path)
        if not metrics:
            return {}
        history = _last_commit_metrics(DeltaTable.forPath(spark, path))
        return {"numTargetRowsInserted": history.get("numOutputRows", 0), **history}
    if only_changed:
        changed = _changed_rows(spark, source, path, table)
        if changed is not None:
            changed = changed.persist(StorageLevel.MEMORY_AND_DISK)
            try:
                if changed.isEmpty():
                    return {name: 0 for name in _MERGE_RESULT}
                return _merge(spark, changed, path, keys, update_if)
            finally:
                changed.unpersist()
    return _merge(spark, source, path, keys, update_if)


def wrote_nothing(counts: dict[str, int]) -> bool:
    """Whether :func:`merge_into`'s counts say it committed nothing (every row was there).

    A first-load append returns no counts (``{}``): that wrote rows."""
    return bool(counts) and not any(counts.get(name, 0) for name in _MERGE_RESULT)


def _merge(
    spark: Any, source: DataFrame, path: str, keys: Sequence[str], update_if: str | None
) -> dict[str, int]:
    """One Delta MERGE of ``source`` into the table at ``path`` on ``keys``."""
    from delta.tables import DeltaTable

    condition = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in keys)
    result = (
        DeltaTable.forPath(spark, path)
        .alias("t")
        .merge(source.alias("s"), condition)
        # A column added to a table's schema in a later release is added to an existing table
        # by its next MERGE, instead of failing it (Delta's MERGE schema evolution).
        .withSchemaEvolution()
        .whenMatchedUpdateAll(condition=update_if)
        .whenNotMatchedInsertAll()
        .execute()
    )
    return _merge_counts(result)


def replace_table(spark: Any, df: DataFrame, path: str, table: str, fresh: bool = False) -> None:
    """:func:`_replace_table_once`, retried when it loses a commit race."""
    _retried_fresh_first(
        lambda first: _replace_table_once(spark, df, path, table, first), fresh, table
    )
    committed(table)


def _retried_fresh_first(write: Callable[[bool], T], fresh: bool, table: str) -> T:
    """``write(fresh)`` with :func:`with_retries`, ``fresh`` on the first attempt only: after a
    lost race another writer may have filled the table, so a retry asks Delta again."""
    attempts = iter([fresh])
    return with_retries(lambda: write(next(attempts, False)), table)


def _replace_table_once(
    spark: Any, df: DataFrame, path: str, table: str, fresh: bool = False
) -> None:
    """Replace every row of the Delta table at ``path`` with ``df``, in one atomic commit.

    For derived tables rebuilt whole on each run. A table that already holds these rows
    (bookkeeping columns aside: :func:`_same_rows`, two anti-joins of a small table) gets no
    commit, as in :func:`merge_into`. As in :func:`merge_into`, a table this call
    creates is filled with an append: an overwrite first reads the table's state to remove its
    files, which on a fresh table is all cost and no use (2.2-3.5 s against 0.9-1.6 s for the
    append, warm, measured on ``scanner_utilization``; see bench/README.md).
    """
    from delta.tables import DeltaTable

    existed = not fresh and DeltaTable.isDeltaTable(spark, path)
    if not fresh:
        ensure_table(spark, path, table)
    rows = conform(df, table)
    if existed and _same_rows(spark, rows, path, table):
        return  # a re-run on the same input: the table stays at its version
    rows.write.format("delta").mode("overwrite" if existed else "append").save(path)
    if not existed and _filled_more_than_once(spark, path):
        # Blind appends never conflict in Delta: two writers filling a new table at once both
        # land, and the table holds both sets. An overwrite reads the whole table, so it does
        # conflict with a concurrent fill, and retries (tests/test_writers.py).
        rows.write.format("delta").mode("overwrite").save(path)


def _filled_more_than_once(spark: Any, path: str) -> bool:
    """Whether the table's log holds more than one data write (append or overwrite): after a
    first fill, the sign that another writer filled it at the same time. Reads the log's
    commit list only (no Spark job)."""
    from delta.tables import DeltaTable

    history = DeltaTable.forPath(spark, path).history().select("operation").collect()
    return sum(r["operation"] == "WRITE" for r in history) > 1


def create_tables(spark: Any, tables: dict[str, str]) -> set[str]:
    """Create each missing table of ``{name: path}`` empty, with its declared schema; return
    the names created (which the caller may then fill with a plain append: ``fresh=True``).

    Creating a Delta table is a commit of its own, and a first load creates several: done in
    one thread each, and in ``run`` while the executors compute, they cost little wall time;
    done by each write just before its data, they cost seconds in a cold JVM (about 5 s for
    seven tables, measured on a 20-slice ``run``).
    """
    from delta.tables import DeltaTable

    missing = {n: p for n, p in tables.items() if not DeltaTable.isDeltaTable(spark, p)}
    concurrently(*[lambda n=n, p=p: ensure_table(spark, p, n) for n, p in missing.items()])
    return set(missing)


def delete_matching(
    spark: Any, keys: DataFrame, path: str, table: str, on: Sequence[str] | None = None
) -> int:
    """:func:`_delete_matching_once`, retried when it loses a commit race."""
    return with_retries(lambda: _delete_matching_once(spark, keys, path, table, on), table)


def _delete_matching_once(
    spark: Any, keys: DataFrame, path: str, table: str, on: Sequence[str] | None = None
) -> int:
    """Delete the rows of the Delta table at ``path`` whose key (or the columns ``on``)
    matches a row of ``keys``.

    Keys are compared null-safely, as in :func:`merge_into`. One atomic commit (a MERGE with
    only a delete clause); returns Delta's ``numTargetRowsDeleted``. No table, or no matching
    row, nothing to do and no commit.
    """
    from delta.tables import DeltaTable

    if not DeltaTable.isDeltaTable(spark, path):
        return 0
    key_columns = on or TABLES[table].key
    target = DeltaTable.forPath(spark, path)
    condition = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in key_columns)
    source = keys.select(*key_columns).distinct()
    if (
        target.toDF()
        .alias("t")
        .join(source.alias("s"), _same("t", "s", key_columns), "left_semi")
        .isEmpty()
    ):
        return 0  # nothing to delete: no commit (a MERGE that deletes nothing still commits)
    result = target.alias("t").merge(source.alias("s"), condition).whenMatchedDelete().execute()
    committed(table)
    return _merge_counts(result).get("numTargetRowsDeleted", 0)


#: Columns of the one-row DataFrame a Delta MERGE returns, by the history metric they equal.
_MERGE_RESULT = {
    "numTargetRowsInserted": "num_inserted_rows",
    "numTargetRowsUpdated": "num_updated_rows",
    "numTargetRowsDeleted": "num_deleted_rows",
}


def _stored_content(spark: Any, path: str, table: str) -> DataFrame | None:
    """The table's rows without :data:`~medspark.tables.schemas.BOOKKEEPING_COLUMNS`: what a
    re-run's rows are compared with. None when the table lacks one of the declared columns
    (written by an older release): then nothing compares equal."""
    schema = TABLES[table].schema
    compare = [n for n in schema.fieldNames() if n not in BOOKKEEPING_COLUMNS]
    current = spark.read.format("delta").load(path)
    if not set(compare) <= set(current.columns):
        return None
    return current.select(*compare)


def _changed_rows(spark: Any, source: DataFrame, path: str, table: str) -> DataFrame | None:
    """Rows of ``source`` with no identical row (bookkeeping columns aside) in the table;
    None when the table lacks one of the declared columns (every row is then to be merged)."""
    current = _stored_content(spark, path, table)
    if current is None:
        return None
    same = _same("s", "t", current.columns)
    return source.alias("s").join(current.alias("t"), same, "left_anti")


def _same(left: str, right: str, columns: Sequence[str]) -> list[Any]:
    """Null-safe equality of ``columns`` between the DataFrames aliased ``left`` and ``right``
    (by alias, so that two sides read from the same table do not compare a column with
    itself)."""
    return [F.col(f"{left}.`{c}`").eqNullSafe(F.col(f"{right}.`{c}`")) for c in columns]


def _same_rows(spark: Any, rows: DataFrame, path: str, table: str) -> bool:
    """Whether the table at ``path`` holds exactly ``rows`` (as a multiset, bookkeeping
    columns aside): then replacing it would change nothing."""
    old = _stored_content(spark, path, table)
    if old is None:
        return False
    new = rows.select(*old.columns)
    return new.exceptAll(old).isEmpty() and old.exceptAll(new).isEmpty()


def _merge_counts(result: DataFrame) -> dict[str, int]:
    """Delta's counts from the DataFrame a MERGE returns (a local row: no Spark job)."""
    row = result.collect()[0].asDict()
    return {name: int(row[column] or 0) for name, column in _MERGE_RESULT.items()}


def _last_commit_metrics(target: Any) -> dict[str, int]:
    last = target.history(1).select("operationMetrics").collect()[0]
    metrics = last["operationMetrics"] or {}
    return {k: int(v) for k, v in metrics.items() if str(v).lstrip("-").isdigit()}


#: Attempts of one write that loses commit races (Delta's optimistic concurrency), and the
#: first wait; each wait doubles, with up to 50 % random jitter so two losers do not collide
#: again in step.
RETRY_ATTEMPTS = 6
RETRY_FIRST_WAIT_S = 0.5

#: Delta's "another writer committed first" errors (their Python classes), and the error
#: classes of the same race seen as analysis errors (two writers creating one table).
#: ``DELTA_TABLE_NOT_FOUND`` is a table another writer is creating at this moment: its folder
#: and ``_delta_log`` exist, its first commit not yet (Delta's ``DeltaTableV2`` then says the
#: table "doesn't exist"). Every medspark write ensures its table first, so a retry finds the
#: commit, or creates the table itself. Seen in about 2 of 30 three-writer first loads of one
#: table (tests/test_writers.py); it made the concurrent-ingest test fail on
#: ``scanner_utilization`` in about half of the clean CI runs.
_RACE_ERROR_CLASSES = (
    "DELTA_TABLE_NOT_FOUND",
    "DELTA_CREATE_TABLE_WITH_NON_EMPTY_LOCATION",
    "DELTA_PROTOCOL_CHANGED",
    "DELTA_METADATA_CHANGED",
    "DELTA_CONCURRENT_APPEND",
    "DELTA_CONCURRENT_DELETE_READ",
    "DELTA_CONCURRENT_DELETE_DELETE",
    "DELTA_CONCURRENT_TRANSACTION",
    "DELTA_CONCURRENT_WRITE",
)


def lost_commit_race(exc: BaseException) -> bool:
    """Whether ``exc`` says another writer committed first: worth retrying, not a failure."""
    from delta.exceptions import DeltaConcurrentModificationException

    if isinstance(exc, DeltaConcurrentModificationException):
        return True
    get_class = getattr(exc, "getCondition", None) or getattr(exc, "getErrorClass", None)
    cls = get_class() if callable(get_class) else None
    text = str(exc)
    return cls in _RACE_ERROR_CLASSES or any(c in text[:300] for c in _RACE_ERROR_CLASSES)


def with_retries(fn: Callable[[], T], what: str) -> T:
    """``fn()``, run again (bounded, with backoff) while it loses a Delta commit race.

    Delta's optimistic concurrency lets two writers of one table both read a version and both
    try to commit the next; the loser gets an exception and is meant to retry. Every medspark
    write is idempotent (a MERGE on the table's key, a whole-table rebuild, or the creation of
    an empty table), so running it again against the new version gives the same rows as
    running it after the winner. Each retry is one line on stderr; after the last attempt the
    exception is raised.
    """
    wait = RETRY_FIRST_WAIT_S
    for attempt in range(1, RETRY_ATTEMPTS + 1):
        try:
            return fn()
        except Exception as exc:
            if attempt == RETRY_ATTEMPTS or not lost_commit_race(exc):
                raise
            pause = wait * (1 + random.random() / 2)
            name = type(exc).__name__
            LOG.warning(
                "the write to %s lost a commit race to another writer (%s); retry %d of %d in "
                "%.1f s",
                what,
                name,
                attempt + 1,
                RETRY_ATTEMPTS,
                pause,
            )
            time.sleep(pause)
            wait *= 2
    raise AssertionError("unreachable")


def concurrently(*steps: Callable[[], Any]) -> list[Any]:
    """Run independent writes from one driver thread each; results in order.

    A Delta write is mostly driver work on small tables (planning, listing, the commit), and a
    small table's write job barely uses the executors, so writes to different tables overlap
    well. Threads are ``InheritableThread`` so their jobs keep the caller's job group (the run
    id that ``stage_metrics`` is collected by). Every step runs to its end; then the first
    failure, if any, is raised. Each write stays its own atomic commit, as when run in turn.
    """
    from pyspark import InheritableThread

    results: list[Any] = [None] * len(steps)
    errors: list[BaseException | None] = [None] * len(steps)

    def run(i: int) -> None:
        try:
            results[i] = steps[i]()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            errors[i] = exc

    threads = [InheritableThread(target=run, args=(i,)) for i in range(len(steps))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for exc in errors:
        if exc is not None:
            raise exc
    return results


def this_run_or_pending(
    spark: Any, rows: DataFrame, run_id: str, key: str, outcomes: Sequence[str]
) -> DataFrame:
    """The rows of ``rows`` (``scans``) that a follow-up step of ``run`` is to take: those this
    run wrote (``run_id``), and those whose ``key`` has no row in any of the ``outcomes``
    tables (paths) yet.

    A re-run of unchanged input writes no ``scans`` row (:func:`merge_into`'s ``only_changed``),
    so its own rows alone would be none; the second set is work an earlier run left undone
    (killed between its ``scans`` commit and its follow-up step), which the re-run then does.
    """
    from delta.tables import DeltaTable

    done = [
        spark.read.format("delta").load(p).select(key)
        for p in outcomes
        if DeltaTable.isDeltaTable(spark, p)
    ]
    if not done:
        return rows
    flagged = reduce(DataFrame.unionByName, done).distinct().withColumn("_done", F.lit(True))
    return (
        rows.join(flagged, key, "left")
        .where((F.col("run_id") == run_id) | F.col("_done").isNull())
        .drop("_done")
    )
