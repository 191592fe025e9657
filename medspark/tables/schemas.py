"""Delta table schemas: declared once, here.

Every writer and reader in medspark takes its schema from this module, and the README's table
reference is checked against it by the tests. Times taken from DICOM are ``timestamp_ntz``:
DICOM DA/TM values are local wall-clock times without a zone (the optional Timezone Offset From
UTC (0008,0201) is rarely present), and storing them as zoned timestamps would shift them by the
reader's session zone.
"""

from __future__ import annotations

from pyspark.sql.types import (
    ArrayType,
    BinaryType,
    BooleanType,
    DateType,
    DoubleType,
    FloatType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampNTZType,
    TimestampType,
)


def _f(name: str, dtype: object, nullable: bool = True, comment: str = "") -> StructField:
    metadata = {"comment": comment} if comment else {}
    return StructField(name, dtype, nullable, metadata)  # type: ignore[arg-type]


_DOUBLES = ArrayType(DoubleType(), containsNull=False)

#: Where an item came from; identical in ``scans`` and ``ingest_errors``.
SOURCE_FIELDS: list[StructField] = [
    _f(
        "source_uri",
        StringType(),
        False,
        "location key of the loose file or archive (restricted_locations has its file:// URI); "
        "the URI itself with deid.keep_paths",
    ),
    _f(
        "archive_member",
        StringType(),
        True,
        "key of the member inside the archive (the path with deid.keep_paths); null for loose "
        "files",
    ),
    _f("size", LongType(), True, "bytes of the item (uncompressed member size)"),
    _f("sha256", StringType(), True, "SHA-256 of the item's bytes, hex"),
    _f(
        "container",
        StringType(),
        True,
        "what the source file is, sniffed from its bytes: plain, zip, tar or gzip",
    ),
]

#: Typed header columns parsed from DICOM (see medspark.dicom.header.parse_header).
HEADER_FIELDS: list[StructField] = [
    _f("sop_instance_uid", StringType(), False, "SOP Instance UID (0008,0018); the key"),
    _f("sop_class_uid", StringType(), True, "SOP Class UID (0008,0016)"),
    _f("study_instance_uid", StringType(), True, "Study Instance UID (0020,000D)"),
    _f("series_instance_uid", StringType(), True, "Series Instance UID (0020,000E)"),
    _f("patient_id", StringType(), True, "Patient ID (0010,0020)"),
    _f("modality", StringType(), True, "Modality (0008,0060)"),
    _f("body_part_examined", StringType(), True, "Body Part Examined (0018,0015)"),
    _f("study_date", DateType(), True, "Study Date (0008,0020)"),
    _f("study_time", StringType(), True, "Study Time (0008,0030) as HH:MM:SS[.ffffff]"),
    _f("study_datetime", TimestampNTZType(), True, "Study Date + Study Time, local time"),
    _f(
        "acquisition_datetime",
        TimestampNTZType(),
        True,
        "Acquisition DateTime (0008,002A), else Acquisition/Content/Series Date + Time",
    ),
    _f("station_name", StringType(), True, "Station Name (0008,1010)"),
    _f("manufacturer", StringType(), True, "Manufacturer (0008,0070)"),
    _f("manufacturer_model_name", StringType(), True, "Manufacturer's Model Name (0008,1090)"),
    _f("institution_name", StringType(), True, "Institution Name (0008,0080)"),
    _f("rows", IntegerType(), True, "Rows (0028,0010)"),
    _f("columns", IntegerType(), True, "Columns (0028,0011)"),
    _f("number_of_frames", IntegerType(), True, "Number of Frames (0028,0008); 1 if absent"),
    _f("samples_per_pixel", IntegerType(), True, "Samples per Pixel (0028,0002)"),
    _f("bits_allocated", IntegerType(), True, "Bits Allocated (0028,0100)"),
    _f("bits_stored", IntegerType(), True, "Bits Stored (0028,0101)"),
    _f("photometric_interpretation", StringType(), True, "Photometric Interpretation (0028,0004)"),
    _f("pixel_spacing", _DOUBLES, True, "Pixel Spacing (0028,0030) [row, col] mm"),
    _f("imager_pixel_spacing", _DOUBLES, True, "Imager Pixel Spacing (0018,1164) [row, col] mm"),
    _f("slice_thickness", DoubleType(), True, "Slice Thickness (0018,0050) mm"),
    _f("image_position_patient", _DOUBLES, True, "Image Position (Patient) (0020,0032) mm"),
    _f("image_orientation_patient", _DOUBLES, True, "Image Orientation (Patient) (0020,0037)"),
    _f("transfer_syntax_uid", StringType(), True, "Transfer Syntax UID (0002,0010)"),
    _f("has_pixels", BooleanType(), False, "Pixel Data present (7FE0,0010/0008/0009)"),
    _f("header_json", StringType(), True, "whole header as DICOM JSON (PS3.18 F), no bulk data"),
]

