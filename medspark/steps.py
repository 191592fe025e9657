"""The medspark flow's steps: DataFrame in, DataFrame out, no table written.

Ingestion is the pass of :mod:`medspark.onepass` (read, hash, parse, de-identify each item
once, on the executor that reads it), for ``ingest`` with decoding off and for ``run`` with
everything on; its candidates then go through :func:`resolve_duplicates`, which keeps one item
per SOP Instance UID and moves the others to ``ingest_errors`` with their reason, so every
input item ends in exactly one of ``scans`` or ``ingest_errors``.
Preprocessing: :func:`pixel_instances` ─► :func:`frame_ranges` ─► :func:`preprocess_frames`
─► :func:`split_frames`; inference: :func:`predict_frames`. The jobs that read and write the
tables are in :mod:`medspark.pipeline`; what a run did, and its recording, in
:mod:`medspark.recording`.
"""

from __future__ import annotations

from typing import Any

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from medspark.config import PipelineConfig
from medspark.tables.error_classes import DUPLICATE_COPY
from medspark.tables.error_classes import DUPLICATE_SOP_INSTANCE as DUPLICATE_SOP
from medspark.tables.schemas import SOURCE_FIELDS


def _location(uri: Any, member: Any) -> Any:
    return F.when(member.isNull(), uri).otherwise(F.concat(uri, F.lit("!"), member))


def duplicate_error(kept_uri: Any, kept_member: Any, kept_sha: Any, note: str = "") -> list[Any]:
    """``error_class`` and ``message`` columns for a row whose SOP Instance UID is taken by the
    item at ``kept_uri`` / ``kept_member``: ``duplicate_copy`` when its bytes are the same
    (``kept_sha``), else ``duplicate_sop_instance``; the message names both items."""
    same = F.col("sha256").eqNullSafe(kept_sha)
    return [
        F.when(same, F.lit(DUPLICATE_COPY)).otherwise(F.lit(DUPLICATE_SOP)).alias("error_class"),
        F.concat(
            _location(F.col("source_uri"), F.col("archive_member")),
            F.lit(": SOP Instance UID "),
            F.col("sop_instance_uid"),
            F.when(same, F.lit(" is an identical copy of ")).otherwise(
                F.lit(" is already taken by different content in ")
            ),
            _location(kept_uri, kept_member),
            F.lit(f" (kept{note})"),
        ).alias("message"),
    ]


def resolve_duplicates(
    candidates: DataFrame, existing: DataFrame | None
) -> tuple[DataFrame, DataFrame]:
    """Keep one item per SOP Instance UID (0008,0018); the others become error rows.

    The choice is deterministic: an instance already in ``scans`` keeps its source (a re-run of
    the same item updates that row); otherwise the item with the smallest ``source_uri``, then
    ``archive_member`` (loose file first), is kept. A rejected item with the same SHA-256 as the
    kept one is ``duplicate_copy`` (the same file twice); with different content it is
    ``duplicate_sop_instance``, which usually means a UID generator reused a value. The message
    names the kept source.
    """
    if existing is not None:
        prior = existing.select(
            F.col("sop_instance_uid"),
            F.col("source_uri").alias("_e_uri"),
            F.col("archive_member").alias("_e_member"),
            F.col("sha256").alias("_e_sha"),
        )
        joined = candidates.join(prior, "sop_instance_uid", "left")
    else:
        joined = (
            candidates.withColumn("_e_uri", F.lit(None).cast("string"))
            .withColumn("_e_member", F.lit(None).cast("string"))
            .withColumn("_e_sha", F.lit(None).cast("string"))
        )
    window = Window.partitionBy("sop_instance_uid").orderBy(
        F.col("source_uri").asc(), F.col("archive_member").asc_nulls_first()
    )
    ranked = (
        joined.withColumn("_first_uri", F.first("source_uri").over(window))
        .withColumn("_first_member", F.first("archive_member").over(window))
        .withColumn("_first_sha", F.first("sha256").over(window))
        .withColumn("_kept_uri", F.coalesce("_e_uri", "_first_uri"))
        .withColumn(
            "_kept_member",
            F.when(F.col("_e_uri").isNotNull(), F.col("_e_member")).otherwise(
                F.col("_first_member")
            ),
        )
        .withColumn(
            "_kept_sha",
            F.when(F.col("_e_uri").isNotNull(), F.col("_e_sha")).otherwise(F.col("_first_sha")),
        )
        .withColumn(
            "_keep",
            F.col("source_uri").eqNullSafe(F.col("_kept_uri"))
            & F.col("archive_member").eqNullSafe(F.col("_kept_member")),
        )
    )
    helper_cols = [c for c in ranked.columns if c.startswith("_")]
    kept = ranked.where("_keep").drop(*helper_cols)
    rejected = ranked.where(~F.col("_keep")).select(
        *[f.name for f in SOURCE_FIELDS],
        *duplicate_error(F.col("_kept_uri"), F.col("_kept_member"), F.col("_kept_sha")),
    )
    return kept, rejected


_STREAM_SUFFIXES = (".tar", ".tgz", ".tar.gz", ".gz")


