"""Faults a trusted system survives: a run killed (SIGKILL, as kill -9 or the OOM killer) right
after one of its commits, then run again, leaves the same tables as a run never interrupted."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import zipfile

import pytest
from deltalake import DeltaTable

from medspark.config import PipelineConfig, with_overrides
from medspark.metrics.runs import RunRecord, mark_abandoned
from medspark.pipeline import ingest, run_all
from medspark.tables.schemas import BOOKKEEPING_COLUMNS

pytestmark = [pytest.mark.spark, pytest.mark.subprocess]

#: Tables a run writes whose rows say something (bookkeeping tables aside).
TABLES = {
    "ingest": ("scans", "ingest_errors", "restricted_acquisitions", "restricted_locations"),
    "run": (
        "scans",
        "ingest_errors",
        "images",
        "preprocess_errors",
        "predictions",
        "restricted_acquisitions",
        "restricted_locations",
        "restricted_images",
    ),
}

#: Columns that differ between two runs of the same input: who wrote a row, when, and the
#: timings of the batch it was in.
VOLATILE = BOOKKEEPING_COLUMNS | {"partition", "batch", "rss_bytes", "gpu_utilization"}


def _rows(config: PipelineConfig, table: str) -> list[tuple]:
    path = config.table_path(table)
    if not DeltaTable.is_deltatable(path):
        return []
    data = DeltaTable(path).to_pyarrow_table()
    columns = sorted(
        c for c in data.column_names if c not in VOLATILE and not c.startswith("seconds_")
    )
    return sorted(
        (tuple(r[c] for c in columns) for r in data.select(columns).to_pylist()), key=repr
    )


@pytest.fixture(scope="module")
def source(tmp_path_factory, test_files):
    root = tmp_path_factory.mktemp("faults_in")
    for name in ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "README.txt", "MR_truncated.dcm"):
        shutil.copyfile(test_files / name, root / name)
    with zipfile.ZipFile(root / "export.zip", "w") as zf:
        zf.write(test_files / "rtdose.dcm", "a/rtdose.dcm")
        zf.write(test_files / "CT_small.dcm", "a/ct_copy.dcm")  # a duplicate
    return str(root)


@pytest.mark.parametrize(("command", "table"), [("ingest", "scans"), ("run", "images")])
def test_killed_after_a_commit_then_rerun_equals_a_clean_run(
    spark, tmp_path, source, command, table
):
    killed = with_overrides(PipelineConfig(), warehouse=str(tmp_path / "killed"))
    proc = subprocess.run(
        [sys.executable, "-m", "medspark.cli", command, source, "--warehouse", killed.warehouse],
        capture_output=True,
        text=True,
        env={**os.environ, "MEDSPARK_KILL_AFTER": table},
        timeout=600,
        cwd=tmp_path,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert _rows(killed, table), f"the kill came after {table} was committed"

    # The killed run stays visible: running, then abandoned once its driver is known gone.
    (run,) = DeltaTable(killed.table_path("job_runs")).to_pyarrow_table().to_pylist()
    assert (run["job"], run["status"], run["ended_at"]) == (command, "running", None)
    assert mark_abandoned(killed.table_path("job_runs")) == [run["run_id"]]

    clean = with_overrides(PipelineConfig(), warehouse=str(tmp_path / "clean"))
    for config in (killed, clean):  # the re-run, and a run never interrupted
        if command == "ingest":
            ingest(spark, [source], config)
        else:
            run_all(
                spark, [source], config, RunRecord(run_id=f"rerun-{config.warehouse}", job="run")
            )
    for name in TABLES[command]:
        assert _rows(killed, name) == _rows(clean, name), name
    assert _rows(clean, "scans") and _rows(clean, "ingest_errors")


def _mount_small_disk(where, size: str) -> bool:
    """A tmpfs of ``size`` at ``where`` (root only); False where mounting is not allowed."""
    where.mkdir(parents=True, exist_ok=True)
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)]
    return os.geteuid() == 0 and subprocess.run(mount, capture_output=True).returncode == 0


def test_a_full_disk_is_one_line_and_the_run_is_recorded_failed(tmp_path):
    """A warehouse on a 1 MiB file system fills during ``run``. It used to end with a
    Py4JJavaError line, a Rust panic header and JVM warnings on the console, and its job_runs
    row left ``running``. Now: exit 1 and one line naming the warehouse and the disk; after
    space is freed, the next run records the first as failed (its reason) and completes."""
    from medspark.synthetic import SliceSpec, ct_slice_bytes

    disk = tmp_path / "disk"
    if not _mount_small_disk(disk, "1m"):
        pytest.skip("needs root to mount a small tmpfs")
    try:
        source = tmp_path / "in"
        source.mkdir()
        for i in range(60):  # 60 slices of 256 x 256: more than 1 MiB of tables
            (source / f"s{i:03d}.dcm").write_bytes(ct_slice_bytes(SliceSpec(bool(i % 2), i)))
        warehouse = disk / "wh"
        env = {**os.environ, "MEDSPARK_LOG_DIR": str(tmp_path / "log")}
        command = [sys.executable, "-m", "medspark.cli", "run", str(source)]
        command += ["--warehouse", str(warehouse)]
        full = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
        assert full.returncode == 1, full.stderr[-3000:]
        assert full.stderr.count("\n") == 1, full.stderr
        assert full.stderr.startswith(f"medspark: the disk under the warehouse {warehouse} is full")

        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "failed before it could record why: recorded now" in again.stderr
        runs = DeltaTable(str(warehouse / "job_runs")).to_pyarrow_table().to_pylist()
        status = sorted((r["status"], (r["error"] or "")[:55]) for r in runs)
        assert status == [
            ("failed", "the warehouse's disk was full (No space left on device)"),
            ("succeeded", ""),
        ]
        assert DeltaTable(str(warehouse / "images")).to_pyarrow_table().num_rows == 60
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)
