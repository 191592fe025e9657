"""The bundled demonstration 3D model: where it lies and the settings it was trained with.

Runtime code (:mod:`medspark.volumes.segment`) reads these to load the default model; the
trainer (:mod:`medspark.volumes.train`) writes the model here. Kept apart from the trainer so
the runtime never imports training code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medspark.volumes.synthetic import CHEST_LABELS

DEFAULT_MODEL_DIR = Path(__file__).parent / "default_model"
DEFAULT_MODEL_FILE = DEFAULT_MODEL_DIR / "model.ts"
DEFAULT_MODEL_CARD = DEFAULT_MODEL_DIR / "model_card.json"

#: The settings the demonstration model was trained with: the ``volumes`` config it needs.
DEMO_MODEL: dict[str, Any] = {
    "name": "medspark-chest-demo-3d",
    "version": "1",
    "labels": list(CHEST_LABELS),
    "roi_size": [32, 64, 64],
    "train_crop": [24, 48, 48],
    "orientation": "SPL",
    "target_spacing": [2.0, 2.0, 2.0],
    "intensity_range": [-1000.0, 400.0],
}