#: Output of the ``dicom`` data source: one row per input item, header or error.
INSTANCES = StructType(
    SOURCE_FIELDS
    + [
        StructField(f.name, f.dataType, True, f.metadata)  # nullable: error rows have no header
        for f in HEADER_FIELDS
    ]
    + [
        _f("error_class", StringType(), True, "why the item is not a scan; null when it is"),
        _f("error_message", StringType(), True, "the reason, naming the file"),
    ]
)

_RUN_FIELDS: list[StructField] = [
    _f("run_id", StringType(), False, "the job run that last wrote this row (job_runs.run_id)"),
]

#: Columns that say which run wrote a row and when, not what the row says: a re-run whose rows
#: differ only in these changes nothing (``writers.merge_into(only_changed=True)``).
BOOKKEEPING_COLUMNS = frozenset(
    {"run_id", "ingested_at", "recorded_at", "processed_at", "predicted_at", "evaluated_at"}
)

#: ``scans``: one row per DICOM instance, key ``sop_instance_uid``.
SCANS = StructType(
    HEADER_FIELDS
    + SOURCE_FIELDS
    + _RUN_FIELDS
    + [_f("ingested_at", TimestampType(), False, "when this row was written (UTC)")]
)

#: ``ingest_errors``: one row per input that could not become a scan, key source + member.
INGEST_ERRORS = StructType(
    SOURCE_FIELDS
    + [
        _f("error_class", StringType(), False, "machine-readable reason, e.g. truncated"),
        _f("message", StringType(), False, "human-readable reason naming the file"),
    ]
    + _RUN_FIELDS
    + [_f("recorded_at", TimestampType(), False, "when this row was written (UTC)")]
)

_FRAME_KEY: list[StructField] = [
    _f("sop_instance_uid", StringType(), False, "the instance (scans.sop_instance_uid)"),
    _f("frame", IntegerType(), False, "0-based frame number within the instance"),
]

#: Per-frame output of the preprocessing UDF, before it is split into images and errors.
PREPROCESSED = StructType(
    _FRAME_KEY[:1]
    + [StructField("frame", IntegerType(), True)]  # null: the whole file failed
    + [
        _f("source_uri", StringType(), True, "where the instance was read from (scans.source_uri)"),
        _f("archive_member", StringType(), True, "member inside the archive; null for loose files"),
        _f("frame_rows", IntegerType(), True, "rows of the decoded frame"),
        _f("frame_columns", IntegerType(), True, "columns of the decoded frame"),
        _f("tensor", BinaryType(), True, "model-ready tensor, C-order bytes"),
        _f("tensor_shape", ArrayType(IntegerType(), False), True, "tensor shape, e.g. [224, 224]"),
        _f("tensor_dtype", StringType(), True, "numpy dtype of tensor, e.g. uint8"),
        _f("thumbnail_png", BinaryType(), True, "displayed frame as PNG, longest side 128"),
        _f("window", StringType(), True, "display window applied (center/width, preset, minmax)"),
        _f(
            "burned_in_annotation",
            BooleanType(),
            True,
            "pixels may show burned-in text (Burned In Annotation, ultrasound, secondary capture)",
        ),
        _f("burned_in_reason", StringType(), True, "why the frame is flagged"),
        _f(
            "burned_in_action",
            StringType(),
            True,
            "cleaned (outside the ultrasound regions blacked out), withheld (pixels only in "
            "restricted_images), kept (deid.burned_in: keep); null when not flagged",
        ),
        _f("mask_area_px", LongType(), True, "foreground pixels of the configured mask"),
        _f("mask_area_mm2", DoubleType(), True, "mask area in mm2 from the frame's pixel spacing"),
        _f("mask_area_mm2_reason", StringType(), True, "why mask_area_mm2 is null"),
        _f("pixel_spacing_source", StringType(), True, "attribute the spacing came from"),
        _f("mask_components", IntegerType(), True, "8-connected components of the mask"),
        _f(
            "mask_mean_intensity",
            DoubleType(),
            True,
            "mean modality value inside the mask (HU for CT; grey for colour)",
        ),
        _f("seconds_read", DoubleType(), True, "reading the item's bytes (first frame only)"),
        _f("seconds_decode", DoubleType(), True, "decode + modality LUT time of this frame"),
        _f("seconds_preprocess", DoubleType(), True, "display + OpenCV chain + encode time"),
        _f("partition", IntegerType(), True, "Spark partition that produced the row"),
        _f("batch", IntegerType(), True, "output batch within the partition"),
        _f("seconds_wall", DoubleType(), True, "wall time of the whole output batch"),
        _f("rss_bytes", LongType(), True, "Python worker resident memory at batch end"),
        _f("error_class", StringType(), True),
        _f("error_message", StringType(), True),
    ]
)

