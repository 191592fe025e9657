"""Build a preprocessing chain from the ``preprocess`` section of the config.

A chain is validated once, at build time (on the driver), so a typo in the YAML fails before
any Spark job starts, with a key such as ``preprocess.steps[2].ksize``. :meth:`Chain.apply` then
runs on executors with pure numpy/OpenCV.

Config shape::

    preprocess:
      steps:                      # run in order on the frame
        - {op: median_blur, ksize: 3}
        - {op: clahe, clip_limit: 2.0}
      mask:                       # optional; starts from the output of ``steps``
        - {op: otsu}
        - {op: morphology, operation: open, ksize: 5}
      output_size: 224            # optional; square model input (resize_pad)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medspark.errors import ConfigError
from medspark.preprocess.ops import OPS, resize_pad, resolve_params, to_uint8
from medspark.validation import OUTPUT_SIZE

__all__ = ["HASH_VERSION", "Chain", "ChainResult", "Step", "build_chain"]

HASH_VERSION = 1
"""Bumped whenever op semantics change so that cached outputs keyed by the hash are invalidated."""


@dataclass(frozen=True)
class Step:
    """One resolved step: op name and all its parameters (defaults filled in, types coerced)."""

    op: str
    params: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """``{"op": name, **params}``, the config form of the step."""
        return {"op": self.op, **self.params}

    def run(self, image: np.ndarray) -> np.ndarray:
        """Apply the op to ``image`` (returns a new array)."""
        return OPS[self.op].fn(image, **self.params)


@dataclass(frozen=True)
class ChainResult:
    """Output of :meth:`Chain.apply`.

    ``image``: the frame after ``steps`` (dtype per the last op; the input if there are none).
    ``mask``: 2-D uint8 0/255 mask from the ``mask`` steps, or None when none are configured.
    ``tensor``: uint8 model input: ``image`` rescaled to uint8 (see
    :func:`~medspark.preprocess.ops.to_uint8`), then ``resize_pad`` to ``output_size`` when set.
    """

    image: np.ndarray
    mask: np.ndarray | None
    tensor: np.ndarray


@dataclass(frozen=True)
class Chain:
    """A validated preprocessing chain; build it with :func:`build_chain`."""

    steps: tuple[Step, ...]
    mask: tuple[Step, ...] | None
    output_size: int | None

    def apply(self, image: np.ndarray) -> ChainResult:
        """Run ``steps`` on ``image``, then ``mask`` from that result, then build the tensor.

        ``image`` is never modified. Raises ``ValueError``/``TypeError`` for an unsupported image
        shape or dtype (see :mod:`medspark.preprocess.ops`).
        """
        out = image
        for step in self.steps:
            out = step.run(out)
        if not self.steps:
            out = image.copy()

        mask: np.ndarray | None = None
        if self.mask is not None:
            mask = out
            for step in self.mask:
                mask = step.run(mask)
            if mask.ndim != 2 or mask.dtype != np.uint8 or not ((mask == 0) | (mask == 255)).all():
                # build_chain guarantees this; a failure here is a bug in an op, not in config.
                raise RuntimeError(f"mask steps produced a non-binary mask ({mask.dtype})")

        tensor = to_uint8(out)
        if self.output_size is not None:
            tensor = resize_pad(tensor, size=self.output_size)
        elif tensor is out:
            tensor = tensor.copy()
        return ChainResult(image=out, mask=mask, tensor=tensor)

    def to_config(self) -> dict[str, Any]:
        """The resolved config (defaults filled in) as plain JSON-able data."""
        return {
            "steps": [s.to_dict() for s in self.steps],
            "mask": None if self.mask is None else [s.to_dict() for s in self.mask],
            "output_size": self.output_size,
        }

    def config_hash(self) -> str:
        """Stable sha256 hex digest of the canonical JSON of :meth:`to_config`.

        Keys are sorted and defaults filled in, so configs that differ only in key order, or in
        spelling a default out, hash equal; any change of op, order, value, mask or output size
        changes it. Use it to key cached preprocessing outputs.
        """
        payload = {"hash_version": HASH_VERSION, **self.to_config()}
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _resolve_steps(steps: object, key: str) -> tuple[Step, ...]:
    """Validate a list of ``{"op": name, **params}`` dicts; ``key`` is e.g. ``preprocess.steps``."""
    if isinstance(steps, (str, bytes)) or not isinstance(steps, Sequence):
        raise ConfigError(key, steps, "a list of mappings like {op: median_blur, ksize: 3}")
    resolved: list[Step] = []
    for i, raw in enumerate(steps):
        step_key = f"{key}[{i}]"
        if not isinstance(raw, Mapping):
            raise ConfigError(step_key, raw, "a mapping like {op: median_blur, ksize: 3}")
        if "op" not in raw:
            raise ConfigError(f"{step_key}.op", None, OPS.keys())
        op = raw["op"]
        if not isinstance(op, str) or op not in OPS:
            raise ConfigError(f"{step_key}.op", op, OPS.keys())
        params = {k: v for k, v in raw.items() if k != "op"}
        for name in params:
            if not isinstance(name, str):
                raise ConfigError(step_key, name, "string parameter names")
        resolved.append(Step(op, resolve_params(op, params, key_prefix=step_key)))
    return tuple(resolved)


def _mask_op_names() -> str:
    makers = ", ".join(n for n, s in OPS.items() if s.outputs_mask)
    keepers = ", ".join(n for n, s in OPS.items() if s.keeps_mask)
    return f"a mask op ({makers}), or {keepers} after one"


def build_chain(
    steps: list[dict] | None,
    mask: list[dict] | None = None,
    output_size: int | None = None,
    *,
    key_prefix: str = "preprocess",
) -> Chain:
    """Validate the ``preprocess`` config and return a :class:`Chain`.

    ``steps``: ops run in order on the frame (None or [] = no steps). ``mask``: ops run on the
    output of ``steps``; the last one must produce a binary mask (a mask op, or ``median_blur`` /
    ``morphology`` following one) or a ConfigError is raised; None = no mask. ``output_size``:
    side of the square uint8 tensor (``OUTPUT_SIZE`` of :mod:`medspark.validation`: 8 to 4096, as
    in the config), or None to keep the image size.

    Every error is a :class:`~medspark.errors.ConfigError` keyed like
    ``preprocess.steps[2].ksize``: unknown op (lists the ops), unknown parameter (lists the op's
    parameters), wrong type or out-of-range value.
    """
    resolved_steps = _resolve_steps([] if steps is None else steps, f"{key_prefix}.steps")

    resolved_mask: tuple[Step, ...] | None = None
    if mask is not None:
        mask_key = f"{key_prefix}.mask"
        resolved_mask = _resolve_steps(mask, mask_key)
        if not resolved_mask:
            raise ConfigError(mask_key, mask, "null, or a non-empty list of steps ending in a mask")
        is_mask = False
        for step in (*resolved_steps, *resolved_mask):
            spec = OPS[step.op]
            is_mask = spec.outputs_mask or (spec.keeps_mask and is_mask)
        if not is_mask:
            last = len(resolved_mask) - 1
            raise ConfigError(
                f"{mask_key}[{last}].op",
                resolved_mask[-1].op,
                "the last mask step must output a binary mask: " + _mask_op_names(),
            )

    if output_size is not None:
        output_size = OUTPUT_SIZE.check(f"{key_prefix}.output_size", output_size)
    return Chain(steps=resolved_steps, mask=resolved_mask, output_size=output_size)
