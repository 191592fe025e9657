"""Batched inference with ``pyspark.ml.functions.predict_batch_udf``.

The ``images`` tensors travel to the Python worker as uint8 bytes (a quarter of float32, so
four times more rows fit under Arrow's batch byte cap) and become float only on the device.
``make_predict_fn`` runs once per Python worker: predict_batch_udf caches the returned function
(and the model inside it) by the UDF's id, so the model is loaded once, not per batch.

Device: the GPU Spark assigned to the task (TaskContext resources, standalone/cluster mode),
else ``torch.cuda`` when available (local runs on a GPU machine), else CPU. On GPU: pinned host
memory, non-blocking copies, bf16/fp16 autocast when configured or supported, and
``torch.inference_mode`` always for the scores. With ``inference.saliency`` on, the same batch,
on the same device, then gets its Grad-CAM maps (fp32, outside inference mode: they need a
backward pass), overlay PNGs and boxes (:mod:`medspark.inference.saliency`); the scores are
computed exactly as without it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from medspark.config import InferenceConfig, ModelConfig

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredictSettings:
    """What the executor needs (picklable): the model entry and the runtime choices."""

    model: ModelConfig
    device: str = "auto"
    precision: str = "auto"
    torch_threads: int = 0
    saliency: bool = False  # a saliency map per row too (inference.saliency)
    saliency_method: str = "auto"  # inference.saliency_method
    occlusion_patch: int = 16  # inference.occlusion_patch
    occlusion_stride: int = 16  # inference.occlusion_stride
    thumbnail_size: int = 128  # preprocess.thumbnail_size: the overlay's size when no thumbnail


def _task_context() -> Any:
    """The running Spark task's context; None outside a task, and where pyspark is not
    installed: the predict function is plain Python, timed on a GPU machine without Spark by
    bench/bench_gpu.py."""
    try:
        from pyspark import TaskContext
    except ImportError:
        return None
    return TaskContext.get()


def choose_device(preference: str) -> str:
    """``cuda:N`` for the task's GPU (or the first visible one), else ``cpu``.

    A GPU Spark assigned through ``spark.task.resource.gpu.amount`` wins; local mode has no
    such assignment, so ``torch.cuda.is_available()`` decides there. ``cuda`` requested on a
    machine without one degrades to CPU with a warning: CI and laptops have no GPU.
    """
    import torch

    if preference == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        try:
            ctx = _task_context()
            gpus = ctx.resources().get("gpu") if ctx is not None else None
            if gpus is not None and gpus.addresses:
                return f"cuda:{int(gpus.addresses[0])}"
        except Exception:  # noqa: BLE001 - outside a task, or no resource info
            pass
        return "cuda:0"
    if preference == "cuda":
        LOG.warning("inference.device=cuda but no CUDA device is visible: running on CPU")
    return "cpu"


def decode_batch(tensors: Any, cfg: ModelConfig) -> np.ndarray:
    """Bytes of uint8 tensors (object array, one per row) -> (N, rows, cols, channels) uint8.

    Grey tensors feed a 3-channel model by repetition; RGB tensors feed a 1-channel model by
    their luma (ITU-R BT.601 weights, as OpenCV's RGB2GRAY). Any other size is an error that
    names the expected shape.
    """
    rows, cols = cfg.input_size
    n = len(tensors)
    grey, rgb = rows * cols, rows * cols * 3
    lengths = {len(t) for t in tensors}
    out = np.empty((n, rows, cols, cfg.channels), dtype=np.uint8)
    if lengths <= {grey, rgb} and len(lengths) == 1:
        flat = np.frombuffer(b"".join(tensors), dtype=np.uint8)
        per = lengths.pop()
        arr = flat.reshape(n, rows, cols, per // grey)
        _fill(out, arr, slice(None))
        return out
    for i, t in enumerate(tensors):
        if len(t) not in (grey, rgb):
            raise ValueError(
                f"tensor of {len(t)} bytes: expected uint8 {rows}x{cols}x1 or x3 "
                f"for model {cfg.name} (input_size {cfg.input_size})"
            )
        arr = np.frombuffer(t, dtype=np.uint8).reshape(1, rows, cols, len(t) // grey)
        _fill(out, arr, slice(i, i + 1))
    return out


def _fill(out: np.ndarray, arr: np.ndarray, where: slice) -> None:
    want, have = out.shape[-1], arr.shape[-1]
    if want == have:
        out[where] = arr
    elif want == 3:  # grey -> 3 channels
        out[where] = np.repeat(arr, 3, axis=-1)
    else:  # RGB -> luma
        luma = arr[..., 0] * 0.299 + arr[..., 1] * 0.587 + arr[..., 2] * 0.114
        out[where] = np.clip(np.rint(luma), 0, 255).astype(np.uint8)[..., None]


#: Rows per forward pass on CPU (see :func:`forward_fixed_shape`).
CPU_CHUNK = 16


def forward_fixed_shape(model: Any, x: Any, chunk: int = CPU_CHUNK) -> Any:
    """``model(x)`` computed in forward passes of exactly ``chunk`` rows (the last one padded
    with zeros), so that a row's output never depends on which other rows share its batch.

    CPU kernels (oneDNN, MKL) pick their blocking by tensor shape: the same image in a batch
    of 3 and in a batch of 130 gave logits 3.8e-6 apart with the demo model (measured here on
    random inputs, 1 thread), so a re-run whose batches were cut differently rewrote
    ``predictions`` with other scores. With one shape every time, the scores of a re-run are
    bit-identical (tests/test_inference.py). Padding costs at most ``chunk - 1`` extra rows
    per batch; in that measurement 16-row passes cost no more per image than 64-row ones.
    """
    import torch

    n = x.shape[0]
    pad = (-n) % chunk
    if pad:
        x = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))])
    return torch.cat([model(part) for part in x.split(chunk)])[:n]


def make_predict_fn_factory(settings: PredictSettings) -> Callable[[], Callable[..., Any]]:
    """Return ``make_predict_fn`` for predict_batch_udf (executed on the executor)."""

    def make_predict_fn() -> Callable[..., Any]:
        import torch

        from medspark.inference.model import load_model

        cfg = settings.model
        device = choose_device(settings.device)
        on_gpu = device.startswith("cuda")
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        elif not on_gpu:
            # One task owns spark.task.cpus cores: more threads would fight the other tasks.
            ctx = _task_context()
            torch.set_num_threads(max(1, ctx.cpus() if ctx is not None else 1))
        model = load_model(cfg, device)
        precision = settings.precision
        if precision == "auto":
            precision = "bf16" if on_gpu and torch.cuda.is_bf16_supported() else "fp32"
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        mean = torch.tensor(cfg.mean, device=device)
        std = torch.tensor(cfg.std, device=device)
        names = np.array(cfg.class_names, dtype=object)

        from medspark.preprocess.udf import worker_rss_bytes

        batches: dict[int, int] = {}  # partition -> batches seen (the worker is reused)

        def predict(
            tensors: np.ndarray,
            thumbnails: np.ndarray | None = None,
            frame_rows: np.ndarray | None = None,
            frame_columns: np.ndarray | None = None,
        ) -> dict[str, np.ndarray]:
            """Label, score, probabilities and batch metrics of each row; with saliency on,
            also its Grad-CAM fields (:func:`saliency_columns`), from the thumbnails and frame
            sizes given beside the tensors."""
            t_start = time.perf_counter()
            ctx = _task_context()
            partition = ctx.partitionId() if ctx is not None else 0
            batch_index = batches.get(partition, 0)
            batches[partition] = batch_index + 1
            batch = torch.from_numpy(decode_batch(tensors, cfg))
            t_infer = time.perf_counter()
            if on_gpu:
                batch = batch.pin_memory()
            x = batch.to(device, non_blocking=True)
            with torch.inference_mode():
                x = (x.permute(0, 3, 1, 2).float() - mean) / std
                if dtype is not None and on_gpu:
                    with torch.autocast(device_type="cuda", dtype=dtype):
                        logits = model(x)
                elif on_gpu:
                    logits = model(x)
                else:
                    logits = forward_fixed_shape(model, x)
                probs = torch.softmax(logits.float(), dim=1).cpu().numpy()
            t_end = time.perf_counter()
            best = probs.argmax(axis=1)
            n = len(best)
            gpu_util, gpu_mem = gpu_stats(device) if on_gpu else (None, None)
            extra = {}
            if settings.saliency:
                extra = saliency_columns(
                    model,
                    x,
                    best,
                    names,
                    (thumbnails, frame_rows, frame_columns),
                    cfg,
                    settings.thumbnail_size,
                    None if on_gpu else CPU_CHUNK,
                    settings,
                )
            return {
                **extra,
                "label": names[best],
                "score": probs[np.arange(n), best].astype(np.float32),
                "probabilities": probs.astype(np.float32),
                "partition": np.full(n, partition, dtype=np.int32),
                "batch": np.full(n, batch_index, dtype=np.int32),
                "seconds_infer": np.full(n, t_end - t_infer),
                # The whole call: with saliency on, its maps and PNGs too.
                "seconds_wall": np.full(n, time.perf_counter() - t_start),
                "rss_bytes": np.full(n, worker_rss_bytes() or 0, dtype=np.int64),
                # Without a GPU these are null (object arrays of None), never zero.
                "gpu_utilization": np.full(n, gpu_util, dtype=object if gpu_util is None else None),
                "gpu_memory_bytes": np.full(n, gpu_mem, dtype=object if gpu_mem is None else None),
            }

        if settings.saliency:
            return predict

        def predict_tensors(tensors: np.ndarray) -> dict[str, np.ndarray]:
            # predict_batch_udf counts the function's parameters to decide how many columns it
            # takes: one here, as before saliency existed.
            return predict(tensors)

        return predict_tensors

    return make_predict_fn


def saliency_columns(
    model: Any,
    x: Any,
    best: np.ndarray,
    names: np.ndarray,
    beside: tuple[Any, Any, Any],
    cfg: ModelConfig,
    thumbnail_size: int,
    chunk: int | None,
    settings: PredictSettings | None = None,
) -> dict[str, np.ndarray]:
    """The :data:`~medspark.tables.schemas.SALIENCY_OUT` columns of a batch: a map for each
    row's predicted class on the batch's own input ``x`` (on its device, in fp32), by the
    method :func:`medspark.inference.saliency.saliency_method` picks for ``settings`` (its
    ``saliency_method``, default ``auto``) and the model, Grad-CAM or occlusion (its patch
    and stride from ``settings``); then the overlay PNG and boxes per row
    (:func:`medspark.inference.saliency.saliency_fields`).

    ``beside`` holds the rows' thumbnails (PNG bytes or None) and frame sizes, or Nones when
    the caller has none (the map then covers the whole tensor, over black).
    """
    import base64

    import torch

    from medspark.inference.saliency import (
        GRADCAM,
        gradcam,
        occlusion,
        saliency_fields,
        saliency_method,
    )

    settings = settings or PredictSettings(cfg)
    method = saliency_method(settings.saliency_method, model)
    n = len(best)
    if x.is_inference():  # made under inference_mode: a plain tensor can enter autograd
        x = x.clone()
    target = torch.from_numpy(best.astype(np.int64)).to(x.device)
    cell = None
    if method == GRADCAM:
        cams = gradcam(model, x.float(), target, chunk).float().cpu().numpy()
    else:
        patch, cell = settings.occlusion_patch, settings.occlusion_stride
        cams = occlusion(model, x.float(), target, patch, cell, chunk).float().cpu().numpy()
    thumbnails, frame_rows, frame_columns = (
        list(v) if v is not None else [None] * n for v in beside
    )
    out: dict[str, list[Any]] = {name: [] for name in _SALIENCY_OUT_NAMES}
    for i in range(n):
        f = saliency_fields(
            cams[i],
            thumbnails[i],
            _int_or_none(frame_rows[i]),
            _int_or_none(frame_columns[i]),
            (cfg.input_size[0], cfg.input_size[1]),
            thumbnail_size,
            cell,
        )
        out["saliency_target"].append(names[best[i]])
        out["heatmap_png_b64"].append(base64.b64encode(f["heatmap_png"]).decode("ascii"))
        out["bbox_ints"].append(f["bbox"] or (-1, -1, -1, -1))
        out["bbox_frame_ints"].append(f["bbox_frame"] or (-1, -1, -1, -1))
        out["peak_x"].append(f["peak"][0] if f["peak"] else -1)
        out["peak_y"].append(f["peak"][1] if f["peak"] else -1)
        out["peak_value"].append(f["peak_value"])
        out["map_shape"].append(f["map_shape"])
    return {
        "saliency_target": np.array(out["saliency_target"], dtype=object),
        "saliency_method": np.full(n, method, dtype=object),
        "heatmap_png_b64": np.array(out["heatmap_png_b64"], dtype=object),
        "bbox_ints": np.array(out["bbox_ints"], dtype=np.int32).reshape(n, 4),
        "bbox_frame_ints": np.array(out["bbox_frame_ints"], dtype=np.int32).reshape(n, 4),
        "peak_x": np.array(out["peak_x"], dtype=np.int32),
        "peak_y": np.array(out["peak_y"], dtype=np.int32),
        "peak_value": np.array(out["peak_value"], dtype=np.float32),
        "map_shape": np.array(out["map_shape"], dtype=np.int32).reshape(n, 2),
    }


_SALIENCY_OUT_NAMES = (
    "saliency_target",
    "heatmap_png_b64",
    "bbox_ints",
    "bbox_frame_ints",
    "peak_x",
    "peak_y",
    "peak_value",
    "map_shape",
)


def _int_or_none(value: Any) -> int | None:
    """A frame size from an Arrow/pandas column: None for null (None or NaN)."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if number != number else int(number)


def gpu_stats(device: str) -> tuple[float | None, int | None]:
    """GPU utilisation (percent, via NVML when nvidia-ml-py is installed) and torch's memory."""
    import torch

    memory = int(torch.cuda.memory_allocated(device))
    try:
        return float(torch.cuda.utilization(device)), memory
    except Exception:  # noqa: BLE001 - NVML missing: utilisation unknown, not zero
        return None, memory


def predict_settings(
    inference: InferenceConfig, model: ModelConfig, thumbnail_size: int = 128
) -> PredictSettings:
    """The executor's settings for ``model`` under ``inference`` (``infer`` and ``run``)."""
    return PredictSettings(
        model=model,
        device=inference.device,
        precision=inference.precision,
        torch_threads=inference.torch_threads,
        saliency=inference.saliency,
        saliency_method=inference.saliency_method,
        occlusion_patch=inference.occlusion_patch,
        occlusion_stride=inference.occlusion_stride,
        thumbnail_size=thumbnail_size,
    )


def predict_udf(inference: InferenceConfig, model: ModelConfig, thumbnail_size: int = 128) -> Any:
    """The predict_batch_udf column function for ``model``: tensor bytes -> struct.

    With ``inference.saliency`` on it takes (tensor, thumbnail_png, frame_rows, frame_columns)
    and its struct also holds :data:`~medspark.tables.schemas.SALIENCY_OUT`; off, it takes
    the tensor alone and returns what it always has.
    """
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql.types import StructField, StructType

    from medspark.tables.schemas import PREDICTION_WITH_METRICS, SALIENCY_OUT

    fields = PREDICTION_WITH_METRICS.fields
    if inference.saliency:
        fields = fields + SALIENCY_OUT.fields
    # Arrow compares the UDF's result type exactly, field metadata included: drop the comments.
    return_type = StructType([StructField(f.name, f.dataType, f.nullable) for f in fields])

    settings = predict_settings(inference, model, thumbnail_size)
    return predict_batch_udf(
        make_predict_fn_factory(settings),
        return_type=return_type,
        batch_size=inference.batch_size,
    )
