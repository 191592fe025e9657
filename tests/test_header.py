"""Header parsing on pydicom's real files, without Spark."""

from __future__ import annotations

import datetime as dt
import io
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


def _deflated_bomb(rows: int = 4096, columns: int = 4096) -> bytes:
    """A small file in Deflated Explicit VR Little Endian whose data set inflates to
    rows x columns bytes of zeros (a 16 MiB data set in about 16 KB by default)."""
    import numpy as np
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid

    ds = pydicom.Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.zeros((rows, columns), np.uint8).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_deflated_bomb_is_refused_before_it_inflates(test_files):
    from medspark.dicom.header import BOMB, check_inflated_size
    from medspark.sources.archives import Limits

    bomb = _deflated_bomb()
    assert len(bomb) < 100_000
    with pytest.raises(ItemError) as err:
        parse_header(bomb, "file:///bomb.dcm", Limits(max_inflated_bytes=1024 * 1024))
    assert err.value.error_class == BOMB and "max_inflated_bytes=1048576" in err.value.message
    # Under the limit it parses; pydicom's real deflated file passes the default limit.
    assert parse_header(bomb, "file:///bomb.dcm")["rows"] == 4096
    real = (test_files / "image_dfl.dcm").read_bytes()
    check_inflated_size(real, Limits().max_inflated_bytes)
    assert parse_header(real, "x")["sop_instance_uid"]


def test_frame_larger_than_the_limit_is_too_large(test_files):
    from medspark.dicom.header import TOO_LARGE
    from medspark.sources.archives import Limits

    data = (test_files / "CT_small.dcm").read_bytes()
    with pytest.raises(ItemError) as err:
        parse_header(data, "x", Limits(max_frame_samples=128 * 128 - 1))
    assert err.value.error_class == TOO_LARGE and "128 x 128 x 1" in err.value.message
    assert parse_header(data, "x", Limits(max_frame_samples=128 * 128))["rows"] == 128


def test_default_limits_pass_every_bundled_file(test_files):
    """The defaults refuse no real file of pydicom's test data for its size."""
    from medspark.dicom.header import BOMB, TOO_LARGE

    for path in sorted(test_files.glob("*.dcm")):
        try:
            parse_header(path.read_bytes(), path.name)
        except ItemError as exc:
            assert exc.error_class not in (BOMB, TOO_LARGE), (path.name, exc.message)
