"""Train the bundled demonstration 3D model (``python -m medspark.volumes.train``).

Seeded end to end, on CPU, in a few minutes: synthetic chest-CT volumes
(:func:`medspark.volumes.synthetic.random_chest`: body, two lungs, thin vessels, 0-2 nodules of
known radius) are drawn at a random scanner spacing, preprocessed by the very function the
Spark job uses (:func:`medspark.volumes.transforms.preprocess_volume`: SPL, 2 mm isotropic,
[-1000, 400] HU -> [0, 1]), and labelled analytically at the preprocessed voxel centres (0
background, 1 lung, 2 nodule). A small 3D encoder-decoder (:func:`tiny_unet3d`) is trained on
crops and scripted to TorchScript. Held-out volumes of fresh seeds are segmented through
:func:`medspark.volumes.segment.segment` (MONAI sliding window, as in production) and the
Dice and nodule-volume errors go into ``model_card.json``, which says the model is synthetic.

The model is a demonstration of the volume path, not a medical device: it has never seen a
real scan. Reproducible for the same torch version and thread count (``--threads``).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medspark.volumes.bundled import (
    DEFAULT_MODEL_CARD,
    DEFAULT_MODEL_DIR,
    DEFAULT_MODEL_FILE,
    DEMO_MODEL,
)
from medspark.volumes.synthetic import chest_hu, chest_labels, random_chest

__all__ = [
    "DEFAULT_MODEL_CARD",
    "DEFAULT_MODEL_DIR",
    "DEFAULT_MODEL_FILE",
    "DEMO_MODEL",
    "make_case",
    "tiny_unet3d",
    "train_volume_model",
]


def tiny_unet3d(width: int = 6, classes: int = 3) -> Any:
    """A small 3D encoder-decoder (two stride-2 levels, skip connections, about 44 k
    parameters at width 6): input (N, 1, D, H, W) with D, H, W multiples of 4, output (N,
    classes, D, H, W) class scores. Scriptable (TorchScript)."""
    import torch
    from torch import nn

    def conv(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Module:
        return nn.Sequential(
            nn.Conv3d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation),
            nn.ReLU(inplace=True),
        )

    class TinyUNet3d(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            w = width
            self.enc1 = conv(1, w)
            self.enc2 = nn.Sequential(conv(w, 2 * w, stride=2), conv(2 * w, 2 * w))
            self.enc3 = nn.Sequential(conv(2 * w, 4 * w, stride=2), conv(4 * w, 4 * w, dilation=2))
            self.dec2 = conv(6 * w, 2 * w)
            self.dec1 = conv(3 * w, w)
            self.head = nn.Conv3d(w, classes, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            e1 = self.enc1(x)
            e2 = self.enc2(e1)
            e3 = self.enc3(e2)
            up3 = nn.functional.interpolate(e3, size=e2.shape[2:], mode="trilinear")
            d2 = self.dec2(torch.cat([up3, e2], dim=1))
            up2 = nn.functional.interpolate(d2, size=e1.shape[2:], mode="trilinear")
            d1 = self.dec1(torch.cat([up2, e1], dim=1))
            return self.head(d1)

    return TinyUNet3d()


def make_case(seed: int) -> dict[str, Any]:
    """One synthetic case: a chest drawn at a random scanner spacing and extent, preprocessed as
    ``medspark volumes`` does with :data:`DEMO_MODEL`'s settings, and its true labels at the
    preprocessed voxel centres."""
    from medspark.volumes.transforms import VolumePreprocess, preprocess_volume

    rng = np.random.default_rng(seed + 7_000_000)
    spacing = (
        float(rng.uniform(1.5, 3.5)),
        float(rng.uniform(1.0, 2.5)),
        float(rng.uniform(1.0, 2.5)),
    )
    spacing = (spacing[0], spacing[1], spacing[1])  # square pixels
    extent = (float(rng.uniform(90, 150)), float(rng.uniform(150, 210)), 0.0)
    extent = (extent[0], extent[1], extent[1])
    shape = tuple(int(round(e / s)) for e, s in zip(extent, spacing, strict=True))
    chest = random_chest(seed, tuple(n * s for n, s in zip(shape, spacing, strict=True)))
    hu = chest_hu(chest, shape, spacing, seed=seed)  # type: ignore[arg-type]
    affine = np.eye(4)
    affine[:3, :3] = np.array([[0, 0, spacing[2]], [0, spacing[1], 0], [spacing[0], 0, 0]])
    image, out_affine = preprocess_volume(
        hu.astype(np.float32),
        affine,
        VolumePreprocess(
            orientation=DEMO_MODEL["orientation"],
            target_spacing=tuple(DEMO_MODEL["target_spacing"]),
            intensity_range=tuple(DEMO_MODEL["intensity_range"]),
        ),
    )
    labels = chest_labels(chest, out_affine, image.shape, (0.0, 0.0, 0.0))
    return {"seed": seed, "image": image, "labels": labels, "affine": out_affine, "chest": chest}


def _crop(
    case: dict[str, Any], roi: Sequence[int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A training crop of ``roi`` (padded with background where the volume is smaller); half
    of the crops of a case with a nodule are centred near one."""
    image, labels = case["image"], case["labels"]
    pad = [(0, max(0, r - n)) for r, n in zip(roi, image.shape, strict=True)]
    image = np.pad(image, pad)
    labels = np.pad(labels, pad)
    nodule = np.argwhere(labels == 2)
    if len(nodule) and rng.random() < 0.5:
        centre = nodule[rng.integers(0, len(nodule))] + rng.integers(-8, 9, 3)
        start = [
            int(np.clip(c - r // 2, 0, n - r))
            for c, r, n in zip(centre, roi, image.shape, strict=True)
        ]
    else:
        start = [int(rng.integers(0, n - r + 1)) for r, n in zip(roi, image.shape, strict=True)]
    sl = tuple(slice(s, s + r) for s, r in zip(start, roi, strict=True))
    return image[sl], labels[sl]


def _dice(pred: np.ndarray, truth: np.ndarray, value: int) -> float | None:
    p, t = pred == value, truth == value
    total = int(p.sum()) + int(t.sum())
    return None if total == 0 else 2.0 * int((p & t).sum()) / total


def evaluate(model_path: Path, cases: list[dict[str, Any]]) -> dict[str, Any]:
    """Segment ``cases`` with the saved model through the production path (sliding window) and
    measure Dice per label (pooled over the cases) and each case's nodule volume against the
    analytic volume of its balls."""
    from medspark.volumes.segment import VolumeModel, label_statistics, segment

    model = VolumeModel(
        name=DEMO_MODEL["name"],
        version=DEMO_MODEL["version"],
        path=str(model_path),
        labels=tuple(DEMO_MODEL["labels"]),
        roi_size=tuple(DEMO_MODEL["roi_size"]),  # type: ignore[arg-type]
        device="cpu",
    )
    preds, truths, per_case = [], [], []
    for case in cases:
        pred = segment(case["image"], model)
        stats = {s["label"]: s for s in label_statistics(pred, case["affine"], model.labels)}
        true_ml = sum(case["chest"].nodule_volumes_ml())
        found_ml = stats["nodule"]["volume_ml"]
        per_case.append(
            {
                "seed": case["seed"],
                "nodules": len(case["chest"].nodules),
                "nodule_radii_mm": [round(n[3], 2) for n in case["chest"].nodules],
                "nodule_ml_true": round(true_ml, 3),
                "nodule_ml_found": round(found_ml, 3),
                "nodule_volume_error": round((found_ml - true_ml) / true_ml, 4)
                if true_ml
                else None,
                "lung_dice": round(_dice(pred, case["labels"], 1) or 0.0, 4),
            }
        )
        preds.append(pred.ravel())
        truths.append(case["labels"].ravel())
    pred_all, truth_all = np.concatenate(preds), np.concatenate(truths)
    errors = [c["nodule_volume_error"] for c in per_case if c["nodule_volume_error"] is not None]
    empty = [c["nodule_ml_found"] for c in per_case if not c["nodules"]]
    return {
        "dice_lung": round(_dice(pred_all, truth_all, 1) or 0.0, 4),
        "dice_nodule": round(_dice(pred_all, truth_all, 2) or 0.0, 4),
        "nodule_volume_error_mean_abs": round(float(np.mean(np.abs(errors))), 4)
        if errors
        else None,
        "nodule_volume_error_max_abs": round(float(np.max(np.abs(errors))), 4) if errors else None,
        "false_nodule_ml_in_cases_without_nodule_max": round(max(empty), 3) if empty else None,
        "n_test": len(cases),
        "per_case": per_case,
    }


def train_volume_model(
    out_dir: Path = DEFAULT_MODEL_DIR,
    *,
    n_train: int = 24,
    n_test: int = 8,
    steps: int = 300,
    batch: int = 2,
    seed: int = 20261201,
    threads: int = 2,
) -> dict[str, Any]:
    """Train, evaluate on held-out seeds; write ``model.ts`` (TorchScript) and
    ``model_card.json`` under ``out_dir``. Returns the card."""
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    rng = np.random.default_rng(seed)
    t0 = time.time()
    train_cases = [make_case(seed + i) for i in range(n_train)]
    test_cases = [make_case(seed + 100_000 + i) for i in range(n_test)]
    t_data = time.time() - t0
    roi = DEMO_MODEL["train_crop"]
    model = tiny_unet3d()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ce = torch.nn.CrossEntropyLoss()
    history = []
    running = 0.0
    model.train()
    for step in range(steps):
        crops = [_crop(train_cases[int(rng.integers(0, n_train))], roi, rng) for _ in range(batch)]
        xs, ys = [c[0] for c in crops], [c[1] for c in crops]
        x = torch.from_numpy(np.stack(xs)[:, None].astype(np.float32))
        y = torch.from_numpy(np.stack(ys).astype(np.int64))
        out = model(x)
        prob = torch.softmax(out, dim=1)
        onehot = torch.nn.functional.one_hot(y, 3).permute(0, 4, 1, 2, 3).float()
        inter = (prob * onehot).sum(dim=(0, 2, 3, 4))
        denom = prob.sum(dim=(0, 2, 3, 4)) + onehot.sum(dim=(0, 2, 3, 4))
        dice = (2 * inter[1:] + 1.0) / (denom[1:] + 1.0)
        loss = ce(out, y) + (1.0 - dice).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        running += float(loss.detach())
        if (step + 1) % 25 == 0:
            history.append(round(running / 25, 4))
            running = 0.0
    model.eval()
    t_train = time.time() - t0 - t_data
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "model.ts"
    torch.jit.save(torch.jit.script(model), str(path))
    metrics = evaluate(path, test_cases)
    card = {
        "name": DEMO_MODEL["name"],
        "version": DEMO_MODEL["version"],
        "warning": (
            "DEMONSTRATION MODEL trained on synthetic volumes generated by medspark. It has "
            "never seen a real scan and must not be used for any clinical or research "
            "conclusion."
        ),
        "synthetic": True,
        "task": "3D segmentation of a synthetic chest CT: background, lung, nodule",
        "labels": DEMO_MODEL["labels"],
        "architecture": "tiny_unet3d (medspark.volumes.train): 2 stride-2 levels, skips, ReLU",
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "format": "torchscript",
        "input_contract": {
            "tensor": "(N, 1, D, H, W) float32, D, H, W multiples of 4 (roi_size)",
            "output": "(N, 3, D, H, W) class scores: background, lung, nodule (arg-max)",
            "volumes_config": {
                k: v for k, v in DEMO_MODEL.items() if k not in ("name", "version", "train_crop")
            },
        },
        "training_data": {
            "source": "medspark.volumes.synthetic.random_chest + chest_hu: elliptic body (40 "
            "HU), two lung ellipsoids (-850 HU), 2-5 vessels of radius 0.8-1.6 mm (40 HU), 0-2 "
            "nodules of radius 3-10 mm (30 HU) wholly inside a lung, partial volume (2^3 "
            "sub-points), Gaussian noise 15 HU; scanner spacing 1.5-3.5 mm between slices, "
            "1.0-2.5 mm pixels; preprocessed by preprocess_volume; labels analytic at the "
            "preprocessed voxel centres",
            "train_seeds": [seed, seed + n_train - 1],
            "test_seeds": [seed + 100_000, seed + 100_000 + n_test - 1],
        },
        "training": {
            "steps": steps,
            "batch_size": batch,
            "crop": roi,
            "optimizer": "Adam lr=0.003",
            "loss": "cross-entropy + soft Dice (lung, nodule)",
            "loss_per_25_steps": history,
            "seed": seed,
            "threads": threads,
            "torch": torch.__version__,
            "seconds_data": round(t_data, 1),
            "seconds_train": round(t_train, 1),
        },
        "held_out_metrics": metrics,
        "reproduce": "python -m medspark.volumes.train --out DIR",
    }
    (out_dir / "model_card.json").write_text(json.dumps(card, indent=2) + "\n")
    return card


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m medspark.volumes.train",
        description="retrain the bundled demonstration 3D model (synthetic chest CT)",
    )
    parser.add_argument("--out", default=str(DEFAULT_MODEL_DIR), help="for model.ts and its card")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--n-train", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    card = train_volume_model(
        Path(args.out), steps=args.steps, n_train=args.n_train, threads=args.threads
    )
    metrics = {k: v for k, v in card["held_out_metrics"].items() if k != "per_case"}
    print(json.dumps(metrics, indent=2))
    print(f"model and card written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
