"""The volume steps on Spark: ``scans`` -> one task per series -> ``series_segments`` +
``series_errors``; and the ``medspark volumes`` job that runs them after rebuilding ``series``.

:func:`segment_series` groups the pixel instances of the configured modalities by Series
Instance UID (0020,000E) and hands each group to :func:`volume_rows` on an executor
(``applyInArrow``): assemble (:mod:`medspark.volumes.assemble`), preprocess
(:mod:`medspark.volumes.transforms`), segment (:mod:`medspark.volumes.segment`). Only the
instances' locations and geometry columns travel; the pixels are read on the executor and
never leave it, only per-label figures do. A group is processed alone, so a task holds one
volume at a time (bounded by ``volumes.max_voxels``); a bad series is one error row and the
task goes on with the next.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from medspark.config import PipelineConfig
from medspark.recording import error_lines
from medspark.tables.error_classes import SEG_FAILED, SEGMENTATION_FAILED
from medspark.volumes.assemble import VOLUME_INPUT_COLUMNS, VolumeError, VolumeSettings
from medspark.volumes.segment import VolumeModel
from medspark.volumes.series import needs_header
from medspark.volumes.transforms import VolumePreprocess

__all__ = [
    "SEGMENTATION_FAILED",
    "SEG_FAILED",
    "SEG_INPUT_COLUMNS",
    "VolumeTask",
    "VolumesResult",
    "segment_series",
    "volume_rows",
    "volume_task",
    "volumes",
    "volumes_after_run",
]

# SEGMENTATION_FAILED: the model or the 3D chain raised on a series that assembled fine.
# SEG_FAILED: the series was segmented but its DICOM SEG could not be built or written; its
# rows are not written either (a rerun writes both), so series_segments never points at a
# missing file.

#: The ``scans`` columns the DICOM SEG's source datasets need beside the volume's, plus
#: ``seg_header`` (:data:`medspark.volumes.dicom_seg.SEG_HEADER_TAGS` of ``header_json``).
SEG_INPUT_COLUMNS = (
    "sop_class_uid",
    "study_instance_uid",
    "patient_id",
    "study_date",
    "study_time",
)


@dataclass(frozen=True)
class VolumeTask:
    """Everything an executor needs per series; pickled into the task closure."""

    assemble: VolumeSettings
    preprocess: VolumePreprocess
    model: VolumeModel
    #: The warehouse directory the DICOM SEG files go under (volumes.seg), or None.
    seg_root: str | None = None
    software_version: str = "0"


def volume_task(config: PipelineConfig) -> VolumeTask:
    """The executor settings of ``config`` (``volumes.model`` must be set)."""
    from medspark import __version__
    from medspark.errors import ConfigError
    from medspark.onepass import limits
    from medspark.volumes.segment import resolve_volume_model
    from medspark.volumes.transforms import as_triple

    v = config.volumes
    if v.model is None:
        raise ConfigError("volumes.model", None, "a 3D model ({path, labels, ...})")
    seg_root = None
    if v.seg:
        import re

        warehouse = str(config.warehouse or config._warehouse())  # the latter raises
        if re.match(r"^[A-Za-z][\w+.-]*:/", warehouse) and not warehouse.startswith("file:"):
            raise ConfigError(
                "volumes.seg",
                True,
                f"false: the SEG files are written to a file system path, and the warehouse "
                f"{warehouse} is not one",
            )
        seg_root = warehouse.removeprefix("file://").removeprefix("file:")
    return VolumeTask(
        assemble=VolumeSettings(
            max_voxels=v.max_voxels,
            limits=limits(config.ingest),
            max_interpolated=v.fill_limit(),
        ),
        preprocess=VolumePreprocess(
            orientation=v.orientation,
            target_spacing=as_triple(v.target_spacing),
            intensity_range=None if v.intensity_range is None else tuple(v.intensity_range),  # type: ignore[arg-type]
            spatial_size=None if v.spatial_size is None else tuple(v.spatial_size),  # type: ignore[arg-type]
        ),
        model=resolve_volume_model(v.model),
        seg_root=seg_root,
        software_version=__version__,
    )


def volume_rows(rows: list[dict[str, Any]], task: VolumeTask) -> list[dict[str, Any]]:
    """The ``VOLUME_OUT`` rows of one series (its ``scans`` rows): one per label, or one error
    row. Never raises for a bad series."""
    from medspark.preprocess.udf import worker_rss_bytes
    from medspark.volumes.assemble import assemble_volume
    from medspark.volumes.segment import label_statistics, segment
    from medspark.volumes.transforms import preprocess_volume, spacing_of

    uid = rows[0]["series_instance_uid"]
    model = task.model
    base = {"series_instance_uid": uid, "model": model.name, "model_version": model.version}
    t0 = time.perf_counter()
    try:
        volume = assemble_volume(rows, task.assemble)
    except VolumeError as exc:
        message = _keys_for_paths(str(exc), rows)
        return [{**base, "error_class": exc.error_class, "error_message": message}]
    t1 = time.perf_counter()
    try:
        image, affine = preprocess_volume(volume.array, volume.affine, task.preprocess)
        slices = volume.array.shape[0]
        source_grid = (volume.affine, volume.array.shape, volume.slices)
        del volume  # the preprocessed copy is all that is needed now
        t2 = time.perf_counter()
        labels = segment(image, model)
        t_infer = time.perf_counter() - t2
        stats = label_statistics(labels, affine, model.labels)
        t3 = time.perf_counter()  # the SEG's time is measured from here
    except Exception as exc:  # a model or transform failure is this series' error row
        message = " ".join(f"{type(exc).__name__}: {exc}".split())
        return [
            {
                **base,
                "error_class": SEGMENTATION_FAILED,
                "error_message": f"series {uid}: {message}",
            }
        ]
    seg_path = None
    if task.seg_root is not None:
        try:
            seg_path = write_seg(rows, labels, affine, source_grid, task)
        except Exception as exc:  # this series' error row; the others go on
            message = " ".join(f"{type(exc).__name__}: {exc}".split())
            return [
                {**base, "error_class": SEG_FAILED, "error_message": f"series {uid}: {message}"}
            ]
    t4 = time.perf_counter()
    common = {
        **base,
        "slices": slices,
        "voxel_spacing": list(spacing_of(affine)),
        "grid_shape": [int(n) for n in labels.shape],
        "seconds_assemble": t1 - t0,
        "seconds_preprocess": t2 - t1,
        "seconds_infer": t_infer,
        "seconds_seg": t4 - t3,
        "seg_path": seg_path,
        "rss_bytes": worker_rss_bytes(),
    }
    return [{**common, **s} for s in stats]


def write_seg(
    rows: list[dict[str, Any]],
    labels: Any,
    labels_affine: Any,
    source_grid: tuple[Any, tuple[int, ...], list[tuple[str, int] | None]],
    task: VolumeTask,
) -> str | None:
    """Write the DICOM SEG of one segmented series (:mod:`medspark.volumes.dicom_seg`) under
    ``task.seg_root``; its path relative to it, or None for a series that is not made of
    single-frame slices (a SEG of frames of an enhanced object is not written yet).

    Its frames are the acquired slices only: a slice filled by interpolation
    (``volumes.missing_slices: interpolate``) has no instance to refer to, so the SEG has no
    frame there and refers to exactly the series' real instances."""
    from medspark.volumes.dicom_seg import (
        labels_on_grid,
        seg_relative_path,
        segmentation_dataset,
        source_datasets,
        write_atomically,
    )

    affine, shape, order = source_grid
    real = [(k, s) for k, s in enumerate(order) if s is not None]
    if any(frame != 0 for _, (_, frame) in real) or any(
        int(r.get("number_of_frames") or 1) > 1 for r in rows
    ):
        return None
    by_sop = {r["sop_instance_uid"]: r for r in rows}
    on_grid = labels_on_grid(labels, labels_affine, affine, shape)[[k for k, _ in real]]
    seg = segmentation_dataset(
        source_datasets([by_sop[sop] for _, (sop, _) in real]),
        on_grid,
        task.model.labels,
        model=task.model.name,
        version=task.model.version,
        software_version=task.software_version,
    )
    relative = seg_relative_path(
        rows[0]["series_instance_uid"], task.model.name, task.model.version
    )
    assert task.seg_root is not None
    write_atomically(seg, f"{task.seg_root}/{relative}")
    return relative


