"""Starting Spark: the first start's jar fetch, as two commands on a fresh machine meet it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

#: One short start: a session with Delta's classes, stopped.
START = """
from medspark.config import SparkConfig
from medspark.session import _require_delta_classes, build_session, delta_coordinates
spark = build_session(SparkConfig(master="local[1]", log_level="ERROR"),
                      extra_conf={"spark.ui.enabled": "false"})
_require_delta_classes(spark, delta_coordinates())
spark.stop()
"""


@pytest.mark.subprocess
def test_two_first_starts_at_once_fetch_the_jars_once_with_one_line(spark, tmp_path):
    """Two starts at once with no jar manifest in the cache (a fresh machine): both used to run
    Ivy on one cache together (both died with exit 3 there) and print about 250 lines of its
    report. Now one fetches under a lock, in a child process whose output goes to a log file,
    and says so in one line; the other waits and fetches nothing.

    The cache's Ivy folder is a copy of the one this session resolved (``spark`` fixture), so
    Ivy finds every module in it and the network is not used again."""
    from medspark.session import cache_dir, cached_delta_jars, delta_coordinates

    cache = tmp_path / "cache"
    shutil.copytree(cache_dir() / "ivy", cache / "ivy")
    env = {**os.environ, "MEDSPARK_CACHE": str(cache), "MEDSPARK_LOG_DIR": str(tmp_path / "log")}
    starts = [
        subprocess.Popen(
            [sys.executable, "-c", START],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in starts]
    assert [p.returncode for p in starts] == [0, 0], outputs
    console = "".join(out + err for out, err in outputs)
    fetching = [line for line in console.splitlines() if "fetching Delta Lake jars" in line]
    assert len(fetching) == 1, console
    assert fetching[0].startswith("medspark: fetching Delta Lake jars (io.delta:delta-spark")
    assert "found io.delta" not in console and "resolution report" not in console, console
    os.environ["MEDSPARK_CACHE"], saved = str(cache), os.environ.get("MEDSPARK_CACHE")
    try:
        assert cached_delta_jars(delta_coordinates())  # the manifest, for every later start
    finally:
        if saved is None:
            del os.environ["MEDSPARK_CACHE"]
        else:
            os.environ["MEDSPARK_CACHE"] = saved
    (log,) = (tmp_path / "log").glob("medspark-fetch-jars-*.log")
    assert "resolution report" in log.read_text()


#: Under spark-submit: the session medspark builds, and the properties it ended with.
SUBMITTED = """
from medspark.config import SparkConfig
from medspark.session import build_session
spark = build_session(SparkConfig(master="local[2]", shuffle_partitions=2,
                                  arrow_max_records_per_batch=2048))
conf = spark.sparkContext.getConf()
print("GOT", spark.conf.get("spark.sql.shuffle.partitions"), conf.get("spark.master"),
      spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch"))
spark.stop()
"""


@pytest.mark.subprocess
def test_spark_submit_conf_wins_over_medspark_defaults(spark, tmp_path):
    """A data engineer's ``spark-submit --master ... --conf k=v`` wins over the YAML's and
    medspark's own values (``build_session`` read an empty conf before attaching to the
    submitted JVM, so medspark's values won); a property not given keeps medspark's."""
    from medspark.session import cached_delta_jars, delta_coordinates

    script = tmp_path / "submitted.py"
    script.write_text(SUBMITTED)
    jars = ",".join(cached_delta_jars(delta_coordinates()) or [])
    submit = [
        str(shutil.which("spark-submit", path=os.path.dirname(sys.executable)) or "spark-submit"),
        "--master",
        "local[1]",
        "--conf",
        "spark.sql.shuffle.partitions=7",
        "--conf",
        "spark.ui.enabled=false",
        "--jars",
        jars,
        str(script),
    ]
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"}
    done = subprocess.run(submit, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (line,) = [x for x in done.stdout.splitlines() if x.startswith("GOT ")]
    assert line.split()[1:] == ["7", "local[1]", "2048"]


#: Many commands in one Python process, as the test suite and ``ingest-stream`` meet them: the
#: first command starts the driver JVM with the CLI's options (QUICK_JIT), and every later one
#: gets a new SparkContext in that JVM, so the JIT's code cache fills from all of them. Then
#: the code cache's pools, as the JVM reports them.
LONG_SESSION = """
import json, sys
from pathlib import Path
from pyspark import SparkContext
from medspark.cli import main

src, ecg, root, rounds = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
for i in range(rounds):
    wh, other = str(root / f"wh{i}"), str(root / f"run{i}")
    for argv in (
        ["ingest", str(src), str(ecg), "--warehouse", wh],
        ["preprocess", "--warehouse", wh],
        ["infer", "--warehouse", wh],
        ["waveforms", "--warehouse", wh],
        ["run", str(src), "--warehouse", other],
        ["run", str(src), "--warehouse", other],
    ):
        code = main([*argv, "--master", "local[2]"])
        assert code == 0, (argv, code)
beans = SparkContext._jvm.java.lang.management.ManagementFactory.getMemoryPoolMXBeans()
pools = {
    b.getName(): [b.getPeakUsage().getUsed(), b.getUsage().getMax()]
    for b in beans
    if "Code" in b.getName()
}
print("POOLS " + json.dumps(pools))
"""


@pytest.mark.spark
@pytest.mark.subprocess
def test_a_long_session_of_cli_commands_keeps_room_in_the_code_cache(spark, tmp_path, test_files):
    """The CLI's driver runs C1 only (QUICK_JIT). With C1 only the JVM reserved a 48 MB code
    cache, which busy and long sessions filled ("CodeCache is full. Compiler has been
    disabled", then ``VirtualMachineError: Out of space in CodeCache``). Six commands in one
    JVM (ingest, preprocess, infer, waveforms and two runs) must leave every code cache pool
    below 80 % of its size, and the JVM must have compiled more than 80 % of the old 48 MB.
    Measured: 61 MB at peak of 240 MB; with the old options the one 48 MB pool was full
    (50,220,032 of 50,331,648 bytes) and this test failed."""
    import json

    src = tmp_path / "src"
    src.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "rtdose.dcm"):
        shutil.copy(test_files / name, src / name)
    ecg = tmp_path / "ecg"
    ecg.mkdir()
    shutil.copy(test_files / "waveform_ecg.dcm", ecg / "ecg.dcm")
    env = {**os.environ, "MEDSPARK_LOG_DIR": str(tmp_path / "log")}
    done = subprocess.run(
        [sys.executable, "-c", LONG_SESSION, str(src), str(ecg), str(tmp_path), "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (line,) = [x for x in done.stdout.splitlines() if x.startswith("POOLS ")]
    pools = json.loads(line.removeprefix("POOLS "))
    print(pools)
    assert pools and all(peak < 0.8 * size for peak, size in pools.values()), pools
    assert sum(peak for peak, _ in pools.values()) > 0.8 * 48 * 2**20, pools
    assert "CodeCache is full" not in done.stdout + done.stderr
