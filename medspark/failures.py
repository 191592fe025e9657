"""What a person sees when a job fails for a reason that is not medspark's own.

Spark, Delta and the file system fail with exceptions whose text is a Java stack trace of
hundreds of lines. :func:`describe` turns one into a line that names the thing and says what to
do; :func:`write_trace` keeps the whole trace in a log file for whoever needs it. The CLI
prints ``medspark: <description> (full trace: <log>)`` and exits 1.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
import traceback
from pathlib import Path

#: Where traces go: ``$MEDSPARK_LOG_DIR``, else a per-user folder in the temp directory.
LOG_DIR_ENV = "MEDSPARK_LOG_DIR"

_DELTA_LOG = re.compile(r"((?:file:)?/[^\s'\"`,;]*?)/_delta_log(?:/|\b)")
_DATA_FILE = re.compile(r"((?:file:)?/[^\s'\"`,;]*?)/(part-[^\s'\"`,;/]+\.parquet)")


def log_dir() -> Path:
    """The folder of trace files (created owner-only: traces may name patients' files)."""
    path = Path(
        os.environ.get(LOG_DIR_ENV) or Path(tempfile.gettempdir()) / f"medspark-{os.getuid()}"
    )
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def write_trace(exc: BaseException) -> Path:
    """Write ``exc``'s full trace (Python and, in its text, Java) to a new log file."""
    path = log_dir() / f"medspark-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.log"
    with open(path, "w", encoding="utf-8") as out:
        traceback.print_exception(exc, file=out)
    return path


def _first_line(exc: BaseException) -> str:
    """The exception's own first line: for Spark's errors, ``[ERROR_CLASS] message``."""
    text = str(exc).strip()
    java = getattr(exc, "java_exception", None)
    if java is not None:  # a Py4JJavaError: its str() starts with Py4J's own preamble
        with contextlib.suppress(Exception):  # the JVM may be gone already
            text = str(java.toString())
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(exc).__name__)
    return line if len(line) <= 400 else line[:397] + "..."


def _table_path(text: str) -> str | None:
    """The Delta table a failure is about: the folder above ``_delta_log`` or above a data
    file named in the error text."""
    for pattern in (_DELTA_LOG, _DATA_FILE):
        match = pattern.search(text)
        if match:
            path = match.group(1)
            if path.startswith("file:"):  # file:/x and file:///x alike
                from urllib.parse import unquote, urlparse

                path = unquote(urlparse(path).path)
            return path
    return None


def describe(exc: BaseException) -> str:
    """One line for a person: what failed, naming the thing, and what to do about it."""
    text = f"{exc}\n{getattr(exc, 'java_exception', '') or ''}"
    first = _first_line(exc)
    table = _table_path(text)
    if table is not None:
        name = Path(table).name
        return (
            f"table {name} at {table} cannot be read ({first}). If one of its data files or "
            "_delta_log entries was deleted or damaged, restore the table to its last good "
            f"version: RESTORE TABLE delta.`{table}` TO VERSION AS OF <n>, after DESCRIBE "
            f"HISTORY delta.`{table}` to find n (Spark SQL with Delta)"
        )
    return f"{type(exc).__name__}: {first}"


#: Fault injection for tests: ``MEDSPARK_KILL_AFTER=<table>`` kills the process (SIGKILL, as
#: ``kill -9`` or the OOM killer would) right after its write to that table committed.
KILL_AFTER_ENV = "MEDSPARK_KILL_AFTER"


def committed(table: str) -> None:
    """Called by the writers after each commit to ``table``; see :data:`KILL_AFTER_ENV`."""
    if os.environ.get(KILL_AFTER_ENV) == table:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
