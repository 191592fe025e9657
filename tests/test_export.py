"""The de-identified instance of a scan (medspark.dicom.instance), without Spark: real files
of pydicom, the PS3.15 probe, burned-in cleaning, transfer syntaxes, determinism."""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from test_deid import BUNDLED, _identifying_values, _leaves, _pseudonymizer, _row
from test_deid_table import PROBE, PROBE_TAGS, SECRET

from medspark.config import DeidConfig
from medspark.dicom.burned_in import ultrasound_regions
from medspark.dicom.deid import Pseudonymizer
from medspark.dicom.header import ItemError, parse_header
from medspark.dicom.instance import burned_in_flag, deidentified_instance
from medspark.tables.error_classes import BURNED_IN_WITHHELD, NOT_DEIDENTIFIED

EXPLICIT_LE = "1.2.840.10008.1.2.1"


def _read(data: bytes) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(data))


def _scans_header(name: str) -> tuple[bytes, dict, dict]:
    """(source bytes, parsed header, the de-identified scans row) of a bundled file."""
    _, data, header = next(b for b in BUNDLED if b[0] == name)
    return data, header, _pseudonymizer().deidentify_row(_row(header, name))


def _pixels(ds: pydicom.Dataset) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ds.pixel_array


#: Files whose pixels are not flagged for burned-in text: every one is exported.
UNFLAGGED = [
    name
    for name, _, header in BUNDLED
    if header.get("has_pixels")
    and burned_in_flag(_pseudonymizer().deidentify_row(_row(header, name))["header_json"]) is None
]


def test_many_real_files_are_exported():
    assert len(UNFLAGGED) > 15


@pytest.mark.parametrize("name", UNFLAGGED)
def test_exported_file_is_the_scans_row_with_the_source_pixels(name):
    data, header, row = _scans_header(name)
    try:
        out = deidentified_instance(row["header_json"], data)
    except ItemError as exc:  # a source pydicom cannot even read: refused, with its class
        pytest.skip(f"{name}: {exc.error_class}")
    ds, src = _read(out), _read(data)
    # UIDs are those of scans; the file meta agrees with them.
    assert ds.SOPInstanceUID == row["sop_instance_uid"] == ds.file_meta.MediaStorageSOPInstanceUID
    if row["study_instance_uid"]:
        assert ds.StudyInstanceUID == row["study_instance_uid"]
    assert ds.PatientIdentityRemoved == "YES"
    # Pixels equal the source's (nothing was cleaned); the syntax is kept unless big endian
    # or deflated.
    source_syntax = str(src.file_meta.get("TransferSyntaxUID", EXPLICIT_LE))
    if source_syntax not in ("1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"):
        assert str(ds.file_meta.TransferSyntaxUID) == source_syntax
        if "PixelData" in src:
            assert ds.PixelData == src.PixelData
    try:
        expected = _pixels(src)
    except Exception:
        return  # the source's pixels do not decode: the bytes are compared above
    assert np.array_equal(_pixels(ds), expected)
    # Re-running writes identical bytes.
    assert deidentified_instance(row["header_json"], data) == out


@pytest.mark.parametrize("name", UNFLAGGED)
def test_no_identifying_value_is_in_the_exported_file(name):
    data, header, row = _scans_header(name)
    try:
        out = deidentified_instance(row["header_json"], data)
    except ItemError:
        pytest.skip("not exported")
    forbidden, kept = _identifying_values(_read(data))
    for column in ("patient_id", "sop_instance_uid", "study_instance_uid", "series_instance_uid"):
        if header[column]:
            forbidden.add(header[column])
    ds = _read(out)
    doc = {"header_json": json.dumps(ds.to_json_dict(1024, lambda e: "bulk"))}
    leaves = _leaves(doc)
    leaks = sorted(
        v
        for v in (v.strip(" \x00") for v in forbidden - kept)
        if len(v) >= 4 and (v in leaves or (len(v) >= 8 and v.encode() in out))
    )
    assert not leaks, f"{name}: identifying values in the exported file: {leaks[:5]}"


def test_the_probe_file_says_exactly_what_scans_says():
    """Every attribute of Table E.1-1 in one file: the exported file holds the scans row's
    header and nothing else, so no marker of a removed attribute is in its bytes."""
    p = Pseudonymizer(SECRET, DeidConfig())
    header = parse_header(PROBE, "file:///probe.dcm")
    row = p.deidentify_row({**header, "source_uri": "file:///p", "archive_member": None})
    out = deidentified_instance(row["header_json"], PROBE)
    doc = {k: v for k, v in json.loads(row["header_json"]).items() if not k.startswith("0002")}
    expected = Dataset.from_json(doc).to_json_dict()
    assert _read(out).to_json_dict() == expected
    for tag in PROBE_TAGS:
        marker = f"M{tag}"
        assert (marker.encode() in out) == (marker in row["header_json"]), tag


def test_ultrasound_with_regions_is_cleaned_outside_them(test_files):
    """examples_ybr_color.dcm (US, 30 frames of JPEG Baseline YBR): every pixel outside its
    Sequence of Ultrasound Regions is 0 in every frame, the region is the source's; written
    Explicit VR Little Endian as RGB."""
    data = (test_files / "examples_ybr_color.dcm").read_bytes()
    header = parse_header(data, "file:///us.dcm")
    row = _pseudonymizer().deidentify_row(_row(header, "us.dcm"))
    out = deidentified_instance(row["header_json"], data)
    ds, src = _read(out), _read(data)
    assert str(ds.file_meta.TransferSyntaxUID) == EXPLICIT_LE
    assert ds.PhotometricInterpretation == "RGB" and ds.NumberOfFrames == 30
    ((x0, y0, x1, y1),) = ultrasound_regions(src)
    cleaned, source = _pixels(ds), _pixels(src)
    assert source[:, :y0].any()  # the source has content above the region (its text bar)
    inside = np.zeros(cleaned.shape[1:3], bool)
    inside[y0 : y1 + 1, x0 : x1 + 1] = True
    assert not cleaned[:, ~inside].any()
    assert np.array_equal(cleaned[:, inside], source[:, inside])
    # With deid.burned_in: keep, the pixels are the source's, encoding and all.
    kept = _read(deidentified_instance(row["header_json"], data, burned_in="keep"))
    assert kept.PixelData == src.PixelData


def test_flagged_without_regions_is_withheld(test_files):
    data = (test_files / "examples_rgb_color.dcm").read_bytes()
    header = parse_header(data, "file:///x.dcm")
    row = _pseudonymizer().deidentify_row(_row(header, "x.dcm"))
    with pytest.raises(ItemError) as caught:
        deidentified_instance(row["header_json"], data, where="instance 2.25.1")
    assert caught.value.error_class == BURNED_IN_WITHHELD
    assert "instance 2.25.1" in str(caught.value)


def test_a_header_that_is_not_deidentified_gives_no_file(test_files):
    """A warehouse written with deid.enabled false holds original headers: refused."""
    data = (test_files / "CT_small.dcm").read_bytes()
    header = parse_header(data, "file:///ct.dcm")
    with pytest.raises(ItemError) as caught:
        deidentified_instance(header["header_json"], data)
    assert caught.value.error_class == NOT_DEIDENTIFIED
