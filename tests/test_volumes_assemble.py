"""Volume assembly without Spark: real DICOM files, headers parsed as ingest parses them."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import pytest
from helpers import scans_row

from medspark.sources.archives import to_uri
from medspark.volumes.assemble import (
    IRREGULAR_SERIES,
    SERIES_TOO_LARGE,
    SOURCE_CHANGED,
    UNDECODABLE_FILE,
    VolumeError,
    VolumeSettings,
    assemble_volume,
)
from medspark.volumes.synthetic import write_series

SPACING = (3.0, 0.9, 0.6)  # slice, row, column (mm)
OBLIQUE = (0.9961947, 0.0871557, 0.0, 0.0, 0.0, -1.0)  # coronal-ish, rotated 5 deg


def _scans_rows(paths):
    rows = [scans_row(p) for p in paths]
    random.Random(5).shuffle(rows)
    return rows


@pytest.fixture()
def ramp(tmp_path):
    """A volume whose every voxel value says where it is: 1000*k + 10*j + i (HU)."""
    k, j, i = np.mgrid[0:6, 0:5, 0:7]
    hu = (100 * k + 10 * j + i - 500).astype(np.int16)
    paths = write_series(
        tmp_path / "s",
        hu,
        SPACING,
        series_uid="1.2.3.4.5",
        study_uid="1.2.3.4",
        orientation=OBLIQUE,
        origin=(10.0, -5.0, 30.0),
    )
    return hu, paths


def test_stacks_modality_values_in_geometric_order(ramp):
    hu, paths = ramp
    volume = assemble_volume(_scans_rows(paths), VolumeSettings())
    assert volume.array.dtype == np.float32
    assert np.array_equal(volume.array, hu.astype(np.float32))  # HU, not stored values
    assert volume.spacing == pytest.approx(SPACING, abs=1e-4)  # positions written to 4 decimals
    # Voxel (k, j, i) -> LPS: origin + k*3*normal + j*0.9*Y + i*0.6*X.
    x, y = np.array(OBLIQUE[:3]), np.array(OBLIQUE[3:])
    normal = np.cross(x, y) / np.linalg.norm(np.cross(x, y))
    expected = np.array([10.0, -5.0, 30.0]) + 4 * 3.0 * normal + 2 * 0.9 * y + 5 * 0.6 * x
    assert (volume.affine @ [4, 2, 5, 1])[:3] == pytest.approx(expected, abs=1e-3)
    assert volume.modality == "CT"


def test_too_large_is_refused_before_reading(ramp):
    _, paths = ramp
    with pytest.raises(VolumeError) as err:
        assemble_volume(_scans_rows(paths), VolumeSettings(max_voxels=200))
    assert err.value.error_class == SERIES_TOO_LARGE
    assert "6 slices x 5 x 7 = 210 voxels" in str(err.value) and "1.2.3.4.5" in str(err.value)


def test_irregular_series_carries_the_verdict(tmp_path):
    hu = np.zeros((5, 4, 4), dtype=np.int16)
    paths = write_series(tmp_path, hu, SPACING, series_uid="9.9", study_uid="9", skip=(2,))
    with pytest.raises(VolumeError) as err:
        assemble_volume(_scans_rows(paths), VolumeSettings())
    assert err.value.error_class == IRREGULAR_SERIES
    assert "series 9.9: missing_slices: 1 missing" in str(err.value)


def test_changed_or_corrupt_slice_names_the_instance(ramp):
    _, paths = ramp
    rows = _scans_rows(paths)
    victim = rows[2]
    path = paths[[to_uri(p) for p in paths].index(victim["source_uri"])]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])  # truncated Pixel Data after ingest
    with pytest.raises(VolumeError) as err:
        assemble_volume(rows, VolumeSettings())
    assert err.value.error_class == SOURCE_CHANGED
    assert victim["sop_instance_uid"] in str(err.value)
    # Ingested as it is now (same SHA-256): the pixels themselves are short.
    victim["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(VolumeError) as err:
        assemble_volume(rows, VolumeSettings())
    assert err.value.error_class in (UNDECODABLE_FILE, "undecodable_frame")
    assert victim["sop_instance_uid"] in str(err.value)


def test_real_multiframe_rt_dose(test_files):
    """pydicom's real RT Dose: 15 frames placed by Grid Frame Offset Vector, scaled by Dose Grid
    Scaling (3004,000E) into Gy."""
    import pydicom

    path = test_files / "rtdose.dcm"
    volume = assemble_volume(_scans_rows([path]), VolumeSettings())
    ds = pydicom.dcmread(path)
    expected = ds.pixel_array.astype(np.float64) * float(ds.DoseGridScaling)
    assert volume.array.shape == (15, 10, 10)
    assert np.allclose(volume.array, expected, rtol=1e-6)
    assert volume.spacing == pytest.approx((5.0, 10.0, 10.0))
    assert volume.slices == [(ds.SOPInstanceUID, f) for f in range(15)]
    assert (volume.affine @ [14, 0, 0, 1])[:3] == pytest.approx([189.43125, 199.43125, -691.87])