def _keys_for_paths(message: str, rows: list[dict[str, Any]]) -> str:
    """``message`` with each instance's path replaced by its location key (``series_errors``
    is an analyst table; see :func:`segment_series`)."""
    from medspark.dicom.deid import redact_location

    for r in rows:
        key = r.get("location_key")
        if key is not None and key != r["source_uri"]:
            message = redact_location(
                message, r["source_uri"], r["archive_member"], key, r.get("member_key")
            )
    return message


def _group_function(task: VolumeTask) -> Any:
    from pyspark.sql.pandas.types import to_arrow_schema

    from medspark.tables.schemas import VOLUME_OUT

    arrow_schema = to_arrow_schema(VOLUME_OUT)

    def per_series(table: Any) -> Any:
        import pyarrow as pa
        import torch
        from pyspark import TaskContext

        ctx = TaskContext.get()
        torch.set_num_threads(max(1, ctx.cpus() if ctx is not None else 1))
        rows = volume_rows(table.to_pylist(), task)
        names = arrow_schema.names
        return pa.Table.from_pylist([{n: r.get(n) for n in names} for r in rows], arrow_schema)

    return per_series


def segment_series(scans: DataFrame, config: PipelineConfig, task: VolumeTask) -> DataFrame:
    """``scans`` -> ``VOLUME_OUT`` rows: each series of ``volumes.modalities`` with pixels,
    assembled, preprocessed and segmented in one task (one group of ``applyInArrow``)."""
    from medspark.pipeline import with_paths
    from medspark.tables.schemas import VOLUME_OUT
    from medspark.volumes.dicom_seg import SEG_HEADER_TAGS

    seg_columns: list[Any] = []
    if task.seg_root is not None:
        # The few de-identified header values a SEG repeats travel, not the whole header.
        pairs = [
            c
            for tag in SEG_HEADER_TAGS
            for c in (F.lit(tag), F.get_json_object("header_json", f"$.{tag}"))
        ]
        seg_columns = [*SEG_INPUT_COLUMNS, F.to_json(F.create_map(*pairs)).alias("seg_header")]
    pixels = scans.where(
        F.col("has_pixels")
        & F.col("series_instance_uid").isNotNull()
        & F.col("modality").isin(*config.volumes.modalities)
    )
    # A series of one frame (a localiser, a single slice) is no volume: not an error either.
    # Its series row says single_slice, so it is accounted for there.
    frames = F.sum(F.coalesce("number_of_frames", F.lit(1))).over(
        Window.partitionBy("series_instance_uid")
    )
    candidates = (
        pixels.withColumn("_series_frames", frames).where(F.col("_series_frames") > 1)
    ).select(
        *[c for c in VOLUME_INPUT_COLUMNS if c != "header_json"],
        # The header travels only for the rows whose geometry is in it.
        F.when(needs_header(), F.col("header_json")).alias("header_json"),
        # The location keys stay beside the paths: error messages name files by their key.
        F.col("source_uri").alias("location_key"),
        F.col("archive_member").alias("member_key"),
        *seg_columns,
    )
    # Files are read at their paths (restricted_locations), as preprocess reads them.
    candidates = with_paths(scans.sparkSession, config, candidates, "volumes")
    return candidates.groupBy("series_instance_uid").applyInArrow(_group_function(task), VOLUME_OUT)


