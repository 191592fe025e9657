"""Models: architectures medspark knows, loading in every supported format, checks.

Loading happens on executors (once per Python worker, through predict_batch_udf's model cache)
and once on the driver in :func:`check_model`, so that a missing file or a shape mismatch fails
before the job starts, naming the path and the expected shape.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medspark.config import ModelConfig
from medspark.errors import ConfigError

DEFAULT_MODEL_DIR = Path(__file__).parent / "default_model"
DEFAULT_MODEL_FILE = DEFAULT_MODEL_DIR / "model.pt"
DEFAULT_MODEL_CARD = DEFAULT_MODEL_DIR / "model_card.json"


def small_cnn(in_channels: int = 1, num_classes: int = 2, width: int = 16) -> Any:
    """A small convolutional classifier (about 0.1 M parameters) for square uint8 frames.

    Four stride-2 conv blocks with batch norm and ReLU, global average pooling, one linear
    layer. Small enough to train on a laptop CPU in minutes, which is its purpose: the bundled
    demonstration model (see ``model_card.json``). It has the ``features``/``head`` methods of
    the saliency convention (:class:`medspark.inference.cnn.SmallCNN`), scripted with it.
    """
    from torch import nn

    from medspark.inference.cnn import SmallCNN

    def block(cin: int, cout: int) -> Any:
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )

    return SmallCNN(
        block(in_channels, width),
        block(width, width * 2),
        block(width * 2, width * 4),
        block(width * 4, width * 4),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width * 4, num_classes),
        n_features=3,
    )


#: Architectures for ``format: state_dict`` models, by config name.
ARCHITECTURES = {"medspark_small_cnn": small_cnn}


def model_path(cfg: ModelConfig) -> Path:
    """The model file: ``cfg.path``, or the bundled demonstration model when it is None."""
    return Path(cfg.path) if cfg.path else DEFAULT_MODEL_FILE


def load_torchscript(path: str | Path, device: Any = "cpu") -> Any:
    """``torch.jit.load`` without its FutureWarning: torch 2.9+ says TorchScript is deprecated
    on every load, and each Python worker printed it to the console of every run. TorchScript
    is still the format medspark reads and documents (``torch.export`` files load too, with
    ``format: export``)."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.load.* is deprecated")
        return torch.jit.load(str(path), map_location=device)


def load_model(cfg: ModelConfig, device: Any = "cpu") -> Any:
    """Load the model of ``cfg`` onto ``device`` in eval mode."""
    import torch

    path = model_path(cfg)
    if not path.is_file():
        raise ConfigError(f"inference.models[{cfg.name}].path", str(path), "an existing model file")
    if cfg.format == "torchscript":
        model = load_torchscript(path, device)
    elif cfg.format == "export":
        model = torch.export.load(str(path)).module().to(device)
    else:
        arch = ARCHITECTURES.get(cfg.architecture or "")
        if arch is None:
            raise ConfigError(
                f"inference.models[{cfg.name}].architecture", cfg.architecture, ARCHITECTURES
            )
        model = arch(in_channels=cfg.channels, num_classes=len(cfg.class_names))
        model.load_state_dict(torch.load(str(path), map_location=device, weights_only=True))
        model = model.to(device)
    if hasattr(model, "eval") and cfg.format != "export":
        model.eval()
    return model


_CHECKED: set[str] = set()


def check_model(
    cfg: ModelConfig,
    tensor_shape: list[int] | None = None,
    saliency: bool = False,
    method: str = "auto",
) -> None:
    """Fail fast, on the driver, if the model cannot run on the ``images`` tensors.

    Loads the file, runs one zero batch of the expected input shape (1, channels, rows, cols),
    and checks that the output has one score per class name. ``tensor_shape`` (the preprocess
    output, e.g. [224, 224]) must match ``input_size``. With ``saliency`` (``inference.saliency``
    on) and Grad-CAM as its ``method`` (``inference.saliency_method``: ``gradcam``, or ``auto``
    for a model that has the methods), the model must also follow the saliency convention
    (:func:`check_saliency`); occlusion needs nothing more than a model that runs. A check
    that passed is not repeated in the same process for the same model entry, file and shape
    (the CLI runs it while Spark starts, then the step runs it again for callers that did not).
    """
    key = repr((cfg, tensor_shape, saliency, method, _file_state(cfg)))
    if key in _CHECKED:
        return
    _check_model(cfg, tensor_shape)
    if saliency:
        from medspark.inference.saliency import GRADCAM, saliency_method

        if saliency_method(method, load_model(cfg)) == GRADCAM:
            check_saliency(cfg, method)
    _CHECKED.add(key)


