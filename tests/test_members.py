"""Re-reading items by location, and the per-item preprocessing function, without Spark."""

from __future__ import annotations

import gzip
import io
import tarfile
import zipfile

import numpy as np
import pydicom

from medspark.config import PipelineConfig
from medspark.preprocess.udf import PreprocessSettings, process_item
from medspark.sources.archives import to_uri
from medspark.sources.members import read_items, uri_to_path


def _settings() -> PreprocessSettings:
    pre = PipelineConfig().preprocess
    return PreprocessSettings(pre.chain(), pre.window_value(), 128, 64)


def test_uri_round_trip_with_special_characters(tmp_path):
    path = tmp_path / "SC_rgb_rle.dcmtk_+eb+cr #1.dcm"
    assert uri_to_path(to_uri(path)) == str(path)


def test_read_items_loose_zip_tar_nested_gzip(tmp_path, test_files):
    ct = (test_files / "CT_small.dcm").read_bytes()
    mr = (test_files / "MR_small.dcm").read_bytes()
    loose = tmp_path / "ct.dcm"
    loose.write_bytes(ct)
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("in/mr.dcm", mr)
    outer = tmp_path / "outer.zip"
    with zipfile.ZipFile(outer, "w") as zf:
        zf.writestr("a/ct.dcm", ct)
        zf.writestr("inner.zip", inner.getvalue())
    tpath = tmp_path / "t.tar.gz"
    with tarfile.open(tpath, "w:gz") as tf:
        for name, data in (("x/ct.dcm", ct), ("x/mr.dcm", mr)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    gz = tmp_path / "mr.dcm.gz"
    gz.write_bytes(gzip.compress(mr))
    requests = [
        (to_uri(loose), None),
        (to_uri(outer), "a/ct.dcm"),
        (to_uri(outer), "inner.zip!in/mr.dcm"),
        (to_uri(outer), "missing.dcm"),
        (to_uri(tpath), "x/mr.dcm"),
        (to_uri(gz), "mr.dcm"),
        (to_uri(tmp_path / "gone.dcm"), None),
    ]
    got = dict(read_items(requests))
    assert set(got) == set(requests)  # every request answered exactly once
    assert got[(to_uri(loose), None)] == ct
    assert got[(to_uri(outer), "a/ct.dcm")] == ct
    assert got[(to_uri(outer), "inner.zip!in/mr.dcm")] == mr
    assert isinstance(got[(to_uri(outer), "missing.dcm")], Exception)
    assert got[(to_uri(tpath), "x/mr.dcm")] == mr
    assert got[(to_uri(gz), "mr.dcm")] == mr
    assert isinstance(got[(to_uri(tmp_path / "gone.dcm"), None)], OSError)


def _key(name: str) -> dict:
    return {"sop_instance_uid": "1.2.3", "source_uri": f"file:///x/{name}", "archive_member": None}


def test_process_item_multiframe_rows(test_files):
    rows = list(process_item((test_files / "rtdose.dcm").read_bytes(), _key("rtdose"), _settings()))
    assert [r["frame"] for r in rows] == list(range(15))
    assert all(r.get("error_class") is None for r in rows)
    for r in rows:
        tensor = np.frombuffer(r["tensor"], dtype=r["tensor_dtype"]).reshape(r["tensor_shape"])
        assert tensor.shape == (224, 224)
        assert r["seconds_decode"] >= 0 and r["seconds_preprocess"] > 0


def test_process_item_errors_are_rows(test_files):
    (row,) = process_item((test_files / "rtplan.dcm").read_bytes(), _key("rtplan"), _settings())
    assert row["error_class"] == "undecodable_file" and row["frame"] is None
    assert "file:///x/rtplan" in row["error_message"]
    cut = (test_files / "MR_truncated.dcm").read_bytes()  # 8130 of 8192 pixel bytes
    rows = list(process_item(cut, _key("j"), _settings()))
    assert [(r["frame"], r["error_class"]) for r in rows] == [(0, "undecodable_frame")]


def test_mask_area_needs_spacing(test_files):
    (ct,) = process_item((test_files / "CT_small.dcm").read_bytes(), _key("ct"), _settings())
    assert ct["mask_area_mm2"] == ct["mask_area_px"] * 0.661468 * 0.661468
    assert ct["mask_area_mm2_reason"] is None
    ds = pydicom.dcmread(test_files / "CT_small.dcm")
    del ds.PixelSpacing
    buf = io.BytesIO()
    ds.save_as(buf)
    (no_spacing,) = process_item(buf.getvalue(), _key("ct2"), _settings())
    assert no_spacing["mask_area_px"] == ct["mask_area_px"]
    assert no_spacing["mask_area_mm2"] is None
    assert no_spacing["mask_area_mm2_reason"].startswith("no pixel spacing")


def test_process_item_frame_range_equals_that_slice_of_the_full_pass(test_files):
    data = (test_files / "rtdose.dcm").read_bytes()
    full = list(process_item(data, _key("rtdose"), _settings()))
    part = list(process_item(data, _key("rtdose"), _settings(), frames=(4, 9)))
    assert [r["frame"] for r in part] == [4, 5, 6, 7, 8]
    for a, b in zip(part, full[4:9], strict=True):
        assert a["tensor"] == b["tensor"] and a["mask_area_px"] == b["mask_area_px"]
    assert list(process_item(data, _key("rtdose"), _settings(), frames=(15, 20))) == []


def test_whole_file_error_is_reported_once_over_frame_ranges(test_files):
    data = (test_files / "rtplan.dcm").read_bytes()
    rows = [
        r
        for start in range(0, 12, 4)
        for r in process_item(data, _key("rtplan"), _settings(), frames=(start, start + 4))
    ]
    assert [(r["frame"], r["error_class"]) for r in rows] == [(None, "undecodable_file")]


def test_reread_applies_the_ingest_limits(tmp_path, test_files):
    """The re-read is the ingest reader: an item over a limit is refused with ingest's class."""
    from medspark.sources.archives import Limits, to_uri
    from medspark.sources.members import ItemReadError

    ct = tmp_path / "ct.dcm"
    ct.write_bytes((test_files / "CT_small.dcm").read_bytes())
    zpath = tmp_path / "a.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.write(ct, "x/ct.dcm")
    small = Limits(max_item_bytes=1024)
    got = dict(read_items([(to_uri(ct), None), (to_uri(zpath), "x/ct.dcm")], small))
    for content in got.values():
        assert isinstance(content, ItemReadError) and content.error_class == "too_large"
    assert dict(read_items([(to_uri(ct), None)]))[(to_uri(ct), None)] == ct.read_bytes()


def test_changed_source_is_an_error_row_not_other_pixels(tmp_path, test_files):
    """read_verified: the bytes when their SHA-256 is the one ingest recorded (or none was),
    else source_changed naming the location; a vanished file is unreadable."""
    import hashlib

    from medspark.sources.archives import to_uri
    from medspark.sources.members import ItemReadError, read_verified

    ct = tmp_path / "ct.dcm"
    ct.write_bytes((test_files / "CT_small.dcm").read_bytes())
    uri = to_uri(ct)
    digest = hashlib.sha256(ct.read_bytes()).hexdigest()
    assert dict(read_verified([(uri, None, digest)]))[(uri, None)] == ct.read_bytes()
    assert dict(read_verified([(uri, None, None)]))[(uri, None)] == ct.read_bytes()
    changed = dict(read_verified([(uri, None, "0" * 64)]))[(uri, None)]
    assert isinstance(changed, ItemReadError) and changed.error_class == "source_changed"
    assert str(changed).startswith(uri) and "ingest it again" in str(changed)
    ct.unlink()
    gone = dict(read_verified([(uri, None, digest)]))[(uri, None)]
    assert isinstance(gone, ItemReadError) and gone.error_class == "unreadable"