@dataclass
class VolumesResult:
    """What a ``medspark volumes`` run did; printed as its summary."""

    run_id: str
    series: int
    segmented: int = 0
    segments: int = 0
    errors_by_class: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    model: str | None = None
    errors_cleared: int = 0  # series_errors rows of earlier runs whose series succeeded now
    peak_rss_bytes: int | None = None  # largest Python worker RSS after a segmented series
    seg_files: int = 0  # DICOM SEG files written (or found identical) this run

    def summary(self) -> str:
        lines = [
            f"run {self.run_id}: {self.series} series in the series table, {self.seconds:.1f} s",
        ]
        if self.model is None:
            lines.append("  no volumes.model configured: series table only")
        else:
            lines.append(
                f"  {self.segmented} series segmented by {self.model} ({self.segments} label rows)"
            )
            if self.seg_files:
                lines.append(f"  {self.seg_files} DICOM SEG files under <warehouse>/segmentations")
            if self.peak_rss_bytes:
                lines.append(f"  peak worker memory {self.peak_rss_bytes / 2**20:.0f} MiB")
            now = "those series are segmented now"
            lines += error_lines(self.errors_by_class, self.errors_cleared, now)
        return "\n".join(lines)


def record_volumes(record: Any, result: VolumesResult) -> None:
    """Copy a ``volumes`` result into a ``job_runs`` record."""
    record.items_in = result.series
    record.rows_out["series"] = result.series
    if result.model is not None:
        record.uses_torch = True
        record.rows_out["series_segments"] = result.segments
        record.rows_out["series_errors"] = sum(result.errors_by_class.values())
        record.errors = (record.errors or 0) + sum(result.errors_by_class.values())


