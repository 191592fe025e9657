"""Saliency: where in a frame the model found its evidence (Grad-CAM), as a map, a box, a PNG.

Grad-CAM (Selvaraju et al. 2017): the gradient of a class score with respect to the last
convolutional layer's activations, averaged over space, weighs that layer's channels; the
weighted sum, clipped at zero, is a coarse map (28 x 28 for the demo model's 224 x 224 input) of
the regions that raised the score. It needs the activations and a backward pass through what
follows them, which a TorchScript file does not give by itself (hooks cannot be registered on a
scripted module). medspark therefore asks models for a convention:

    ``model.features(x)`` returns a convolutional layer's activations (N, C, h, w), usually
    the last one's, and ``model.head(f)`` returns the logits from them, with
    ``model(x) == model.head(model.features(x))``.

In TorchScript these are two ``@torch.jit.export`` methods (the bundled demo model has them:
:class:`medspark.inference.cnn.SmallCNN`). A model without them (a user's own TorchScript file,
usually) gets occlusion sensitivity instead (:func:`occlusion`; ``inference.saliency_method``
``auto``, the default, chooses: :func:`saliency_method`): model-agnostic, it only runs the
model, on copies of the frame with one patch hidden, at a cost bounded by the patch grid.

Everything here is numpy/torch/OpenCV, no Spark: the executor code of ``infer``
(:mod:`medspark.inference.predict`) and of ``run`` (:mod:`medspark.onepass`) call it on the
batches they already have, on the inference device.

Coordinates. The model sees the frame resized (aspect kept) into the centre of a square tensor
(:func:`medspark.preprocess.ops.resize_pad`); the map is cut to that content area, so it covers
the frame and nothing else. Boxes are ``[x_min, y_min, x_max, y_max]``, inclusive pixel indices,
x to the right and y down, given twice: over the thumbnail (``images.thumbnail_png``, which the
overlay PNG has the size of) and over the original frame (``frame_rows`` x ``frame_columns``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Grad-CAM values at or above this fraction of the peak make the top region's box.
BOX_THRESHOLD = 0.5
#: Weight of the heat map over the thumbnail in the overlay PNG.
OVERLAY_ALPHA = 0.45
#: The methods, as written in the ``saliency`` table's ``method``.
GRADCAM = "grad-cam"
OCCLUSION = "occlusion"


def has_saliency(model: Any) -> bool:
    """Whether ``model`` follows the convention (callable ``features`` and ``head``)."""
    return callable(getattr(model, "features", None)) and callable(getattr(model, "head", None))


def saliency_method(requested: str, model: Any) -> str:
    """The method a model's maps are made with (``inference.saliency_method``): ``gradcam`` and
    ``occlusion`` as asked; ``auto`` Grad-CAM when the model has ``features`` and ``head``,
    else occlusion. The one place this rule is written: the driver's check
    (:func:`medspark.inference.model.check_model`) and the executors of ``infer`` and ``run``
    (:func:`medspark.inference.predict.saliency_columns`) all call it."""
    if requested == "gradcam":
        return GRADCAM
    if requested == "occlusion":
        return OCCLUSION
    if requested != "auto":
        raise ValueError(f"saliency method {requested!r}: auto, gradcam or occlusion")
    return GRADCAM if has_saliency(model) else OCCLUSION


def gradcam(model: Any, x: Any, target: Any, chunk: int | None = None) -> Any:
    """Grad-CAM maps (N, h, w) float32 on ``x``'s device, for class ``target[i]`` of row i.

    ``x`` is the model's float input (N, C, H, W), ``target`` class indices (N,). Only the head
    is differentiated: the activations are computed without a graph, then made the leaf of
    the backward pass, so the cost is one forward of the features and a small backward. Rows
    are independent (eval mode), so ``chunk`` rows at a time (the last chunk zero-padded)
    gives every row the same numbers whatever batch it is in, as
    :func:`medspark.inference.predict.forward_fixed_shape` does for the scores.
    """
    import torch

    n = x.shape[0]
    if chunk:
        pad = (-n) % chunk
        if pad:
            x = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))])
            target = torch.cat([target, target.new_zeros(pad)])
        parts = zip(x.split(chunk), target.split(chunk), strict=True)
        return torch.cat([_gradcam(model, xs, ts) for xs, ts in parts])[:n]
    return _gradcam(model, x, target)


def _gradcam(model: Any, x: Any, target: Any) -> Any:
    import torch

    with torch.no_grad():
        features = model.features(x).float()
    features = features.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model.head(features)
        score = logits.float().gather(1, target.view(-1, 1).long()).sum()
        (grads,) = torch.autograd.grad(score, features)
    weights = grads.mean(dim=(2, 3), keepdim=True)
    return torch.relu((weights * features.detach()).sum(dim=1))


@dataclass(frozen=True)
class Geometry:
    """Where a frame is inside the model's square tensor, and the thumbnail's size."""

    top: int
    left: int
    height: int  # content rows in the tensor
    width: int  # content columns in the tensor
    frame_rows: int
    frame_columns: int
    thumb_rows: int
    thumb_columns: int


def geometry(
    frame_rows: int | None,
    frame_columns: int | None,
    input_size: tuple[int, int],
    thumbnail_size: int,
    thumbnail_shape: tuple[int, int] | None = None,
) -> Geometry:
    """The content area of a ``frame_rows`` x ``frame_columns`` frame in the tensor (as
    :func:`~medspark.preprocess.ops.resize_pad` places it) and the thumbnail's size (as
    :func:`~medspark.preprocess.udf.thumbnail_png` makes it, unless ``thumbnail_shape`` says).

    Without the frame's size (rows from elsewhere), the frame is taken to be the tensor.
    """
    rows, cols = input_size
    if not frame_rows or not frame_columns:
        frame_rows, frame_columns = rows, cols
    frame_rows, frame_columns = int(frame_rows), int(frame_columns)
    if rows == cols:
        scale = rows / max(frame_rows, frame_columns)
        h = min(rows, max(1, round(frame_rows * scale)))
        w = min(cols, max(1, round(frame_columns * scale)))
        top, left = (rows - h) // 2, (cols - w) // 2
    else:  # a non-square input is not letterboxed by the chain: the map covers it all
        top, left, h, w = 0, 0, rows, cols
    if thumbnail_shape is None:
        t = min(1.0, thumbnail_size / max(frame_rows, frame_columns))
        thumbnail_shape = (
            max(1, round(frame_rows * t)) if t < 1 else frame_rows,
            max(1, round(frame_columns * t)) if t < 1 else frame_columns,
        )
    return Geometry(top, left, h, w, frame_rows, frame_columns, *thumbnail_shape)


def occlusion(
    model: Any,
    x: Any,
    target: Any,
    patch: int,
    stride: int,
    chunk: int | None = None,
) -> Any:
    """Occlusion sensitivity maps (N, ceil(H / stride), ceil(W / stride)) float32 on ``x``'s
    device, for class ``target[i]`` of row i; any model that maps ``x`` to logits.

    Zeiler & Fergus (2014): a ``patch`` x ``patch`` square of the model's input is set to 0
    (black under the demo model's scaling, (x - 0) / 255: for a CT frame, air; the mean grey
    under a scaling that centres the input) at every ``stride`` pixels, and each occluded copy
    goes through the model. A patch's value is how much it lowers the class's log-probability
    (log-softmax of the logits) when hidden: the evidence it held. Cell ``(a, b)`` of the map
    (the input's ``stride`` x ``stride`` square at ``(a * stride, b * stride)``) is the mean
    value of the patches that cover it, clipped at zero as Grad-CAM's map is: only evidence
    for the class counts. Patches are cut at the input's border.

    Cost: ``ceil(H / stride) * ceil(W / stride)`` forward passes per row plus one, whatever
    the model (for 224 x 224 at stride 16: 197); no gradient, so it runs under
    ``inference_mode``. ``chunk`` rows per forward (the last padded with zeros), as in
    :func:`gradcam`, so a row's map does not depend on its batch.
    """
    import torch

    n, _, rows, cols = x.shape
    gy, gx = -(-rows // stride), -(-cols // stride)
    starts = [(a * stride, b * stride) for a in range(gy) for b in range(gx)]
    per = chunk or len(starts) + 1

    def forward(batch: Any) -> Any:
        pad = (-batch.shape[0]) % per
        if pad:
            batch = torch.cat([batch, batch.new_zeros((pad, *batch.shape[1:]))])
        out = torch.cat([model(part).float() for part in batch.split(per)])
        return torch.log_softmax(out, dim=1)[: out.shape[0] - pad]

    maps = []
    with torch.inference_mode():
        for i in range(n):
            xi = x[i : i + 1].float()
            c = int(target[i])
            copies = xi.repeat(len(starts) + 1, 1, 1, 1)
            for m, (y0, x0) in enumerate(starts, start=1):
                copies[m, :, y0 : y0 + patch, x0 : x0 + patch] = 0.0
            logp = forward(copies)[:, c]
            drop = (logp[0] - logp[1:]).view(gy, gx)
            total = torch.zeros_like(drop)
            count = torch.zeros_like(drop)
            reach = -(-patch // stride)  # cells a patch touches along an axis
            for dy in range(reach):
                for dx in range(reach):
                    total[dy:, dx:] += drop[: gy - dy, : gx - dx]
                    count[dy:, dx:] += 1
            maps.append(torch.relu(total / count))
    return torch.stack(maps)


def content_map(
    cam: np.ndarray,
    geo: Geometry,
    input_size: tuple[int, int],
    cell: int | None = None,
) -> np.ndarray:
    """The map upsampled (bilinear) to the tensor, cut to the frame's content area, scaled to
    [0, 1] by its peak (all zeros when the map has no positive value): (height, width).

    Cell ``j`` of a map ``stride`` times smaller than the input is centred on input pixel
    ``stride * j``: where a PyTorch convolution with "same" padding (``padding = k // 2``)
    centres its output, stride after stride. A plain image resize centres it on
    ``stride * j + (stride - 1) / 2`` instead, which put the demo model's peaks 7.5 tensor
    pixels down and right of where the features were: on its held-out synthetic positives,
    the peak fell inside the nodule for 63 of 100 slices that way, 79 of 100 this way (11
    and 44 of 100 with the map of its last block).

    An occlusion map (``cell``: its stride) is different: its cell ``j`` is the mean over
    the input's pixels ``cell * j`` to ``cell * (j + 1) - 1``, so it is centred on
    ``cell * j + (cell - 1) / 2``; and it is upsampled bicubically, whose maximum may fall
    between two cell centres, toward the hotter neighbour (bilinear puts it on a centre):
    on 20 held-out positives at stride 16, the peak fell inside the nodule for 12 that way,
    10 bilinearly.
    """
    import cv2

    rows, cols = input_size
    h, w = cam.shape
    if cell is None:
        warp = np.float32([[cols / w, 0.0, 0.0], [0.0, rows / h, 0.0]])
    else:
        half = (cell - 1) / 2.0
        warp = np.float32([[cell, 0.0, half], [0.0, cell, half]])
    full = cv2.warpAffine(
        cam.astype(np.float32),
        warp,
        (cols, rows),
        flags=cv2.INTER_LINEAR if cell is None else cv2.INTER_CUBIC,
        borderMode=cv2.BORDER_REPLICATE,
    )
    part = full[geo.top : geo.top + geo.height, geo.left : geo.left + geo.width]
    peak = float(part.max()) if part.size else 0.0
    if peak <= 0 or not math.isfinite(peak):
        return np.zeros(part.shape, dtype=np.float32)
    return np.clip(part / peak, 0.0, 1.0).astype(np.float32)


def top_region(
    m: np.ndarray, threshold: float = BOX_THRESHOLD
) -> tuple[tuple[int, int] | None, tuple[int, int, int, int] | None]:
    """The peak ``(x, y)`` of a [0, 1] map and the box ``(x_min, y_min, x_max, y_max)``
    (inclusive) of the connected region at or above ``threshold`` that holds it; ``(None,
    None)`` for an all-zero map (no evidence for the class anywhere).

    The region around the peak, not every pixel above the threshold: two separate hot spots
    would otherwise make one box covering the healthy tissue between them.
    """
    import cv2

    if m.size == 0 or float(m.max()) <= 0:
        return None, None
    y, x = np.unravel_index(int(np.argmax(m)), m.shape)
    hot = (m >= threshold * float(m[y, x])).astype(np.uint8)
    _, labels = cv2.connectedComponents(hot, connectivity=8)
    ys, xs = np.nonzero(labels == labels[y, x])
    return (int(x), int(y)), (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))


def scale_box(
    box: tuple[int, int, int, int], src: tuple[int, int], dst: tuple[int, int]
) -> tuple[int, int, int, int]:
    """An inclusive box on a ``src`` (rows, cols) grid, on a ``dst`` grid covering the same
    area: the smallest box of whole ``dst`` pixels containing it."""
    sy, sx = dst[0] / src[0], dst[1] / src[1]
    x0, y0, x1, y1 = box
    return (
        min(dst[1] - 1, int(math.floor(x0 * sx))),
        min(dst[0] - 1, int(math.floor(y0 * sy))),
        max(0, min(dst[1] - 1, int(math.ceil((x1 + 1) * sx)) - 1)),
        max(0, min(dst[0] - 1, int(math.ceil((y1 + 1) * sy)) - 1)),
    )


def scale_point(
    point: tuple[int, int], src: tuple[int, int], dst: tuple[int, int]
) -> tuple[int, int]:
    """The ``dst`` pixel (x, y) under the centre of ``src`` pixel ``point``."""
    x, y = point
    return (
        min(dst[1] - 1, int((x + 0.5) * dst[1] / src[1])),
        min(dst[0] - 1, int((y + 0.5) * dst[0] / src[0])),
    )


def overlay_png(
    m: np.ndarray, thumbnail: bytes | None, shape: tuple[int, int], alpha: float = OVERLAY_ALPHA
) -> bytes:
    """PNG of the [0, 1] map ``m`` as a JET colour map over the thumbnail, at the thumbnail's
    size ``shape`` (rows, cols). Without a thumbnail (a frame withheld for burned-in text has
    none in ``images``) the colour map is drawn over black: no pixel of the frame is shown."""
    import cv2

    rows, cols = shape
    heat = cv2.resize(m, (cols, rows), interpolation=cv2.INTER_LINEAR)
    grey = np.clip(heat * 255.0 + 0.5, 0, 255).astype(np.uint8)
    colour = cv2.applyColorMap(grey, cv2.COLORMAP_JET)
    base = None
    if thumbnail is not None:
        base = cv2.imdecode(np.frombuffer(thumbnail, np.uint8), cv2.IMREAD_COLOR)
    if base is None or base.shape[:2] != (rows, cols):
        base = np.zeros((rows, cols, 3), np.uint8)
    blended = cv2.addWeighted(colour, alpha, base, 1.0 - alpha, 0.0)
    ok, buf = cv2.imencode(".png", blended)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def thumbnail_shape(thumbnail: bytes | None) -> tuple[int, int] | None:
    """(rows, cols) of a PNG from its IHDR chunk (no decoding), or None."""
    if not thumbnail or len(thumbnail) < 24 or thumbnail[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    return int.from_bytes(thumbnail[20:24], "big"), int.from_bytes(thumbnail[16:20], "big")


#: Columns the executor returns per frame (``heatmap_png`` travels as base64 text: Spark's
#: ``predict_batch_udf`` returns no binary columns; boxes as 4 ints, -1 when there is none).
NO_BOX = (-1, -1, -1, -1)


def saliency_fields(
    cam: np.ndarray,
    thumbnail: bytes | None,
    frame_rows: int | None,
    frame_columns: int | None,
    input_size: tuple[int, int],
    thumbnail_size: int,
    cell: int | None = None,
) -> dict[str, Any]:
    """One frame's saliency: overlay PNG, peak value and place, boxes over thumbnail and frame.

    ``cam`` is the raw map (h, w) of the frame: Grad-CAM's, or an occlusion map with ``cell``
    its stride (:func:`content_map`). ``peak_value`` is its maximum before scaling (0: the
    model found no evidence for the class anywhere, and there is no box).
    """
    geo = geometry(
        frame_rows, frame_columns, input_size, thumbnail_size, thumbnail_shape(thumbnail)
    )
    m = content_map(cam, geo, input_size, cell)
    peak, box = top_region(m)
    src = (geo.height, geo.width)
    frame = (geo.frame_rows, geo.frame_columns)
    thumb = (geo.thumb_rows, geo.thumb_columns)
    return {
        "heatmap_png": overlay_png(m, thumbnail, thumb),
        "peak_value": float(cam.max()) if cam.size else 0.0,
        "peak": scale_point(peak, src, frame) if peak is not None else None,
        "bbox": scale_box(box, src, thumb) if box is not None else None,
        "bbox_frame": scale_box(box, src, frame) if box is not None else None,
        "map_shape": [int(d) for d in cam.shape],
    }