_PREPROCESSED_BY_NAME = {f.name: f for f in PREPROCESSED.fields}

#: ``images``: one row per decoded frame, key ``sop_instance_uid`` + ``frame``.
IMAGES = StructType(
    _FRAME_KEY
    + [
        _PREPROCESSED_BY_NAME[n]
        for n in (
            "source_uri",
            "archive_member",
            "frame_rows",
            "frame_columns",
            "tensor",
            "tensor_shape",
            "tensor_dtype",
            "thumbnail_png",
            "window",
            "burned_in_annotation",
            "burned_in_reason",
            "burned_in_action",
            "mask_area_px",
            "mask_area_mm2",
            "mask_area_mm2_reason",
            "pixel_spacing_source",
            "mask_components",
            "mask_mean_intensity",
        )
    ]
    + [_f("config_hash", StringType(), False, "sha256 of the resolved preprocessing chain")]
    + _RUN_FIELDS
    + [_f("processed_at", TimestampType(), False, "when this row was written (UTC)")]
)

#: ``preprocess_errors``: a frame (or a whole file, frame null) that could not be preprocessed.
PREPROCESS_ERRORS = StructType(
    [
        _f("sop_instance_uid", StringType(), False, "the instance (scans.sop_instance_uid)"),
        _f("frame", IntegerType(), True, "0-based frame number; null when the whole file failed"),
        _f("source_uri", StringType(), True),
        _f("archive_member", StringType(), True),
        _f("error_class", StringType(), False, "unreadable, undecodable_file, undecodable_frame"),
        _f("message", StringType(), False, "the reason, naming the file and frame"),
    ]
    + _RUN_FIELDS
    + [_f("recorded_at", TimestampType(), False, "when this row was written (UTC)")]
)

#: What a model returns per frame (the predict_batch_udf return type).
PREDICTION = StructType(
    [
        _f("label", StringType(), True, "the most probable class name"),
        _f("score", FloatType(), True, "probability of label"),
        _f("probabilities", ArrayType(FloatType(), True), True, "per class, in class order"),
    ]
)

#: What the predict function returns per row: the prediction plus its batch's metrics.
PREDICTION_WITH_METRICS = StructType(
    PREDICTION.fields
    + [
        _f("partition", IntegerType(), True),
        _f("batch", IntegerType(), True),
        _f("seconds_infer", DoubleType(), True, "forward pass of the batch incl. copies"),
        _f("seconds_wall", DoubleType(), True, "the whole predict call of the batch"),
        _f("rss_bytes", LongType(), True),
        _f("gpu_utilization", DoubleType(), True),
        _f("gpu_memory_bytes", LongType(), True),
    ]
)

#: ``predictions``: one row per frame x model version.
PREDICTIONS = StructType(
    _FRAME_KEY
    + [
        _f("model", StringType(), False, "model name (inference.models[].name)"),
        _f("model_version", StringType(), False, "model version"),
    ]
    + PREDICTION.fields
    + [_f("class_names", ArrayType(StringType(), False), True, "names for probabilities")]
    + _RUN_FIELDS
    + [_f("predicted_at", TimestampType(), False, "when this row was written (UTC)")]
)

#: ``model_metrics``: one row per evaluation run x model version x class (class null: overall).
MODEL_METRICS = StructType(
    [
        _f("run_id", StringType(), False, "the evaluation run"),
        _f("model", StringType(), False),
        _f("model_version", StringType(), False),
        _f("class_name", StringType(), True, "null for the overall row"),
        _f("support", LongType(), False, "labelled frames of this class (overall: all)"),
        _f("accuracy", DoubleType(), True, "overall row only"),
        _f("precision", DoubleType(), True, "overall row: macro average"),
        _f("recall", DoubleType(), True, "overall row: macro average"),
        _f("f1", DoubleType(), True, "overall row: macro average"),
        _f("roc_auc", DoubleType(), True, "one-vs-rest; overall row: macro average"),
        _f(
            "confusion_matrix",
            ArrayType(ArrayType(LongType())),
            True,
            "overall row: [true class][predicted class] counts, class order of class_names",
        ),
        _f("class_names", ArrayType(StringType(), False), True, "order of confusion_matrix"),
        _f("unmatched_labels", LongType(), True, "labels with no prediction (overall row)"),
        _f("labels_source", StringType(), True, "the labels file or table evaluated against"),
        _f("evaluated_at", TimestampType(), False, "when this row was written (UTC)"),
    ]
)