def volumes(spark: Any, config: PipelineConfig, run_id: str) -> VolumesResult:
    """``medspark volumes``: rebuild ``series`` from all of ``scans``, then, with a
    ``volumes.model``, segment every series of ``volumes.modalities`` into
    ``series_segments`` and ``series_errors`` (MERGE: a rerun of the same model version adds
    no row). The model is checked on the driver before any task starts."""
    from medspark.tables.writers import merge_into
    from medspark.volumes.segment import check_volume_model
    from medspark.volumes.series import build_series

    start = time.monotonic()
    task = volume_task(config) if config.volumes.model is not None else None
    if task is not None:
        check_volume_model(task.model)
    scans = spark.read.format("delta").load(config.table_path("scans"))
    series = build_series(scans, run_id, max_interpolated=config.volumes.fill_limit())
    series = series.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        n_series = series.count()
        merge_into(spark, series, config.table_path("series"), "series")
    finally:
        series.unpersist()
    result = VolumesResult(run_id=run_id, series=n_series)
    if task is not None:
        _segment_into_tables(spark, config, task, scans, run_id, result)
    result.seconds = time.monotonic() - start
    return result


def volumes_after_run(spark: Any, config: PipelineConfig, record: Any) -> VolumesResult | None:
    """``medspark run``'s volumes step (``volumes.in_run`` with a ``volumes.model``): the
    series this run wrote instances of (``scans.run_id``; all their instances, earlier ones
    too), and the series of more than one frame that no run has segmented yet, are segmented
    into ``series_segments`` / ``series_errors`` (and DICOM SEG files). ``series`` itself was
    refreshed by the run. None (and no table touched) when the switch is off or there is no
    such series."""
    from medspark.volumes.segment import check_volume_model

    if not config.volumes.in_run or config.volumes.model is None:
        return None
    start = time.monotonic()
    task = volume_task(config)
    check_volume_model(task.model)  # checked before Spark started too (medspark.cli)
    scans = spark.read.format("delta").load(config.table_path("scans"))
    touched = _series_to_segment(spark, config, scans, record.run_id)
    if touched.isEmpty():
        return None
    result = VolumesResult(run_id=record.run_id, series=touched.count())
    subset = scans.join(touched, "series_instance_uid", "left_semi")
    _segment_into_tables(spark, config, task, subset, record.run_id, result)
    result.seconds = time.monotonic() - start
    record.uses_torch = True
    record.rows_out["series_segments"] = result.segments
    record.rows_out["series_errors"] = sum(result.errors_by_class.values())
    record.errors = (record.errors or 0) + sum(result.errors_by_class.values())
    return result


