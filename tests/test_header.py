"""Header parsing on pydicom's real files, without Spark."""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest

from medspark.dicom.header import ItemError, parse_header


def _parse(test_files, name):
    return parse_header((test_files / name).read_bytes(), name)


def test_ct_small_typed_values(test_files):
    h = _parse(test_files, "CT_small.dcm")
    assert h["modality"] == "CT"
    assert (h["rows"], h["columns"], h["number_of_frames"]) == (128, 128, 1)
    assert h["pixel_spacing"] == pytest.approx([0.661468, 0.661468])
    assert h["slice_thickness"] == pytest.approx(5.0)
    assert h["sop_instance_uid"] == "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"
    assert h["transfer_syntax_uid"] == "1.2.840.10008.1.2.1"
    assert h["study_date"] == dt.date(2004, 1, 19)
    assert h["bits_allocated"] == 16 and h["photometric_interpretation"] == "MONOCHROME2"
    assert h["image_position_patient"] == pytest.approx([-158.135803, -179.035797, -75.699997])
    assert h["has_pixels"] is True
    assert h["manufacturer"] == "GE MEDICAL SYSTEMS"


def test_header_json_is_ps318_annex_f_without_bulk_data(test_files):
    h = _parse(test_files, "CT_small.dcm")
    doc = json.loads(h["header_json"])
    assert all(re.fullmatch(r"[0-9A-F]{8}", k) for k in doc)
    assert doc["00080060"] == {"vr": "CS", "Value": ["CT"]}
    assert doc["00020010"]["Value"] == ["1.2.840.10008.1.2.1"]  # file meta included
    pixel = doc["7FE00010"]
    assert "InlineBinary" not in pixel
    assert pixel["BulkDataURI"] == "CT_small.dcm#7FE00010"


def test_non_image_instances_are_valid_rows(test_files):
    for name, modality in [
        ("rtplan.dcm", "RTPLAN"),
        ("waveform_ecg.dcm", "ECG"),
        ("test-SR.dcm", "SR"),
    ]:
        h = _parse(test_files, name)
        assert h["modality"] == modality, name
        assert h["has_pixels"] is False, name
    ecg = json.loads(_parse(test_files, "waveform_ecg.dcm")["header_json"])
    # Waveform Sequence (5400,0100) items: Waveform Data (5400,1010) is left out as bulk data.
    for item in ecg["54000100"]["Value"]:
        assert set(item["54001010"]) == {"vr", "BulkDataURI"}


def test_big_endian_without_meta_is_accepted(test_files):
    h = _parse(test_files, "ExplVR_BigEndNoMeta.dcm")
    assert h["sop_instance_uid"] == "1.2.333.4444.5.6.7.8"
    assert h["transfer_syntax_uid"] == "1.2.840.10008.1.2.2"


@pytest.mark.parametrize(
    ("name", "error_class", "reason"),
    [
        ("MR_truncated.dcm", "truncated", "(7FE0,0010)"),
        ("rtplan_truncated.dcm", "truncated", "(300A,00B0)"),
        ("README.txt", "not_dicom", "DICM"),
        ("test1.json", "not_dicom", "DICM"),
        ("no_meta.dcm", "not_dicom", "DICM"),  # starts with a stray byte: not parseable
        ("meta_missing_tsyntax.dcm", "missing_sop_instance_uid", "(0008,0018)"),
        ("badVR.dcm", "invalid_dicom", "Error"),
    ],
)
def test_broken_files_raise_their_class(test_files, name, error_class, reason):
    with pytest.raises(ItemError) as err:
        _parse(test_files, name)
    assert err.value.error_class == error_class
    assert reason in err.value.message


def test_cut_encapsulated_pixel_data_is_truncated(test_files):
    data = (test_files / "JPEG2000.dcm").read_bytes()
    for cut in (3, 100):
        with pytest.raises(ItemError) as err:
            parse_header(data[:-cut], "JPEG2000.dcm")
        assert err.value.error_class == "truncated", cut
    assert parse_header(data, "x")["transfer_syntax_uid"] == "1.2.840.10008.1.2.4.91"


def test_every_bundled_file_parses_or_raises_item_error(test_files):
    ok = 0
    for path in sorted(test_files.glob("*.dcm")):
        try:
            h = parse_header(path.read_bytes(), path.name)
        except ItemError:
            continue
        ok += 1
        assert h["sop_instance_uid"]
        json.loads(h["header_json"])
    assert ok >= 60
