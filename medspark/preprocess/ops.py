"""Image preprocessing operations: pure numpy/OpenCV functions named as in the YAML config.

Every operation is a pure function ``op(image, **params) -> np.ndarray``:

* ``image`` is the displayed frame: a 2-D ``uint8`` (or ``float32``) array, or an ``H x W x 3``
  colour frame in **RGB** order (what pydicom decodes; not OpenCV's usual BGR). Other numeric
  dtypes (``uint16``, ``int16``, ``float64`` ...) are cast to ``float32`` first. Arrays of any
  other shape raise ``ValueError``; non-numeric arrays raise ``TypeError``.
* The input is never modified in place; every op returns a new array.
* Parameters are validated on every call, by the :class:`~medspark.validation.Allowed` declared
  for them (the config uses the same); a bad value raises
  :class:`~medspark.errors.ConfigError` whose key is ``<op>.<param>`` (for example
  ``median_blur.ksize``). :mod:`medspark.preprocess.chain` validates the same way at build time,
  with keys like ``preprocess.steps[2].ksize``.

Dtype/shape contracts (documented again on each op):

* Filters (``median_blur``, ``gaussian_blur``, ``bilateral``, ``morphology``, ``resize_pad``) keep
  the dtype and the channels of their input.
* Ops that need an 8-bit single-channel image (``canny``, ``adaptive_threshold``, ``otsu``,
  ``sobel``, ``laplacian``) convert colour to grey (ITU-R BT.601 luma) and rescale non-``uint8``
  input min-max to 0..255 first. ``clahe`` rescales the same way but keeps colour (it equalises
  the L channel of CIE L*a*b*).
* Mask ops (``canny``, ``threshold``, ``adaptive_threshold``, ``otsu``, ``kmeans``) return a 2-D
  ``uint8`` mask whose values are exactly 0 or 255.
* ``normalize`` and ``fourier`` return ``float32`` of the input's shape.

The registry :data:`OPS` maps each config name to an :class:`OpSpec` (function, parameters with
defaults, types and checks, and whether it outputs a mask).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from medspark.errors import ConfigError
from medspark.validation import Allowed

__all__ = [
    "OPS",
    "OpSpec",
    "ParamSpec",
    "adaptive_threshold",
    "bilateral",
    "canny",
    "clahe",
    "fourier",
    "fourier_response",
    "gaussian_blur",
    "kmeans",
    "laplacian",
    "median_blur",
    "morphology",
    "normalize",
    "otsu",
    "resize_pad",
    "resolve_params",
    "sobel",
    "threshold",
    "to_gray",
    "to_uint8",
]

# --------------------------------------------------------------------------- parameter checks

Relation = Callable[[Mapping[str, Any]], "tuple[str, str] | None"]
"""A check across an op's resolved parameters: ``None`` or ``(param, what is allowed)``."""


def _int_range(lo: int, hi: int | None = None, *, odd: bool = False) -> Allowed:
    """Integer in ``[lo, hi]`` (``hi`` None = unbounded), optionally odd."""
    return Allowed(int, minimum=lo, maximum=hi, odd=odd)


def _one_of_ints(*allowed: int) -> Allowed:
    return Allowed(int, choices=allowed)


def _float_range(lo: float | None = None, *, strict: bool = False) -> Allowed:
    """Finite float ``> lo`` (``strict``) or ``>= lo``."""
    return Allowed(float, minimum=lo, above=strict, finite=True)


def _choices(*allowed: str) -> Allowed:
    return Allowed(str, choices=allowed)


# --------------------------------------------------------------------------- registry types


@dataclass(frozen=True)
class ParamSpec:
    """One parameter of an op: its config name, Python type, default and allowed values."""

    name: str
    type: type
    default: Any
    allowed: Allowed = field(default_factory=Allowed)

    def describe(self) -> str:
        """Short human description, e.g. ``ksize: int = 3``."""
        return f"{self.name}: {self.type.__name__} = {self.default!r}"