def pixel_instances(scans: DataFrame) -> DataFrame:
    """Instances that carry Pixel Data (7FE0,0010): the input of preprocessing.

    With what the burned-in rule needs (:func:`medspark.dicom.burned_in.burned_in_rule`,
    applied on the executor as ``run``'s pass applies it): the first value of Burned In
    Annotation (0028,0301), the modality and the SOP Class UID (0008,0016). What happens to the
    pixels of a flagged instance is ``deid.burned_in`` (see :mod:`medspark.preprocess.udf`).
    """
    # scans rows of releases before scans.container have none: the reader sniffs anyway.
    container = F.col("container") if "container" in scans.columns else F.lit(None)
    return scans.where(F.col("has_pixels")).select(
        "sop_instance_uid",
        "source_uri",
        "archive_member",
        "sha256",
        container.cast("string").alias("container"),
        F.get_json_object("header_json", "$.00280301.Value[0]").alias("burned_in_value"),
        "modality",
        "sop_class_uid",
        F.coalesce("number_of_frames", F.lit(1)).alias("number_of_frames"),
    )


def frame_ranges(instances: DataFrame, frames_per_task: int) -> DataFrame:
    """One row per share of at most ``frames_per_task`` frames of each instance.

    A 500-frame file (ultrasound cine, enhanced CT or MR) would otherwise be decoded by one task
    on one core while the others idle. Adds ``frame_start`` and ``frame_stop`` (0-based,
    half-open); an instance with no more frames than that keeps one row with both null (the
    whole file). Each share reads the whole file: the split trades reading for parallel decode.
    """
    n = F.col("number_of_frames")
    starts = F.sequence(F.lit(0), n - 1, F.lit(frames_per_task))
    split = instances.where(n > frames_per_task).select("*", F.explode(starts).alias("frame_start"))
    return split.withColumn(
        "frame_stop", F.least(F.col("frame_start") + frames_per_task, n)
    ).unionByName(
        instances.where(~(n > frames_per_task) | n.isNull()).withColumns(
            {"frame_start": F.lit(None).cast("int"), "frame_stop": F.lit(None).cast("int")}
        )
    )


def preprocess_settings(config: PipelineConfig) -> Any:
    """The executor's :class:`~medspark.preprocess.udf.PreprocessSettings` for ``config``."""
    from medspark.onepass import limits
    from medspark.preprocess.udf import PreprocessSettings

    pre = config.preprocess
    return PreprocessSettings(
        chain=pre.chain(),
        window=pre.window_value(),
        thumbnail_size=pre.thumbnail_size,
        frames_per_batch=pre.frames_per_batch,
        burned_in=config.deid.burned_in,
        limits=limits(config.ingest),
    )


def preprocess_frames(
    instances: DataFrame, config: PipelineConfig, num_partitions: int
) -> DataFrame:
    """Decode and preprocess every frame: one output row per frame or per failure.

    Members of tar/gzip streams are co-located by ``source_uri`` so each stream is read once per
    partition; loose files and zip members are spread by SOP Instance UID and frame range (see
    :func:`frame_ranges`) so every core works. Only locations go into the UDF; the bytes are
    read on the executor.
    """
    from medspark.preprocess.udf import preprocess_batches
    from medspark.tables.schemas import PREPROCESSED

    pre = config.preprocess
    settings = preprocess_settings(config)
    columns = PREPROCESSED.fieldNames()
    # Tar and gzip streams are read front to back: their members go to one partition. The
    # kind was sniffed at ingest (scans.container); rows of older releases fall back on the
    # file name.
    by_suffix = F.lower("source_uri").rlike(
        "(" + "|".join(s.replace(".", r"\.") for s in _STREAM_SUFFIXES) + ")$"
    )
    is_stream = (
        F.coalesce(F.col("container").isin("tar", "gzip"), by_suffix)
        & F.col("archive_member").isNotNull()
    )
    keyed = frame_ranges(instances, pre.frames_per_task).withColumn(
        "_part",
        F.when(is_stream, F.col("source_uri")).otherwise(
            F.concat_ws(
                "#", "sop_instance_uid", F.lpad(F.col("frame_start").cast("string"), 9, "0")
            )
        ),
    )
    return (
        # By range, not by hash: a few heavy rows (the shares of one large file) hashed into a
        # few partitions collide and leave cores idle; ranges give each partition its share.
        keyed.repartitionByRange(num_partitions, "_part")
        .sortWithinPartitions("source_uri", "archive_member", "frame_start")
        .drop("_part")
        .mapInPandas(lambda it: preprocess_batches(it, settings, columns), PREPROCESSED)
    )


def split_frames(frames: DataFrame) -> tuple[DataFrame, DataFrame]:
    """Split UDF output into ``images`` rows and ``preprocess_errors`` rows."""
    images = frames.where(F.col("error_class").isNull()).drop("error_class", "error_message")
    errors = frames.where(F.col("error_class").isNotNull()).select(
        "sop_instance_uid",
        "frame",
        "source_uri",
        "archive_member",
        "error_class",
        F.col("error_message").alias("message"),
    )
    return images, errors


