"""The preprocessing UDF: thin pandas wrapper over pure numpy functions.

:func:`process_item` turns one DICOM item's bytes into per-frame output rows (pure Python:
decode with :mod:`medspark.dicom.pixels`, display window, OpenCV chain, mask statistics,
thumbnail). :func:`preprocess_batches` is the ``mapInPandas`` function: it reads the requested
items on the executor (:mod:`medspark.sources.members`), so only paths travel in and only the
small model-ready tensors travel out.

Error classes: ``unreadable`` (the item could not be read again), ``undecodable_file`` (whole
file: no usable Pixel Data, unsupported encoding), ``undecodable_frame`` (one frame failed; the
others still produce rows), ``preprocess_failed`` (an op raised on this frame),
``source_changed`` (the item's bytes no longer have the SHA-256 that ingest recorded: the file
was replaced since; ingest it again). An item the reader refuses on the re-read keeps the class
ingest gives it (``too_large``, ``decompression_bomb``, ...).

Burned-in text (``burned_in`` setting, ``deid.burned_in`` in the config): a frame flagged for it
(``burned_in_annotation``) is cleaned before the chain runs, so thumbnail and tensor are both
clean: everything outside the Sequence of Ultrasound Regions (0018,6011) is blacked out
(``burned_in_action`` ``cleaned``). A flagged frame that declares no region is ``withheld``:
its row still carries its pixels, and the preprocess step sends them to ``restricted_images``
only. With ``burned_in: keep`` flagged frames are ``kept`` as they are.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from medspark.tables.error_classes import (
    PREPROCESS_FAILED,
    UNDECODABLE_FILE,
    UNDECODABLE_FRAME,
)


@dataclass(frozen=True)
class PreprocessSettings:
    """Everything an executor needs; pickled into the UDF closure."""

    chain: Any  # medspark.preprocess.chain.Chain
    window: str | tuple[float, float]
    thumbnail_size: int
    frames_per_batch: int
    burned_in: str = "clean"  # deid.burned_in: clean or keep
    limits: Any = None  # medspark.sources.archives.Limits of the re-read (None: the defaults)


#: ``burned_in_action`` values (null: the frame is not flagged).
BURNED_IN_CLEANED = "cleaned"
BURNED_IN_WITHHELD = "withheld"
BURNED_IN_KEPT = "kept"


def burned_in_action(flagged: bool, regions: tuple[Any, ...], setting: str) -> str | None:
    """What happens to a frame's pixels: None (not flagged), cleaned, withheld or kept."""
    if not flagged:
        return None
    if setting == "keep":
        return BURNED_IN_KEPT
    return BURNED_IN_CLEANED if regions else BURNED_IN_WITHHELD


def thumbnail_png(image: np.ndarray, size: int) -> bytes:
    """PNG of ``image`` (uint8 grey or RGB) with its longest side scaled to ``size``."""
    import cv2

    h, w = image.shape[:2]
    scale = size / max(h, w)
    if scale < 1:
        image = cv2.resize(
            image,
            (max(1, round(w * scale)), max(1, round(h * scale))),
            interpolation=cv2.INTER_AREA,
        )
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)  # PNG encoder expects BGR order
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def _window_text(window: str | tuple[float, float], frame: Any) -> str:
    if isinstance(window, tuple):
        return f"center={window[0]:g} width={window[1]:g}"
    if window == "auto":
        if frame.voi_lut is not None:
            return "voi_lut"
        if frame.window is not None:
            return f"center={frame.window[0]:g} width={frame.window[1]:g}"
        return "minmax"
    return window


def _error_row(key: dict[str, Any], frame: int | None, cls: str, message: str) -> dict[str, Any]:
    return {**key, "frame": frame, "error_class": cls, "error_message": message}


