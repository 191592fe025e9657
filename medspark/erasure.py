"""Forget a patient, or some of a patient's studies: ``medspark forget``.

A patient withdraws consent or asks for erasure (GDPR Art. 17), or a study was ingested by
mistake. :func:`forget` removes every row of that patient (or those studies) from every table
the registry (:data:`medspark.tables.schemas.TABLES`) says holds someone's data, through the
columns it names (``Table.subject``): a table added later is forgotten too, without touching
this module. The DICOM SEG files of the patient's series beside the warehouse go as well, and
``scanner_utilization`` is rebuilt without the patient's acquisitions.

What stays, by design: the run records (``job_runs``, ``stage_metrics``, ``worker_metrics``)
and evaluation aggregates hold no one's rows. What stays until purged: Delta keeps the data
files a delete replaced, for time travel, until they are vacuumed; ``--purge`` vacuums the
affected tables at once (retention zero). Delta's transaction log keeps, per data file, the
minimum and maximum of its columns' values for as long as the log is kept; medspark's tables
keep no statistics of string columns (:func:`medspark.tables.writers.table_properties`), so
the log holds no key, id, UID or path; tables created by an earlier release are named in the
result (their log keeps such statistics until it is cleaned).

Kill-safe and idempotent: the erasure is recorded ``pending`` in ``restricted_erasures``
first (a keyed hash of the patient key or study, never the identifier), the tables are
deleted from with ``scans`` and ``restricted_acquisitions`` last (they are where the
patient's rows are found), and the record is marked ``done`` at the end: a re-run after a kill
finds what is left and finishes. Later ``ingest`` and ``run`` turn the items of an erased
subject into ``erased_subject`` error rows (:mod:`medspark.onepass`) until :func:`revoke`.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import reduce
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame

from medspark.errors import ConfigError, MissingInput

LOG = logging.getLogger(__name__)

PENDING, DONE, REVOKED = "pending", "done", "revoked"

#: Where a subject's rows are found (and so deleted last).
_FINDERS = ("scans", "restricted_acquisitions")


@dataclass
class ForgetResult:
    """What :func:`forget` did and what is left."""

    erasure_id: str
    scope: str
    rows_removed: dict[str, int]
    seg_files_removed: int
    purged: bool
    left: list[str] = field(default_factory=list)

    def summary(self) -> str:
        total = sum(self.rows_removed.values())
        lines = [
            f"erasure {self.erasure_id} ({self.scope}): {total} row(s) removed from "
            f"{sum(1 for n in self.rows_removed.values() if n)} table(s), "
            f"{self.seg_files_removed} DICOM SEG file(s) removed"
            + ("; old files vacuumed" if self.purged else "")
        ]
        lines += [f"    {t:<24} {n}" for t, n in sorted(self.rows_removed.items()) if n]
        lines += [f"  left: {line}" for line in self.left]
        return "\n".join(lines)


def _pseudonymizer(config: Any) -> Any:
    from medspark.dicom.deid import pseudonymizer_from_config

    p = pseudonymizer_from_config(config.deid)
    if p is None:
        raise ConfigError(
            "deid.enabled", False, "true: forget finds a patient by the pseudonymous key"
        )
    return p


def _erasure_rows(config: Any) -> list[dict[str, Any]]:
    from deltalake import DeltaTable

    path = config.table_path("restricted_erasures")
    if not DeltaTable.is_deltatable(path):
        return []
    return list(DeltaTable(path).to_pyarrow_table().to_pylist())


def erased_hashes(config: Any) -> frozenset[str]:
    """The subject hashes of every erasure not revoked (pending ones included: an erasure
    that was killed half-way still keeps its subject out)."""
    return frozenset(r["subject_hash"] for r in _erasure_rows(config) if r["status"] != REVOKED)


def _subject(
    p: Any, patient_id: str | None, patient_key: str | None, studies: Sequence[str]
) -> tuple[str, str, list[str]]:
    """(scope, patient key, candidate study pseudonyms): a study is taken as given (the
    pseudonymous UID analysts see) or as an original UID, whichever ``scans`` holds."""
    if (patient_id is None) == (patient_key is None):
        raise ConfigError(
            "--patient-id/--patient-key", None, "exactly one of them (the original id or the key)"
        )
    key = patient_key if patient_key is not None else p.patient_key(patient_id)
    candidates = sorted({s for uid in studies for s in (uid, p.uid(uid))})
    return ("study" if studies else "patient"), key, candidates


#: The columns :func:`_found` gives.
_FOUND_SCHEMA = (
    "sop_instance_uid string, series_instance_uid string, study_instance_uid string, "
    "source_uri string, archive_member string"
)


def _found(spark: Any, config: Any, key: str, studies: list[str]) -> Any:
    """The subject's instances: ``(sop_instance_uid, series_instance_uid,
    study_instance_uid, source_uri, archive_member)`` from ``scans`` and
    ``restricted_acquisitions`` (whichever still hold them)."""
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    ids = ["sop_instance_uid", "series_instance_uid", "study_instance_uid"]
    parts = []
    for table in _FINDERS:
        path = config.table_path(table)
        if not DeltaTable.isDeltaTable(spark, path):
            continue
        df = spark.read.format("delta").load(path).where(F.col("patient_id") == key)
        if studies:
            df = df.where(F.col("study_instance_uid").isin(studies))
        location = ["source_uri", "archive_member"]
        if table == "scans":
            parts.append(df.select(*ids, *location))
        else:
            parts.append(df.select(*ids, *[F.lit(None).cast("string").alias(c) for c in location]))
    return reduce(DataFrame.unionByName, parts) if parts else None


def _keys(spark: Any, found: Any, subject: tuple[str, ...], key: str, scope: str) -> Any:
    """The values of ``subject`` columns that are the subject's."""
    from pyspark.sql import functions as F

    if subject == ("pseudonym",):  # restricted_phi_map: the key and the three UIDs
        out = reduce(
            DataFrame.unionByName,
            [
                found.select(F.col(c).alias("pseudonym"))
                for c in ("sop_instance_uid", "series_instance_uid", "study_instance_uid")
            ],
        )
        if scope == "patient":
            out = out.unionByName(spark.createDataFrame([(key,)], "pseudonym string"))
        return out.where(F.col("pseudonym").isNotNull()).distinct()
    return found.select(*subject).where(F.col(subject[0]).isNotNull()).distinct()


