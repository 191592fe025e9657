"""DICOM Segmentation objects (highdicom) from de-identified scans rows, without Spark."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import scans_row

from medspark.volumes.dicom_seg import (
    derived_uid,
    labels_on_grid,
    seg_header,
    segmentation_dataset,
    source_datasets,
    write_atomically,
)
from medspark.volumes.synthetic import sphere_hu, sphere_volume_ml, write_series

hd = pytest.importorskip("highdicom")

SPACING = (2.5, 0.8, 0.7)
SHAPE = (16, 40, 44)
RADIUS = 11.0
CENTER = (19.0, 15.6, 15.4)
ORIGIN = (-15.0, -20.0, 40.0)
STUDY = "1.2.826.0.1.3680043.8.498.2"
SERIES = "1.2.826.0.1.3680043.8.498.21"


def _affine(spacing=SPACING, origin=ORIGIN):
    a = np.eye(4)
    a[:3, 0] = [0, 0, spacing[0]]
    a[:3, 1] = [0, spacing[1], 0]
    a[:3, 2] = [spacing[2], 0, 0]
    a[:3, 3] = origin
    return a


@pytest.fixture(scope="module")
def series_rows(tmp_path_factory, pseudo):
    """The scans rows of a written sphere series, parsed and de-identified as ingest does, in
    geometric order (the array order of the assembled volume)."""
    hu = sphere_hu(SHAPE, SPACING, CENTER, RADIUS)
    paths = write_series(
        tmp_path_factory.mktemp("seg_src"),
        hu,
        SPACING,
        series_uid=SERIES,
        study_uid=STUDY,
        origin=ORIGIN,
        patient_id="PAT-SECRET-42",
    )
    rows = []
    for p in paths:
        row = pseudo.deidentify_row(scans_row(p))
        row["seg_header"] = seg_header(row["header_json"])
        rows.append(row)
    rows.sort(key=lambda r: r["image_position_patient"][2])
    return hu, rows


def test_labels_on_grid_nearest_neighbour_through_affines():
    labels = np.zeros((10, 10, 10), dtype=np.uint8)
    labels[2:5, 3:6, 4:8] = 1
    fine = _affine((1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    # The same box seen on a grid of 2 mm slices, shifted by one slice: k' = (k - 1) / 2.
    coarse = _affine((2.0, 1.0, 1.0), (0.0, 0.0, 1.0))
    out = labels_on_grid(labels, fine, coarse, (5, 10, 10))
    # Coarse slice k sits at z = 1 + 2k: fine slices 1, 3, 5, 7, 9; the box holds 2..4 -> k=1.
    assert out[1, 3:6, 4:8].all() and out.sum() == 12
    # Outside the labelled grid is background.
    far = labels_on_grid(labels, fine, _affine((1, 1, 1), (50.0, 0, 0)), (10, 10, 10))
    assert far.sum() == 0


def test_seg_refers_to_the_pseudonymous_sources_and_holds_the_mask(series_rows, tmp_path, pseudo):
    hu, rows = series_rows
    sources = source_datasets(rows)
    mask = (hu > -420).astype(np.uint8)  # the ball, halfway between -900 and 60 HU
    seg = segmentation_dataset(
        sources, mask, ["sphere"], model="threshold", version="1", software_version="0.1.0"
    )
    path = tmp_path / "segmentations" / "x" / "threshold-1.dcm"
    write_atomically(seg, path)

    # Opens with pydicom and highdicom.
    import pydicom

    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
    read = hd.seg.segread(path)
    # Every UID it refers to is a pseudonym as in scans; no original UID, no patient identity.
    referenced = {
        item.ReferencedSOPInstanceUID
        for series in ds.ReferencedSeriesSequence
        for item in series.ReferencedInstanceSequence
    }
    assert referenced == {r["sop_instance_uid"] for r in rows}
    assert all(uid.startswith("2.25.") for uid in referenced)
    assert ds.StudyInstanceUID == rows[0]["study_instance_uid"] == pseudo.uid(STUDY)
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == pseudo.uid(SERIES)
    assert ds.PatientID == rows[0]["patient_id"] != "PAT-SECRET-42"
    raw = path.read_bytes()
    assert b"PAT-SECRET-42" not in raw and SERIES.encode() not in raw and STUDY.encode() not in raw
    assert ds.PatientIdentityRemoved == "YES"
    assert ds.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    assert ds.FrameOfReferenceUID.startswith("2.25.")  # de-identified as well
    # Its own UIDs are derived, so a rerun writes the same file.
    assert ds.SOPInstanceUID == derived_uid(pseudo.uid(SERIES), "threshold", "1", "instance")
    # The mask comes back: voxels x voxel volume = the ball's volume within partial volume.
    volume = read.get_volume(combine_segments=True)
    voxels = int((volume.array > 0).sum())
    assert voxels == int(mask.sum())
    truth = sphere_volume_ml(RADIUS)
    assert abs(voxels * np.prod(SPACING) / 1000 - truth) / truth < 0.03
    assert read.get_segment_description(1).segment_label == "sphere"

    again = tmp_path / "again.dcm"
    write_atomically(
        segmentation_dataset(
            source_datasets(rows),
            mask,
            ["sphere"],
            model="threshold",
            version="1",
            software_version="0.1.0",
        ),
        again,
    )
    assert again.read_bytes() == raw
    assert sorted(p.name for p in path.parent.iterdir()) == ["threshold-1.dcm"]  # no temp left