#: ``restricted_phi_map``: original -> pseudonymous ids. Off by default; for data engineers who
#: must link back, never for analysts (see README). Names starting ``restricted_`` are the only
#: tables that are not de-identified.
RESTRICTED_PHI_MAP = StructType(
    [
        _f("kind", StringType(), False, "patient_id, study/series/sop_instance_uid"),
        _f("original", StringType(), False, "the identifying value"),
        _f("pseudonym", StringType(), False, "its value in the analyst tables"),
    ]
    + _RUN_FIELDS
    + [_f("recorded_at", TimestampType(), False, "when this row was written (UTC)")]
)

#: ``restricted_acquisitions``: true acquisition times with pseudonymous ids, for utilisation.
RESTRICTED_ACQUISITIONS = StructType(
    [
        _f("sop_instance_uid", StringType(), False, "pseudonymous (as in scans)"),
        _f("study_instance_uid", StringType(), True, "pseudonymous"),
        _f("series_instance_uid", StringType(), True, "pseudonymous"),
        _f("patient_id", StringType(), True, "pseudonymous patient key"),
        _f("modality", StringType(), True),
        _f("station_name", StringType(), True),
        _f("acquired_at", TimestampNTZType(), True, "TRUE acquisition time (not shifted)"),
    ]
)

#: ``restricted_locations``: where each item was read from. Export folders and files are often
#: named after the patient, so analyst tables carry location keys (``deid.keep_paths`` off, the
#: default) and the paths live here, for data engineers, who need them to re-read the files.
RESTRICTED_LOCATIONS = StructType(
    [
        _f("source_uri", StringType(), False, "location key, as in the analyst tables"),
        _f("archive_member", StringType(), True, "member key, as in the analyst tables"),
        _f("original_source_uri", StringType(), False, "file:// URI of the file or archive"),
        _f("original_archive_member", StringType(), True, "member path inside the archive"),
    ]
    + _RUN_FIELDS
    + [_f("recorded_at", TimestampType(), False, "when this row was written (UTC)")]
)

#: ``restricted_images``: the pixels of frames withheld from ``images`` for burned-in text
#: (flagged, and no Sequence of Ultrasound Regions (0018,6011) to clean them by), key
#: ``sop_instance_uid`` + ``frame`` as in ``images``. ``infer`` reads their tensors from here.
RESTRICTED_IMAGES = StructType(
    _FRAME_KEY
    + [
        _PREPROCESSED_BY_NAME[n]
        for n in ("tensor", "tensor_shape", "tensor_dtype", "thumbnail_png", "burned_in_reason")
    ]
    + [_f("config_hash", StringType(), False, "sha256 of the resolved preprocessing chain")]
    + _RUN_FIELDS
    + [_f("processed_at", TimestampType(), False, "when this row was written (UTC)")]
)

#: ``job_runs``: one row per run of any medspark job.
JOB_RUNS = StructType(
    [
        _f("run_id", StringType(), False, "unique id of the run (UTC start time + random)"),
        _f("job", StringType(), False, "ingest, ingest_stream, preprocess, infer, evaluate or run"),
        _f(
            "status",
            StringType(),
            False,
            "running, succeeded or failed; abandoned: it was running when its driver died",
        ),
        _f("error", StringType(), True, "why the run failed (null when it succeeded)"),
        _f("config_hash", StringType(), True, "sha256 of the resolved pipeline config"),
        _f(
            "deid_enabled", BooleanType(), True, "false means analyst tables were not de-identified"
        ),
        _f(
            "deid_table_edition",
            StringType(),
            True,
            "edition of PS3.15 Table E.1-1 applied, e.g. 2026c (null when deid is off)",
        ),
        _f("medspark_version", StringType(), True),
        _f("spark_version", StringType(), True),
        _f("delta_version", StringType(), True),
        _f("torch_version", StringType(), True, "null when torch was not used"),
        _f("master", StringType(), True, "Spark master URL"),
        _f("default_parallelism", IntegerType(), True, "cores Spark schedules on"),
        _f("started_at", TimestampType(), False),
        _f("ended_at", TimestampType(), True, "null while running or when abandoned"),
        _f("seconds", DoubleType(), True, "wall time of the run; null as ended_at"),
        _f("items_in", LongType(), True, "input items (ingest) or rows read"),
        _f("rows_out", StringType(), True, "JSON: rows written per table"),
        _f("errors", LongType(), True, "error rows written"),
        _f("images_per_second", DoubleType(), True, "frames processed per wall second"),
        _f("driver_host", StringType(), True, "host name of the driver process"),
        _f("driver_pid", IntegerType(), True, "process id of the driver (to tell a dead run)"),
    ]
)