def _record(config: Any, rows: list[dict[str, Any]]) -> None:
    """Write (or replace, by key) these ``restricted_erasures`` rows in one commit; the first
    erasure creates the table with them."""
    from deltalake import DeltaTable

    from medspark.tables.small import append_rows, upsert_rows
    from medspark.tables.writers import ensure_restricted_root

    ensure_restricted_root(config)
    path = config.table_path("restricted_erasures")
    if DeltaTable.is_deltatable(path):
        upsert_rows(path, "restricted_erasures", rows)
    else:
        append_rows(path, "restricted_erasures", rows)


def _remove_segs(config: Any, series: list[str]) -> int:
    """Delete the DICOM SEG folders of ``series`` beside the warehouse; files removed."""
    from medspark.volumes.dicom_seg import SEG_DIR

    root = Path(config.table_path("scans")).parent / SEG_DIR
    removed = 0
    for uid in series:
        folder = root / uid
        if folder.is_dir() and folder.parent == root:  # a UID, never a path
            removed += sum(1 for p in folder.rglob("*") if p.is_file())
            shutil.rmtree(folder)
    return removed


@contextmanager
def _spark_conf(spark: Any, key: str, value: str, default: str) -> Iterator[None]:
    """The session's ``key`` set to ``value`` for the block, then as it was."""
    before = spark.conf.get(key, default)
    spark.conf.set(key, value)
    try:
        yield
    finally:
        spark.conf.set(key, before)


