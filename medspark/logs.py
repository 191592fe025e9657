"""How medspark's library code talks to a person: through :mod:`logging`, never ``print``.

Every module logs under the ``medspark`` logger (``logging.getLogger(__name__)``). A library
user (a notebook, a script) who configures no logging sees each warning as one ``medspark:``
line on stderr (:class:`_Unconfigured`, the role of Python's last-resort handler, with the
prefix); one who configures logging gets the records through the root logger as any
library's. The commands (the CLI, and ``jobs/``, which call it) call :func:`configure`, which
shows info lines (a run's summary) on stdout as they are and warnings on stderr as one
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


class _Unconfigured(logging.Handler):
    """Warnings as one ``medspark:`` line on stderr while the application has configured no
    logging (the root logger has no handler); silent once it has, as its handlers then get
    the records (propagation), so nothing is shown twice."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.setFormatter(logging.Formatter("medspark: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if logging.getLogger().handlers:
            return
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)


def install_default() -> None:
    """Attach :class:`_Unconfigured` to the ``medspark`` logger (once; done on import)."""
    logger = logging.getLogger(ROOT)
    if not any(isinstance(h, (_Unconfigured, _Console)) for h in logger.handlers):
        logger.addHandler(_Unconfigured())


def _below_warning(record: logging.LogRecord) -> bool:
    return record.levelno < logging.WARNING


def configure(quiet: bool = False) -> None:
    """Show medspark's log on the console: info on stdout, warnings and errors on stderr
    prefixed ``medspark:``; with ``quiet``, warnings and errors only. Calling it again
    replaces the handlers it set (one line per message, however often a process calls it)."""
    logger = logging.getLogger(ROOT)
    for handler in [h for h in logger.handlers if isinstance(h, (_Console, _Unconfigured))]:
        logger.removeHandler(handler)
    out = _Console("stdout", logging.INFO, "%(message)s")
    out.addFilter(_below_warning)
    logger.addHandler(out)
    logger.addHandler(_Console("stderr", logging.WARNING, "medspark: %(message)s"))
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False
