"""Tests for medspark.preprocess ops, chain and mask statistics (numpy/OpenCV only, no Spark)."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest

from medspark.errors import ConfigError
from medspark.preprocess import ops
from medspark.preprocess.chain import Chain, ChainResult, build_chain
from medspark.preprocess.ops import OPS
from medspark.preprocess.segmentation import MaskStats, mask_stats

H, W = 64, 80


def disc(h: int = H, w: int = W, r: float = 15, centre: tuple[float, float] | None = None):
    """Boolean disc of radius r."""
    cy, cx = centre if centre is not None else ((h - 1) / 2, (w - 1) / 2)
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def disc_image(bright: int = 200, dark: int = 40, **kw) -> np.ndarray:
    return np.where(disc(**kw), bright, dark).astype(np.uint8)


def textured(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = disc_image().astype(np.int16) + rng.integers(-20, 21, (H, W))
    return np.clip(img, 0, 255).astype(np.uint8)


def colour(seed: int = 0) -> np.ndarray:
    g = textured(seed)
    return np.stack([g, np.roll(g, 3, axis=1), 255 - g], axis=-1)


def is_binary(mask: np.ndarray) -> bool:
    return mask.dtype == np.uint8 and bool(np.isin(mask, (0, 255)).all())


# ---------------------------------------------------------------------------- contracts


def expected_shape_dtype(name: str, image: np.ndarray) -> tuple[tuple[int, ...], type]:
    spec = OPS[name]
    if name == "resize_pad":
        return (224, 224, *image.shape[2:]), image.dtype.type
    if name in ("normalize", "fourier"):
        return image.shape, np.float32
    if spec.outputs_mask or name in ("sobel", "laplacian"):
        return image.shape[:2], np.uint8
    if name == "clahe":
        return image.shape, np.uint8
    return image.shape, image.dtype.type


@pytest.mark.parametrize("name", list(OPS))
@pytest.mark.parametrize("kind", ["gray_u8", "gray_f32", "rgb_u8", "rgb_f32"])
def test_op_contract_shape_dtype_no_mutation(name: str, kind: str) -> None:
    base = colour() if kind.startswith("rgb") else textured()
    image = base.astype(np.float32) / 255.0 if kind.endswith("f32") else base
    before = image.copy()
    out = OPS[name].fn(image)
    shape, dtype = expected_shape_dtype(name, image)
    assert out.shape == shape
    assert out.dtype == dtype
    assert out is not image
    assert not np.shares_memory(out, image)
    np.testing.assert_array_equal(image, before)
    if OPS[name].outputs_mask:
        assert is_binary(out)


def test_registry_defaults_match_function_signatures() -> None:
    for name, spec in OPS.items():
        sig = inspect.signature(spec.fn)
        params = {k: p.default for k, p in sig.parameters.items() if k != "image"}
        assert params == spec.defaults(), name
        assert spec.name == name


def test_other_dtypes_are_cast_and_bad_shapes_rejected() -> None:
    img16 = (textured().astype(np.uint16) * 100).astype(np.uint16)
    assert ops.gaussian_blur(img16).dtype == np.float32
    assert is_binary(ops.otsu(img16))
    with pytest.raises(ValueError):
        ops.median_blur(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(TypeError):
        ops.median_blur(np.zeros((4, 4), bool))


def test_non_contiguous_input_is_fine() -> None:
    img = textured()[:, ::2]
    out = ops.median_blur(img)
    assert out.shape == img.shape


# ---------------------------------------------------------------------------- behaviour


def test_median_removes_salt_and_pepper() -> None:
    clean = np.full((H, W), 100, np.uint8)
    noisy = clean.copy()
    rng = np.random.default_rng(1)
    idx = rng.choice(H * W, size=H * W // 20, replace=False)
    noisy.flat[idx[: len(idx) // 2]] = 255
    noisy.flat[idx[len(idx) // 2 :]] = 0
    out = ops.median_blur(noisy, ksize=3)
    assert np.mean(out != clean) < 0.002
    assert np.mean(noisy != clean) > 0.04


def test_gaussian_and_bilateral_smooth_noise() -> None:
    rng = np.random.default_rng(2)
    noisy = np.clip(100 + rng.normal(0, 20, (H, W)), 0, 255).astype(np.uint8)
    assert ops.gaussian_blur(noisy).std() < noisy.std() / 2
    assert ops.bilateral(noisy, d=9, sigma_color=100.0, sigma_space=10.0).std() < noisy.std()


def test_bilateral_keeps_edges_better_than_gaussian() -> None:
    step = np.zeros((H, W), np.uint8)
    step[:, W // 2 :] = 200
    gauss = ops.gaussian_blur(step, ksize=9)
    bil = ops.bilateral(step, d=9, sigma_color=20.0, sigma_space=10.0)
    # next to the edge the bilateral output stays at the step value
    assert bil[:, W // 2 - 2].max() <= 1
    assert gauss[:, W // 2 - 2].min() > 10


def test_canny_finds_disc_border_and_nothing_flat() -> None:
    d = disc(r=15)
    edges = ops.canny(np.where(d, 200, 40).astype(np.uint8))
    assert is_binary(edges)
    ys, xs = np.nonzero(edges)
    assert len(ys) > 50
    dist = np.hypot(ys - (H - 1) / 2, xs - (W - 1) / 2)
    assert np.all(np.abs(dist - 15) <= 2)
    assert not ops.canny(np.full((H, W), 123, np.uint8)).any()


def test_canny_rejects_high_below_low() -> None:
    with pytest.raises(ConfigError) as err:
        ops.canny(textured(), low=100.0, high=50.0)
    assert err.value.key == "canny.high"


def test_threshold_and_otsu_separate_disc() -> None:
    d = disc(r=15)
    img = textured()
    assert np.mean((ops.otsu(img) == 255) != d) < 0.01
    # "within a few pixels": every disagreement lies on the border
    diff = (ops.otsu(img) == 255) != d
    ys, xs = np.nonzero(diff)
    assert np.all(np.abs(np.hypot(ys - (H - 1) / 2, xs - (W - 1) / 2) - 15) <= 3)
    np.testing.assert_array_equal(ops.threshold(disc_image(), value=127.0) == 255, d)
    assert not ops.threshold(disc_image(), value=250).any()


def test_threshold_float_uses_image_units() -> None:
    hu = np.where(disc(), 700.0, -1000.0).astype(np.float32)
    np.testing.assert_array_equal(ops.threshold(hu, value=300) == 255, disc())


def test_adaptive_threshold_handles_gradient_illumination() -> None:
    ramp = np.tile(np.linspace(0, 150, W, dtype=np.float32), (H, 1))
    img = np.clip(ramp + np.where(disc(r=4, centre=(20, 60)), 80, 0), 0, 255).astype(np.uint8)
    mask = ops.adaptive_threshold(img, block_size=21, c=-10.0)
    assert mask[20, 60] == 255
    assert mask[50, 10] == 0 and mask[50, 70] == 0


def test_kmeans_picks_brightest_region_deterministically() -> None:
    img = np.full((H, W), 30, np.uint8)
    img[disc(r=20)] = 120
    img[disc(r=8)] = 230
    rng = np.random.default_rng(3)
    img = np.clip(img + rng.integers(-5, 6, img.shape), 0, 255).astype(np.uint8)
    out = ops.kmeans(img, k=3)
    np.testing.assert_array_equal(out == 255, disc(r=8))
    np.testing.assert_array_equal(ops.kmeans(img, k=3), out)
    dark = ops.kmeans(img, k=3, foreground="darkest")
    np.testing.assert_array_equal(dark == 255, ~disc(r=20))
    assert not ops.kmeans(np.full((H, W), 7, np.uint8)).any()


def test_morphology_open_removes_specks_close_fills_holes() -> None:
    mask = np.where(disc(r=15), 255, 0).astype(np.uint8)
    specks = mask.copy()
    specks[2, 2] = specks[60, 75] = 255
    opened = ops.morphology(specks, operation="open", ksize=3)
    assert opened[2, 2] == 0 and opened[60, 75] == 0
    assert opened[H // 2, W // 2] == 255
    holed = mask.copy()
    holed[H // 2 : H // 2 + 2, W // 2 : W // 2 + 2] = 0
    closed = ops.morphology(holed, operation="close", ksize=5)
    assert closed[H // 2 : H // 2 + 2, W // 2 : W // 2 + 2].min() == 255
    assert is_binary(opened) and is_binary(closed)


def test_resize_pad_keeps_aspect_and_centres() -> None:
    img = np.full((100, 50), 200, np.uint8)
    out = ops.resize_pad(img, size=64)
    assert out.shape == (64, 64)
    cols = np.nonzero(out.any(axis=0))[0]
    rows = np.nonzero(out.any(axis=1))[0]
    assert (rows[0], rows[-1]) == (0, 63)
    assert (cols[0], cols[-1]) == (16, 47)
    assert (out[:, 16:48] == 200).all()
    rgb = ops.resize_pad(np.full((50, 100, 3), 9, np.uint8), size=64, interpolation="nearest")
    assert rgb.shape == (64, 64, 3)
    assert (rgb[16:48] == 9).all() and not rgb[:16].any() and not rgb[48:].any()


def test_normalize_modes() -> None:
    img = textured()
    z = ops.normalize(img, mode="zscore")
    assert z.dtype == np.float32
    assert abs(float(z.mean())) < 1e-5
    assert abs(float(z.std()) - 1) < 1e-4
    m = ops.normalize(img)
    assert m.min() == 0.0 and m.max() == 1.0
    assert not ops.normalize(np.full((4, 4), 5, np.uint8), mode="zscore").any()


def test_clahe_increases_contrast() -> None:
    rng = np.random.default_rng(4)
    low = (100 + 10 * (textured() > 100) + rng.integers(0, 5, (H, W))).astype(np.uint8)
    out = ops.clahe(low, clip_limit=4.0, tile_grid=4)
    assert out.std() > 2 * low.std()


def test_sobel_laplacian_zero_on_flat_and_positive_on_edges() -> None:
    flat = np.full((H, W), 77, np.uint8)
    for k in (1, 3, 5, 7):
        assert not ops.sobel(flat, ksize=k).any()
        assert not ops.laplacian(flat, ksize=k).any()
    step = np.zeros((H, W), np.uint8)
    step[:, W // 2 :] = 255
    s = ops.sobel(step)
    assert s[:, W // 2].min() == 255 and not s[:, : W // 2 - 2].any()
    assert ops.laplacian(step)[:, W // 2 - 1 : W // 2 + 1].min() > 0


# ---------------------------------------------------------------------------- parameter checks


@pytest.mark.parametrize(
    ("name", "params", "key"),
    [
        ("median_blur", {"ksize": 4}, "median_blur.ksize"),
        ("median_blur", {"ksize": 1}, "median_blur.ksize"),
        ("median_blur", {"ksize": 3.0}, "median_blur.ksize"),
        ("median_blur", {"ksize": True}, "median_blur.ksize"),
        ("gaussian_blur", {"ksize": 6}, "gaussian_blur.ksize"),
        ("gaussian_blur", {"sigma": -1}, "gaussian_blur.sigma"),
        ("bilateral", {"sigma_color": 0}, "bilateral.sigma_color"),
        ("clahe", {"clip_limit": float("nan")}, "clahe.clip_limit"),
        ("adaptive_threshold", {"block_size": 10}, "adaptive_threshold.block_size"),
        ("kmeans", {"k": 1}, "kmeans.k"),
        ("kmeans", {"foreground": "middle"}, "kmeans.foreground"),
        ("sobel", {"ksize": 31}, "sobel.ksize"),
        ("morphology", {"operation": "erode"}, "morphology.operation"),
        ("resize_pad", {"interpolation": "bogus"}, "resize_pad.interpolation"),
        ("normalize", {"mode": "l2"}, "normalize.mode"),
        ("otsu", {"value": 3}, "otsu.value"),
        ("fourier", {"mode": "notch"}, "fourier.mode"),
        ("fourier", {"high": 0.6}, "fourier.high"),
        ("fourier", {"high": 0.0}, "fourier.high"),
        ("fourier", {"low": -0.1}, "fourier.low"),
        ("fourier", {"order": 0}, "fourier.order"),
        ("fourier", {"mode": "highpass", "low": 0.0}, "fourier.low"),
        ("fourier", {"mode": "bandpass", "low": 0.2, "high": 0.1}, "fourier.high"),
    ],
)
def test_bad_params_raise_config_error(name: str, params: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        OPS[name].fn(textured(), **params)
    assert err.value.key == key


def test_median_float_large_kernel_is_config_error() -> None:
    with pytest.raises(ConfigError, match="median_blur.ksize"):
        ops.median_blur(textured().astype(np.float32), ksize=7)
    assert ops.median_blur(textured(), ksize=7).dtype == np.uint8


# ---------------------------------------------------------------------------- chain


def test_build_chain_unknown_op_lists_ops() -> None:
    with pytest.raises(ConfigError) as err:
        build_chain([{"op": "median_blur"}, {"op": "blurr"}], None, None)
    assert err.value.key == "preprocess.steps[1].op"
    for name in OPS:
        assert name in str(err.value)


def test_build_chain_unknown_param_names_it_and_lists_params() -> None:
    with pytest.raises(ConfigError) as err:
        build_chain([{"op": "clahe", "clip": 3.0}], None, None)
    assert err.value.key == "preprocess.steps[0].clip"
    assert "clip_limit" in str(err.value) and "tile_grid" in str(err.value)


def test_build_chain_rejects_even_median_and_bad_types() -> None:
    with pytest.raises(ConfigError) as err:
        build_chain([{"op": "gaussian_blur"}, {"op": "median_blur", "ksize": 4}], None, None)
    assert err.value.key == "preprocess.steps[1].ksize"
    with pytest.raises(ConfigError) as err:
        build_chain([{"op": "clahe", "tile_grid": "8"}], None, None)
    assert err.value.key == "preprocess.steps[0].tile_grid"
    with pytest.raises(ConfigError) as err:
        build_chain([{"ksize": 3}], None, None)
    assert err.value.key == "preprocess.steps[0].op"
    with pytest.raises(ConfigError) as err:
        build_chain([], None, 0)
    assert err.value.key == "preprocess.output_size"
    with pytest.raises(ConfigError) as err:
        build_chain([], [{"op": "otsu"}, {"op": "canny", "low": 90, "high": 10}], None)
    assert err.value.key == "preprocess.mask[1].high"


def test_build_chain_last_mask_op_must_be_mask_op() -> None:
    with pytest.raises(ConfigError) as err:
        build_chain([{"op": "median_blur"}], [{"op": "otsu"}, {"op": "gaussian_blur"}], None)
    assert err.value.key == "preprocess.mask[1].op"
    assert "mask" in str(err.value)
    with pytest.raises(ConfigError):
        build_chain([], [{"op": "morphology"}], None)  # keeps a mask, but nothing made one
    with pytest.raises(ConfigError):
        build_chain([], [], None)
    # a mask-keeping op after a mask op is fine, as is a mask made by the image steps
    build_chain([], [{"op": "otsu"}, {"op": "morphology", "operation": "open"}], None)
    build_chain([{"op": "otsu"}], [{"op": "median_blur"}], None)


def test_chain_apply() -> None:
    img = textured()
    before = img.copy()
    chain = build_chain(
        [{"op": "median_blur", "ksize": 3}, {"op": "gaussian_blur"}],
        [{"op": "otsu"}, {"op": "morphology", "operation": "open", "ksize": 3}],
        32,
    )
    assert isinstance(chain, Chain)
    res = chain.apply(img)
    assert isinstance(res, ChainResult)
    np.testing.assert_array_equal(img, before)
    np.testing.assert_array_equal(res.image, ops.gaussian_blur(ops.median_blur(img)))
    assert res.mask is not None and is_binary(res.mask) and res.mask.shape == img.shape
    assert np.mean((res.mask == 255) != disc(r=15)) < 0.01
    assert res.tensor.shape == (32, 32) and res.tensor.dtype == np.uint8


def test_chain_without_mask_or_size() -> None:
    img = textured()
    res = build_chain([{"op": "normalize", "mode": "zscore"}], None, None).apply(img)
    assert res.mask is None
    assert res.image.dtype == np.float32
    assert res.tensor.dtype == np.uint8 and res.tensor.shape == img.shape
    empty = build_chain(None, None, None).apply(img)
    np.testing.assert_array_equal(empty.image, img)
    assert not np.shares_memory(empty.image, img) and not np.shares_memory(empty.tensor, img)


def test_config_hash_stable_and_sensitive() -> None:
    a = build_chain([{"op": "clahe", "clip_limit": 2.0, "tile_grid": 8}], None, 224)
    b = build_chain([{"tile_grid": 8, "clip_limit": 2, "op": "clahe"}], None, 224)
    c = build_chain([{"op": "clahe"}], None, 224)  # defaults spelled out or not
    d = build_chain([{"op": "clahe", "clip_limit": 3.0}], None, 224)
    e = build_chain([{"op": "clahe"}], None, 256)
    f = build_chain([{"op": "clahe"}], [{"op": "otsu"}], 224)
    assert a.config_hash() == b.config_hash() == c.config_hash()
    assert len(a.config_hash()) == 64
    assert len({a.config_hash(), d.config_hash(), e.config_hash(), f.config_hash()}) == 4


# ---------------------------------------------------------------------------- segmentation


def test_mask_stats_area_in_mm2() -> None:
    r = 40
    mask = np.where(disc(200, 200, r=r), 255, 0).astype(np.uint8)
    image = np.where(mask > 0, 180, 20).astype(np.uint8)
    stats = mask_stats(mask, image, (0.5, 0.5))
    assert isinstance(stats, MaskStats)
    assert stats.area_mm2 is not None
    assert stats.area_mm2 == pytest.approx(math.pi * r * r * 0.25, rel=0.02)
    assert stats.area_px == int((mask > 0).sum())
    assert stats.area_mm2_reason is None
    assert stats.components == 1
    assert stats.mean_intensity == pytest.approx(180.0)
    assert stats.to_dict()["area_px"] == stats.area_px


def test_mask_stats_components_and_missing_spacing() -> None:
    mask = disc(r=8, centre=(20, 20)) | disc(r=8, centre=(40, 60))
    stats = mask_stats(mask.astype(np.uint8) * 255, colour(), None)
    assert stats.components == 2
    assert stats.area_mm2 is None
    assert stats.area_mm2_reason == "no pixel spacing"
    assert stats.mean_intensity is not None
    assert mask_stats(mask, textured(), (0.0, 1.0)).area_mm2 is None
    # diagonal neighbours are one 8-connected component
    diag = np.zeros((5, 5), np.uint8)
    diag[1, 1] = diag[2, 2] = 255
    assert mask_stats(diag, diag, (1.0, 1.0)).components == 1


def test_mask_stats_empty_mask() -> None:
    stats = mask_stats(np.zeros((8, 8), np.uint8), np.ones((8, 8), np.uint8), (1.0, 2.0))
    assert stats.area_px == 0 and stats.area_mm2 == 0.0
    assert stats.components == 0
    assert stats.mean_intensity is None
