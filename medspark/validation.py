"""What a setting allows, declared once: the YAML config and the OpenCV op parameters use it.

An :class:`Allowed` says which values a key takes (a kind, bounds, odd, a list of choices, a
pattern) and describes itself in the words every :class:`~medspark.errors.ConfigError` uses,
so ``config key 'ingest.max_archive_depth': got 0; allowed: an integer from 1 to 8`` and
``config key 'preprocess.steps[0].ksize': got 4; allowed: an odd integer from 3 to 255`` come
from the same code. :mod:`medspark.config` declares its keys' bounds with it (dataclass field
metadata) and :mod:`medspark.preprocess.ops` its ops' parameters.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from medspark.errors import ConfigError

__all__ = ["Allowed"]


@dataclass(frozen=True)
class Allowed:
    """The values a key allows.

    ``kind``: ``int``, ``float``, ``str`` or ``bool`` (None: the annotation's type, filled in by
    the config loader). An int is accepted where a float is allowed (and becomes a float); a bool
    is never a number. ``minimum``/``maximum`` bound numbers (``above``: the minimum itself is
    not allowed), ``odd`` asks for an odd integer, ``finite`` refuses NaN and infinities,
    ``choices`` lists the only values, ``pattern`` is a regular expression a string must match.
    """

    kind: type | None = None
    minimum: float | None = None
    maximum: float | None = None
    above: bool = False
    odd: bool = False
    finite: bool = False
    choices: tuple[Any, ...] = ()
    pattern: str | None = None

    def describe(self) -> str:
        """What is allowed, in words: ``an odd integer from 3 to 255``, ``one of: a, b``."""
        if self.choices:
            return "one of: " + ", ".join(sorted(str(c) for c in self.choices))
        if self.kind is bool:
            return "true or false"
        if self.kind is str:
            return f"a string matching {self.pattern}" if self.pattern else "a string"
        if self.kind is int:
            noun = "an odd integer" if self.odd else "an integer"
        else:
            noun = "a finite number" if self.finite else "a number"
        lo, hi = self.minimum, self.maximum
        if lo is not None and hi is not None and not self.above:
            return f"{noun} from {lo} to {hi}"
        bounds = []
        if lo is not None:
            bounds.append(f"{'>' if self.above else '>='} {lo}")
        if hi is not None:
            bounds.append(f"<= {hi}")
        return f"{noun} {' and '.join(bounds)}" if bounds else noun

    def check(self, key: str, value: object) -> Any:
        """``value`` as ``kind`` when allowed; else :class:`ConfigError` naming key and value."""
        coerced = self._typed(value)
        if coerced is _REFUSED:
            raise ConfigError(key, value, self.describe())
        if not self._fits(coerced):
            raise ConfigError(key, coerced, self.describe())
        return coerced

    def _typed(self, value: object) -> Any:
        kind = self.kind
        if kind is bool:
            return value if isinstance(value, bool) else _REFUSED
        if kind is int:
            if isinstance(value, bool) or not (isinstance(value, int) or _is_np_int(value)):
                return _REFUSED
            return int(value)  # type: ignore[call-overload]
        if kind is float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                return _REFUSED
            return float(value)
        if kind is not None and not isinstance(value, kind):
            return _REFUSED
        return value

    def _fits(self, value: Any) -> bool:
        if self.choices:
            return value in self.choices
        if self.kind is str:
            return self.pattern is None or re.fullmatch(self.pattern, value) is not None
        if self.kind not in (int, float):
            return True
        if self.finite and not math.isfinite(value):
            return False
        lo, hi = self.minimum, self.maximum
        if lo is not None and (value <= lo if self.above else value < lo):
            return False
        if hi is not None and value > hi:
            return False
        return not (self.odd and value % 2 == 0)


_REFUSED = object()


def _is_np_int(value: object) -> bool:
    import numpy as np

    return isinstance(value, np.integer)


#: The side of the square tensor the 2D chain makes (``preprocess.output_size``).
OUTPUT_SIZE = Allowed(int, minimum=8, maximum=4096)
