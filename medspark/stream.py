"""Incremental ingest: a landing directory watched with Structured Streaming.

Exports are dropped into a landing directory; :func:`ingest_stream` runs ingestion on the files
that arrived since the last run and on nothing else::

    landed_files ─► foreachBatch(paths) ─► ingest(paths) ─► scans, ingest_errors, ...

Spark's file stream source does the bookkeeping: it lists the directory, remembers in the
checkpoint which files it has handed out, and with ``trigger(availableNow=True)`` processes
everything present when the run starts, then stops. Only the file *names* travel through the
stream (the ``binaryFile`` source reads a file's content only when the ``content`` column is
selected, and it is not); each micro-batch then calls the same :func:`medspark.pipeline.ingest`
as a batch run, so the tables, the error rows and the no-loss rule are the same.

Delivery: a micro-batch is committed to the checkpoint only after its ingest finished, so a run
that dies is redone from the last committed batch on restart; ingest MERGEs, so the redo adds no
duplicate rows. A file is taken once, by path: a file must be complete when it appears. Copy an
export in under a hidden name (``.name.part`` or ``_name``: Spark's file listing skips names
starting with ``.`` or ``_``) and rename it when the copy is done.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from pyspark.sql import DataFrame

from medspark.config import PipelineConfig
from medspark.errors import MedsparkError
from medspark.metrics.spark_stages import job_group
from medspark.pipeline import IngestResult, ingest, new_run_id


def default_checkpoint(config: PipelineConfig, landing: str) -> str:
    """``<warehouse>/_checkpoints/ingest_stream-<hash of the landing path>``.

    One checkpoint per landing directory, so two landing directories feeding one warehouse do
    not share (and corrupt) each other's progress.
    """
    key = hashlib.sha256(str(Path(landing).absolute()).encode("utf-8")).hexdigest()[:12]
    return str(Path(config.table_path("scans")).parent / "_checkpoints" / f"ingest_stream-{key}")


def landed_files(spark: Any, landing: str, max_files_per_trigger: int) -> DataFrame:
    """A streaming DataFrame of the files under ``landing``: ``path`` (a URI) and ``length``.

    Recursive, so an export unpacked into folders counts file by file. Only names and sizes are
    read here.
    """
    from pyspark.sql.types import (
        BinaryType,
        LongType,
        StringType,
        StructField,
        StructType,
        TimestampType,
    )

    # The binaryFile source's fixed schema; a streaming source must be given it.
    schema = StructType(
        [
            StructField("path", StringType(), False),
            StructField("modificationTime", TimestampType(), False),
            StructField("length", LongType(), False),
            StructField("content", BinaryType(), True),
        ]
    )
    return (
        spark.readStream.format("binaryFile")
        .schema(schema)
        .option("recursiveFileLookup", "true")
        .option("maxFilesPerTrigger", max_files_per_trigger)
        .load(str(Path(landing).absolute()))
        .select("path", "length")
    )


def uri_to_path(uri: str) -> str:
    """``file:/a/b%20c`` (as Spark's file listing spells it) -> ``/a/b c``."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("", "file"):
        raise MedsparkError(
            f"{uri}: only local or mounted file systems can be ingested (scheme "
            f"{parsed.scheme!r}); mount the landing directory on every node"
        )
    return unquote(parsed.path)


@dataclass(frozen=True)
class StreamBatch:
    """One non-empty micro-batch: its id, how many new files it took, what ingest did."""

    batch_id: int
    files: int
    ingested: IngestResult


@dataclass
class StreamResult:
    """What a streaming ingest run did."""

    run_id: str
    checkpoint: str
    batches: list[StreamBatch] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def files(self) -> int:
        return sum(b.files for b in self.batches)

    @property
    def items(self) -> int:
        return sum(b.ingested.items for b in self.batches)

    @property
    def errors(self) -> int:
        return sum(b.ingested.errors for b in self.batches)

    def summary(self) -> str:
        lines = [
            f"run {self.run_id}: {len(self.batches)} micro-batch(es), {self.files} new file(s), "
            f"{self.items} item(s) in {self.seconds:.1f} s; checkpoint {self.checkpoint}"
        ]
        lines += ["  " + b.ingested.summary().replace("\n", "\n  ") for b in self.batches]
        return "\n".join(lines)


def ingest_stream(
    spark: Any,
    landing: str,
    config: PipelineConfig,
    *,
    checkpoint: str | None = None,
    run_id: str | None = None,
) -> StreamResult:
    """Ingest every file under ``landing`` not seen by an earlier run, then stop.

    Each micro-batch is one :func:`~medspark.pipeline.ingest` call with run id
    ``<run_id>-b<batch id>``. Returns when all files present at the start are done.
    """
    start = time.monotonic()
    if "://" in landing:
        landing = uri_to_path(landing)  # file:// is fine; another scheme fails here, clearly
    run_id = run_id or new_run_id()
    checkpoint = checkpoint or default_checkpoint(config, landing)
    result = StreamResult(run_id=run_id, checkpoint=checkpoint)

    def batch(files: DataFrame, batch_id: int) -> None:
        paths = sorted(uri_to_path(r["path"]) for r in files.select("path").collect())
        if not paths:
            return
        # foreachBatch runs on another driver thread, which does not inherit the caller's job
        # group: tag the batch's jobs with the run id again, so stage_metrics sees them.
        with job_group(spark, run_id, f"medspark ingest_stream {run_id} batch {batch_id}"):
            done = ingest(spark, paths, config, f"{run_id}-b{batch_id}")
        result.batches.append(StreamBatch(batch_id, len(paths), done))

    query = (
        landed_files(spark, landing, config.ingest.stream_max_files_per_trigger)
        .writeStream.foreachBatch(batch)
        .option("checkpointLocation", checkpoint)
        .trigger(availableNow=True)
        .queryName(f"medspark_ingest_stream_{run_id.replace('-', '_')}")
        .start()
    )
    query.awaitTermination()
    result.seconds = time.monotonic() - start
    return result
