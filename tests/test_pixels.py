"""Tests for medspark.dicom.pixels on pydicom's bundled real DICOM files (no Spark).

The files are read straight from pydicom's package folder: ``get_testdata_file`` may try the
network for files that are not bundled, and these tests run offline.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import pixel_array
from pydicom.pixels.processing import apply_color_lut, convert_color_space
from pydicom.sequence import Sequence

from medspark.dicom.pixels import (
    WINDOW_PRESETS,
    DicomPixelError,
    Frame,
    VoiLut,
    iter_frames,
    modality_frames,
    to_display,
)

DATA = Path(pydicom.__file__).parent / "data" / "test_files"


def tf(name: str) -> Path:
    path = DATA / name
    assert path.is_file(), f"pydicom test file {name} missing from {DATA}"
    return path


def to_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def frames(source) -> list[Frame]:
    return list(iter_frames(source))


def only_pixels(source) -> np.ndarray:
    (frame,) = frames(source)
    assert frame.error is None, frame.error
    assert frame.pixels is not None
    return frame.pixels


def ramp_frame(values, photometric="MONOCHROME2", window=None, voi_lut=None) -> Frame:
    return Frame(
        index=0,
        pixels=np.asarray(values, dtype=np.float32),
        error=None,
        window=window,
        voi_lut=voi_lut,
        photometric=photometric,
        pixel_spacing=None,
        spacing_source="absent",
    )


# ------------------------------------------------------------------ encodings and byte order


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_implicit.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_expb.dcm",
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_padded.dcm",
    ],
)
def test_mr_small_encodings_decode_identically(name):
    reference = only_pixels(tf("MR_small.dcm"))
    other = only_pixels(tf(name))
    assert other.dtype == np.float32
    assert other.dtype.isnative and reference.dtype.isnative
    assert other.shape == (64, 64)
    assert np.array_equal(reference, other)
    # MR_small has no rescale: modality values are the stored values 127..2145.
    assert (float(reference.min()), float(reference.max())) == (127.0, 2145.0)


def test_big_endian_is_really_big_endian_in_pydicom_but_native_here():
    # Guard that the twin tests mean something: pydicom hands back a '>i2' array.
    raw = pixel_array(tf("MR_small_bigendian.dcm"))
    assert raw.dtype.byteorder == ">"
    ours = only_pixels(tf("MR_small_bigendian.dcm"))
    assert ours.dtype.byteorder in ("=", "<" if np.little_endian else ">")
    assert np.array_equal(ours, raw.astype(np.float32))


@pytest.mark.parametrize(
    ("little", "big", "n"),
    [
        ("rtdose.dcm", "rtdose_expb.dcm", 15),
        ("SC_rgb_small_odd.dcm", "SC_rgb_small_odd_big_endian.dcm", 1),  # 8-bit RGB as OW
        ("liver_1frame.dcm", "liver_expb_1frame.dcm", 1),  # 1-bit SEG
    ],
)
def test_big_endian_twins_equal(little, big, n):
    le, be = frames(tf(little)), frames(tf(big))
    assert len(le) == len(be) == n
    for a, b in zip(le, be, strict=True):
        assert a.error is None and b.error is None
        assert b.pixels.dtype.isnative
        assert np.array_equal(a.pixels, b.pixels)


def test_rtdose_uses_dose_grid_scaling():
    # RT Dose has no Modality LUT; Dose Grid Scaling (3004,000E) = 1e-6 converts the
    # stored 795000..1254000 to dose units.
    ds = pydicom.dcmread(tf("rtdose.dcm"))
    stored = pixel_array(ds)
    out = np.stack(list(modality_frames(tf("rtdose.dcm"))))
    assert out.shape == (15, 10, 10)
    np.testing.assert_allclose(out, stored * 1e-6, rtol=1e-6)
    assert 0.79 < out.min() < out.max() < 1.26


# ------------------------------------------------------------------ CT in Hounsfield units


def test_ct_small_hounsfield_units():
    path = tf("CT_small.dcm")
    ds = pydicom.dcmread(path)
    assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (1.0, -1024.0)
    stored = np.frombuffer(ds.PixelData, dtype="<i2").reshape(128, 128)
    hu = only_pixels(path)
    assert hu.dtype == np.float32 and hu.shape == (128, 128)
    assert np.array_equal(hu, stored.astype(np.float32) - 1024.0)
    # Measured on this file: stored 128..2191 -> -896..1167 HU. The cropped slice has no
    # open air (-1000) but lung-like tissue down to -896, soft tissue around 0 HU
    # (median ~2) and bone above +700.
    assert float(hu.min()) == -896.0
    assert float(hu.max()) == 1167.0
    assert -100.0 < float(np.median(hu)) < 100.0
    assert (hu > 700).sum() > 50


def test_bytes_and_path_sources_agree():
    path = tf("CT_small.dcm")
    from_path = list(modality_frames(path))
    from_str = list(modality_frames(str(path)))
    from_bytes = list(modality_frames(path.read_bytes()))
    assert len(from_path) == len(from_bytes) == 1
    assert np.array_equal(from_path[0], from_bytes[0])
    assert np.array_equal(from_path[0], from_str[0])


def test_spacing_and_window_metadata():
    (ct,) = frames(tf("CT_small.dcm"))
    assert ct.pixel_spacing == pytest.approx((0.661468, 0.661468))
    assert ct.spacing_source == "PixelSpacing"
    assert ct.window is None and ct.voi_lut is None
    (mr,) = frames(tf("MR_small.dcm"))
    assert mr.window == (600.0, 1600.0)
    # First value of a multi-valued Window Center/Width (J2K_pixelrep_mismatch has 3).
    (j2k,) = frames(tf("J2K_pixelrep_mismatch.dcm"))
    assert j2k.window == (40.0, 100.0)
    (rgb,) = frames(tf("SC_rgb_jpeg.dcm"))
    assert rgb.pixel_spacing is None and rgb.spacing_source == "absent"
    (seg,) = frames(tf("liver_1frame.dcm"))  # enhanced SEG: spacing only in functional groups
    assert seg.pixel_spacing == pytest.approx((0.810547, 0.810547))
    assert seg.spacing_source == "PixelMeasuresSequence"

    ds = pydicom.dcmread(tf("MR_small.dcm"))
    del ds.PixelSpacing
    ds.ImagerPixelSpacing = [0.2, 0.3]
    (f,) = frames(to_bytes(ds))
    assert f.pixel_spacing == (0.2, 0.3) and f.spacing_source == "ImagerPixelSpacing"
    ds.ImagerPixelSpacing = [0.0, 0.3]
    (f,) = frames(to_bytes(ds))
    assert f.pixel_spacing is None and f.spacing_source.startswith("invalid ImagerPixelSpacing")


# ------------------------------------------------------------------ multi-frame and colour


@pytest.mark.parametrize(
    ("name", "n", "shape"),
    [
        ("SC_rgb_rle_2frame.dcm", 2, (100, 100, 3)),
        ("SC_rgb_rle_16bit_2frame.dcm", 2, (100, 100, 3)),
        ("rtdose.dcm", 15, (10, 10)),
        ("rtdose_rle.dcm", 15, (10, 10)),
        ("examples_ybr_color.dcm", 30, (240, 320, 3)),
    ],
)
def test_multiframe_counts_and_shapes(name, n, shape):
    out = frames(tf(name))
    assert [f.index for f in out] == list(range(n))
    for f in out:
        assert f.error is None and f.pixels.shape == shape and f.pixels.dtype == np.float32
    # Frames differ (frame 0 is not simply repeated).
    assert not all(np.array_equal(out[0].pixels, f.pixels) for f in out[1:])


def test_frames_are_decoded_lazily_one_at_a_time(monkeypatch):
    from pydicom.pixels.decoders.base import Decoder

    requested = []
    original = Decoder.as_array

    def spy(self, src, **kwargs):
        requested.append(kwargs.get("index"))
        return original(self, src, **kwargs)

    monkeypatch.setattr(Decoder, "as_array", spy)
    iterator = iter_frames(tf("rtdose.dcm"))
    assert requested == []  # parsing alone decodes nothing
    first = next(iterator)
    assert first.index == 0 and requested == [0]
    rest = list(iterator)
    assert len(rest) == 14 and requested == list(range(15))  # never index=None (all frames)


def test_ybr_full_422_decodes_close_to_rgb_twin_without_double_conversion():
    (ybr,) = frames(tf("SC_ybr_full_422_uncompressed.dcm"))
    assert ybr.photometric == "RGB"
    rgb = only_pixels(tf("SC_rgb_rle.dcm"))  # same test image, lossless RGB
    diff = np.abs(ybr.pixels - rgb)
    assert diff.max() <= 8  # measured 6: chroma subsampling + YCbCr rounding
    assert diff.mean() < 1.0
    # A second YBR->RGB conversion (the double-conversion bug) would be far off.
    twice = convert_color_space(ybr.pixels.astype(np.uint8), "YBR_FULL", "RGB")
    assert np.abs(twice.astype(float) - rgb).max() > 50


@pytest.mark.parametrize(
    "name", ["SC_rgb_dcmtk_+eb+cy+np.dcm", "SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_rle.dcm"]
)
def test_rgb_and_jpeg_ybr_decode_to_rgb(name):
    (f,) = frames(tf(name))
    assert f.photometric == "RGB" and f.pixels.shape == (100, 100, 3)
    ref = only_pixels(tf("SC_rgb_rle.dcm"))
    assert np.abs(f.pixels - ref).mean() < 3.0  # JPEG lossy, still the same picture


def test_palette_colour_is_applied():
    ds = pydicom.dcmread(tf("examples_palette.dcm"))
    assert ds.PhotometricInterpretation == "PALETTE COLOR"
    (f,) = frames(tf("examples_palette.dcm"))
    assert f.photometric == "RGB" and f.pixels.shape == (350, 800, 3)
    expected = apply_color_lut(pixel_array(ds), ds).astype(np.float32)
    assert np.array_equal(f.pixels, expected)
    assert not np.array_equal(f.pixels[..., 0], f.pixels[..., 1])  # really coloured
    shown = to_display(f)
    assert shown.dtype == np.uint8 and shown.shape == (350, 800, 3)
    # 16-bit palette topping out at 0xFF00 must still reach full white 255.
    assert float(f.pixels.max()) == 0xFF00 and shown.max() == 255


def test_colour_display_keeps_bit_depth_not_minmax():
    eight = to_display(frames(tf("SC_rgb_rle.dcm"))[0])
    sixteen = to_display(frames(tf("SC_rgb_rle_16bit.dcm"))[0])
    thirty_two = to_display(frames(tf("SC_rgb_rle_32bit.dcm"))[0])
    assert eight.dtype == np.uint8 and eight.shape == (100, 100, 3)
    assert np.array_equal(eight, sixteen)
    assert np.array_equal(eight, thirty_two)
    # 8-bit RGB passes through unchanged, whatever the window argument.
    raw = pixel_array(tf("SC_rgb_jpeg_dcmd.dcm"))
    assert raw.min() > 0  # a min-max stretch would have changed it
    assert np.array_equal(to_display(frames(tf("SC_rgb_jpeg_dcmd.dcm"))[0], "lung"), raw)


# ------------------------------------------------------------------ MONOCHROME1


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm"])
def test_monochrome1_is_read_from_compressed_files(name):
    # pydicom bundles no MONOCHROME1 file: relabel compressed ones; medspark must report the
    # interpretation, keep the modality values and invert only the display.
    ds = pydicom.dcmread(tf(name))
    (m2,) = frames(to_bytes(ds))
    ds.PhotometricInterpretation = "MONOCHROME1"
    (m1,) = frames(to_bytes(ds))
    assert (m2.photometric, m1.photometric) == ("MONOCHROME2", "MONOCHROME1")
    assert m1.error is None and np.array_equal(m1.pixels, m2.pixels)
    assert np.array_equal(to_display(m1).astype(int), 255 - to_display(m2).astype(int))


def test_monochrome1_displays_inverted():
    ds = pydicom.dcmread(tf("MR_small.dcm"))
    (m2,) = frames(to_bytes(ds))
    ds.PhotometricInterpretation = "MONOCHROME1"
    (m1,) = frames(to_bytes(ds))
    assert m1.photometric == "MONOCHROME1"
    assert np.array_equal(m1.pixels, m2.pixels)  # modality values are not inverted
    for window in ("auto", "minmax", None, (1000.0, 800.0), "bone"):
        a, b = to_display(m1, window), to_display(m2, window)
        assert np.array_equal(a.astype(int), 255 - b.astype(int)), window
    # Auto uses the file window 600/1600: the lowest value (127) is dark in MONOCHROME2 and
    # bright in MONOCHROME1.
    low = np.unravel_index(np.argmin(m2.pixels), m2.pixels.shape)
    assert to_display(m2)[low] < 60 and to_display(m1)[low] > 195


# ------------------------------------------------------------------ enhanced multi-frame


def _pvt(slope: float, intercept: float) -> Sequence:
    item = Dataset()
    item.RescaleSlope = slope
    item.RescaleIntercept = intercept
    item.RescaleType = "US"
    return Sequence([item])


def _group(**sequences) -> Dataset:
    group = Dataset()
    for keyword, value in sequences.items():
        setattr(group, keyword, value)
    return group


def _item(**attrs) -> Sequence:
    item = Dataset()
    for keyword, value in attrs.items():
        setattr(item, keyword, value)
    return Sequence([item])


def test_enhanced_functional_groups_per_frame_over_shared():
    ds = pydicom.dcmread(tf("MR_small.dcm"))
    stored = pixel_array(ds).astype(np.float64)
    second = stored[::-1].copy()  # distinguishable second frame
    ds.PixelData = stored.astype("<i2").tobytes() + second.astype("<i2").tobytes()
    ds.NumberOfFrames = 2
    # Top-level values that must lose against the functional groups.
    ds.RescaleSlope = 7
    ds.RescaleIntercept = 7
    ds.SharedFunctionalGroupsSequence = Sequence(
        [
            _group(
                PixelValueTransformationSequence=_pvt(2, -100),
                FrameVOILUTSequence=_item(WindowCenter=100, WindowWidth=200),
                PixelMeasuresSequence=_item(PixelSpacing=[0.5, 0.5]),
            )
        ]
    )
    ds.PerFrameFunctionalGroupsSequence = Sequence(
        [
            _group(),  # frame 0: everything from the shared item
            _group(
                PixelValueTransformationSequence=_pvt(0.5, 10),
                FrameVOILUTSequence=_item(WindowCenter=[300, 1], WindowWidth=[400, 1]),
                PixelMeasuresSequence=_item(PixelSpacing=[0.25, 0.3]),
            ),
        ]
    )
    f0, f1 = frames(to_bytes(ds))
    assert f0.error is None and f1.error is None
    np.testing.assert_array_equal(f0.pixels, (stored * 2 - 100).astype(np.float32))
    np.testing.assert_array_equal(f1.pixels, (second * 0.5 + 10).astype(np.float32))
    assert f0.window == (100.0, 200.0) and f1.window == (300.0, 400.0)
    assert f0.pixel_spacing == (0.5, 0.5) and f1.pixel_spacing == (0.25, 0.3)
    assert f0.spacing_source == f1.spacing_source == "PixelMeasuresSequence"


def test_modality_lut_sequence_wins_over_rescale():
    ds = pydicom.dcmread(tf("MR_small.dcm"))
    ds.RescaleSlope = 3
    ds.RescaleIntercept = 3
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item["LUTDescriptor"].VR = "US"
    item.LUTData = [v // 2 for v in range(4096)]
    item["LUTData"].VR = "US"
    item.ModalityLUTType = "US"
    ds.ModalityLUTSequence = Sequence([item])
    stored = pixel_array(ds)
    (f,) = frames(to_bytes(ds))
    assert np.array_equal(f.pixels, (stored // 2).astype(np.float32))

    del ds.ModalityLUTSequence
    (f,) = frames(to_bytes(ds))
    assert np.array_equal(f.pixels, (stored * 3 + 3).astype(np.float32))


# ------------------------------------------------------------------ broken input


def test_truncated_single_frame_is_a_frame_error():
    out = frames(tf("MR_truncated.dcm"))  # 8130 of 8192 pixel bytes
    assert len(out) == 1
    assert out[0].pixels is None
    assert "insufficient pixel data" in out[0].error
    assert out[0].window == (600.0, 1600.0)  # metadata still reported
    with pytest.raises(DicomPixelError, match="frame 0 cannot be decoded: .*insufficient"):
        list(modality_frames(tf("MR_truncated.dcm")))  # never an empty stream in silence


def test_truncated_multiframe_keeps_intact_frames():
    ds = pydicom.dcmread(tf("rtdose.dcm"))
    good = [f.pixels for f in frames(tf("rtdose.dcm"))]
    frame_bytes = 10 * 10 * 4
    ds.PixelData = ds.PixelData[: 10 * frame_bytes + frame_bytes // 2]  # 10.5 frames
    out = frames(to_bytes(ds))
    assert len(out) == 15
    for f in out[:10]:
        assert f.error is None and np.array_equal(f.pixels, good[f.index])
    for f in out[10:]:
        assert f.pixels is None and "insufficient pixel data" in f.error


def test_one_corrupt_compressed_frame_does_not_lose_the_other():
    ds = pydicom.dcmread(tf("SC_rgb_rle_2frame.dcm"))
    first, second = generate_frames(ds.PixelData, number_of_frames=2)
    good = frames(tf("SC_rgb_rle_2frame.dcm"))[0].pixels
    ds.PixelData = encapsulate([first, second[:100]])  # cut inside the RLE segments
    f0, f1 = frames(to_bytes(ds))
    assert f0.error is None and np.array_equal(f0.pixels, good)
    assert f1.pixels is None and "RLE" in f1.error
    stream = modality_frames(to_bytes(ds))
    assert np.array_equal(next(stream), good)
    with pytest.raises(DicomPixelError, match="frame 1 cannot be decoded"):
        next(stream)


def test_jpeg_extended_12_bit_decodes_as_gdcm_reads_it():
    # JPEG-lossy.dcm: JPEG Extended, Bits Stored 12, which pydicom's own plugins refuse.
    # medspark's GDCM plugin decodes the frame; the reference is GDCM's whole-file reader,
    # which parses the file itself (no pydicom involved).
    import gdcm

    (f,) = frames(tf("JPEG-lossy.dcm"))
    assert f.error is None and f.pixels.shape == (1024, 256)
    reader = gdcm.ImageReader()
    reader.SetFileName(str(tf("JPEG-lossy.dcm")))
    assert reader.Read()
    ref = np.frombuffer(
        reader.GetImage().GetBuffer().encode("utf-8", "surrogateescape"), dtype="<u2"
    ).reshape(1024, 256)
    assert np.array_equal(f.pixels, ref.astype(np.float32))
    assert ref.max() > 255  # really 12-bit samples, not an 8-bit image
    (only,) = list(modality_frames(tf("JPEG-lossy.dcm")))
    assert np.array_equal(only, f.pixels)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("rtplan.dcm", "no Pixel Data (7FE0,0010)"),
        ("waveform_ecg.dcm", "no Pixel Data (7FE0,0010)"),
        ("badVR.dcm", "Number of Frames (0028,0008)"),  # NumberOfFrames '1A'
        ("nested_priv_SQ.dcm", "missing required Image Pixel attribute"),
    ],
)
def test_whole_file_failures_raise_at_call_time(source, message):
    with pytest.raises(DicomPixelError, match=message.replace("(", r"\(").replace(")", r"\)")):
        iter_frames(tf(source))  # no list(): raised before the first frame
    with pytest.raises(DicomPixelError):
        modality_frames(tf(source))


def test_garbage_and_missing_files_raise():
    with pytest.raises(DicomPixelError, match="not a DICOM file"):
        iter_frames(b"definitely not dicom" * 50)
    with pytest.raises(DicomPixelError, match="cannot open"):
        iter_frames(DATA / "does_not_exist.dcm")
    assert issubclass(DicomPixelError, Exception)


# ------------------------------------------------------------------ display


def test_window_presets():
    for name in ("brain", "lung", "bone", "abdomen", "soft_tissue"):
        center, width = WINDOW_PRESETS[name]
        assert width >= 1
    assert WINDOW_PRESETS["brain"] == (40.0, 80.0)
    assert WINDOW_PRESETS["lung"] == (-600.0, 1500.0)


def test_unknown_preset_names_value_and_presets():
    frame = ramp_frame(np.arange(16).reshape(4, 4))
    with pytest.raises(ValueError) as info:
        to_display(frame, "kidney")
    message = str(info.value)
    assert "'kidney'" in message
    for name in WINDOW_PRESETS:
        assert name in message
    with pytest.raises(ValueError, match="width"):
        to_display(frame, (40.0, 0.5))


def test_linear_window_on_ramp_matches_ps33_formula():
    x = np.arange(-50, 151, dtype=np.float32).reshape(1, -1)
    c, w = 50.0, 101.0
    out = to_display(ramp_frame(x), (c, w))
    assert out.dtype == np.uint8 and out.shape == x.shape
    xs = x.astype(np.float64)
    expected = np.where(
        xs <= c - 0.5 - (w - 1) / 2,
        0.0,
        np.where(xs > c - 0.5 + (w - 1) / 2, 255.0, ((xs - (c - 0.5)) / (w - 1) + 0.5) * 255),
    )
    assert np.array_equal(out, np.rint(expected).astype(np.uint8))
    assert out[0, 0] == 0 and out[0, -1] == 255
    assert np.all(np.diff(out.astype(int)) >= 0)
    # Width 1 is a threshold at c - 0.5.
    step = to_display(ramp_frame([[49.0, 49.4, 49.6, 50.0]]), (50.0, 1.0))
    assert step.tolist() == [[0, 0, 255, 255]]


def test_presets_on_ct_and_auto_fallbacks():
    (ct,) = frames(tf("CT_small.dcm"))
    brain = to_display(ct, "brain")  # 0..80 HU
    assert np.all(brain[ct.pixels <= 0] == 0)
    assert np.all(brain[ct.pixels > 80] == 255)
    assert np.array_equal(brain, to_display(ct, WINDOW_PRESETS["brain"]))
    # No window in CT_small: auto falls back to min-max, which spans 0..255.
    auto = to_display(ct)
    assert np.array_equal(auto, to_display(ct, "minmax"))
    assert np.array_equal(auto, to_display(ct, None))
    assert auto.min() == 0 and auto.max() == 255
    assert auto[np.unravel_index(np.argmin(ct.pixels), ct.pixels.shape)] == 0

    (mr,) = frames(tf("MR_small.dcm"))  # file window 600/1600
    assert np.array_equal(to_display(mr), to_display(mr, (600.0, 1600.0)))
    assert not np.array_equal(to_display(mr), to_display(mr, "minmax"))


def test_voi_lut_wins_over_window_in_auto():
    lut = VoiLut(first_mapped=10, bits=8, data=np.array([0, 100, 255], dtype=np.float64))
    frame = ramp_frame([[0, 10, 11, 12, 500]], window=(0.0, 2.0), voi_lut=lut)
    assert to_display(frame).tolist() == [[0, 0, 100, 255, 255]]
    mono1 = ramp_frame([[0, 10, 11, 12, 500]], "MONOCHROME1", voi_lut=lut)
    assert to_display(mono1).tolist() == [[255, 255, 155, 0, 0]]
    # An explicit window ignores the LUT: LINEAR c=11 w=3 maps 10 -> 0.25, 11 -> 0.75.
    assert to_display(frame, (11.0, 3.0)).tolist() == [[0, 64, 191, 255, 255]]


def test_voi_lut_sequence_read_from_file():
    ds = pydicom.dcmread(tf("MR_small.dcm"))
    item = Dataset()
    item.LUTDescriptor = [2048, 100, 8]
    item["LUTDescriptor"].VR = "US"
    item.LUTData = [min(255, v // 8) for v in range(2048)]
    item["LUTData"].VR = "US"
    ds.VOILUTSequence = Sequence([item])
    (f,) = frames(to_bytes(ds))
    assert f.voi_lut is not None and f.voi_lut.first_mapped == 100 and f.voi_lut.bits == 8
    expected = np.clip((np.clip(f.pixels, 100, 2147) - 100) // 8, 0, 255).astype(np.uint8)
    assert np.array_equal(to_display(f), expected)


def test_constant_image_is_zeros_and_missing_pixels_raise():
    flat = ramp_frame(np.full((8, 8), 42.0))
    for window in ("auto", "minmax", None):
        out = to_display(flat, window)
        assert out.dtype == np.uint8 and out.shape == (8, 8) and not out.any()
    assert not to_display(ramp_frame(np.full((4, 4), 7.0), "MONOCHROME1")).any()
    broken = Frame(0, None, "boom", None, None, "MONOCHROME2", None, "absent")
    with pytest.raises(ValueError, match="boom"):
        to_display(broken)


@pytest.mark.parametrize("name", ["rtdose.dcm", "rtdose_rle.dcm", "examples_ybr_color.dcm"])
def test_a_frame_range_decodes_the_same_frames_as_a_full_pass(name):
    full = frames(tf(name))
    part = list(iter_frames(tf(name), frames=range(4, 9)))
    assert [f.index for f in part] == [4, 5, 6, 7, 8]
    for a, b in zip(part, full[4:9], strict=True):
        np.testing.assert_array_equal(a.pixels, b.pixels)
        assert (a.window, a.photometric) == (b.window, b.photometric)
    assert list(iter_frames(tf(name), frames=range(len(full), len(full) + 3))) == []
