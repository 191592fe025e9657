"""Volume-level segmentation: a 3D model over a whole series, with sliding-window inference.

A model is a TorchScript file taking ``(batch, 1, D, H, W)`` float32 (the preprocessed volume,
:mod:`medspark.volumes.transforms`) and returning ``(batch, C, D, H, W)``: ``C`` = labels + 1
class scores (background first; the label is the arg-max), or ``C`` = 1 foreground logit for
a single label (foreground where it is > 0). It runs with MONAI's ``sliding_window_inference``
over ``roi_size`` windows, so a 300-slice series never has to fit the model's input at once,
on the task's GPU when there is one (``device: auto``), else on CPU.

:func:`label_statistics` turns the label array into the ``series_segments`` columns: voxel
count, volume in mL (voxels x the voxel volume of the segmented grid, from its affine),
centroid and bounding box of the voxel centres in LPS mm.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from medspark.errors import ConfigError

__all__ = [
    "VolumeModel",
    "check_volume_model",
    "resolve_volume_model",
    "label_statistics",
    "load_volume_model",
    "segment",
]


@dataclass(frozen=True)
class VolumeModel:
    """A 3D segmentation model (``volumes.model`` in the config)."""

    name: str
    version: str
    path: str
    labels: tuple[str, ...]
    roi_size: tuple[int, int, int] = (64, 64, 64)
    sw_batch_size: int = 1
    overlap: float = 0.25
    device: str = "auto"


_BUNDLE_ALLOWED = (
    "a TorchScript file, or a MONAI bundle directory with models/model.ts and "
    "configs/metadata.json or configs/inference.json"
)


def _read_json(path: Any, key: str) -> dict[str, Any]:
    import json

    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(key, str(path), f"readable JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(doc, dict):
        raise ConfigError(key, str(path), "a JSON object")
    return doc


def _bundle_labels(metadata: dict[str, Any]) -> list[str] | None:
    """Label names (channel 0, background, left out) of a MONAI bundle's metadata.json:
    ``network_data_format.outputs.pred.channel_def`` (``{"0": "background", "1": ...}``)."""
    outputs = (metadata.get("network_data_format") or {}).get("outputs") or {}
    pred = outputs.get("pred") or next(iter(outputs.values()), None) or {}
    channels = pred.get("channel_def") if isinstance(pred, dict) else None
    if not isinstance(channels, dict) or not channels:
        return None
    ordered = sorted(((int(k), str(v)) for k, v in channels.items()), key=lambda kv: kv[0])
    return [name for index, name in ordered if index != 0]


def _bundle_roi(inference: dict[str, Any]) -> list[int] | None:
    """``roi_size`` of a MONAI bundle's inference.json: the inferer's, or a top-level one."""
    for candidate in ((inference.get("inferer") or {}).get("roi_size"), inference.get("roi_size")):
        if (
            isinstance(candidate, list)
            and len(candidate) == 3
            and all(isinstance(v, int) and v > 0 for v in candidate)
        ):
            return list(candidate)
    return None


def resolve_volume_model(cfg: Any) -> VolumeModel:
    """The :class:`VolumeModel` of a ``volumes.model`` config (:class:`VolumeModelConfig`), on
    the driver: ``path`` null is the bundled demonstration model (its labels, ROI, name and
    version unless given); a directory is a MONAI bundle, whose ``models/model.ts`` is the
    model and whose ``configs/metadata.json`` (labels from the output's ``channel_def``) and
    ``configs/inference.json`` (the inferer's ``roi_size``) fill the keys left empty. Raises
    :class:`ConfigError` naming the key, the value and what is allowed."""
    from pathlib import Path

    key = "volumes.model"
    labels = list(cfg.labels)
    roi = list(cfg.roi_size) if cfg.roi_size is not None else None
    name, version = cfg.name, cfg.version
    if cfg.path is None:
        from medspark.volumes.bundled import DEFAULT_MODEL_FILE, DEMO_MODEL

        path = DEFAULT_MODEL_FILE
        labels = labels or list(DEMO_MODEL["labels"])
        roi = roi or list(DEMO_MODEL["roi_size"])
        if name == "volume-model":  # the default name: the bundled model's own
            name, version = DEMO_MODEL["name"], DEMO_MODEL["version"]
    else:
        path = Path(cfg.path)
        if path.is_dir():
            model_file = path / "models" / "model.ts"
            metadata = path / "configs" / "metadata.json"
            inference = path / "configs" / "inference.json"
            if not model_file.is_file() or not (metadata.is_file() or inference.is_file()):
                raise ConfigError(f"{key}.path", str(path), _BUNDLE_ALLOWED)
            found = None
            if metadata.is_file():
                found = _bundle_labels(_read_json(metadata, f"{key}.path"))
            if found is not None:
                if labels and labels != found:
                    raise ConfigError(
                        f"{key}.labels",
                        labels,
                        f"the bundle's channel_def labels {found} (or leave labels empty)",
                    )
                labels = found
            if roi is None and inference.is_file():
                roi = _bundle_roi(_read_json(inference, f"{key}.path"))
            path = model_file
        elif not path.is_file():
            raise ConfigError(f"{key}.path", str(path), _BUNDLE_ALLOWED)
    if not labels:
        raise ConfigError(
            f"{key}.labels", labels, "one or more label names (or a bundle whose metadata has them)"
        )
    return VolumeModel(
        name=name,
        version=version,
        path=str(path),
        labels=tuple(labels),
        roi_size=tuple(roi or (64, 64, 64)),  # type: ignore[arg-type]
        sw_batch_size=cfg.sw_batch_size,
        overlap=cfg.overlap,
        device=cfg.device,
    )


def _device(name: str) -> Any:
    """The task's GPU when Spark assigned one, else the first visible GPU, else CPU; the 2D
    inference's choice (:func:`medspark.inference.predict.choose_device`)."""
    import torch

    from medspark.inference.predict import choose_device

    return torch.device(choose_device(name))


@lru_cache(maxsize=4)
def load_volume_model(path: str, device: str) -> Any:
    """The TorchScript module at ``path`` on ``device`` (a torch device string), in eval mode;
    cached per process (a Python worker loads it once for all the series it segments)."""
    from medspark.inference.model import load_torchscript

    module = load_torchscript(path, device)
    module.eval()
    return module


_CHECKED: set[tuple[Any, ...]] = set()


def check_volume_model(model: VolumeModel) -> None:
    """On the driver, before any task: the file loads and maps a ``roi_size`` window to the
    declared number of label channels. Raises :class:`ConfigError` naming the key. A check
    that passed is not repeated in the process for the same model and file (``run`` checks
    before Spark starts and again in its volumes step)."""
    import os

    try:
        st = os.stat(model.path)
        state: tuple[Any, ...] = (model, st.st_size, st.st_mtime_ns)
    except OSError:
        state = (model, None)
    if state in _CHECKED:
        return
    _check_volume_model(model)
    _CHECKED.add(state)


def _check_volume_model(model: VolumeModel) -> None:
    import os

    import torch

    key = f"volumes.model[{model.name}]"
    if not os.path.isfile(model.path):
        raise ConfigError(f"{key}.path", model.path, "an existing TorchScript file")
    try:
        from medspark.inference.model import load_torchscript

        module = load_torchscript(model.path, "cpu")
        module.eval()
        with torch.inference_mode():
            out = module(torch.zeros((1, 1, *model.roi_size), dtype=torch.float32))
    except Exception as exc:  # any load or forward failure is the model file's fault
        raise ConfigError(
            f"{key}.path", model.path, f"a TorchScript 3D model ({type(exc).__name__}: {exc})"
        ) from None
    channels = len(model.labels) + 1
    expected = {(1, channels, *model.roi_size)}
    if len(model.labels) == 1:
        expected.add((1, 1, *model.roi_size))
    if tuple(out.shape) not in expected:
        raise ConfigError(
            f"{key}.labels",
            list(model.labels),
            f"as many labels as the model's output channels minus background "
            f"(output {tuple(out.shape)} for input {(1, 1, *model.roi_size)})",
        )


def segment(image: np.ndarray, model: VolumeModel) -> np.ndarray:
    """Label array (uint8 ``[k, j, i]``, 0 = background) of a preprocessed volume."""
    import torch
    from monai.inferers import sliding_window_inference

    device = _device(model.device)
    module = load_volume_model(model.path, str(device))
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None].to(device)
    with torch.inference_mode():
        out = sliding_window_inference(
            x,
            roi_size=list(model.roi_size),
            sw_batch_size=model.sw_batch_size,
            predictor=module,
            overlap=model.overlap,
            mode="gaussian",
        )
        labels = out.argmax(dim=1) if out.shape[1] > 1 else (out[:, 0] > 0)
    return labels[0].to(torch.uint8).cpu().numpy()


def label_statistics(
    labels: np.ndarray, affine: np.ndarray, names: Sequence[str]
) -> list[dict[str, Any]]:
    """One dict per label name (value 1, 2, ... in order): ``label``, ``label_value``,
    ``voxel_count``, ``volume_ml``, ``centroid``, ``bbox_min``, ``bbox_max`` (LPS mm of voxel
    centres; None when the label is absent). A label with no voxel still gets its row: "the
    model found nothing" is a result."""
    a = np.asarray(affine, dtype=float)
    voxel_ml = abs(float(np.linalg.det(a[:3, :3]))) / 1000.0
    out = []
    for value, name in enumerate(names, start=1):
        count = 0
        index_sum = np.zeros(3)
        low = np.full(3, np.inf)
        high = np.full(3, -np.inf)
        for k in np.flatnonzero((labels == value).any(axis=(1, 2))):
            jj, ii = np.nonzero(labels[k] == value)
            idx = np.column_stack([np.full(jj.size, k, dtype=float), jj, ii])
            count += jj.size
            index_sum += idx.sum(axis=0)
            points = idx @ a[:3, :3].T + a[:3, 3]
            low = np.minimum(low, points.min(axis=0))
            high = np.maximum(high, points.max(axis=0))
        centroid = None
        if count:
            centroid = [float(v) for v in a[:3, :3] @ (index_sum / count) + a[:3, 3]]
        out.append(
            {
                "label": name,
                "label_value": value,
                "voxel_count": int(count),
                "volume_ml": count * voxel_ml,
                "centroid": centroid,
                "bbox_min": [float(v) for v in low] if count else None,
                "bbox_max": [float(v) for v in high] if count else None,
            }
        )
    return out