def _vacuum(spark: Any, paths: list[str]) -> None:
    """VACUUM with zero retention: the files the deletes replaced go now, not in 7 days.

    ``LITE``: the files to remove are read from the transaction log (the ones its removes
    name), not found by listing the table's folder in a Spark job of
    ``spark.sql.sources.parallelPartitionDiscovery.parallelism`` tasks (10,000 by default):
    a full VACUUM took 258 s for the ten tables of a two-patient warehouse, measured. A table
    whose log no longer names every file to remove (LITE refuses it) gets a full VACUUM in as
    many tasks as Spark has cores. One table after another: at once, they took longer (27 s
    against 24 s)."""
    check = "spark.databricks.delta.retentionDurationCheck.enabled"
    listing = "spark.sql.sources.parallelPartitionDiscovery.parallelism"
    cores = str(max(1, spark.sparkContext.defaultParallelism))
    with _spark_conf(spark, check, "false", "true"):
        for path in paths:
            quoted = path.replace("`", "``")
            try:
                spark.sql(f"VACUUM delta.`{quoted}` LITE RETAIN 0 HOURS").collect()
            except Exception as exc:  # noqa: BLE001 - a log cleaned since: list the folder
                if "FULL" not in str(exc):
                    raise
                with _spark_conf(spark, listing, cores, "10000"):
                    spark.sql(f"VACUUM delta.`{quoted}` FULL RETAIN 0 HOURS").collect()


def _old_statistics(paths: dict[str, str]) -> list[str]:
    """Tables created before medspark kept string columns out of Delta's statistics."""
    from deltalake import DeltaTable

    old = []
    for name, path in paths.items():
        conf = DeltaTable(path).metadata().configuration
        if not any(k.startswith("delta.dataSkipping") for k in conf):
            old.append(name)
    return old


def _hashes(
    config: Any, p: Any, scope: str, key: str, stored: list[str], candidates: list[str]
) -> tuple[set[str], list[dict[str, Any]]]:
    """The subject hashes of this erasure, and the earlier records (not revoked) of them. A
    study whose rows are gone (a re-run) is known by its earlier record."""
    pseudonyms = [key] if scope == "patient" else stored
    hashes = {p.erasure_hash(scope, s) for s in pseudonyms}
    earlier = [r for r in _erasure_rows(config) if r["status"] != REVOKED]
    if scope == "study":
        asked = {p.erasure_hash("study", s) for s in candidates}
        hashes |= {r["subject_hash"] for r in earlier if r["subject_hash"] in asked}
    return hashes, [r for r in earlier if r["subject_hash"] in hashes]


def _delete_everywhere(
    spark: Any, config: Any, found: Any, key: str, scope: str
) -> tuple[dict[str, int], int, dict[str, str]]:
    """Delete the subject's rows from every table that holds someone's data, ``scans`` and
    ``restricted_acquisitions`` last; remove their series' SEG files. Returns the rows
    removed per table, the SEG files removed, and the tables touched (name -> path)."""
    from delta.tables import DeltaTable

    from medspark.tables.schemas import TABLES
    from medspark.tables.writers import concurrently, delete_matching

    affected = {
        name: config.table_path(name)
        for name, table in TABLES.items()
        if table.subject and DeltaTable.isDeltaTable(spark, config.table_path(name))
    }
    seg_files = 0
    if "series_segments" in affected:
        series = found.select("series_instance_uid").distinct().collect()
        seg_files = _remove_segs(config, [r[0] for r in series if r[0]])

    def delete(name: str) -> int:
        subject = TABLES[name].subject
        keys = _keys(spark, found, subject, key, scope)
        return int(delete_matching(spark, keys, affected[name], name, on=subject))

    # Every table but the two the subject is found in, concurrently (one commit each), then
    # those two: a run killed before them finds the subject again and finishes.
    first = [name for name in affected if name not in _FINDERS]
    last = [name for name in _FINDERS if name in affected]
    counts = concurrently(*[lambda n=n: delete(n) for n in first])
    counts += concurrently(*[lambda n=n: delete(n) for n in last])
    removed = dict(zip(first + last, counts, strict=True))
    return removed, seg_files, affected


def _rebuild_utilization(spark: Any, config: Any, affected: dict[str, str]) -> None:
    """``scanner_utilization`` rebuilt from what ``restricted_acquisitions`` holds now."""
    from delta.tables import DeltaTable

    from medspark.metrics.utilization import rebuild
    from medspark.recording import new_run_id

    path = config.table_path("scanner_utilization")
    if "restricted_acquisitions" not in affected or not DeltaTable.isDeltaTable(spark, path):
        return
    rebuild(
        spark,
        affected["restricted_acquisitions"],
        path,
        new_run_id(),
        config.metrics.study_span_cap_hours,
    )
    affected["scanner_utilization"] = path