def check_saliency(cfg: ModelConfig, method: str = "gradcam") -> None:
    """Fail fast, naming ``inference.saliency_method``, if the model cannot give Grad-CAM maps: it
    needs ``features(x)`` -> (N, C, h, w) and ``head(features)`` -> the logits, with
    ``head(features(x))`` equal to ``model(x)`` (:mod:`medspark.inference.saliency`)."""
    import torch

    from medspark.inference.saliency import has_saliency

    path = model_path(cfg)
    where = f"model {cfg.name} ({path})"
    model = load_model(cfg)
    if not has_saliency(model):
        raise ConfigError(
            "inference.saliency_method",
            method,
            f"auto or occlusion, or a model with features(x) and head(features) methods "
            f"(docs/inference.md); {where} has none",
        )
    rows, cols = cfg.input_size
    x = torch.rand(2, cfg.channels, rows, cols, generator=torch.Generator().manual_seed(0))
    try:
        with torch.inference_mode():
            features = model.features(x)
            logits = model.head(features)
            direct = model(x)
    except Exception as exc:  # noqa: BLE001 - any failure is reported the same way
        raise ConfigError(
            "inference.saliency_method",
            method,
            f"a model whose features/head methods run; on {where} they failed: "
            f"{type(exc).__name__}: {exc}",
        ) from None
    if features.dim() != 4:
        raise ConfigError(
            "inference.saliency_method",
            method,
            f"a model whose features(x) is (N, C, h, w); {where} returned shape "
            f"{tuple(features.shape)}",
        )
    if tuple(logits.shape) != tuple(direct.shape) or not torch.allclose(
        logits, direct, rtol=1e-4, atol=1e-5
    ):
        raise ConfigError(
            "inference.saliency_method",
            method,
            f"a model whose head(features(x)) equals model(x); on {where} it does not",
        )


def _file_state(cfg: ModelConfig) -> tuple[str, int, int] | None:
    try:
        path = model_path(cfg)
        st = path.stat()
    except Exception:  # noqa: BLE001 - the check itself reports a missing file
        return None
    return (str(path), st.st_size, st.st_mtime_ns)


def _check_model(cfg: ModelConfig, tensor_shape: list[int] | None) -> None:
    import torch

    rows, cols = cfg.input_size
    expected = f"input (N, {cfg.channels}, {rows}, {cols}) -> output (N, {len(cfg.class_names)})"
    if tensor_shape is not None and list(tensor_shape[:2]) != [rows, cols]:
        raise ConfigError(
            f"inference.models[{cfg.name}].input_size",
            cfg.input_size,
            f"the images tensor size {list(tensor_shape[:2])} (preprocess.output_size)",
        )
    path = model_path(cfg)
    try:
        model = load_model(cfg)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - any load failure is reported the same way
        raise ConfigError(
            f"inference.models[{cfg.name}].path",
            str(path),
            f"a loadable {cfg.format} model ({type(exc).__name__}: {exc})",
        ) from None
    try:
        with torch.inference_mode():
            out = model(torch.zeros(1, cfg.channels, rows, cols))
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(
            f"inference.models[{cfg.name}]",
            str(path),
            f"a model for {expected}; the forward pass failed: {type(exc).__name__}: {exc}",
        ) from None
    if tuple(out.shape) != (1, len(cfg.class_names)):
        raise ConfigError(
            f"inference.models[{cfg.name}]",
            str(path),
            f"a model for {expected}; it returned shape {tuple(out.shape)}",
        )
