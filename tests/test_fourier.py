"""The ``fourier`` op: against a plain numpy FFT on real CT and MR frames, and known answers."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from medspark.errors import ConfigError
from medspark.preprocess.chain import build_chain
from medspark.preprocess.ops import fourier, fourier_response

MODES = [
    {"mode": "lowpass", "high": 0.15},
    {"mode": "highpass", "low": 0.08, "order": 3},
    {"mode": "bandpass", "low": 0.05, "high": 0.2},
    {"mode": "bandstop", "low": 0.1, "high": 0.3, "order": 1},
]


def _reference(image: np.ndarray, mode: str, low: float, high: float, order: int) -> np.ndarray:
    """The textbook way: mirror the frame across its bottom and right borders (period 2H x
    2W), numpy's full complex FFT, the Butterworth gain on numpy's frequency grid, inverse,
    crop. Nothing shared with the op but the definition."""
    h, w = image.shape
    mirrored = np.pad(image.astype(np.float64), ((0, h), (0, w)), mode="symmetric")
    fy = np.fft.fftfreq(2 * h)[:, None]
    fx = np.fft.fftfreq(2 * w)[None, :]
    f = np.hypot(fy, fx)
    with np.errstate(divide="ignore"):
        lp_high = 1 / (1 + (f / high) ** (2 * order))
        hp_low = 1 - 1 / (1 + (f / low) ** (2 * order)) if low > 0 else np.ones_like(f)
    gain = {
        "lowpass": lp_high,
        "highpass": hp_low,
        "bandpass": lp_high * hp_low,
        "bandstop": 1 - lp_high * hp_low,
    }[mode]
    return np.real(np.fft.ifft2(np.fft.fft2(mirrored) * gain))[:h, :w]


def _frame(test_files, name: str) -> np.ndarray:
    ds = pydicom.dcmread(test_files / name)
    slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
    return (ds.pixel_array.astype(np.float32) * slope + intercept).astype(np.float32)


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
@pytest.mark.parametrize("params", MODES, ids=[p["mode"] for p in MODES])
def test_matches_a_numpy_fft_reference_on_real_frames(test_files, name, params):
    image = _frame(test_files, name)
    full = {"low": 0.05, "high": 0.25, "order": 2, **params}
    span = float(image.max() - image.min())
    # Even sizes (OpenCV's DCT); odd ones, one or both (numpy's FFT of the mirrored frame).
    for frame in (image, image[:-1, 3:], image[:, 1:]):
        out = fourier(frame, **params)
        assert out.dtype == np.float32 and out.shape == frame.shape
        expected = _reference(frame, **full)
        assert np.abs(out - expected).max() < 1e-4 * span, (name, frame.shape)
        # Not a no-op: the filter changed the frame by much more than the tolerance.
        assert np.abs(out - frame).max() > 0.01 * span


def test_a_cosine_comes_out_scaled_by_the_butterworth_gain():
    # A cosine whose period fits the mirrored frame is one coefficient: it comes out times
    # the gain at its frequency. Low-pass at 0.1, order 2: 1 / (1 + (f / 0.1)^4).
    n = 128
    x = np.arange(n)
    for k, f0 in ((13, 13 / 256), (77, 77 / 256)):
        wave = np.cos(np.pi * k * (2 * x + 1) / (2 * n))
        image = np.tile(wave, (n, 1)).astype(np.float32) * 100
        out = fourier(image, mode="lowpass", high=0.1, order=2)
        gain = 1 / (1 + (f0 / 0.1) ** 4)
        np.testing.assert_allclose(out, image * gain, atol=1e-3)
    assert 0.9 < 1 / (1 + (13 / 256 / 0.1) ** 4) and 1 / (1 + (77 / 256 / 0.1) ** 4) < 0.02


def test_flat_frame_and_borders():
    flat = np.full((64, 80), 123.0, np.float32)
    np.testing.assert_allclose(fourier(flat, mode="lowpass", high=0.05), flat, atol=1e-3)
    assert np.abs(fourier(flat, mode="highpass", low=0.05)).max() < 1e-3  # the mean goes
    # A frame darker at the top than at the bottom: a periodic FFT would bleed the bottom
    # rows into the top ones; the mirrored transform keeps the top row where it was.
    ramp = np.tile(np.linspace(0, 200, 64, dtype=np.float32)[:, None], (1, 80))
    smooth = fourier(ramp, mode="lowpass", high=0.05)
    assert abs(float(smooth[0].mean()) - 0.0) < 8 and abs(float(smooth[-1].mean()) - 200) < 8


def test_butterworth_step_rings_far_less_than_a_hard_cut():
    step = np.zeros((64, 128), np.float32)
    step[:, 64:] = 100.0
    overshoot = {o: float(fourier(step, high=0.1, order=o).max()) - 100 for o in (1, 2, 10)}
    # Measured: order 1 overshoots 0.0 %, order 2 3.4 %, order 10 (near a hard cut) 8.3 %.
    assert overshoot[1] < 1.0 and overshoot[2] < 6.0 and overshoot[10] > 7.0, overshoot
    gain = fourier_response(64, 128, "bandstop", 0.1, 0.2, 2)
    assert not gain.flags.writeable and gain[0, 0] == pytest.approx(1.0)


def test_colour_frames_are_filtered_per_channel():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (32, 48, 3)).astype(np.uint8)
    out = fourier(rgb, mode="bandpass", low=0.1, high=0.3)
    for c in range(3):
        np.testing.assert_allclose(
            out[:, :, c], fourier(rgb[:, :, c], mode="bandpass", low=0.1, high=0.3), atol=1e-4
        )


def test_chain_validates_fourier_like_every_op():
    chain = build_chain([{"op": "fourier", "mode": "bandpass", "low": 0.02, "high": 0.3}])
    assert chain.steps[0].params == {"mode": "bandpass", "low": 0.02, "high": 0.3, "order": 2}
    with pytest.raises(ConfigError) as err:
        build_chain([{"op": "median_blur"}, {"op": "fourier", "mode": "bandstop", "low": 0.3}])
    assert err.value.key == "preprocess.steps[1].high"
    assert "> low (0.3)" in str(err.value)
