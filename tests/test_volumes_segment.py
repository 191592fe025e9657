"""3D preprocessing (MONAI) and sliding-window segmentation, without Spark."""

from __future__ import annotations

import numpy as np
import pytest

from medspark.errors import ConfigError
from medspark.volumes.segment import (
    VolumeModel,
    check_volume_model,
    label_statistics,
    segment,
)
from medspark.volumes.synthetic import save_threshold_model, sphere_hu, sphere_volume_ml
from medspark.volumes.transforms import VolumePreprocess, preprocess_volume, spacing_of

pytest.importorskip("monai")

SPACING = (2.5, 0.8, 0.7)  # anisotropic: slice, row, column (mm)
SHAPE = (16, 40, 44)
RADIUS = 11.0
CENTER = (19.0, 15.6, 15.4)  # mm from the first voxel along (slice, row, column)
ORIGIN = np.array([-15.0, -20.0, 40.0])


def _affine() -> np.ndarray:
    """Axial, LPS: k along +z (S), j along +y (P), i along +x (L)."""
    a = np.eye(4)
    a[:3, 0] = [0, 0, SPACING[0]]
    a[:3, 1] = [0, SPACING[1], 0]
    a[:3, 2] = [SPACING[2], 0, 0]
    a[:3, 3] = ORIGIN
    return a


def _true_center() -> np.ndarray:
    return ORIGIN + np.array([CENTER[2], CENTER[1], CENTER[0]])  # (x, y, z) = (i, j, k) mm


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = save_threshold_model(tmp_path_factory.mktemp("m") / "threshold.ts", 0.5)
    return VolumeModel("threshold", "1", str(path), ("sphere",), roi_size=(32, 32, 32))


def test_sphere_volume_and_centroid_through_resampling(model):
    hu = sphere_hu(SHAPE, SPACING, CENTER, RADIUS).astype(np.float32)
    chain = VolumePreprocess(
        orientation="SPL", target_spacing=(1.0, 1.0, 1.0), intensity_range=(-900.0, 60.0)
    )
    image, affine = preprocess_volume(hu, _affine(), chain)
    assert spacing_of(affine) == pytest.approx((1.0, 1.0, 1.0))
    assert image.min() >= 0.0 and image.max() <= 1.0
    labels = segment(image, model)
    (row,) = label_statistics(labels, affine, model.labels)
    truth = sphere_volume_ml(RADIUS)
    error = abs(row["volume_ml"] - truth) / truth
    assert error < 0.03, (row["volume_ml"], truth)
    # Within one voxel of the coarsest input spacing (2.5 mm) -- and in fact far closer.
    assert np.linalg.norm(np.array(row["centroid"]) - _true_center()) < 1.0
    low, high = np.array(row["bbox_min"]), np.array(row["bbox_max"])
    assert low == pytest.approx(_true_center() - RADIUS, abs=1.5)
    assert high == pytest.approx(_true_center() + RADIUS, abs=1.5)


def test_reorientation_keeps_patient_coordinates():
    """Stored feet-first (k toward inferior) and flipped rows: after SPL the same voxel value is
    at the same LPS point."""
    rng = np.random.default_rng(0)
    array = rng.normal(size=(5, 6, 7)).astype(np.float32)
    a = _affine()
    a[:3, 0] *= -1  # slices go toward feet
    a[:3, 1] *= -1  # rows go toward anterior
    out, out_affine = preprocess_volume(array, a, VolumePreprocess(orientation="SPL"))
    assert out.shape == (5, 6, 7)
    assert out_affine[2, 0] > 0 and out_affine[1, 1] > 0 and out_affine[0, 2] > 0
    for k, j, i in [(0, 0, 0), (4, 5, 6), (2, 1, 3)]:
        point = a @ [k, j, i, 1]
        kk, jj, ii, _ = np.rint(np.linalg.solve(out_affine, point)).astype(int)
        assert out[kk, jj, ii] == array[k, j, i]


def test_crop_pad_moves_the_affine():
    array = np.ones((4, 6, 8), dtype=np.float32)
    out, affine = preprocess_volume(array, _affine(), VolumePreprocess(spatial_size=(6, 6, 4)))
    assert out.shape == (6, 6, 4)
    # One slice of padding before: the first voxel lies one slice below the original first.
    # Two columns cropped at the start: two columns further along x.
    assert affine[:3, 3] == pytest.approx(ORIGIN + [2 * SPACING[2], 0, -SPACING[0]])


def test_label_statistics_known_box():
    labels = np.zeros((4, 5, 6), dtype=np.uint8)
    labels[1:3, 2:4, 1:5] = 1  # 2 x 2 x 4 = 16 voxels
    (row, absent) = label_statistics(labels, _affine(), ["box", "other"])
    assert row["voxel_count"] == 16
    assert row["volume_ml"] == pytest.approx(16 * 2.5 * 0.8 * 0.7 / 1000)
    assert row["centroid"] == pytest.approx(list(ORIGIN + [2.5 * 0.7, 2.5 * 0.8, 1.5 * 2.5]))
    assert row["bbox_min"] == pytest.approx(list(ORIGIN + [0.7, 1.6, 2.5]))
    assert row["bbox_max"] == pytest.approx(list(ORIGIN + [2.8, 2.4, 5.0]))
    assert absent == {
        "label": "other",
        "label_value": 2,
        "voxel_count": 0,
        "volume_ml": 0.0,
        "centroid": None,
        "bbox_min": None,
        "bbox_max": None,
    }


def test_model_check_names_the_problem(model, tmp_path):
    check_volume_model(model)
    with pytest.raises(ConfigError, match="labels"):
        check_volume_model(VolumeModel("m", "1", model.path, ("a", "b"), roi_size=(8, 8, 8)))
    with pytest.raises(ConfigError, match="existing TorchScript file"):
        check_volume_model(VolumeModel("m", "1", str(tmp_path / "none.ts"), ("a",)))