def _series_to_segment(
    spark: Any, config: PipelineConfig, scans: DataFrame, run_id: str
) -> DataFrame:
    """Series UIDs (distinct) for :func:`volumes_after_run`: those this run wrote instances of,
    and those of more than one frame (``series.frames``) with no row in ``series_segments`` or
    ``series_errors`` (left undone by an earlier run: a re-run of unchanged input writes no
    ``scans`` row, so it would not find them by its run id)."""
    from delta.tables import DeltaTable

    from medspark.tables.writers import this_run_or_pending

    uids = scans.where(F.col("series_instance_uid").isNotNull())
    series_path = config.table_path("series")
    if DeltaTable.isDeltaTable(spark, series_path):
        volumes = spark.read.format("delta").load(series_path).where(F.col("frames") > 1)
        volumes = volumes.select("series_instance_uid")
        mine = uids.where(F.col("run_id") == run_id)
        uids = mine.unionByName(uids.join(volumes, "series_instance_uid", "left_semi"))
    outcomes = [config.table_path(t) for t in ("series_segments", "series_errors")]
    todo = this_run_or_pending(spark, uids, run_id, "series_instance_uid", outcomes)
    return todo.select("series_instance_uid").distinct()


def _segment_into_tables(
    spark: Any,
    config: PipelineConfig,
    task: VolumeTask,
    scans: DataFrame,
    run_id: str,
    result: VolumesResult,
) -> None:
    """Segment the series of ``scans`` and MERGE the rows into ``series_segments`` and
    ``series_errors``; fills ``result``'s counts."""
    from delta.tables import DeltaTable

    from medspark.tables.writers import concurrently, delete_matching, merge_into

    errors_path = config.table_path("series_errors")
    had_errors = DeltaTable.isDeltaTable(spark, errors_path)
    out = segment_series(scans, config, task).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        counts = (
            out.groupBy("error_class")
            .agg(
                F.count("*").alias("n"),
                F.countDistinct("series_instance_uid").alias("s"),
                F.max("rss_bytes").alias("rss"),
                F.countDistinct("seg_path").alias("seg"),
            )
            .collect()
        )
        segments = (
            out.where(F.col("error_class").isNull())
            .drop("error_class", "error_message")
            .withColumns({"run_id": F.lit(run_id), "segmented_at": F.current_timestamp()})
        )
        errors = out.where(F.col("error_class").isNotNull()).select(
            "series_instance_uid",
            "model",
            "model_version",
            "error_class",
            F.col("error_message").alias("message"),
            F.lit(run_id).alias("run_id"),
            F.current_timestamp().alias("recorded_at"),
        )
        concurrently(
            lambda: merge_into(
                spark, segments, config.table_path("series_segments"), "series_segments"
            ),
            lambda: merge_into(spark, errors, errors_path, "series_errors"),
        )
        if had_errors and any(r["error_class"] is None for r in counts):
            # A series that failed in an earlier run (a damaged file since replaced) and is
            # segmented now by the same model version leaves series_errors.
            result.errors_cleared = delete_matching(spark, segments, errors_path, "series_errors")
    finally:
        out.unpersist()
    for r in counts:
        if r["error_class"] is None:
            result.segmented, result.segments = int(r["s"]), int(r["n"])
            result.peak_rss_bytes = r["rss"]
            result.seg_files = int(r["seg"])
        else:
            result.errors_by_class[r["error_class"]] = int(r["n"])
    result.model = f"{task.model.name} {task.model.version}"