#: ``stage_metrics``: Spark's own accounting per stage attempt of a run (monitoring REST API).
STAGE_METRICS = StructType(
    [
        _f("run_id", StringType(), False),
        _f("stage_id", IntegerType(), False),
        _f("attempt_id", IntegerType(), False),
        _f("name", StringType(), True, "Spark's stage name (call site)"),
        _f("status", StringType(), True),
        _f("num_tasks", IntegerType(), True),
        _f("num_failed_tasks", IntegerType(), True),
        _f("executor_run_time_s", DoubleType(), True, "sum over tasks"),
        _f("executor_cpu_time_s", DoubleType(), True, "sum over tasks"),
        _f("jvm_gc_time_s", DoubleType(), True, "sum over tasks"),
        _f("input_bytes", LongType(), True),
        _f("input_records", LongType(), True),
        _f("output_bytes", LongType(), True),
        _f("output_records", LongType(), True),
        _f("shuffle_read_bytes", LongType(), True),
        _f("shuffle_write_bytes", LongType(), True),
        _f("memory_spilled_bytes", LongType(), True),
        _f("disk_spilled_bytes", LongType(), True),
        _f("peak_execution_memory", LongType(), True, "sum over tasks of their peaks"),
    ]
)

#: ``worker_metrics``: one row per UDF output batch (Python worker side).
WORKER_METRICS = StructType(
    [
        _f("run_id", StringType(), False),
        _f("step", StringType(), False, "preprocess or infer"),
        _f("partition", IntegerType(), False, "Spark partition id"),
        _f("batch", IntegerType(), False, "batch number within the partition"),
        _f("rows", LongType(), True, "rows the batch produced"),
        _f("seconds_read", DoubleType(), True, "reading item bytes"),
        _f("seconds_decode", DoubleType(), True, "decode + modality LUT"),
        _f("seconds_preprocess", DoubleType(), True, "display window + OpenCV chain + encode"),
        _f("seconds_infer", DoubleType(), True, "model forward pass incl. host-device copies"),
        _f("seconds_wall", DoubleType(), True, "wall time of the batch in the worker"),
        _f("rss_bytes", LongType(), True, "Python worker resident memory after the batch"),
        _f("gpu_utilization", DoubleType(), True, "percent; null without a GPU"),
        _f("gpu_memory_bytes", LongType(), True, "allocated by torch; null without a GPU"),
    ]
)

#: ``scanner_utilization``: modality x station x day, from ``scans`` (see medspark.metrics).
SCANNER_UTILIZATION = StructType(
    [
        _f("modality", StringType(), True),
        _f("station_name", StringType(), True, "null: the instances carried no Station Name"),
        _f(
            "day",
            DateType(),
            False,
            "TRUE acquisition day (from restricted_acquisitions, before any date shift)",
        ),
        _f("studies", LongType(), False),
        _f("series", LongType(), False),
        _f("instances", LongType(), False),
        _f("patients", LongType(), False, "distinct pseudonymous patient keys"),
        _f("first_acquisition", TimestampNTZType(), True),
        _f("last_acquisition", TimestampNTZType(), True),
        _f("busy_hours", DoubleType(), False, "sum of per-study acquisition spans, capped"),
        _f("instances_by_hour", ArrayType(LongType()), False, "24 counts, hour of day 0..23"),
        _f("run_id", StringType(), False),
    ]
)

_WAVEFORM_KEY: list[StructField] = [
    _f("sop_instance_uid", StringType(), False, "the instance (scans.sop_instance_uid)"),
    _f(
        "multiplex_group",
        IntegerType(),
        False,
        "0-based item of the Waveform Sequence (5400,0100); not named group: an SQL keyword",
    ),
    _f("channel", IntegerType(), False, "0-based item of the Channel Definition Sequence"),
]

