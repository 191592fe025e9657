"""One executor pass per item: what ``medspark run`` computes, each item opened once.

For every input item, on the executor that reads it: the bytes are read once (with the archive
limits of ingest), hashed (SHA-256), the header parsed and de-identified, the frames decoded,
cleaned of burned-in text, run through the OpenCV chain, and the model applied to them in
batches, all in the same Python worker. The pass yields rows of four kinds, in one Arrow
schema (:data:`PASS`):

``scan``
    a ``scans`` candidate (de-identified), with the true acquisition time for
    ``restricted_acquisitions`` and, when ``deid.phi_map`` is on, the original ids.
``ingest_error``
    an item that could not become a scan, with its error class and reason.
``frame``
    an ``images`` row or a ``preprocess_errors`` row, with the model's label, score and
    probabilities when the frame has a tensor.
``metrics``
    one row per output batch for ``worker_metrics`` (on the side: no data row carries them).

:func:`process_units` is pure Python (no Spark) and is tested so; :func:`pass_batches` is the
thin ``mapInArrow`` wrapper. ``medspark.pipeline.run_all`` splits the cached result into the
tables. Before, ``run`` read every item twice (ingest, then preprocess) and every tensor once
more (infer), each step writing and re-reading Delta tables.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from pyspark.sql.types import (
    DoubleType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampNTZType,
)

from medspark.dicom.burned_in import burned_in_reason
from medspark.tables.error_classes import ERASED_SUBJECT
from medspark.tables.schemas import INSTANCES, PREDICTION, PREPROCESSED, SALIENCY

SCAN = "scan"
INGEST_ERROR = "ingest_error"
FRAME = "frame"
METRICS = "metrics"

#: Original ids carried by ``scan`` rows for ``restricted_phi_map`` (null unless phi_map is on).
ORIGINAL_IDS = ("patient_id", "sop_instance_uid", "study_instance_uid", "series_instance_uid")


def _pass_schema() -> StructType:
    fields: dict[str, StructField] = {"kind": StructField("kind", StringType(), False)}
    # The saliency columns are null unless inference.saliency is on (the model's name and
    # version are added where the tables are written, as for predictions).
    for f in [*INSTANCES.fields, *PREPROCESSED.fields, *PREDICTION.fields, *SALIENCY.fields]:
        if f.name not in fields and f.name not in (
            "model",
            "model_version",
            "predicted_at",
            "run_id",
        ):
            fields[f.name] = StructField(f.name, f.dataType, True)
    extra = [
        StructField("burned_in_flag_reason", StringType(), True),
        StructField("acquired_at", TimestampNTZType(), True),
        *[StructField(f"original_{n}", StringType(), True) for n in ORIGINAL_IDS],
        # where the item is (restricted_locations) when source_uri holds its location key
        StructField("original_source_uri", StringType(), True),
        StructField("original_archive_member", StringType(), True),
        StructField("batch_rows", LongType(), True),  # metrics rows: frames of the batch
        StructField("seconds_infer", DoubleType(), True),
        StructField("gpu_utilization", DoubleType(), True),
        StructField("gpu_memory_bytes", LongType(), True),
    ]
    for f in extra:
        fields.setdefault(f.name, f)
    return StructType(list(fields.values()))


#: The pass's output: one schema for the four kinds of rows (see the module docstring).
PASS = _pass_schema()


def limits(ingest: Any) -> Any:
    """The archive and item limits of ``ingest`` (an ``IngestConfig``), as the reader takes them
    (each :class:`~medspark.sources.archives.Limits` field is the config key of its name)."""
    from dataclasses import fields

    from medspark.sources.archives import Limits

    return Limits(**{f.name: getattr(ingest, f.name) for f in fields(Limits)})


@dataclass(frozen=True)
class PassSettings:
    """Everything the executor needs; pickled into the ``mapInArrow`` closure.

    ``preprocess`` None means no frame is decoded (``ingest``: scan and error rows only);
    ``pseudonymizer`` None means de-identification is off; ``predict`` None means no model.
    """

    limits: Any  # medspark.sources.archives.Limits
    preprocess: Any | None  # medspark.preprocess.udf.PreprocessSettings
    pseudonymizer: Any | None  # medspark.dicom.deid.Pseudonymizer
    predict: Any | None  # medspark.inference.predict.PredictSettings
    batch_size: int = 64
    phi_map: bool = False
    #: :meth:`~medspark.dicom.deid.Pseudonymizer.erasure_hash` of every erased patient and
    #: study (``medspark forget``): their items become ``erased_subject`` error rows.
    erased: frozenset[str] = frozenset()


def _scan_rows(item: Any, settings: PassSettings) -> tuple[dict[str, Any], bytes | None]:
    """The ``scan`` or ``ingest_error`` row of one item, and the bytes to decode (or None)."""
    from medspark.sources.dicom_source import item_dict

    row = item_dict(item, settings.limits)
    if row.get("error_class") is not None:
        row["kind"] = INGEST_ERROR
        return row, None
    raw = dict(row)
    row["acquired_at"] = raw.get("acquisition_datetime") or raw.get("study_datetime")
    if settings.pseudonymizer is not None:
        candidate = {k: v for k, v in row.items() if k in _CANDIDATE_COLUMNS}
        row.update(settings.pseudonymizer.deidentify_row(candidate))
        if settings.erased and _is_erased(row, settings):
            return _erased_row(row, settings.pseudonymizer), None
        if settings.phi_map:
            for name in ORIGINAL_IDS:
                row[f"original_{name}"] = raw.get(name)
    row["kind"] = SCAN
    row["burned_in_flag_reason"] = burned_in_reason(
        raw.get("header_json"), raw.get("modality"), raw.get("sop_class_uid")
    )
    return row, (item.data if row.get("has_pixels") else None)


def _is_erased(row: dict[str, Any], settings: PassSettings) -> bool:
    """Whether a de-identified ``scans`` candidate is of an erased patient or study."""
    p = settings.pseudonymizer
    hashes = {p.erasure_hash("patient", row.get("patient_id") or "")}
    if row.get("study_instance_uid"):
        hashes.add(p.erasure_hash("study", row["study_instance_uid"]))
    return not hashes.isdisjoint(settings.erased)


def _erased_row(row: dict[str, Any], pseudonymizer: Any) -> dict[str, Any]:
    """The ``ingest_errors`` row of an erased subject's item: its location as location keys
    (whatever ``deid.keep_paths`` says: a path can name the patient), no content hash, no
    identity; it is never located (no ``restricted_locations`` row) nor read further."""
    uri_key, member_key = pseudonymizer.location_keys(row["source_uri"], row.get("archive_member"))
    return {
        "kind": INGEST_ERROR,
        "source_uri": uri_key,
        "archive_member": member_key,
        "size": row.get("size"),
        "container": row.get("container"),
        "error_class": ERASED_SUBJECT,
        "error_message": "an item of a patient or study erased with medspark forget: not read",
    }


def _candidate_columns() -> frozenset[str]:
    from medspark.tables.schemas import HEADER_FIELDS, SOURCE_FIELDS

    return frozenset(f.name for f in HEADER_FIELDS + SOURCE_FIELDS)


_CANDIDATE_COLUMNS = _candidate_columns()


def process_units(
    units: Iterable[Any], errors: Iterable[Any], settings: PassSettings
) -> Iterator[dict[str, Any]]:
    """Every row of the pass for these work units (and the planner's error items), model not
    applied: ``scan`` / ``ingest_error`` rows, then the item's ``frame`` rows. Pure Python."""
    from medspark.preprocess.udf import process_item
    from medspark.sources.archives import iter_unit

    def items() -> Iterator[Any]:
        yield from errors
        for unit in units:
            yield from iter_unit(unit, settings.limits)

    locate = settings.pseudonymizer.locate if settings.pseudonymizer is not None else None
    for item in items():
        t_read = time.perf_counter()
        row, data = _scan_rows(item, settings)
        reason = row.get("burned_in_flag_reason")
        key = {  # the item's path: frame error messages name the file (then redacted)
            "sop_instance_uid": row.get("sop_instance_uid"),
            "source_uri": row["source_uri"],
            "archive_member": row.get("archive_member"),
            "burned_in_annotation": reason is not None,
            "burned_in_reason": reason,
        }
        if locate is not None and row.get("error_class") != ERASED_SUBJECT:
            locate(row)  # location keys in place of paths (deid.keep_paths off)
        yield row
        if data is None or settings.preprocess is None:
            continue
        seconds_read = time.perf_counter() - t_read  # read, hash, parse, de-identify
        for frame_row in process_item(data, key, settings.preprocess):
            if locate is not None:
                locate(frame_row)
            frame_row["kind"] = FRAME
            frame_row["seconds_read"] = seconds_read
            seconds_read = 0.0
            yield frame_row


_PREDICT_FNS: dict[str, Any] = {}


def _predict_fn(settings: Any) -> Any:
    """The model's predict function, built once per Python worker (workers are reused)."""
    key = repr(settings)  # frozen dataclasses of plain values (lists inside: not hashable)
    fn = _PREDICT_FNS.get(key)
    if fn is None:
        from medspark.inference.predict import make_predict_fn_factory

        fn = _PREDICT_FNS[key] = make_predict_fn_factory(settings)()
    return fn


def _apply_model(rows: list[dict[str, Any]], settings: PassSettings) -> dict[str, Any]:
    """Label, score and probabilities onto the frame rows that have a tensor, in batches of
    ``batch_size``; returns the batch's inference metrics (seconds, GPU)."""
    import numpy as np

    todo = [r for r in rows if r.get("kind") == FRAME and r.get("tensor") is not None]
    out: dict[str, Any] = {"seconds_infer": 0.0, "gpu_utilization": None, "gpu_memory_bytes": None}
    if settings.predict is None or not todo:
        return out
    predict = _predict_fn(settings.predict)
    for start in range(0, len(todo), settings.batch_size):
        chunk = todo[start : start + settings.batch_size]
        tensors = np.empty(len(chunk), dtype=object)
        tensors[:] = [r["tensor"] for r in chunk]
        if settings.predict.saliency:
            # A frame withheld for burned-in text: its overlay is drawn over black, as in infer
            # (its thumbnail leaves the analyst table).
            from medspark.preprocess.udf import BURNED_IN_WITHHELD

            beside = [np.empty(len(chunk), dtype=object) for _ in range(3)]
            beside[0][:] = [
                None if r.get("burned_in_action") == BURNED_IN_WITHHELD else r["thumbnail_png"]
                for r in chunk
            ]
            beside[1][:] = [r.get("frame_rows") for r in chunk]
            beside[2][:] = [r.get("frame_columns") for r in chunk]
            result = predict(tensors, *beside)
        else:
            result = predict(tensors)
        for i, r in enumerate(chunk):
            r["label"] = str(result["label"][i])
            r["score"] = float(result["score"][i])
            r["probabilities"] = [float(p) for p in result["probabilities"][i]]
            if settings.predict.saliency:
                r.update(saliency_row(result, i))
        out["seconds_infer"] += float(result["seconds_infer"][0])
        gpu = result["gpu_utilization"][0]
        out["gpu_utilization"] = None if gpu is None else float(gpu)
        mem = result["gpu_memory_bytes"][0]
        out["gpu_memory_bytes"] = None if mem is None else int(mem)
    return out


def saliency_row(result: dict[str, Any], i: int) -> dict[str, Any]:
    """Row ``i``'s ``saliency`` columns from a predict result (as
    :func:`medspark.steps.saliency_columns` makes them in Spark SQL for ``infer``)."""
    import base64

    def box(ints: Any) -> dict[str, int] | None:
        values = [int(v) for v in ints]
        if values[0] < 0:
            return None
        return dict(zip(("x_min", "y_min", "x_max", "y_max"), values, strict=True))

    peak_x, peak_y = int(result["peak_x"][i]), int(result["peak_y"][i])
    return {
        "target_class": str(result["saliency_target"][i]),
        "method": str(result["saliency_method"][i]),
        "heatmap_png": base64.b64decode(result["heatmap_png_b64"][i]),
        "bbox": box(result["bbox_ints"][i]),
        "bbox_frame": box(result["bbox_frame_ints"][i]),
        "peak_x": peak_x if peak_x >= 0 else None,
        "peak_y": peak_y if peak_y >= 0 else None,
        "peak_value": float(result["peak_value"][i]),
        "map_shape": [int(v) for v in result["map_shape"][i]],
    }


#: Rows of one output batch at most, whatever their kind (headers of a large archive, say).
MAX_BATCH_ROWS = 4096


def pass_batches(batches: Iterator[Any], settings: PassSettings) -> Iterator[Any]:
    """``mapInArrow`` body: rows of pickled ``(units, errors)`` in, :data:`PASS` rows out, in
    batches of at most ``preprocess.frames_per_batch`` frames and :data:`MAX_BATCH_ROWS` rows,
    each followed by its metrics."""
    import pickle

    import cv2
    import pyarrow as pa
    from pyspark import TaskContext
    from pyspark.sql.pandas.types import to_arrow_schema

    from medspark.failures import batch_done
    from medspark.preprocess.udf import worker_rss_bytes

    ctx = TaskContext.get()
    cv2.setNumThreads(max(1, ctx.cpus() if ctx is not None else 1))
    partition = ctx.partitionId() if ctx is not None else 0
    schema = to_arrow_schema(PASS, timezone="UTC")
    names = schema.names
    limit = settings.preprocess.frames_per_batch if settings.preprocess is not None else 0
    batch_index = 0

    def flush(rows: list[dict[str, Any]], started: float) -> Any:
        nonlocal batch_index
        infer = _apply_model(rows, settings)
        batch_done()  # a fault-injection point for tests, a no-op otherwise
        frames = [r for r in rows if r["kind"] == FRAME]
        rows.append(
            {
                "kind": METRICS,
                "partition": partition,
                "batch": batch_index,
                "batch_rows": len(frames),
                "seconds_read": sum(r.get("seconds_read") or 0.0 for r in frames),
                "seconds_decode": sum(r.get("seconds_decode") or 0.0 for r in frames),
                "seconds_preprocess": sum(r.get("seconds_preprocess") or 0.0 for r in frames),
                "seconds_wall": time.perf_counter() - started,
                "rss_bytes": worker_rss_bytes(),
                **infer,
            }
        )
        batch_index += 1
        columns = {n: [r.get(n) for r in rows] for n in names}
        return pa.RecordBatch.from_pydict(columns, schema=schema)

    for batch in batches:
        for blob in batch.column("units").to_pylist():
            units, errors = pickle.loads(blob)
            rows: list[dict[str, Any]] = []
            started = time.perf_counter()
            n_frames = 0
            for row in process_units(units, errors, settings):
                rows.append(row)
                n_frames += row["kind"] == FRAME
                if (limit and n_frames >= limit) or len(rows) >= MAX_BATCH_ROWS:
                    yield flush(rows, started)
                    rows, n_frames, started = [], 0, time.perf_counter()
            if rows:
                yield flush(rows, started)


def compute_in_driver(bins: list[Any], settings: PassSettings) -> Any:
    """The whole pass in this process, as a ``pyarrow.Table`` of :data:`PASS` rows: the same
    rows the executors would produce (:func:`pass_batches` itself, run here), for a small
    local input whose cost on Spark's Python workers would be mostly their start."""
    import pickle

    import pyarrow as pa
    from pyspark.sql.pandas.types import to_arrow_schema

    blobs = pa.RecordBatch.from_pydict({"units": [pickle.dumps(b) for b in bins]})
    batches = list(pass_batches(iter([blobs]), settings))
    return pa.Table.from_batches(batches, schema=to_arrow_schema(PASS, timezone="UTC"))