def process_item(
    data: bytes,
    key: dict[str, Any],
    settings: PreprocessSettings,
    frames: tuple[int, int] | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield one output row per frame of one item (or one whole-file error row).

    ``key`` holds ``sop_instance_uid``, ``source_uri`` and ``archive_member``, copied into every
    row. Never raises for bad pixels: failures become rows with ``error_class``.

    ``frames`` = ``(start, stop)`` processes only those frames (one task's share of a large
    multi-frame file). A whole-file error is then reported only by the share that starts at
    frame 0, so the file still gets exactly one error row.
    """
    from medspark.dicom.burned_in import black_out_outside
    from medspark.dicom.header import ItemError, check_inflated_size
    from medspark.dicom.pixels import DicomPixelError, iter_frames, to_display
    from medspark.preprocess.segmentation import mask_stats

    where = key["source_uri"] + (f"!{key['archive_member']}" if key["archive_member"] else "")
    t0 = time.perf_counter()
    reports_file_errors = frames is None or frames[0] == 0
    limits = settings.limits
    try:
        if limits is not None:  # what ingest checked, again: the file may have been replaced
            check_inflated_size(data, limits.max_inflated_bytes)
        decoded = iter_frames(
            data,
            None if frames is None else range(*frames),
            max_frame_samples=None if limits is None else limits.max_frame_samples,
        )
    except ItemError as exc:  # decompression_bomb, too_large: the bound, not the decoder
        if reports_file_errors:
            yield _error_row(key, None, exc.error_class, f"{where}: {exc.message}")
        return
    except Exception as exc:  # noqa: BLE001 - DicomPixelError, or a decoder bug: not the task
        if reports_file_errors:
            text = str(exc) if isinstance(exc, DicomPixelError) else f"{type(exc).__name__}: {exc}"
            yield _error_row(key, None, UNDECODABLE_FILE, f"{where}: {text}")
        return
    chain = settings.chain
    next_index = 0 if frames is None else frames[0]
    while True:
        try:
            frame = next(decoded)
        except StopIteration:
            return
        except Exception as exc:  # noqa: BLE001 - iteration itself failed: stop this file
            text = f"{where}: {type(exc).__name__}: {exc}"
            if frames is None:
                yield _error_row(key, None, UNDECODABLE_FILE, text)
            else:  # one row per frame of this share that was not produced: none is lost
                for index in range(next_index, frames[1]):
                    yield _error_row(key, index, UNDECODABLE_FRAME, f"{text} (frame {index})")
            return
        next_index = frame.index + 1
        t1 = time.perf_counter()
        if frame.pixels is None:
            yield _error_row(
                key, frame.index, UNDECODABLE_FRAME, f"{where} frame {frame.index}: {frame.error}"
            )
            t0 = time.perf_counter()
            continue
        try:
            display = to_display(frame, settings.window)
            action = burned_in_action(
                bool(key.get("burned_in_annotation")), frame.regions, settings.burned_in
            )
            if action == BURNED_IN_CLEANED:
                display = black_out_outside(display, frame.regions)
            result = chain.apply(display)
            row: dict[str, Any] = {
                **key,
                "frame": frame.index,
                "frame_rows": int(frame.pixels.shape[0]),
                "frame_columns": int(frame.pixels.shape[1]),
                "tensor": np.ascontiguousarray(result.tensor).tobytes(),
                "tensor_shape": [int(d) for d in result.tensor.shape],
                "tensor_dtype": str(result.tensor.dtype),
                "thumbnail_png": thumbnail_png(display, settings.thumbnail_size),
                "window": _window_text(settings.window, frame),
                "burned_in_action": action,
                "pixel_spacing_source": frame.spacing_source,
            }
            if result.mask is not None:
                # Mean in modality units (HU for CT) when the mask is at frame resolution.
                values = frame.pixels if frame.pixels.shape[:2] == result.mask.shape else None
                if values is None:
                    stats = None
                    reason = "mask shape differs from the frame (a resizing step in the chain)"
                else:
                    stats = mask_stats(result.mask, values, frame.pixel_spacing)
                    reason = stats.area_mm2_reason
                    if frame.pixel_spacing is None:
                        reason = f"no pixel spacing ({frame.spacing_source})"
                row.update(
                    mask_area_px=None if stats is None else stats.area_px,
                    mask_area_mm2=None if stats is None else stats.area_mm2,
                    mask_area_mm2_reason=reason,
                    mask_components=None if stats is None else stats.components,
                    mask_mean_intensity=None if stats is None else stats.mean_intensity,
                )
        except Exception as exc:  # noqa: BLE001 - one bad frame must not fail the task
            yield _error_row(
                key,
                frame.index,
                PREPROCESS_FAILED,
                f"{where} frame {frame.index}: {type(exc).__name__}: {exc}",
            )
            t0 = time.perf_counter()
            continue
        t2 = time.perf_counter()
        row["seconds_decode"] = t1 - t0
        row["seconds_preprocess"] = t2 - t1
        yield row
        t0 = time.perf_counter()


def preprocess_batches(
    batches: Iterator[Any], settings: PreprocessSettings, columns: list[str]
) -> Iterator[Any]:
    """``mapInPandas`` body: rows of (sop_instance_uid, source_uri, archive_member, what the
    burned-in rule reads, frame_start, frame_stop) in, per-frame rows (``columns`` order, schema
    PREPROCESSED) out, in bounded batches. Rows of the same item (its frame ranges) share one
    read of the item."""
    import cv2
    import pandas as pd
    from pyspark import TaskContext

    from medspark.dicom.burned_in import burned_in_rule
    from medspark.sources.members import read_verified

    # A task owns spark.task.cpus cores; OpenCV's own thread pool would otherwise start one
    # thread per machine core in every Python worker and the workers would fight for them.
    ctx = TaskContext.get()
    cv2.setNumThreads(max(1, ctx.cpus() if ctx is not None else 1))

    def frame(rows: list[dict[str, Any]]) -> Any:
        # Tuples with explicit None: a key missing from every row would otherwise become an
        # all-NaN float column, which Arrow cannot convert to the declared string type.
        return pd.DataFrame.from_records(
            [tuple(r.get(c) for c in columns) for r in rows], columns=columns
        )

    partition = ctx.partitionId() if ctx is not None else 0
    batch_index = 0
    batch_start = time.perf_counter()
    out: list[dict[str, Any]] = []

    def flush() -> Any:
        nonlocal batch_index, batch_start, out
        wall = time.perf_counter() - batch_start
        rss = worker_rss_bytes()
        for r in out:
            r.update(partition=partition, batch=batch_index, seconds_wall=wall, rss_bytes=rss)
        pdf = frame(out)
        out = []
        batch_index += 1
        return pdf

    for batch in batches:
        # Location -> (key, frame share) of every row that needs the item read there.
        keys: dict[tuple[str, str | None], list[tuple[dict[str, Any], Any]]] = {}
        shas = batch["sha256"] if "sha256" in batch else [None] * len(batch)
        for sop, uri, member, burned, modality, sop_class, start, stop, sha in zip(
            batch["sop_instance_uid"],
            batch["source_uri"],
            batch["archive_member"],
            batch["burned_in_value"],
            batch["modality"],
            batch["sop_class_uid"],
            batch["frame_start"],
            batch["frame_stop"],
            shas,
            strict=True,
        ):
            member = None if not isinstance(member, str) else member  # pandas gives NaN/None
            reason = burned_in_rule(
                *(v if isinstance(v, str) else None for v in (burned, modality, sop_class))
            )
            key = {
                "sop_instance_uid": sop,
                "source_uri": uri,
                "archive_member": member,
                "burned_in_annotation": reason is not None,
                "burned_in_reason": reason,
            }
            share = None if pd.isna(start) else (int(start), int(stop))
            expected = sha if isinstance(sha, str) else None
            keys.setdefault((uri, member), []).append((key, share, expected))
        requests = [(uri, member, shares[0][2]) for (uri, member), shares in keys.items()]
        items = iter(read_verified(requests, settings.limits))
        while True:
            t_read = time.perf_counter()
            try:
                (uri, member), content = next(items)
            except StopIteration:
                break
            seconds_read = time.perf_counter() - t_read  # the read and its SHA-256
            for key, share, _ in keys[(uri, member)]:
                if isinstance(content, Exception):
                    if share is None or share[0] == 0:  # one row per item, not per share
                        row = _error_row(key, None, content.error_class, str(content))
                        row["seconds_read"] = seconds_read
                        out.append(row)
                else:
                    for row in process_item(content, key, settings, share):
                        row["seconds_read"] = seconds_read
                        seconds_read = 0.0  # the read counts once, on the item's first row
                        out.append(row)
                        if len(out) >= settings.frames_per_batch:
                            yield flush()
                            batch_start = time.perf_counter()
                if len(out) >= settings.frames_per_batch:
                    yield flush()
                    batch_start = time.perf_counter()
    if out:
        yield flush()


def worker_rss_bytes() -> int | None:
    """Resident memory of this Python worker (Linux /proc; peak RSS elsewhere)."""
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
        import os

        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
