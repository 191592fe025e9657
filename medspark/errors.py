"""Exceptions shared across medspark."""

from __future__ import annotations

from collections.abc import Iterable


class MedsparkError(Exception):
    """Base class for errors medspark reports to users in one clear line."""


class ConfigError(MedsparkError, ValueError):
    """A configuration key has a value that is not allowed.

    The message always names the key (dotted path), the value found and what is allowed,
    so a user can fix the YAML without reading a stack trace.
    """

    def __init__(self, key: str, value: object, allowed: str | Iterable[str]) -> None:
        if not isinstance(allowed, str):
            allowed = "one of: " + ", ".join(sorted(str(a) for a in allowed))
        self.key = key
        self.value = value
        self.allowed = allowed
        super().__init__(f"config key '{key}': got {value!r}; allowed: {allowed}")


class MissingInput(MedsparkError):
    """A step was asked for before the step that writes its input table (``infer`` on a
    warehouse without ``images``): an invocation error, found before Spark starts."""


class EnvironmentProblem(MedsparkError, RuntimeError):
    """Something outside medspark (Java, jars, interpreter) is missing or broken."""