#: ``waveforms``: one row per instance x multiplex group x channel, samples in physical units.
#: De-identified: the instance key is the pseudonym of ``scans``; Channel Label (003A,0203) and
#: Multiplex Group Label (003A,0020), free text that PS3.15 E.1-1 removes, are not stored.
WAVEFORMS = StructType(
    _WAVEFORM_KEY
    + [
        _f(
            "lead",
            StringType(),
            True,
            "Code Meaning of Channel Source Sequence (003A,0208), e.g. Lead II",
        ),
        _f("lead_code", StringType(), True, "its Code Value, e.g. 5.6.3-9-2 (SCPECG) or MDC"),
        _f(
            "units",
            StringType(),
            True,
            "Channel Sensitivity Units (003A,0211) code (UCUM, e.g. uV); null: raw, no units",
        ),
        _f("units_meaning", StringType(), True, "its Code Meaning, e.g. microvolt"),
        _f("sampling_frequency", DoubleType(), False, "Sampling Frequency (003A,001A), Hz"),
        _f("n_samples", IntegerType(), False, "Number of Waveform Samples (003A,0010)"),
        _f("duration_s", DoubleType(), False, "n_samples / sampling_frequency"),
        _f(
            "samples",
            ArrayType(FloatType(), False),
            False,
            "raw x Channel Sensitivity x Correction Factor + Channel Baseline, in units",
        ),
        _f("channel_sensitivity", DoubleType(), True, "Channel Sensitivity (003A,0210)"),
        _f("correction_factor", DoubleType(), True, "Channel Sensitivity Correction Factor"),
        _f("channel_baseline", DoubleType(), True, "Channel Baseline (003A,0213), in units"),
        _f(
            "sample_interpretation",
            StringType(),
            True,
            "Waveform Sample Interpretation (5400,1006): SS, US, SB, UB, MB, AB, ...",
        ),
        _f("bits_allocated", IntegerType(), True, "Waveform Bits Allocated (5400,1004)"),
        _f("originality", StringType(), True, "Waveform Originality (003A,0004)"),
        _f("source_uri", StringType(), True, "where the instance was read from"),
        _f("archive_member", StringType(), True, "member inside the archive; null: loose file"),
    ]
    + _RUN_FIELDS
    + [_f("processed_at", TimestampType(), False, "when this row was written (UTC)")]
)

#: ``ecg_metrics``: per instance (``lead`` null) and per lead of the analysed multiplex group.
ECG_METRICS = StructType(
    [
        _f("sop_instance_uid", StringType(), False, "the instance (scans.sop_instance_uid)"),
        _f(
            "lead",
            StringType(),
            True,
            "null: the instance's row (what most queries want); else the lead's own row",
        ),
        _f("multiplex_group", IntegerType(), True, "the group analysed (longest in volts)"),
        _f("heart_rate_bpm", DoubleType(), True, "60 / mean RR; null when not measurable"),
        _f("rr_mean_ms", DoubleType(), True, "mean RR interval"),
        _f("rr_sd_ms", DoubleType(), True, "standard deviation of RR intervals (SDNN)"),
        _f("n_beats", IntegerType(), True, "R peaks found"),
        _f("pr_ms", DoubleType(), True, "P onset to QRS onset; instance: median over leads"),
        _f("qrs_ms", DoubleType(), True, "QRS onset to offset; instance: median over leads"),
        _f("qt_ms", DoubleType(), True, "QRS onset to T offset; instance: median over leads"),
        _f("qtc_ms", DoubleType(), True, "QT / sqrt(RR in s) (Bazett)"),
        _f(
            "quality",
            DoubleType(),
            True,
            "mean correlation of each beat with the median beat (-1..1; under 0.8: noisy)",
        ),
        _f("analysis_lead", StringType(), True, "instance row: lead of rate, RR and quality"),
        _f("leads_measured", IntegerType(), True, "instance row: leads with a heart rate"),
        _f("duration_s", DoubleType(), True, "length of the analysed record"),
        _f("sampling_frequency", DoubleType(), True, "Hz"),
        _f("reason", StringType(), True, "why the metrics are null (too short, flat, noisy)"),
        _f("method", StringType(), True, "library and version that measured, e.g. neurokit2"),
    ]
    + _RUN_FIELDS
    + [_f("computed_at", TimestampType(), False, "when this row was written (UTC)")]
)

