"""De-identified DICOM files out of the warehouse: ``medspark export``, and what ``serve`` reads.

A scan becomes a file through one function, :func:`medspark.dicom.instance.deidentified_instance`:
the header ``scans`` holds (already de-identified) plus the source's pixels, cleaned by the
burned-in rule as ``images`` is. This module finds the scans (:func:`scan_sources`: ``scans``
and ``restricted_locations`` read with delta-rs, no Spark), re-reads their sources through the
one reader with the SHA-256 check (:func:`medspark.sources.members.read_verified`) and makes
the files (:func:`make_instances`); ``export`` writes them as
``<out>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm`` (pseudonymous UIDs) and
copies the DICOM SEG files of the selected series beside them.

An instance that cannot be written (its source changed since ingest, it vanished, its pixels
must be withheld for burned-in text) is a row of ``export_errors`` naming it by pseudonymous
UID and location key, never by path; the export goes on. Reading ``restricted_locations`` is
recorded in ``restricted_access_log``.

It runs in the driver process without a JVM: exporting a study is a few hundred files, and a
Spark application would cost more to start than the export takes (measured: see bench/).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medspark.config import PipelineConfig
from medspark.dicom.header import ItemError
from medspark.errors import MissingInput

LOG = logging.getLogger(__name__)

#: The ``scans`` columns a file is made from.
SCAN_COLUMNS = (
    "sop_instance_uid",
    "series_instance_uid",
    "study_instance_uid",
    "source_uri",
    "archive_member",
    "sha256",
    "header_json",
)


@dataclass(frozen=True)
class ScanSource:
    """One ``scans`` row as a file is made from it: its pseudonymous UIDs and location keys
    (``source_uri`` / ``archive_member``, as in the analyst tables), where its bytes are
    (``path_uri`` / ``path_member``, from ``restricted_locations``), the SHA-256 ingest
    recorded and the de-identified header."""

    sop_instance_uid: str
    series_instance_uid: str | None
    study_instance_uid: str | None
    source_uri: str
    archive_member: str | None
    path_uri: str
    path_member: str | None
    sha256: str | None
    header_json: str

    @property
    def relative_path(self) -> str:
        """``<study>/<series>/<sop>.dcm``: pseudonymous UIDs only (``unknown`` for an instance
        without Study or Series Instance UID, which a non-conformant source may lack)."""
        study = self.study_instance_uid or "unknown"
        series = self.series_instance_uid or "unknown"
        return f"{study}/{series}/{self.sop_instance_uid}.dcm"


def _delta(path: str) -> Any:
    from deltalake import DeltaTable

    return DeltaTable(path) if DeltaTable.is_deltatable(path) else None


def scan_sources(
    config: PipelineConfig,
    studies: Sequence[str] = (),
    series: Sequence[str] = (),
    function: str = "export",
) -> list[ScanSource]:
    """The ``scans`` rows of the given studies and series (all rows when both are empty),
    with the paths of their sources from ``restricted_locations`` (recorded in the access log
    under ``function``). Rows whose location has no path there hold the path itself
    (``deid.keep_paths``, or a warehouse written before location keys)."""
    from medspark.tables.small import read_rows

    if _delta(config.table_path("scans")) is None:
        raise MissingInput(f"{config.table_path('scans')}: no scans table; run ingest first")
    selection = {"study_instance_uid": list(studies), "series_instance_uid": list(series)}
    rows = read_rows(config.table_path("scans"), SCAN_COLUMNS, selection).to_pylist()
    paths: dict[tuple[str, str | None], tuple[str, str | None]] = {}
    locations = config.table_path("restricted_locations")
    if _delta(locations) is not None and rows:
        from medspark.access import record_access

        found = read_rows(
            locations,
            ["source_uri", "archive_member", "original_source_uri", "original_archive_member"],
            {"source_uri": sorted({r["source_uri"] for r in rows})},
        )
        for loc in found.to_pylist():
            paths[(loc["source_uri"], loc["archive_member"])] = (
                loc["original_source_uri"],
                loc["original_archive_member"],
            )
        record_access(config, function, ["restricted_locations"], found.num_rows)
    out = []
    for r in rows:
        uri, member = paths.get(
            (r["source_uri"], r["archive_member"]), (r["source_uri"], r["archive_member"])
        )
        out.append(
            ScanSource(
                sop_instance_uid=r["sop_instance_uid"],
                series_instance_uid=r["series_instance_uid"],
                study_instance_uid=r["study_instance_uid"],
                source_uri=r["source_uri"],
                archive_member=r["archive_member"],
                path_uri=uri,
                path_member=member,
                sha256=r["sha256"],
                header_json=r["header_json"] or "{}",
            )
        )
    return out


def _redacted(message: str, source: ScanSource) -> str:
    """The message with the source's path replaced by its location key (as in scans)."""
    from medspark.dicom.deid import redact_location

    if source.path_uri == source.source_uri:
        return message
    return redact_location(
        message, source.path_uri, source.path_member, source.source_uri, source.archive_member
    )


