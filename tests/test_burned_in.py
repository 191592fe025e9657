"""Burned-in text: ultrasound regions on pydicom's real US files, and the UDF's three outcomes."""

from __future__ import annotations

import cv2
import numpy as np
import pydicom
import pytest

from medspark.config import PipelineConfig
from medspark.dicom.burned_in import black_out_outside, ultrasound_regions
from medspark.dicom.pixels import iter_frames, to_display
from medspark.preprocess.udf import PreprocessSettings, burned_in_action, process_item


def _settings(burned_in: str) -> PreprocessSettings:
    pre = PipelineConfig().preprocess
    return PreprocessSettings(
        chain=pre.chain(),
        window=pre.window_value(),
        thumbnail_size=pre.thumbnail_size,
        frames_per_batch=pre.frames_per_batch,
        burned_in=burned_in,
    )


def _key(flagged: bool = True) -> dict:
    return {
        "sop_instance_uid": "x",
        "source_uri": "file:///x.dcm",
        "archive_member": None,
        "burned_in_annotation": flagged,
        "burned_in_reason": "modality US often burns in text" if flagged else None,
    }


def test_regions_of_real_ultrasound_files(test_files):
    # Region Location Min X0/Y0, Max X1/Y1 (0018,6018..601E) as the files declare them.
    ybr = pydicom.dcmread(test_files / "examples_ybr_color.dcm", stop_before_pixels=True)
    assert ultrasound_regions(ybr) == ((84, 31, 319, 239),)
    palette = pydicom.dcmread(test_files / "examples_palette.dcm", stop_before_pixels=True)
    assert ultrasound_regions(palette) == ((120, 60, 799, 349),)
    rgb = pydicom.dcmread(test_files / "examples_rgb_color.dcm", stop_before_pixels=True)
    assert ultrasound_regions(rgb) == ()


def test_regions_are_clipped_and_bad_items_skipped():
    ds = pydicom.Dataset()
    ds.Rows, ds.Columns = 100, 200
    good, outside, inverted, missing = (pydicom.Dataset() for _ in range(4))
    boxes = ((good, (10, 5, 500, 50)), (outside, (0, 0, 10, 10)), (inverted, (9, 9, 1, 1)))
    for item, box in boxes:
        (
            item.RegionLocationMinX0,
            item.RegionLocationMinY0,
            item.RegionLocationMaxX1,
            item.RegionLocationMaxY1,
        ) = box
    missing.RegionLocationMinX0 = 3
    ds.SequenceOfUltrasoundRegions = [good, outside, inverted, missing]
    assert ultrasound_regions(ds) == ((10, 5, 199, 50), (0, 0, 10, 10))


def test_black_out_keeps_only_the_union_of_regions():
    image = np.full((6, 8, 3), 200, np.uint8)
    out = black_out_outside(image, ((1, 1, 2, 2), (5, 3, 7, 4)))
    keep = np.zeros((6, 8), bool)
    keep[1:3, 1:3] = True
    keep[3:5, 5:8] = True
    assert np.all(out[keep] == 200) and np.all(out[~keep] == 0)
    assert np.all(image == 200)  # the input is not changed
    with pytest.raises(ValueError):
        black_out_outside(image, ())


def test_action_for_each_case():
    assert burned_in_action(False, (), "clean") is None
    assert burned_in_action(True, ((0, 0, 1, 1),), "clean") == "cleaned"
    assert burned_in_action(True, (), "clean") == "withheld"
    assert burned_in_action(True, (), "keep") == "kept"


def test_cleaned_thumbnail_and_tensor_have_nothing_outside_the_regions(test_files):
    """examples_ybr_color.dcm: its text bar above row 31 and left of column 84 is blacked out
    in the thumbnail and in the tensor; with ``keep`` it is still there."""
    data = (test_files / "examples_ybr_color.dcm").read_bytes()
    clean = next(process_item(data, _key(), _settings("clean")))
    kept = next(process_item(data, _key(), _settings("keep")))
    assert clean["burned_in_action"] == "cleaned" and kept["burned_in_action"] == "kept"
    frame = next(iter_frames(data))
    display = to_display(frame, "auto")
    assert display[:31].any()  # the uncleaned frame has content above the region
    expected = _settings("clean").chain.apply(black_out_outside(display, frame.regions)).tensor
    tensor = np.frombuffer(clean["tensor"], np.uint8).reshape(clean["tensor_shape"])
    assert np.array_equal(tensor, expected)
    thumb = cv2.imdecode(np.frombuffer(clean["thumbnail_png"], np.uint8), cv2.IMREAD_UNCHANGED)
    # 320x240 -> 128x96: the region starts at row 31*0.4=12.4 and column 84*0.4=33.6.
    assert thumb.shape[:2] == (96, 128)
    assert not thumb[:12].any() and not thumb[:, :33].any()
    kept_thumb = cv2.imdecode(np.frombuffer(kept["thumbnail_png"], np.uint8), cv2.IMREAD_UNCHANGED)
    assert kept_thumb[:12].any()


def test_flagged_frame_without_regions_is_withheld(test_files):
    data = (test_files / "examples_rgb_color.dcm").read_bytes()
    rows = list(process_item(data, _key(), _settings("clean")))
    assert rows and all(r["burned_in_action"] == "withheld" for r in rows)
    assert all(r["tensor"] for r in rows)  # the pixels travel on, to restricted_images only
    unflagged = list(process_item(data, _key(flagged=False), _settings("clean")))
    assert all(r["burned_in_action"] is None for r in unflagged)


def test_the_burned_in_rule():
    from medspark.dicom.burned_in import burned_in_reason, burned_in_rule

    assert burned_in_rule("yes", "CT", None) == "Burned In Annotation (0028,0301) is YES"
    assert burned_in_rule("NO", "US", None) == "modality US often burns in text"
    assert (
        burned_in_rule(None, "OT", "1.2.840.10008.5.1.4.1.1.7.4") == "Secondary Capture SOP class"
    )
    assert burned_in_rule("NO", "CT", "1.2.840.10008.5.1.4.1.1.2") is None
    header = '{"00280301": {"vr": "CS", "Value": ["YES"]}}'
    assert burned_in_reason(header, "CT", None) == burned_in_rule("YES", "CT", None)
    assert burned_in_reason('{"00280301": {"vr": "CS"}}', "CT", None) is None