@dataclass(frozen=True)
class OpSpec:
    """Registry entry for one op.

    ``outputs_mask``: the op always returns a 2-D uint8 0/255 mask.
    ``keeps_mask``: given a 0/255 mask the op returns a 0/255 mask again (median, morphology), so
    it may end a mask pipeline when it follows a mask op.
    ``colour``: the op accepts H x W x 3 input (all ops do; ``colour_out`` says whether the
    output keeps three channels).
    """

    name: str
    fn: Callable[..., np.ndarray]
    params: Mapping[str, ParamSpec]
    outputs_mask: bool = False
    keeps_mask: bool = False
    colour_out: bool = False
    relation: Relation | None = field(default=None, compare=False)
    doc: str = field(default="", compare=False)

    def defaults(self) -> dict[str, Any]:
        """Default value of every parameter."""
        return {name: p.default for name, p in self.params.items()}


OPS: dict[str, OpSpec] = {}
"""Config name -> :class:`OpSpec` for every available op, in definition order."""


def resolve_params(op: str, params: Mapping[str, object], key_prefix: str | None = None) -> dict:
    """Validate ``params`` for ``op`` and return them with every default filled in.

    Error keys are ``<key_prefix>.<param>`` (``key_prefix`` defaults to the op name).
    Raises ConfigError for an unknown op, an unknown parameter, or a bad type or value.
    """
    prefix = op if key_prefix is None else key_prefix
    spec = OPS.get(op)
    if spec is None:
        raise ConfigError(f"{prefix}.op", op, OPS.keys())
    resolved: dict[str, Any] = {}
    for name, value in params.items():
        p = spec.params.get(name)
        key = f"{prefix}.{name}"
        if p is None:
            allowed = (
                f"a parameter of {op}, one of: " + ", ".join(spec.params)
                if spec.params
                else f"nothing: {op} takes no parameters"
            )
            raise ConfigError(key, value, allowed)
        resolved[name] = p.allowed.check(key, value)
    for name, p in spec.params.items():
        resolved.setdefault(name, p.default)
    if spec.relation is not None:
        problem = spec.relation(resolved)
        if problem is not None:
            name, allowed = problem
            raise ConfigError(f"{prefix}.{name}", resolved[name], allowed)
    return resolved