def make_instances(
    sources: Iterable[ScanSource], burned_in: str = "clean", limits: Any = None
) -> Iterator[tuple[ScanSource, bytes | ItemError]]:
    """The de-identified file of each source, or why there is none (an :class:`ItemError`
    whose message names the instance and its location key, never its path). Sources are read
    container by container (:func:`~medspark.sources.members.read_verified`), so the order
    follows the archives, and each source is answered once."""
    from medspark.dicom.instance import deidentified_instance
    from medspark.sources.members import read_verified

    by_location: dict[tuple[str, str | None], list[ScanSource]] = {}
    for s in sources:
        by_location.setdefault((s.path_uri, s.path_member), []).append(s)
    requests = [(uri, member, group[0].sha256) for (uri, member), group in by_location.items()]
    for location, content in read_verified(requests, limits):
        for source in by_location[location]:
            if isinstance(content, Exception):
                message = f"instance {source.sop_instance_uid}: {content}"
                yield source, ItemError(content.error_class, _redacted(message, source))
                continue
            try:
                yield (
                    source,
                    deidentified_instance(
                        source.header_json,
                        content,
                        burned_in,
                        where=f"instance {source.sop_instance_uid}",
                    ),
                )
            except ItemError as exc:
                yield source, exc


def write_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all (a temporary file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        partial.write_bytes(data)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


@dataclass
class ExportResult:
    """What ``export`` wrote: files by kind, error rows by class."""

    out: str
    instances: int = 0
    segmentations: int = 0
    errors_by_class: dict[str, int] = field(default_factory=dict)
    cleared: int = 0

    def summary(self) -> str:
        errors = sum(self.errors_by_class.values())
        lines = [
            f"exported {self.instances} instance(s) and {self.segmentations} segmentation(s) "
            f"to {self.out}"
        ]
        if errors:
            detail = ", ".join(f"{n} {c}" for c, n in sorted(self.errors_by_class.items()))
            lines.append(f"{errors} instance(s) not exported ({detail}): see export_errors")
        if self.cleared:
            lines.append(f"{self.cleared} export_errors row(s) cleared: exported now")
        return "\n".join(lines)


def segmentation_files(config: PipelineConfig, series: Iterable[str]) -> Iterator[Path]:
    """The DICOM SEG files written by ``medspark volumes`` for these (pseudonymous) series:
    ``<warehouse>/segmentations/<series>/*.dcm``."""
    from medspark.volumes.dicom_seg import SEG_DIR

    root = Path(config.table_path("scans")).parent / SEG_DIR
    for uid in sorted(set(series)):
        folder = root / uid
        if uid and folder.is_dir() and "/" not in uid and uid not in (".", ".."):
            yield from sorted(folder.glob("*.dcm"))


def _seg_relative_path(path: Path) -> str:
    import pydicom

    ds = pydicom.dcmread(
        path, stop_before_pixels=True, specific_tags=[0x0020000D, 0x0020000E, 0x00080018]
    )
    return f"{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"


def _error_row(source: ScanSource, exc: ItemError, run_id: str, now: datetime) -> dict[str, Any]:
    return {
        "sop_instance_uid": source.sop_instance_uid,
        "series_instance_uid": source.series_instance_uid,
        "study_instance_uid": source.study_instance_uid,
        "source_uri": source.source_uri,
        "archive_member": source.archive_member,
        "error_class": exc.error_class,
        "message": str(exc),
        "run_id": run_id,
        "recorded_at": now,
    }


def export(
    config: PipelineConfig,
    out: str | Path,
    studies: Sequence[str] = (),
    series: Sequence[str] = (),
    run_id: str | None = None,
) -> ExportResult:
    """Write the selected scans (all, when ``studies`` and ``series`` are empty) as
    de-identified DICOM files under ``out``, with the SEG files of their series; the instances
    that cannot be written become ``export_errors`` rows (see the module docstring)."""
    from medspark.recording import new_run_id
    from medspark.tables.small import delete_keys, read_rows, upsert_rows

    run_id = run_id or new_run_id()
    out = Path(out).absolute()
    sources = scan_sources(config, studies, series)
    if not sources and (studies or series):
        wanted = ", ".join([*studies, *series])
        raise MissingInput(f"no scans of {wanted} in {config.table_path('scans')}")
    result = ExportResult(out=str(out))
    errors: list[dict[str, Any]] = []
    written: list[dict[str, Any]] = []
    now = datetime.now(timezone.utc)
    for source, made in make_instances(sources, config.deid.burned_in, _limits(config)):
        if isinstance(made, ItemError):
            LOG.info("not exported: %s", made)
            errors.append(_error_row(source, made, run_id, now))
            result.errors_by_class[made.error_class] = (
                result.errors_by_class.get(made.error_class, 0) + 1
            )
            continue
        write_file(out / source.relative_path, made)
        written.append({"sop_instance_uid": source.sop_instance_uid})
        result.instances += 1
    for path in segmentation_files(config, {s.series_instance_uid or "" for s in sources}):
        write_file(out / _seg_relative_path(path), path.read_bytes())
        result.segmentations += 1
    table = config.table_path("export_errors")
    if errors:
        upsert_rows(table, "export_errors", errors)
    if written and _delta(table) is not None:
        stale = set(read_rows(table, ["sop_instance_uid"]).column(0).to_pylist())
        cleared = [row for row in written if row["sop_instance_uid"] in stale]
        result.cleared = delete_keys(table, "export_errors", cleared) if cleared else 0
    return result


def _limits(config: PipelineConfig) -> Any:
    from medspark.onepass import limits

    return limits(config.ingest)
