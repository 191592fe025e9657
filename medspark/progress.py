"""One live line while a command's Spark jobs run: tasks done of total, their rate, the time.

Spark's status tracker (``SparkContext.statusTracker``) is polled from a driver thread twice a
second; the line is rewritten in place (carriage return) on stderr. It is shown only on a
terminal and never with ``--quiet``, so logs, pipes and CI output never get it. The figures
are tasks (a task is one planned bin of items, or a write's partition), because that is what
Spark knows while a pass runs; the items, frames and errors are counted in the summary that
follows.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TextIO


def progress_text(stages: Sequence[tuple[int, int, int]], seconds: float) -> str:
    """The line for the running ``stages`` (tasks done, tasks in all, tasks failed, each)
    after ``seconds``: ``12/40 tasks (2 stages), 3.1 tasks/s, 4 s`` (failed tasks, which Spark
    retries, named only when there are some)."""
    done = sum(s[0] for s in stages)
    total = sum(s[1] for s in stages)
    failed = sum(s[2] for s in stages)
    rate = done / seconds if seconds > 0 else 0.0
    text = f"{done}/{total} tasks ({len(stages)} stage{'s' if len(stages) != 1 else ''})"
    text += f", {rate:.1f} tasks/s, {seconds:.0f} s"
    if failed:
        text += f", {failed} failed (retried)"
    return text


def _running_stages(spark: Any) -> list[tuple[int, int, int]]:
    tracker = spark.sparkContext.statusTracker()
    out = []
    for stage_id in tracker.getActiveStageIds():
        info = tracker.getStageInfo(stage_id)
        if info is not None:
            out.append((info.numCompletedTasks, info.numTasks, info.numFailedTasks))
    return out


@contextmanager
def progress_line(
    spark: Any, enabled: bool | None = None, stream: TextIO | None = None, every: float = 0.5
) -> Iterator[None]:
    """Show :func:`progress_text` on ``stream`` (stderr) while the block runs, and clear it
    at the end. ``enabled`` None: only when the stream is a terminal."""
    out = stream or sys.stderr
    if enabled is None:
        enabled = out.isatty()
    if not enabled:
        yield
        return
    stop = threading.Event()
    started = time.monotonic()
    width = [0]

    def show(text: str) -> None:
        out.write("\r" + text.ljust(width[0]))
        out.flush()
        width[0] = len(text)

    def poll() -> None:
        while not stop.wait(every):
            try:
                stages = _running_stages(spark)
            except Exception:  # noqa: BLE001 - the context stopping: the line just ends
                return
            if stages:
                show("medspark: " + progress_text(stages, time.monotonic() - started))

    thread = threading.Thread(target=poll, name="medspark-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        if width[0]:
            out.write("\r" + " " * width[0] + "\r")
            out.flush()