def _register(
    *,
    outputs_mask: bool = False,
    keeps_mask: bool = False,
    colour_out: bool = False,
    checks: Mapping[str, Allowed] | None = None,
    relation: Relation | None = None,
) -> Callable[[Callable[..., np.ndarray]], Callable[..., np.ndarray]]:
    """Register an op under its function name.

    Parameters, defaults and types come from the function's keyword-only arguments (the type is
    the type of the default), so the signature is the single source of truth. The returned
    wrapper validates the image and the parameters before calling the implementation.
    """
    checks = dict(checks or {})

    def deco(impl: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
        name = impl.__name__
        params: dict[str, ParamSpec] = {}
        for pname, par in inspect.signature(impl).parameters.items():
            if pname == "image":
                continue
            if par.kind is not inspect.Parameter.KEYWORD_ONLY or par.default is par.empty:
                raise TypeError(f"op {name}: parameter {pname} must be keyword-only with default")
            kind = type(par.default)
            allowed = dataclasses.replace(checks.pop(pname, Allowed()), kind=kind)
            params[pname] = ParamSpec(pname, kind, par.default, allowed)
        if checks:
            raise TypeError(f"op {name}: checks for unknown parameters {sorted(checks)}")

        @functools.wraps(impl)
        def wrapper(image: np.ndarray, **kwargs: Any) -> np.ndarray:
            resolved = resolve_params(name, kwargs)
            return impl(_prepare(image, name), **resolved)

        OPS[name] = OpSpec(
            name=name,
            fn=wrapper,
            params=params,
            outputs_mask=outputs_mask,
            keeps_mask=keeps_mask,
            colour_out=colour_out,
            relation=relation,
            doc=inspect.getdoc(impl) or "",
        )
        return wrapper

    return deco


# --------------------------------------------------------------------------- image helpers


def _prepare(image: np.ndarray, op: str) -> np.ndarray:
    """Check shape/dtype; return a C-contiguous uint8 or float32 array (a view when possible).

    Implementations must not write into the result: it may share memory with the caller's array.
    """
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{op}: image must be a numpy array, got {type(image).__name__}")
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"{op}: image must be H x W or H x W x 3, got shape {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"{op}: image is empty (shape {image.shape})")
    if image.dtype == np.uint8 or image.dtype == np.float32:
        return np.ascontiguousarray(image)
    if image.dtype == np.bool_ or not np.issubdtype(image.dtype, np.number):
        raise TypeError(f"{op}: image dtype must be numeric, got {image.dtype}")
    if np.issubdtype(image.dtype, np.complexfloating):
        raise TypeError(f"{op}: complex images are not supported")
    return np.ascontiguousarray(image, dtype=np.float32)


def to_gray(image: np.ndarray) -> np.ndarray:
    """Single-channel view of ``image``: 2-D input as is, RGB converted with BT.601 luma."""
    if image.ndim == 2:
        return image
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """``uint8`` version of ``image``: uint8 as is; anything else min-max rescaled to 0..255.

    Rescaling (rather than clipping) keeps float frames in any unit (0..1, HU, ...) usable by
    8-bit-only OpenCV routines. A constant image maps to all zeros. NaNs map to 0.
    """
    if image.dtype == np.uint8:
        return image
    data = np.nan_to_num(image.astype(np.float32, copy=False), nan=0.0, posinf=0.0, neginf=0.0)
    lo = float(data.min())
    hi = float(data.max())
    if hi <= lo:
        return np.zeros(data.shape, dtype=np.uint8)
    scaled = (data - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _gray_u8(image: np.ndarray) -> np.ndarray:
    """Grey 8-bit image for routines that need one 8-bit channel (Canny, Otsu, ...)."""
    return to_uint8(to_gray(image))


def _to_mask(binary: np.ndarray) -> np.ndarray:
    """Boolean (or nonzero) array -> uint8 0/255 mask."""
    return np.where(binary, np.uint8(255), np.uint8(0)).astype(np.uint8, copy=False)


_INTERPOLATIONS: dict[str, int] = {
    "nearest": cv2.INTER_NEAREST,
    "linear": cv2.INTER_LINEAR,
    "area": cv2.INTER_AREA,
    "cubic": cv2.INTER_CUBIC,
    "lanczos4": cv2.INTER_LANCZOS4,
}

# --------------------------------------------------------------------------- smoothing


@_register(keeps_mask=True, colour_out=True, checks={"ksize": _int_range(3, 255, odd=True)})
def median_blur(image: np.ndarray, *, ksize: int = 3) -> np.ndarray:
    """Median filter over a ``ksize x ksize`` window (odd, >= 3); keeps dtype and channels.

    The median replaces each pixel by a value that already occurs nearby, so it removes
    salt-and-pepper noise while keeping edges sharp. 3 removes isolated pixels without eroding
    structure; larger windows remove bigger specks but round off corners. Applied to a 0/255
    mask it returns a 0/255 mask (a majority vote), so it can clean a mask pipeline.
    OpenCV only supports ``ksize`` 3 or 5 for float32 images; larger values raise ConfigError
    for float input.
    """
    if image.dtype != np.uint8 and ksize > 5:
        raise ConfigError("median_blur.ksize", ksize, "3 or 5 for non-uint8 images (OpenCV limit)")
    return cv2.medianBlur(image, ksize)


@_register(
    colour_out=True,
    checks={"ksize": _int_range(1, 255, odd=True), "sigma": _float_range(0.0)},
)
def gaussian_blur(image: np.ndarray, *, ksize: int = 5, sigma: float = 0.0) -> np.ndarray:
    """Gaussian smoothing with an odd ``ksize`` kernel; keeps dtype and channels.

    ``sigma = 0`` lets OpenCV derive sigma from the kernel size (0.3*((ksize-1)*0.5-1)+0.8, i.e.
    1.1 for 5), the usual choice to suppress sensor noise before edge detection or Otsu.
    """
    return cv2.GaussianBlur(image, (ksize, ksize), sigmaX=sigma, sigmaY=sigma)


@_register(
    colour_out=True,
    checks={
        "d": _int_range(1, 25),
        "sigma_color": _float_range(0.0, strict=True),
        "sigma_space": _float_range(0.0, strict=True),
    },
)
def bilateral(
    image: np.ndarray, *, d: int = 5, sigma_color: float = 50.0, sigma_space: float = 50.0
) -> np.ndarray:
    """Edge-preserving bilateral filter; keeps dtype and channels.

    Averages neighbours that are both close in space (``sigma_space``) and close in intensity
    (``sigma_color``, in image units: 50 suits 0..255 frames), so flat regions are smoothed while
    organ borders stay sharp. ``d`` is the neighbourhood diameter; 5 is the value OpenCV
    recommends for real-time use (cost grows with d^2, hence the cap of 25).
    """
    return cv2.bilateralFilter(image, d, sigma_color, sigma_space)


@_register(
    colour_out=True,
    checks={"clip_limit": _float_range(0.0, strict=True), "tile_grid": _int_range(1, 64)},
)
def clahe(image: np.ndarray, *, clip_limit: float = 2.0, tile_grid: int = 8) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation; returns uint8 of the input's shape.

    Equalises the histogram in a ``tile_grid x tile_grid`` grid of tiles, clipping each tile's
    histogram at ``clip_limit`` times the mean bin height so noise in flat regions is not
    amplified. 2.0 and 8 x 8 are OpenCV's and most radiology pipelines' defaults. Non-uint8
    input is min-max rescaled to 0..255 first; RGB input is equalised on the L* channel of
    L*a*b* so hues are kept.
    """
    op = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(tile_grid, tile_grid))
    img8 = to_uint8(image)
    if img8.ndim == 2:
        return op.apply(img8)
    lab = cv2.cvtColor(img8, cv2.COLOR_RGB2LAB)
    lab[:, :, 0] = op.apply(np.ascontiguousarray(lab[:, :, 0]))
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


# --------------------------------------------------------------------------- masks


def _canny_relation(p: Mapping[str, Any]) -> tuple[str, str] | None:
    if p["high"] < p["low"]:
        return "high", f"a number >= low ({p['low']})"
    return None


@_register(
    outputs_mask=True,
    checks={"low": _float_range(0.0), "high": _float_range(0.0)},
    relation=_canny_relation,
)
def canny(image: np.ndarray, *, low: float = 50.0, high: float = 150.0) -> np.ndarray:
    """Canny edge detector; returns a 2-D uint8 0/255 edge mask.

    Works on the grey 8-bit image (colour -> grey, non-uint8 rescaled to 0..255). Gradients
    above ``high`` start an edge, those above ``low`` continue one; the 1:3 ratio (50/150) is
    Canny's own recommendation. ``high`` must be >= ``low``.
    """
    return cv2.Canny(_gray_u8(image), low, high)


@_register(outputs_mask=True, checks={"value": _float_range()})
def threshold(image: np.ndarray, *, value: float = 127.0) -> np.ndarray:
    """Global threshold: 255 where the grey value is > ``value``, else 0 (2-D uint8 mask).

    ``value`` is in the image's own units (0..255 for uint8 frames, HU for CT floats, ...); 127
    is mid-grey of an 8-bit frame. Colour input is converted to grey first.
    """
    return _to_mask(to_gray(image) > value)


@_register(
    outputs_mask=True,
    checks={"block_size": _int_range(3, 1001, odd=True), "c": _float_range()},
)
def adaptive_threshold(image: np.ndarray, *, block_size: int = 11, c: float = 2.0) -> np.ndarray:
    """Gaussian adaptive threshold; returns a 2-D uint8 0/255 mask.

    A pixel is foreground when it is brighter than the Gaussian-weighted mean of its
    ``block_size x block_size`` neighbourhood minus ``c``. This copes with uneven illumination
    (shading across a radiograph) where one global threshold fails. 11 and 2 are OpenCV's
    tutorial values for 8-bit images. Works on the grey 8-bit image.
    """
    return cv2.adaptiveThreshold(
        _gray_u8(image), 255, cv2.ADAPTIVE_THRESH_GAUSSIAN_C, cv2.THRESH_BINARY, block_size, c
    )


@_register(outputs_mask=True)
def otsu(image: np.ndarray) -> np.ndarray:
    """Otsu's automatic global threshold; returns a 2-D uint8 0/255 mask.

    Chooses the threshold that maximises between-class variance of the grey 8-bit histogram,
    so it needs no parameter and works well for bimodal frames (bright anatomy on dark
    background). A constant image gives an empty mask.
    """
    gray = _gray_u8(image)
    _, mask = cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    return mask


@_register(
    outputs_mask=True,
    checks={
        "k": _int_range(2, 16),
        "attempts": _int_range(1, 20),
        "seed": _int_range(0, 2**31 - 1),
        "foreground": _choices("brightest", "darkest"),
    },
)
def kmeans(
    image: np.ndarray,
    *,
    k: int = 3,
    attempts: int = 3,
    seed: int = 0,
    foreground: str = "brightest",
) -> np.ndarray:
    """Intensity k-means segmentation; returns the 2-D uint8 0/255 mask of one cluster.

    Clusters grey values (colour -> grey; values in the image's own units) into ``k`` groups
    with k-means++ seeding and keeps the cluster with the brightest (or darkest) centre. k = 3
    separates background, soft tissue and the bright structure of interest in most frames;
    3 attempts keep the best of three seedings. The result is deterministic for a given
    ``seed``: OpenCV's thread-local RNG is seeded with it before clustering (this resets that
    RNG for the calling thread). A constant image or one with fewer pixels than ``k`` gives an
    empty mask.
    """
    gray = to_gray(image)
    data = gray.reshape(-1, 1).astype(np.float32)
    if data.shape[0] < k or float(data.max()) <= float(data.min()):
        return np.zeros(gray.shape, dtype=np.uint8)
    cv2.setRNGSeed(seed)
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 50, 0.1)
    _, labels, centers = cv2.kmeans(data, k, None, criteria, attempts, cv2.KMEANS_PP_CENTERS)
    centres = centers.reshape(-1)
    target = centres.max() if foreground == "brightest" else centres.min()
    chosen = np.flatnonzero(centres == target)  # ties (duplicate centres) are all foreground
    return _to_mask(np.isin(labels.reshape(gray.shape), chosen))


# --------------------------------------------------------------------------- gradients


@_register(checks={"ksize": _one_of_ints(1, 3, 5, 7)})
def sobel(image: np.ndarray, *, ksize: int = 3) -> np.ndarray:
    """Sobel gradient magnitude sqrt(gx^2 + gy^2); returns 2-D uint8, saturated at 255.

    Works on the grey 8-bit image, so a flat image gives exactly 0 and a 0->255 step gives
    255. ``ksize`` 3 is the classic Sobel kernel; 5 and 7 smooth more (and scale the response
    up, so more of it saturates). Larger kernels are refused: in float32 they lose all
    precision (OpenCV 5 returns ~1e10 on a flat image at ksize 31).
    """
    gray = _gray_u8(image)
    gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=ksize)
    gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=ksize)
    return np.clip(np.rint(cv2.magnitude(gx, gy)), 0, 255).astype(np.uint8)


@_register(checks={"ksize": _one_of_ints(1, 3, 5, 7)})
def laplacian(image: np.ndarray, *, ksize: int = 3) -> np.ndarray:
    """Absolute Laplacian |d2I/dx2 + d2I/dy2|; returns 2-D uint8, saturated at 255.

    Highlights fine detail and edges in every direction (zero on flat and linear ramps). Works
    on the grey 8-bit image. ``ksize`` 1 is the 3x3 4-neighbour kernel, 3 (default, OpenCV's
    aperture) the 8-neighbour-weighted one; 5 and 7 smooth more. Larger kernels are refused for
    the same precision reason as :func:`sobel`.
    """
    lap = cv2.Laplacian(_gray_u8(image), cv2.CV_32F, ksize=ksize)
    return np.clip(np.rint(np.abs(lap)), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- morphology


@_register(
    keeps_mask=True,
    colour_out=True,
    checks={
        "operation": _choices("open", "close"),
        "ksize": _int_range(1, 255, odd=True),
        "iterations": _int_range(1, 100),
    },
)
def morphology(
    image: np.ndarray, *, operation: str = "open", ksize: int = 3, iterations: int = 1
) -> np.ndarray:
    """Morphological opening or closing with an elliptical ``ksize`` element; keeps dtype.

    ``open`` (erode then dilate) removes bright specks smaller than the element; ``close``
    (dilate then erode) fills dark holes and gaps smaller than it. An elliptical (at 3 x 3,
    cross-shaped) element is used so results do not depend on orientation. Works on masks and
    grey/colour images alike; a 0/255 mask stays 0/255. With OpenCV's default border value
    the frame edge neither erodes nor grows objects that touch it.
    """
    element = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (ksize, ksize))
    code = cv2.MORPH_OPEN if operation == "open" else cv2.MORPH_CLOSE
    return cv2.morphologyEx(image, code, element, iterations=iterations)


# --------------------------------------------------------------------------- geometry, scaling


@_register(
    colour_out=True,
    checks={"size": _int_range(1, 8192), "interpolation": _choices(*_INTERPOLATIONS)},
)
def resize_pad(image: np.ndarray, *, size: int = 224, interpolation: str = "area") -> np.ndarray:
    """Aspect-preserving resize so the longest side is ``size``, then centred zero padding.

    Returns ``size x size`` (x 3 for colour) of the input's dtype. Keeping the aspect ratio
    avoids distorting anatomy; zero padding is black, the background of most modalities. When
    the padding is odd the extra pixel goes to the bottom/right. 224 is the input size of most
    ImageNet-pretrained CNNs. ``area`` interpolation averages pixels when shrinking (no
    aliasing); use ``nearest`` for masks.
    """
    h, w = image.shape[:2]
    scale = size / max(h, w)
    new_h = min(size, max(1, round(h * scale)))
    new_w = min(size, max(1, round(w * scale)))
    resized = cv2.resize(image, (new_w, new_h), interpolation=_INTERPOLATIONS[interpolation])
    out = np.zeros((size, size, *image.shape[2:]), dtype=image.dtype)
    top = (size - new_h) // 2
    left = (size - new_w) // 2
    out[top : top + new_h, left : left + new_w] = resized.reshape(new_h, new_w, *image.shape[2:])
    return out


@_register(checks={"mode": _choices("minmax", "zscore")})
def normalize(image: np.ndarray, *, mode: str = "minmax") -> np.ndarray:
    """Intensity normalisation over the whole array; returns float32 of the input's shape.

    ``minmax`` maps the range to [0, 1] (what most CNNs expect); ``zscore`` subtracts the mean
    and divides by the standard deviation, making frames with different windowing comparable.
    Statistics are computed in float64 over all pixels (and channels) of the frame. A constant
    image gives all zeros in both modes.
    """
    data = image.astype(np.float64)
    if mode == "minmax":
        lo = float(data.min())
        span = float(data.max()) - lo
        if span <= 0:
            return np.zeros(image.shape, dtype=np.float32)
        return ((data - lo) / span).astype(np.float32)
    std = float(data.std())
    if std <= 0:
        return np.zeros(image.shape, dtype=np.float32)
    return ((data - float(data.mean())) / std).astype(np.float32)


# --------------------------------------------------------------------------- frequency domain

_FOURIER_MODES = ("lowpass", "highpass", "bandpass", "bandstop")


def _fourier_relation(p: Mapping[str, Any]) -> tuple[str, str] | None:
    mode = p["mode"]
    if mode != "lowpass" and p["low"] <= 0:
        return "low", f"a number > 0 for mode {mode} (the cut-off, cycles per pixel, up to 0.5)"
    if mode in ("bandpass", "bandstop") and p["high"] <= p["low"]:
        return "high", f"a number > low ({p['low']}) for mode {mode}"
    return None


@functools.lru_cache(maxsize=32)
def fourier_response(
    rows: int, columns: int, mode: str, low: float, high: float, order: int
) -> npt.NDArray[np.float32]:
    """Gain of :func:`fourier` at each DCT-II coefficient ``(ky, kx)`` of a rows x columns
    frame, whose radial frequency is ``sqrt((ky / 2 rows)^2 + (kx / 2 columns)^2)`` cycles per
    pixel. Butterworth: ``B(f, c) = 1 / (1 + (f / c)^(2 order))`` is the low-pass; high-pass is
    ``1 - B(f, low)``; band-pass ``B(f, high) * (1 - B(f, low))``; band-stop one minus that.
    Cached (read-only) per size and parameters: a series' frames share one."""
    fy = np.arange(rows, dtype=np.float64)[:, None] / (2.0 * rows)
    fx = np.arange(columns, dtype=np.float64)[None, :] / (2.0 * columns)
    f = np.sqrt(fy * fy + fx * fx)

    def lowpass(cut: float) -> np.ndarray:
        return 1.0 / (1.0 + (f / cut) ** (2 * order))

    if mode == "lowpass":
        gain = lowpass(high)
    elif mode == "highpass":
        gain = 1.0 - lowpass(low)
    else:
        gain = lowpass(high) * (1.0 - lowpass(low))
        if mode == "bandstop":
            gain = 1.0 - gain
    out = gain.astype(np.float32)
    out.setflags(write=False)
    return out


@_register(
    colour_out=True,
    checks={
        "mode": _choices(*_FOURIER_MODES),
        "low": Allowed(float, minimum=0.0, maximum=0.5, finite=True),
        "high": Allowed(float, minimum=0.0, maximum=0.5, above=True, finite=True),
        "order": _int_range(1, 10),
    },
    relation=_fourier_relation,
)
def fourier(
    image: np.ndarray,
    *,
    mode: str = "lowpass",
    low: float = 0.05,
    high: float = 0.25,
    order: int = 2,
) -> np.ndarray:
    """Frequency-domain filter with a Butterworth window; returns float32 of the input's shape.

    Cut-offs are radial spatial frequencies in cycles per pixel, 0 to 0.5 (0.5 is the Nyquist
    limit: a pattern alternating every pixel). ``lowpass`` keeps what is slower than ``high``
    (removes fine noise and grain; 0.25 halves the gain of a 4-pixel period); ``highpass``
    keeps what is faster than ``low`` (edges and texture, without the slow shading and the
    mean: the output is centred on 0); ``bandpass`` keeps ``low`` to ``high`` (structures of a
    size range); ``bandstop`` removes that band (a periodic artefact such as a grid pattern).
    The Butterworth window (``order`` 2 by default) falls off smoothly at the cut-off, so a
    sharp edge does not ring as it does after a hard (ideal) cut; higher orders approach the
    hard cut and ring more.

    The transform is the DCT-II of the frame, which is the Fourier transform of the frame
    mirrored across its borders: the mirrored frame has no jump where one border meets the
    opposite one, so the filter adds no artefact at the edges (a plain FFT treats the frame
    as periodic and smears the top row into the bottom one). Colour frames are filtered per
    channel. Cost: about one 2-D FFT of the frame each way (OpenCV's DCT for even sizes; odd
    sizes take numpy's FFT of the mirrored frame, four times the data); bench/README.md has
    the figure beside ``median_blur``.
    """
    gain = fourier_response(image.shape[0], image.shape[1], mode, low, high, order)
    data = image.astype(np.float32, copy=False)
    if image.ndim == 2:
        return _dct_filter(data, gain)
    channels = [_dct_filter(np.ascontiguousarray(data[:, :, c]), gain) for c in range(3)]
    return np.stack(channels, axis=-1)


def _dct_filter(plane: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """``IDCT(gain * DCT(plane))`` of one float32 plane (orthonormal DCT-II pair).

    OpenCV's DCT takes even sizes only; an odd-sized plane goes the long way, which is the same
    filter: numpy's real FFT of the plane mirrored to 2H x 2W, the gain of DCT coefficient k at
    FFT bins k and 2N - k, inverse, crop (about four times the work)."""
    h, w = plane.shape
    if h % 2 == 0 and w % 2 == 0:
        return cv2.idct(cv2.dct(plane) * gain)
    mirrored = np.pad(plane.astype(np.float64), ((0, h), (0, w)), mode="symmetric")
    # Bin 2N - k has the frequency of bin k; bins N carry nothing for a mirrored signal.
    ky = np.arange(2 * h)
    rows = np.minimum(np.minimum(ky, 2 * h - ky), h - 1)
    cols = np.minimum(np.arange(w + 1), w - 1)
    spectrum = np.fft.rfft2(mirrored) * gain[np.ix_(rows, cols)]
    return np.fft.irfft2(spectrum, s=(2 * h, 2 * w))[:h, :w].astype(np.float32)
