"""The live progress line (medspark.progress)."""

from __future__ import annotations

import io
import time

from medspark.progress import progress_line, progress_text


def test_progress_text_sums_the_running_stages():
    assert progress_text([(3, 10, 0)], 2.0) == "3/10 tasks (1 stage), 1.5 tasks/s, 2 s"
    assert progress_text([(3, 10, 0), (1, 4, 2)], 0.0) == (
        "4/14 tasks (2 stages), 0.0 tasks/s, 0 s, 2 failed (retried)"
    )


def test_the_line_shows_a_running_job_and_is_cleared_at_the_end(spark):
    out = io.StringIO()

    def slow(rows):
        time.sleep(0.4)
        return rows

    with progress_line(spark, enabled=True, stream=out, every=0.1):
        spark.sparkContext.parallelize(range(8), 8).mapPartitions(slow).count()
    text = out.getvalue()
    assert "\rmedspark: " in text and "/8 tasks (1 stage)" in text
    assert text.endswith("\r")  # blanked: the summary that follows starts on a clean line
    assert text.rsplit("\r", 2)[-2].strip() == ""


def test_no_line_when_not_enabled_or_not_a_terminal(spark):
    out = io.StringIO()  # not a terminal
    with progress_line(spark, stream=out, every=0.05):
        spark.sparkContext.parallelize(range(2), 2).count()
    assert out.getvalue() == ""