def _left(affected: dict[str, str], purged: bool) -> list[str]:
    """What is left of the subject, and how to finish."""
    left = []
    if affected and not purged:
        left.append(
            "the data files the deletes replaced stay for Delta's time travel until vacuumed "
            "(delta.deletedFileRetentionDuration, 7 days by default): run the same forget "
            "command with --purge to remove them now"
        )
    old = _old_statistics(affected)
    if old:
        left.append(
            "tables created by an earlier medspark release keep column statistics (min/max of "
            f"string columns too) in their Delta log: {', '.join(old)}; they leave with the log "
            "(delta.logRetentionDuration, 30 days by default, at a checkpoint)"
        )
    return left


def forget(
    spark: Any,
    config: Any,
    patient_id: str | None = None,
    patient_key: str | None = None,
    studies: Sequence[str] = (),
    reason: str | None = None,
    purge: bool = False,
    run_id: str | None = None,
) -> ForgetResult:
    """Remove every row of one patient (or of some of their studies) from every table; see
    the module docstring. Raises :class:`MissingInput` for a patient (or study) that no
    table and no earlier erasure knows."""
    from medspark.access import record_access, who
    from medspark.recording import new_run_id

    p = _pseudonymizer(config)
    scope, key, candidates = _subject(p, patient_id, patient_key, studies)
    found = _found(spark, config, key, candidates)
    if found is None:
        found = spark.createDataFrame([], _FOUND_SCHEMA)
    found = found.persist()
    try:
        n_found = found.count()
        record_access(config, "forget", list(_FINDERS), n_found)
        stored = [r[0] for r in found.select("study_instance_uid").distinct().collect() if r[0]]
        hashes, known = _hashes(config, p, scope, key, stored, candidates)
        if n_found == 0 and not known:
            what = "--patient-id" if patient_id is not None else "--patient-key"
            where = " and --study" if studies else ""
            raise MissingInput(
                f"forget: no patient with the given {what}{where} in "
                f"{config.table_path('scans')} (nor an earlier erasure of it)"
            )
        user, host = who()
        base = {
            "erasure_id": known[0]["erasure_id"] if known else (run_id or new_run_id()),
            "scope": scope,
            "reason": reason if reason is not None or not known else known[0]["reason"],
            "os_user": user,
            "host": host,
            "started_at": known[0]["started_at"] if known else datetime.now(timezone.utc),
            "purged": False,
        }
        _record(config, [{**base, "subject_hash": h, "status": PENDING} for h in sorted(hashes)])
        removed, seg_files, affected = _delete_everywhere(spark, config, found, key, scope)
    finally:
        found.unpersist()
    # Rows went, or an earlier run was killed after it deleted them but before this.
    if removed.get("restricted_acquisitions") or any(r["status"] == PENDING for r in known):
        _rebuild_utilization(spark, config, affected)
    if purge:
        _vacuum(spark, list(affected.values()))
    done = {
        **base,
        "status": DONE,
        "rows_removed": json.dumps(removed, sort_keys=True),
        "purged": purge,
        "ended_at": datetime.now(timezone.utc),
    }
    _record(config, [{**done, "subject_hash": h} for h in sorted(hashes)])
    return ForgetResult(
        base["erasure_id"], scope, removed, seg_files, purge, _left(affected, purge)
    )


def revoke(
    config: Any,
    patient_id: str | None = None,
    patient_key: str | None = None,
    studies: Sequence[str] = (),
) -> int:
    """Revoke the erasures of a patient (or studies): later runs ingest their items again.
    Returns the records revoked; raises :class:`MissingInput` when there is none."""
    p = _pseudonymizer(config)
    scope, key, study_candidates = _subject(p, patient_id, patient_key, studies)
    pseudonyms = [key] if scope == "patient" else study_candidates
    hashes = {p.erasure_hash(scope, s) for s in pseudonyms}
    rows = [
        r for r in _erasure_rows(config) if r["subject_hash"] in hashes and r["status"] != REVOKED
    ]
    if not rows:
        raise MissingInput("forget --revoke: no erasure of the given subject is in force")
    now = datetime.now(timezone.utc)
    _record(config, [{**r, "status": REVOKED, "ended_at": now} for r in rows])
    return len(rows)
