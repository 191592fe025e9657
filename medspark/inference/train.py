"""Train the bundled demonstration model (``medspark train-demo``).

Seeded end to end: synthetic chest-CT-like slices with and without a nodule
(:mod:`medspark.synthetic`) are written as DICOM bytes and turned into tensors by the very same
function the Spark job uses (:func:`medspark.preprocess.udf.process_item` with the default
chain), so the model sees at training time exactly what it sees in production. A held-out split
of fresh seeds gives the metrics written to the model card.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from medspark.config import ModelConfig, PipelineConfig


def make_tensors(seeds: range, config: PipelineConfig) -> tuple[np.ndarray, np.ndarray]:
    """Tensors (N, H, W) uint8 and labels (N,) for the synthetic slices of ``seeds``.

    Even seeds have no nodule, odd seeds have one: balanced classes, reproducible.
    """
    from medspark.preprocess.udf import PreprocessSettings, process_item
    from medspark.synthetic import SliceSpec, ct_slice_bytes

    pre = config.preprocess
    settings = PreprocessSettings(pre.chain(), pre.window_value(), pre.thumbnail_size, 64)
    tensors, labels = [], []
    key = {"sop_instance_uid": "train", "source_uri": "synthetic", "archive_member": None}
    for seed in seeds:
        label = seed % 2
        (row,) = process_item(ct_slice_bytes(SliceSpec(bool(label), seed)), key, settings)
        tensors.append(np.frombuffer(row["tensor"], np.uint8).reshape(row["tensor_shape"]))
        labels.append(label)
    return np.stack(tensors), np.array(labels, dtype=np.int64)


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney U) formula, ties averaged."""
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    pos = labels == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def train_demo_model(
    out_dir: Path,
    *,
    n_train: int = 1600,
    n_test: int = 400,
    epochs: int = 12,
    seed: int = 20261125,
    config: PipelineConfig | None = None,
) -> dict[str, Any]:
    """Train, evaluate on held-out seeds; save model.pt (TorchScript) and model_card.json."""
    import torch

    from medspark.inference.model import small_cnn

    config = config or PipelineConfig()
    model_cfg = ModelConfig()
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    t0 = time.time()
    x_train, y_train = make_tensors(range(seed, seed + n_train), config)
    x_test, y_test = make_tensors(range(seed + n_train, seed + n_train + n_test), config)
    t_data = time.time() - t0

    def to_input(x: np.ndarray) -> Any:
        return (torch.from_numpy(x).float().unsqueeze(1) - model_cfg.mean) / model_cfg.std

    model = small_cnn(in_channels=1, num_classes=2)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    xt, yt = to_input(x_train), torch.from_numpy(y_train)
    history = []
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for start in range(0, len(xt), 32):
            idx = perm[start : start + 32]
            opt.zero_grad()
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        history.append(round(total / len(xt), 4))
    model.eval()
    with torch.inference_mode():
        probs = torch.softmax(model(to_input(x_test)), dim=1).numpy()
    pred = probs.argmax(1)
    tp = int(((pred == 1) & (y_test == 1)).sum())
    fp = int(((pred == 1) & (y_test == 0)).sum())
    fn = int(((pred == 0) & (y_test == 1)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    metrics = {
        "accuracy": round(float((pred == y_test).mean()), 4),
        "precision_nodule": round(precision, 4),
        "recall_nodule": round(recall, 4),
        "f1_nodule": round(2 * precision * recall / (precision + recall), 4)
        if precision + recall
        else 0.0,
        "roc_auc": round(roc_auc(probs[:, 1], y_test), 4),
        "n_test": int(len(y_test)),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    scripted = torch.jit.script(model)
    scripted.save(str(out_dir / "model.pt"))
    card = {
        "name": model_cfg.name,
        "version": model_cfg.version,
        "warning": (
            "DEMONSTRATION MODEL trained on synthetic data generated by medspark. It has never "
            "seen a real scan and must not be used for any clinical or research conclusion."
        ),
        "task": "binary classification of a synthetic chest-CT-like slice: nodule present or not",
        "classes": model_cfg.class_names,
        "architecture": "medspark_small_cnn (4 stride-2 conv blocks, global pooling, linear)",
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "format": "torchscript",
        "saliency": {
            "convention": "TorchScript methods features(x) -> (N, 64, 28, 28), the "
            "activations of the third conv block, and head(features) -> logits; model(x) == "
            "head(features(x)) exactly (docs/inference.md)",
            "method": "Grad-CAM on features, for the predicted class (inference.saliency: true)",
        },
        "input_contract": {
            "tensor": "images.tensor: uint8 C-order bytes, shape [224, 224] (1 channel)",
            "scaling": f"(x - {model_cfg.mean}) / {model_cfg.std}",
            "preprocessing": config.preprocess.chain().to_config(),
            "preprocess_config_hash": config.preprocess.chain().config_hash(),
            "window": "auto (the synthetic files carry a lung window, center -600 width 1500)",
        },
        "training_data": {
            "source": "medspark.synthetic.ct_slice_hu: 256x256 HU slices (body ellipse, two "
            "lungs, spine, 3-6 small vessels; a nodule of radius 5-9 px in a lung for the "
            "positive class), written as CT DICOM and preprocessed by process_item",
            "train_seeds": [seed, seed + n_train - 1],
            "test_seeds": [seed + n_train, seed + n_train + n_test - 1],
            "balance": "even seeds negative, odd seeds positive (50/50)",
        },
        "training": {
            "epochs": epochs,
            "batch_size": 32,
            "optimizer": "Adam lr=0.002",
            "loss_per_epoch": history,
            "seed": seed,
            "torch": torch.__version__,
            "seconds_data": round(t_data, 1),
            "seconds_total": round(time.time() - t0, 1),
        },
        "held_out_metrics": metrics,
    }
    (out_dir / "model_card.json").write_text(json.dumps(card, indent=2) + "\n")
    return card
