"""A real Spark standalone cluster on 127.0.0.1: spark-submit the whole flow with one executor
killed mid-run, and compare with a local run.

The master and the workers are pyspark's own daemons, started with ``spark-class`` and stopped
when the module ends, whatever the tests did. The job is submitted exactly as a data engineer
would submit it (``spark-submit ... jobs/run_pipeline.py``); the test then reads the Delta
tables both runs wrote and requires them to be equal, run ids and timestamps aside.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import RUN_COLUMNS, assert_rows_equal
from pyspark.sql import functions as F

from medspark.config import PipelineConfig, with_overrides
from medspark.failures import KILL_EXECUTOR_ENV
from medspark.metrics.runs import RunRecord
from medspark.pipeline import run_all
from medspark.session import cached_delta_jars, delta_coordinates
from medspark.tables.schemas import TABLES

pytestmark = [pytest.mark.spark, pytest.mark.subprocess]

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # pyspark installs spark-class and spark-submit here


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _daemon(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / "spark-class"), *args],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,  # its own process group: stopped as a whole below
    )


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _alive_workers(ui_port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/json/", timeout=2) as r:
            state = json.load(r)
    except OSError:
        return 0
    return sum(1 for w in state.get("workers", []) if w.get("state") == "ALIVE")


@pytest.fixture(scope="module")
def standalone(tmp_path_factory) -> Iterator[str]:
    """A master and two 1-core workers (so an executor can be lost while another goes on);
    yields the master URL."""
    logs = tmp_path_factory.mktemp("standalone")
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_NO_DAEMONIZE": "1"}
    port, ui = _free_port(), _free_port()
    url = f"spark://127.0.0.1:{port}"
    procs = [
        _daemon(
            [
                "org.apache.spark.deploy.master.Master",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--webui-port",
                str(ui),
            ],
            logs / "master.log",
            env,
        )
    ]
    try:
        for i, worker_ui in enumerate((_free_port(), _free_port())):
            procs.append(
                _daemon(
                    [
                        "org.apache.spark.deploy.worker.Worker",
                        url,
                        "--host",
                        "127.0.0.1",
                        "--cores",
                        "1",
                        "--memory",
                        "2g",
                        "--webui-port",
                        str(worker_ui),
                        "--work-dir",
                        str(logs / f"work{i}"),
                    ],
                    logs / f"worker{i}.log",
                    env,
                )
            )
        deadline = time.monotonic() + 120
        while _alive_workers(ui) < 2:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                pytest.fail(
                    "standalone cluster did not start:\n"
                    + "\n".join(
                        (logs / n).read_text()[-2000:]
                        for n in ("master.log", "worker0.log", "worker1.log")
                    )
                )
            time.sleep(1)
        yield url
    finally:
        for proc in reversed(procs):
            _stop(proc)


@pytest.fixture(scope="module")
def sources(tmp_path_factory, test_files) -> list[str]:
    """A small export: loose files (one broken, one not DICOM, one whose second frame does not
    decode), a zip and a tar.gz."""
    import pydicom
    from pydicom.encaps import encapsulate, generate_frames

    root = tmp_path_factory.mktemp("cluster_input")
    loose = root / "loose"
    loose.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "README.txt", "no_meta.dcm"):
        shutil.copyfile(test_files / name, loose / name)
    ds = pydicom.dcmread(test_files / "SC_rgb_rle_2frame.dcm")  # RLE segments of frame 1 cut
    first, second = generate_frames(ds.PixelData, number_of_frames=2)
    ds.PixelData = encapsulate([first, second[:100]])
    ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["cluster-cut-frame"])
    ds.save_as(loose / "cut_frame.dcm")
    with zipfile.ZipFile(root / "series.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for name in (
            "MR_small_jp2klossless.dcm",
            "JPEG2000.dcm",
            "SC_rgb_rle.dcm",
            "JPEG-lossy.dcm",
        ):
            zf.write(test_files / name, f"export/{name}")
    with tarfile.open(root / "pacs.tar.gz", "w:gz") as tf:
        for name in ("693_J2KI.dcm", "SC_rgb_rle_2frame.dcm", "rtstruct.dcm"):
            tf.add(test_files / name, arcname=f"study/{name}")
    return [str(loose), str(root / "series.zip"), str(root / "pacs.tar.gz")]


def _jar_args() -> list[str]:
    jars = cached_delta_jars(delta_coordinates())  # filled by the session fixture's first start
    return ["--jars", ",".join(jars)] if jars else ["--packages", delta_coordinates()]


def _submit(master: str, sources: list[str], warehouse: Path, *conf: str) -> str:
    """spark-submit ``jobs/run_pipeline.py`` as a data engineer would; returns its stdout."""
    extra = [arg for c in conf for arg in ("--conf", c)]
    proc = subprocess.run(
        [
            str(BIN / "spark-submit"),
            "--master",
            master,
            *_jar_args(),
            "--conf",
            "spark.ui.enabled=false",
            "--conf",
            "spark.executor.memory=1g",
            *extra,
            str(REPO / "jobs" / "run_pipeline.py"),
            *sources,
            "--warehouse",
            str(warehouse),
            "--conf",
            str(REPO / "conf" / "pipeline.yaml"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout


@pytest.fixture(scope="module")
def runs(spark, standalone, sources, tmp_path_factory) -> dict[str, Path]:
    """The same input through the test's local session, and through spark-submit to the
    cluster with one executor killed (SIGKILL to its JVM, as a lost node) right after it
    preprocessed its first batch. One submit covers both claims: the cluster's tables equal the
    local ones, and a lost executor changes nothing (a second submit without the kill cost
    80 s of every CI run and could only pass when this one does)."""
    root = tmp_path_factory.mktemp("cluster_runs")
    local, lost = root / "local", root / "lost"
    config = with_overrides(PipelineConfig(), warehouse=str(local))
    run_all(spark, sources, config, RunRecord(run_id="local-run", job="run"))
    marker = root / "killed-executor"
    stdout = _submit(standalone, sources, lost, f"spark.executorEnv.{KILL_EXECUTOR_ENV}={marker}")
    assert marker.exists(), "no executor was killed"
    return {"local": local, "lost": lost, "stdout": stdout}


def _table(spark, warehouse: Path, table: str):
    return spark.read.format("delta").load(str(warehouse / table))


@pytest.mark.parametrize(
    "table", ["scans", "ingest_errors", "images", "preprocess_errors", "scanner_utilization"]
)
def test_cluster_tables_equal_local_run(spark, runs, table):
    """With an executor lost mid-run (its tasks ran again): nothing twice, nothing missing."""
    assert_rows_equal(
        _table(spark, runs["lost"], table),
        _table(spark, runs["local"], table),
        keys=TABLES[table].key,
        drop=RUN_COLUMNS,
        what=table,
    )


def test_cluster_predictions_equal_local_run(spark, runs):
    assert_rows_equal(
        _table(spark, runs["lost"], "predictions"),
        _table(spark, runs["local"], "predictions"),
        keys=TABLES["predictions"].key,
        drop=RUN_COLUMNS,
        approx=["score", "probabilities"],  # float noise of batching
        what="predictions",
    )


def test_cluster_run_is_recorded_with_its_master(spark, runs, standalone):
    job_runs = spark.read.format("delta").load(str(runs["lost"] / "job_runs"))
    row = job_runs.where(F.col("job") == "run").collect()[0]
    assert row["master"] == standalone
    assert row["status"] == "succeeded"
