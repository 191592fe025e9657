"""The bundled demonstration 3D model, MONAI bundle directories, and the 3D model's training,
without Spark."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from medspark.cli import main
from medspark.config import VolumeModelConfig
from medspark.errors import ConfigError
from medspark.volumes.segment import check_volume_model, resolve_volume_model
from medspark.volumes.train import DEFAULT_MODEL_CARD, DEFAULT_MODEL_FILE, DEMO_MODEL

pytest.importorskip("monai")

REPO = Path(__file__).resolve().parents[1]


def test_bundled_model_is_small_packaged_and_says_it_is_synthetic():
    assert DEFAULT_MODEL_FILE.stat().st_size < 2 * 2**20
    card = json.loads(DEFAULT_MODEL_CARD.read_text())
    assert card["synthetic"] is True and "synthetic" in card["warning"]
    assert card["labels"] == ["lung", "nodule"] == DEMO_MODEL["labels"]
    assert card["held_out_metrics"]["n_test"] >= 8
    # Package data (tomllib is Python 3.11+; the project allows 3.10).
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"medspark.volumes" = ["default_model/model.ts", "default_model/model_card.json"]' in (
        pyproject
    )
    # path null is the bundled model, with its own labels, window, name and version.
    model = resolve_volume_model(VolumeModelConfig())
    assert (model.path, model.labels) == (str(DEFAULT_MODEL_FILE), ("lung", "nodule"))
    assert (model.name, model.roi_size) == ("medspark-chest-demo-3d", (32, 64, 64))
    check_volume_model(model)


def test_bundled_model_measures_a_held_out_nodule():
    """A fresh seed (neither training nor the card's test seeds): the nodule's volume from the
    production path (preprocess_volume + sliding window) against the ball's analytic volume."""
    from medspark.volumes.segment import label_statistics, segment
    from medspark.volumes.train import make_case

    case = make_case(HELD_OUT_SEED)
    (nodule,) = case["chest"].nodules
    truth = case["chest"].nodule_volumes_ml()[0]
    model = resolve_volume_model(VolumeModelConfig(device="cpu"))
    labels = segment(case["image"], model)
    stats = {s["label"]: s for s in label_statistics(labels, case["affine"], model.labels)}
    error = (stats["nodule"]["volume_ml"] - truth) / truth
    assert abs(error) < NODULE_TOLERANCE, (nodule, truth, stats["nodule"]["volume_ml"])
    centre = np.array([nodule[2], nodule[1], nodule[0]])  # (x, y, z) = (column, row, slice) mm
    assert np.linalg.norm(np.array(stats["nodule"]["centroid"]) - centre) < 2.0
    lung = labels == 1
    truth_lung = case["labels"] == 1
    assert 2 * (lung & truth_lung).sum() / (lung.sum() + truth_lung.sum()) > 0.9


#: A seed of neither the training nor the card's test cases, with one nodule of radius 7.59 mm
#: (1.830 mL): measured 1.912 mL (+4.5 %), centroid 0.5 mm off. The card's held-out figures:
#: nodules of radius >= 8 mm within 6 %, small ones (3-6 mm) underestimated by up to 53 %.
HELD_OUT_SEED = 424244
NODULE_TOLERANCE = 0.15


def _bundle(tmp_path: Path, metadata: dict | None, inference: dict | None) -> Path:
    root = tmp_path / "bundle"
    (root / "models").mkdir(parents=True)
    (root / "configs").mkdir()
    shutil.copyfile(DEFAULT_MODEL_FILE, root / "models" / "model.ts")
    if metadata is not None:
        (root / "configs" / "metadata.json").write_text(json.dumps(metadata))
    if inference is not None:
        (root / "configs" / "inference.json").write_text(json.dumps(inference))
    return root


METADATA = {
    "name": "chest demo as a bundle",
    "version": "0.1.0",
    "network_data_format": {
        "inputs": {"image": {"type": "image", "num_channels": 1}},
        "outputs": {
            "pred": {
                "type": "image",
                "num_channels": 3,
                "channel_def": {"0": "background", "1": "lung", "2": "nodule"},
            }
        },
    },
}
INFERENCE = {"inferer": {"_target_": "SlidingWindowInferer", "roi_size": [32, 48, 48]}}


def test_monai_bundle_directory_gives_model_labels_and_roi(tmp_path):
    root = _bundle(tmp_path, METADATA, INFERENCE)
    model = resolve_volume_model(VolumeModelConfig(path=str(root), name="bundled", version="2"))
    assert model.path == str(root / "models" / "model.ts")
    assert (model.labels, model.roi_size) == (("lung", "nodule"), (32, 48, 48))
    check_volume_model(model)
    # Keys given in the config win where the bundle is silent; agree where it is not.
    given = VolumeModelConfig(path=str(root), labels=["lung", "nodule"], roi_size=[16, 32, 32])
    assert resolve_volume_model(given).roi_size == (16, 32, 32)
    with pytest.raises(ConfigError, match=r"volumes\.model\.labels.*channel_def"):
        resolve_volume_model(VolumeModelConfig(path=str(root), labels=["tumour"]))


def test_bad_bundle_is_one_configuration_line(tmp_path, capsys):
    root = _bundle(tmp_path, None, None)  # models/model.ts but no configs
    conf = tmp_path / "p.yaml"
    conf.write_text(yaml.safe_dump({"volumes": {"model": {"path": str(root)}}}))
    code = main(["volumes", "--warehouse", str(tmp_path / "wh"), "--conf", str(conf)])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("medspark: configuration error")
    assert "volumes.model.path" in err and str(root) in err
    assert "MONAI bundle directory with models/model.ts and configs/metadata.json" in err
    assert not (tmp_path / "wh").exists()
    # A bundle whose metadata has no labels, and none in the config: the labels key is named.
    _bundle(tmp_path / "b2", {"name": "x"}, None)
    with pytest.raises(ConfigError, match=r"volumes\.model\.labels"):
        resolve_volume_model(VolumeModelConfig(path=str(tmp_path / "b2" / "bundle")))


def test_training_is_deterministic(tmp_path):
    """Two short trainings with the same seed give the same weights (the full one is
    ``python -m medspark.volumes.train``, minutes on CPU). The files' bytes differ within one
    process only by TorchScript's name for the second definition of the class."""
    import torch

    from medspark.volumes.train import train_volume_model

    a = train_volume_model(tmp_path / "a", n_train=2, n_test=1, steps=2, threads=1)
    b = train_volume_model(tmp_path / "b", n_train=2, n_test=1, steps=2, threads=1)
    weights = [torch.jit.load(str(tmp_path / d / "model.ts")).state_dict() for d in "ab"]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert a["held_out_metrics"] == b["held_out_metrics"]
    assert a["synthetic"] is True


def test_volume_switches_are_checked():
    from medspark.config import config_from_dict, with_overrides
    from medspark.volumes.steps import volume_task

    with pytest.raises(ConfigError, match=r"volumes\.in_run.*with a volumes\.model"):
        config_from_dict({"volumes": {"in_run": True}})
    config = config_from_dict({"volumes": {"in_run": True, "model": {"path": None}}})
    assert config.volumes.seg is True and config.volumes.model.roi_size is None
    remote = with_overrides(config, warehouse="s3://bucket/warehouse")
    with pytest.raises(ConfigError, match=r"volumes\.seg.*not one"):
        volume_task(remote)
    task = volume_task(with_overrides(config, warehouse="/data/wh"))
    assert task.seg_root == "/data/wh" and task.model.labels == ("lung", "nodule")
