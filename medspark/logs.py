"""How medspark's library code talks to a person: through :mod:`logging`, never ``print``.

Every module logs under the ``medspark`` logger (``logging.getLogger(__name__)``). A library
user who configures nothing sees warnings as Python shows them (its last-resort handler);
the commands (the CLI, and ``jobs/``, which call it) call :func:`configure`, which shows
info lines (a run's summary) on stdout as they are and warnings on stderr as one
``medspark:`` line each.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

ROOT = "medspark"


class _Console(logging.StreamHandler):  # type: ignore[type-arg]
    """A handler on ``sys.stdout`` or ``sys.stderr`` as they are when a line is logged (so a
    redirected or captured stream gets it), not as they were when the handler was made."""

    def __init__(self, name: str, level: int, fmt: str) -> None:
        super().__init__()
        self._name = name
        self.setLevel(level)
        self.setFormatter(logging.Formatter(fmt))

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return getattr(sys, self._name)

    @stream.setter
    def stream(self, value: Any) -> None:  # StreamHandler.__init__ sets it: ignored
        pass


def _below_warning(record: logging.LogRecord) -> bool:
    return record.levelno < logging.WARNING


def configure(quiet: bool = False) -> None:
    """Show medspark's log on the console: info on stdout, warnings and errors on stderr
    prefixed ``medspark:``; with ``quiet``, warnings and errors only. Calling it again
    replaces the handlers it set (one line per message, however often a process calls it)."""
    logger = logging.getLogger(ROOT)
    for handler in [h for h in logger.handlers if isinstance(h, _Console)]:
        logger.removeHandler(handler)
    out = _Console("stdout", logging.INFO, "%(message)s")
    out.addFilter(_below_warning)
    logger.addHandler(out)
    logger.addHandler(_Console("stderr", logging.WARNING, "medspark: %(message)s"))
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False