def predict_frames(
    images: DataFrame, config: PipelineConfig, model_name: str | None = None
) -> DataFrame:
    """Run the model on every frame's tensor with predict_batch_udf; one row per frame.

    With ``inference.saliency`` on, the same UDF also reads each frame's ``thumbnail_png``,
    ``frame_rows`` and ``frame_columns`` (null when ``images`` lacks them) and the rows carry
    the ``saliency`` table's columns too (:func:`saliency_rows` selects them).
    """
    from medspark.inference.predict import predict_udf

    model = config.inference.model_config(model_name)
    udf = predict_udf(config.inference, model, config.preprocess.thumbnail_size)
    saliency = config.inference.saliency
    if saliency:
        beside = [
            F.col(c) if c in images.columns else F.lit(None).cast(t)
            for c, t in (
                ("thumbnail_png", "binary"),
                ("frame_rows", "int"),
                ("frame_columns", "int"),
            )
        ]
        call = udf(F.col("tensor"), *beside)
    else:
        call = udf(F.col("tensor"))
    return images.select("sop_instance_uid", "frame", call.alias("_p")).select(
        "sop_instance_uid",
        "frame",
        *model_columns(model),
        "_p.label",
        "_p.score",
        "_p.probabilities",
        # Batch metrics for worker_metrics (not columns of the predictions table).
        "_p.partition",
        "_p.batch",
        "_p.seconds_infer",
        "_p.seconds_wall",
        "_p.rss_bytes",
        "_p.gpu_utilization",
        "_p.gpu_memory_bytes",
        *(saliency_columns(F.col("_p")) if saliency else []),
    )


def _box(ints: Any) -> Any:
    """A ``bbox`` struct from the executor's 4 ints (-1: no box, null)."""
    names = ("x_min", "y_min", "x_max", "y_max")
    return F.when(
        ints.isNotNull() & (ints[0] >= 0),
        F.struct(*[ints[i].alias(n) for i, n in enumerate(names)]),
    )


def saliency_columns(out: Any) -> list[Any]:
    """The ``saliency`` columns from the executor's struct ``out`` (see
    :data:`~medspark.tables.schemas.SALIENCY_OUT`): the PNG from base64, boxes as structs."""
    return [
        out["saliency_target"].alias("target_class"),
        out["saliency_method"].alias("method"),
        F.unbase64(out["heatmap_png_b64"]).alias("heatmap_png"),
        _box(out["bbox_ints"]).alias("bbox"),
        _box(out["bbox_frame_ints"]).alias("bbox_frame"),
        F.when(out["peak_x"] >= 0, out["peak_x"]).alias("peak_x"),
        F.when(out["peak_y"] >= 0, out["peak_y"]).alias("peak_y"),
        out["peak_value"].alias("peak_value"),
        out["map_shape"].alias("map_shape"),
    ]


def saliency_rows(predicted: DataFrame) -> DataFrame:
    """``saliency`` rows of frames predicted with saliency on (those with a heat map)."""
    from medspark.tables.schemas import SALIENCY

    names = [f.name for f in SALIENCY.fields if f.name not in ("run_id", "predicted_at")]
    return predicted.where(F.col("heatmap_png").isNotNull()).select(*names)


def phi_rows(kept: DataFrame) -> DataFrame:
    """``restricted_phi_map`` rows from the pass's scans (original ids beside the pseudonyms)."""
    from medspark.onepass import ORIGINAL_IDS

    pairs = ", ".join(f"'{n}', original_{n}, {n}" for n in ORIGINAL_IDS)
    return (
        kept.selectExpr(f"stack({len(ORIGINAL_IDS)}, {pairs}) as (kind, original, pseudonym)")
        .where(F.col("original").isNotNull() & F.col("pseudonym").isNotNull())
        .distinct()
    )


def split_withheld(images: DataFrame, stamp: dict[str, Any]) -> tuple[DataFrame, DataFrame]:
    """``images`` rows for the analyst table, and the rows of ``restricted_images``.

    A frame withheld for burned-in text (``burned_in_action`` ``withheld``) keeps its row in
    ``images`` (every frame is accounted for there) without ``tensor`` and ``thumbnail_png``;
    its pixels go to ``restricted_images`` only. ``stamp`` (config hash, run id, time) is added
    to both.
    """
    from medspark.preprocess.udf import BURNED_IN_WITHHELD

    withheld = F.col("burned_in_action") == BURNED_IN_WITHHELD
    analyst = images.withColumns(
        {
            "tensor": F.when(withheld, F.lit(None)).otherwise(F.col("tensor")),
            "thumbnail_png": F.when(withheld, F.lit(None)).otherwise(F.col("thumbnail_png")),
            **stamp,
        }
    )
    return analyst, images.where(withheld).withColumns(stamp)


def model_columns(model: Any) -> list[Any]:
    """The ``predictions`` columns that name the model: name, version (key columns) and the
    class names in probability order."""
    return [
        F.lit(model.name).alias("model"),
        F.lit(model.version).alias("model_version"),
        F.array(*[F.lit(c) for c in model.class_names]).alias("class_names"),
    ]
