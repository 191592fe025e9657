"""The ``series`` table: one row per series, its geometry and a verdict, built from ``scans``.

No pixel is read: everything comes from the ``scans`` columns (Image Position (Patient)
(0020,0032), Image Orientation (Patient) (0020,0037), Rows/Columns, Pixel Spacing (0028,0030),
Slice Thickness (0018,0050), Number of Frames (0028,0008)) and, for enhanced multi-frame
instances only, the per-frame functional groups in ``header_json``. ``scans`` is already
de-identified (pseudonymous UIDs, shifted dates), so ``series`` is too: it is an analyst table.

:func:`summarise_series` is the pure part (a list of ``scans`` rows of one series -> one
``series`` row); :func:`build_series` groups a ``scans`` DataFrame by Series Instance UID
(0020,000E) and applies it on the executors (``applyInArrow``: one group per series, a few
hundred small rows each, never collected on the driver).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from medspark.volumes.geometry import (
    GEOMETRY_COLUMNS,
    Tolerances,
    analyse_series,
    slices_of_instance,
)

__all__ = ["SERIES_INPUT_COLUMNS", "build_series", "refresh_series", "summarise_series"]

#: The ``scans`` columns a series row is built from.
SERIES_INPUT_COLUMNS = (
    "sop_instance_uid",
    "study_instance_uid",
    "series_instance_uid",
    "patient_id",
    "modality",
    "body_part_examined",
    "station_name",
    "acquisition_datetime",
    *GEOMETRY_COLUMNS,
    "has_pixels",
    "header_json",
)


def _mode(values: Sequence[Any]) -> Any:
    """The most common non-null value (ties: the smallest), or None."""
    counts = Counter(v for v in values if v is not None)
    if not counts:
        return None
    top = max(counts.values())
    return min(v for v, c in counts.items() if c == top)


def _list(value: Any) -> list[float] | None:
    """An array cell (list, numpy array or None) as a list of floats."""
    if value is None:
        return None
    try:
        return [float(v) for v in value]
    except TypeError:
        return None


def summarise_series(
    rows: Sequence[Mapping[str, Any]], tol: Tolerances | None = None, max_interpolated: int = 0
) -> dict:
    """One ``series`` row (without ``run_id``/``computed_at``) from the ``scans`` rows of a series.

    Instances without pixels (presentation states, structured reports in the same series)
    count in ``instances`` but not in the geometry. ``max_interpolated``: gaps of at most
    this many slices are to be filled (``volumes.missing_slices: interpolate``); the verdict
    stays ``missing_slices`` and ``interpolated_slices`` says how many.
    """
    rows = [
        {
            **r,
            "pixel_spacing": _list(r.get("pixel_spacing")),
            "image_position_patient": _list(r.get("image_position_patient")),
            "image_orientation_patient": _list(r.get("image_orientation_patient")),
        }
        for r in rows
    ]
    pixel_rows = sorted(
        (r for r in rows if r.get("has_pixels")), key=lambda r: r["sop_instance_uid"]
    )
    slices = [s for r in pixel_rows for s in slices_of_instance(r)]
    geo = analyse_series(slices, tol, max_interpolated)
    times = [r["acquisition_datetime"] for r in rows if r.get("acquisition_datetime") is not None]
    frames_total = sum(int(r.get("number_of_frames") or 1) for r in pixel_rows)
    thickness = _mode([r.get("slice_thickness") for r in pixel_rows])
    first, last = (min(times), max(times)) if times else (None, None)
    return {
        "series_instance_uid": rows[0]["series_instance_uid"],
        "study_instance_uid": _mode([r.get("study_instance_uid") for r in rows]),
        "patient_id": _mode([r.get("patient_id") for r in rows]),
        "modality": _mode([r.get("modality") for r in rows]),
        "body_part_examined": _mode([r.get("body_part_examined") for r in rows]),
        "station_name": _mode([r.get("station_name") for r in rows]),
        "instances": len(rows),
        "pixel_instances": len(pixel_rows),
        "frames": frames_total,
        "rows": geo.rows,
        "columns": geo.columns,
        "pixel_spacing": list(geo.pixel_spacing) if geo.pixel_spacing else None,
        "slice_spacing": geo.slice_spacing,
        "slice_thickness": None if thickness is None else float(thickness),
        "first_position": list(geo.first_position) if geo.first_position else None,
        "last_position": list(geo.last_position) if geo.last_position else None,
        "orientation": list(geo.orientation) if geo.orientation else None,
        "affine": None if geo.affine is None else [float(v) for v in geo.affine.ravel()],
        "first_acquisition": first,
        "last_acquisition": last,
        "acquisition_seconds": (last - first).total_seconds() if times else None,
        "verdict": geo.verdict,
        "verdict_detail": geo.detail,
        "interpolated_slices": geo.interpolated,
    }


def needs_header() -> Any:
    """Rows whose geometry is in the header JSON: multi-frame instances (per-frame functional
    groups, Grid Frame Offset Vector) and enhanced ones of one frame (no top-level position).
    Only their header travels through the shuffle."""
    frames = F.coalesce(F.col("number_of_frames"), F.lit(1))
    return (frames > 1) | F.col("image_position_patient").isNull()


def build_series(
    scans: DataFrame, run_id: str, tol: Tolerances | None = None, max_interpolated: int = 0
) -> DataFrame:
    """``scans`` -> ``series`` (schema :data:`medspark.tables.schemas.SERIES`); gaps of at
    most ``max_interpolated`` slices count in ``interpolated_slices``.

    Instances without a Series Instance UID cannot be grouped and are left out. The header JSON
    travels through the shuffle only for the rows that need it (:func:`needs_header`).
    """
    from pyspark.sql.pandas.types import to_arrow_schema

    from medspark.tables.schemas import SERIES, SERIES_SUMMARY

    names = [f.name for f in SERIES_SUMMARY.fields]
    inputs = scans.where(F.col("series_instance_uid").isNotNull()).select(
        *[c for c in SERIES_INPUT_COLUMNS if c != "header_json"],
        F.when(needs_header(), F.col("header_json")).alias("header_json"),
    )

    arrow_schema = to_arrow_schema(SERIES_SUMMARY)

    def per_series(table: Any) -> Any:
        import pyarrow as pa

        row = summarise_series(table.to_pylist(), tol, max_interpolated)
        return pa.Table.from_pylist([{n: row[n] for n in names}], schema=arrow_schema)

    # Arrow, not pandas: to_pylist gives None for nulls and datetime for timestamps, where
    # pandas would give NaN floats for null integers and pd.Timestamp.
    out = inputs.groupBy("series_instance_uid").applyInArrow(per_series, SERIES_SUMMARY)
    return out.withColumns({"run_id": F.lit(run_id), "computed_at": F.current_timestamp()}).select(
        *[f.name for f in SERIES.fields]
    )


def refresh_series(
    spark: Any,
    config: Any,
    touched: DataFrame,
    run_id: str,
    scans_changed: bool = True,
    only_these: bool = False,
) -> None:
    """Rebuild the ``series`` rows of the series ``touched`` has instances of (MERGE).

    Called by ``ingest`` and ``run`` after their ``scans`` MERGE: a series whose instances
    arrive over several runs is rebuilt from all of its instances in ``scans``, not from this
    run's only. Off when ``volumes.series`` is false. With ``scans_changed`` false (the
    ``scans`` MERGE changed no row, as on a re-run) an existing ``series`` table stands.
    ``only_these``: ``touched`` holds every instance there is (a first load into an empty
    ``scans``), so the series are built from it alone, without waiting for ``scans`` to be
    written and reading it back (on a 20-slice ``run``, 8-10 s after the scans write).
    """
    from delta.tables import DeltaTable

    from medspark.tables.writers import merge_into

    if not config.volumes.series:
        return
    if not scans_changed and DeltaTable.isDeltaTable(spark, config.table_path("series")):
        return
    if only_these:
        subset = touched
    else:
        scans = spark.read.format("delta").load(config.table_path("scans"))
        uids = touched.select("series_instance_uid").where(F.col("series_instance_uid").isNotNull())
        subset = scans.join(uids.distinct(), "series_instance_uid", "left_semi")
    series = build_series(subset, run_id, max_interpolated=config.volumes.fill_limit())
    merge_into(spark, series, config.table_path("series"), "series")