#: ``waveform_errors``: an instance with a Waveform Sequence that could not be decoded.
WAVEFORM_ERRORS = StructType(
    [
        _f("sop_instance_uid", StringType(), False, "the instance (scans.sop_instance_uid)"),
        _f("multiplex_group", IntegerType(), True, "the bad group; null: the whole instance"),
        _f("source_uri", StringType(), True),
        _f("archive_member", StringType(), True),
        _f(
            "error_class",
            StringType(),
            False,
            "bad_channel_definition, waveform_data_too_short, unsupported_waveform, "
            "waveform_too_large, no_waveform, unreadable_waveform, source_changed, unreadable",
        ),
        _f("message", StringType(), False, "the reason, naming the file"),
    ]
    + _RUN_FIELDS
    + [_f("recorded_at", TimestampType(), False, "when this row was written (UTC)")]
)

#: One ``series`` row before its run fields: what :func:`medspark.volumes.series.summarise_series`
#: returns (see :mod:`medspark.volumes.geometry` for the verdicts).
SERIES_SUMMARY = StructType(
    [
        _f(
            "series_instance_uid",
            StringType(),
            False,
            "Series Instance UID (0020,000E), pseudonymous",
        ),
        _f(
            "study_instance_uid", StringType(), True, "Study Instance UID (0020,000D), pseudonymous"
        ),
        _f("patient_id", StringType(), True, "pseudonymous patient key (as in scans)"),
        _f("modality", StringType(), True, "Modality (0008,0060), most common in the series"),
        _f("body_part_examined", StringType(), True, "Body Part Examined (0018,0015)"),
        _f("station_name", StringType(), True, "Station Name (0008,1010)"),
        _f("instances", LongType(), False, "instances (scans rows) in the series"),
        _f("pixel_instances", LongType(), False, "instances with pixel data"),
        _f("frames", LongType(), False, "frames of the pixel instances (slices)"),
        _f("rows", IntegerType(), True, "Rows (0028,0010) of the first slice"),
        _f("columns", IntegerType(), True, "Columns (0028,0011) of the first slice"),
        _f("pixel_spacing", _DOUBLES, True, "Pixel Spacing (0028,0030) [row, col] mm"),
        _f(
            "slice_spacing",
            DoubleType(),
            True,
            "median step between slices along the normal of Image Orientation (Patient), mm",
        ),
        _f("slice_thickness", DoubleType(), True, "Slice Thickness (0018,0050) mm, most common"),
        _f("first_position", _DOUBLES, True, "Image Position (Patient) of the first slice, mm LPS"),
        _f("last_position", _DOUBLES, True, "Image Position (Patient) of the last slice, mm LPS"),
        _f("orientation", _DOUBLES, True, "Image Orientation (Patient) (0020,0037)"),
        _f(
            "affine",
            _DOUBLES,
            True,
            "4x4 row-major, (slice, row, column, 1) -> LPS mm; regular or single_slice only",
        ),
        _f("first_acquisition", TimestampNTZType(), True, "earliest acquisition (as in scans)"),
        _f("last_acquisition", TimestampNTZType(), True, "latest acquisition (as in scans)"),
        _f("acquisition_seconds", DoubleType(), True, "last minus first acquisition, seconds"),
        _f(
            "verdict",
            StringType(),
            False,
            "regular, or why not: no_geometry, single_slice, mixed_orientation, mixed_size, "
            "duplicate_positions, gantry_tilt, missing_slices, varying_spacing",
        ),
        _f("verdict_detail", StringType(), True, "what failed and where; null when regular"),
    ]
)

#: ``series``: one row per series, from ``scans`` (no pixel read), key ``series_instance_uid``.
SERIES = StructType(
    SERIES_SUMMARY.fields
    + _RUN_FIELDS
    + [_f("computed_at", TimestampType(), False, "when this row was written (UTC)")]
)

_LPS = "three doubles, mm, patient coordinates LPS"

