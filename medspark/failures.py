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
import threading
import time
import traceback
from collections.abc import Iterator
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


@contextlib.contextmanager
def stderr_to(path: Path) -> Iterator[None]:
    """Send file descriptor 2 to ``path`` (appended) for the block, then back.

    For output that is not medspark's and that Python cannot intercept: a JVM started in the
    block keeps the file as its stderr for its whole life (Spark's start-up banner and
    warnings, its executors' and Python workers' stderr), and a Rust panic inside delta-rs
    writes to the descriptor directly. Python's own ``sys.stderr`` writes in the block go to
    the file too, from every thread: keep the block short, on the thread that owns the
    console. Blocks are serialised (not re-entrant)."""
    import sys

    with _STDERR_LOCK, open(path, "ab") as out:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(out.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


#: Descriptor 2 belongs to the whole process: one :func:`stderr_to` block at a time, so that
#: two threads' blocks cannot interleave and leave it pointing at a log file.
_STDERR_LOCK = threading.Lock()


#: The text by which a full disk shows in an exception (Java's, Python's, delta-rs's own).
_DISK_FULL = ("No space left on device", "os error 28", "ENOSPC")


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it came from) says a disk is full."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = f"{current}\n{getattr(current, 'java_exception', '') or ''}"
        if isinstance(current, OSError) and current.errno == 28:
            return True
        if any(marker in text for marker in _DISK_FULL):
            return True
        current = current.__cause__ or current.__context__
    return False


def disk_full_line(location: str) -> str:
    """One line for a full disk under ``location``: the mount it is on, what is free there,
    and what to do."""
    import shutil

    path = Path(location).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        usage = shutil.disk_usage(path)
        room = f"{usage.free / 2**20:.1f} MiB free of {usage.total / 2**20:.0f} MiB"
    except OSError:
        room = "free space unknown"
    return (
        f"the disk under the warehouse {location} is full ({room} at {path}): free space there, "
        "then run the same command again; every table holds its last complete commit"
    )


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


#: Fault injection for tests: ``MEDSPARK_KILL_EXECUTOR=<marker file>``, set on the executors
#: (``spark.executorEnv.MEDSPARK_KILL_EXECUTOR``), makes the first Python worker of a cluster
#: executor that has preprocessed a batch create the marker and SIGKILL its executor's JVM, as
#: a lost node would. Only once per marker; in local mode (no executor JVM of its own) never.
KILL_EXECUTOR_ENV = "MEDSPARK_KILL_EXECUTOR"


def _executor_jvm() -> int | None:
    """The pid of the executor JVM this Python worker runs under, or None (Linux /proc only).

    A worker is forked by ``pyspark.daemon``, which the executor started: the JVM is an
    ancestor whose command line names ``CoarseGrainedExecutorBackend``.
    """
    pid = os.getpid()
    for _ in range(6):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            pid = int(stat.rsplit(")", 1)[1].split()[1])  # ppid, after the (comm) field
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            return None
        if b"CoarseGrainedExecutorBackend" in cmdline:
            return pid
        if pid <= 1:
            return None
    return None


def batch_done() -> None:
    """Called by executor code after each preprocessed batch; see :data:`KILL_EXECUTOR_ENV`."""
    marker = os.environ.get(KILL_EXECUTOR_ENV)
    if not marker:
        return
    jvm = _executor_jvm()
    if jvm is None:
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as f:
        f.write(f"{jvm}\n")
    import signal

    os.kill(jvm, signal.SIGKILL)