#: What the volume task returns per series: one row per label, or one error row.
VOLUME_OUT = StructType(
    [
        _f("series_instance_uid", StringType(), False, "Series Instance UID, pseudonymous"),
        _f("model", StringType(), False, "model name (volumes.model.name)"),
        _f("model_version", StringType(), False, "model version"),
        _f("label", StringType(), True, "label name (volumes.model.labels)"),
        _f("label_value", IntegerType(), True, "the label's value in the mask, 1-based"),
        _f("voxel_count", LongType(), True, "voxels of the label in the segmented grid"),
        _f("volume_ml", DoubleType(), True, "voxel_count x voxel volume of the segmented grid, mL"),
        _f("centroid", _DOUBLES, True, "mean of the label's voxel centres; " + _LPS),
        _f("bbox_min", _DOUBLES, True, "smallest x, y, z of the label's voxel centres; " + _LPS),
        _f("bbox_max", _DOUBLES, True, "largest x, y, z of the label's voxel centres; " + _LPS),
        _f("slices", IntegerType(), True, "slices of the assembled volume"),
        _f(
            "voxel_spacing",
            _DOUBLES,
            True,
            "spacing of the segmented grid [slice, row, column] mm (after resampling)",
        ),
        _f(
            "grid_shape",
            ArrayType(IntegerType(), False),
            True,
            "shape of the segmented grid [slices, rows, columns]",
        ),
        _f("seconds_assemble", DoubleType(), True, "read + decode + stack of the series"),
        _f("seconds_preprocess", DoubleType(), True, "3D chain"),
        _f("seconds_infer", DoubleType(), True, "sliding-window inference"),
        _f("rss_bytes", LongType(), True, "Python worker resident memory after the series"),
        _f("error_class", StringType(), True),
        _f("error_message", StringType(), True),
    ]
)

_VOLUME_OUT_BY_NAME = {f.name: f for f in VOLUME_OUT.fields}

#: ``series_segments``: one row per series x model version x label.
SERIES_SEGMENTS = StructType(
    [
        _VOLUME_OUT_BY_NAME[n]
        for n in (
            "series_instance_uid",
            "label",
            "label_value",
            "model",
            "model_version",
            "voxel_count",
            "volume_ml",
            "centroid",
            "bbox_min",
            "bbox_max",
            "slices",
            "voxel_spacing",
            "grid_shape",
        )
    ]
    + _RUN_FIELDS
    + [_f("segmented_at", TimestampType(), False, "when this row was written (UTC)")]
)

#: ``series_errors``: a series that could not be assembled or segmented by a model version.
SERIES_ERRORS = StructType(
    [
        _VOLUME_OUT_BY_NAME["series_instance_uid"],
        _VOLUME_OUT_BY_NAME["model"],
        _VOLUME_OUT_BY_NAME["model_version"],
        _f(
            "error_class",
            StringType(),
            False,
            "irregular_series, series_too_large, not_monochrome, unreadable, source_changed, "
            "undecodable_file, undecodable_frame, segmentation_failed (or the reader's class)",
        ),
        _f("message", StringType(), False, "the reason, naming the series (and instance, frame)"),
    ]
    + _RUN_FIELDS
    + [_f("recorded_at", TimestampType(), False, "when this row was written (UTC)")]
)

#: Table name (config key under ``tables``) -> (schema, merge key columns).
TABLES: dict[str, tuple[StructType, tuple[str, ...]]] = {
    "scans": (SCANS, ("sop_instance_uid",)),
    "ingest_errors": (INGEST_ERRORS, ("source_uri", "archive_member")),
    "images": (IMAGES, ("sop_instance_uid", "frame")),
    "preprocess_errors": (PREPROCESS_ERRORS, ("sop_instance_uid", "frame")),
    "predictions": (PREDICTIONS, ("sop_instance_uid", "frame", "model", "model_version")),
    "model_metrics": (MODEL_METRICS, ("run_id", "model", "model_version", "class_name")),
    "restricted_phi_map": (RESTRICTED_PHI_MAP, ("kind", "original")),
    "job_runs": (JOB_RUNS, ("run_id",)),
    "stage_metrics": (STAGE_METRICS, ("run_id", "stage_id", "attempt_id")),
    "worker_metrics": (WORKER_METRICS, ("run_id", "step", "partition", "batch")),
    "scanner_utilization": (SCANNER_UTILIZATION, ("modality", "station_name", "day")),
    "restricted_acquisitions": (RESTRICTED_ACQUISITIONS, ("sop_instance_uid",)),
    "restricted_images": (RESTRICTED_IMAGES, ("sop_instance_uid", "frame")),
    "restricted_locations": (RESTRICTED_LOCATIONS, ("source_uri", "archive_member")),
    "waveforms": (WAVEFORMS, ("sop_instance_uid", "multiplex_group", "channel")),
    "ecg_metrics": (ECG_METRICS, ("sop_instance_uid", "lead")),
    "waveform_errors": (WAVEFORM_ERRORS, ("sop_instance_uid",)),
    "series": (SERIES, ("series_instance_uid",)),
    "series_segments": (
        SERIES_SEGMENTS,
        ("series_instance_uid", "model", "model_version", "label"),
    ),
    "series_errors": (SERIES_ERRORS, ("series_instance_uid", "model", "model_version")),
}
