"""The command line as a user runs it: exit codes, messages, and a whole run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from medspark.cli import main


def test_bad_config_exits_2_naming_key_value_and_allowed(tmp_path, capsys):
    conf = tmp_path / "bad.yaml"
    conf.write_text("preprocess:\n  steps:\n    - {op: median_blur, ksize: 4}\n")
    code = main(["ingest", str(tmp_path), "--warehouse", str(tmp_path / "wh"), "--conf", str(conf)])
    err = capsys.readouterr().err
    assert code == 2
    assert "preprocess.steps[0].ksize" in err and "4" in err
    assert "Traceback" not in err and not (tmp_path / "wh").exists()


def test_unknown_model_exits_2_before_spark(tmp_path, capsys):
    code = main(["infer", "--warehouse", str(tmp_path), "--model", "nope"])
    assert code == 2
    assert "--model" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["run", "{tmp}/no-such-folder", "--warehouse", "{tmp}/wh"], "no-such-folder"),
        (["ingest", "{tmp}", "--warehouse", "{tmp}/wh", "--master", "nonsense"], "nonsense"),
        (["run", "{tmp}", "--warehouse", "{tmp}/wh", "--master", "local[abc]"], "local[abc]"),
        (["ingest", "{tmp}", "--warehouse", "{tmp}/file.txt"], "file.txt"),
        (["waveforms", "--warehouse", "{tmp}/file.txt"], "file.txt"),
        (["evaluate", "--warehouse", "{tmp}/wh", "--labels", "{tmp}/no-labels.csv"], "no-labels"),
        (["train-demo", "--out", "{tmp}/wh", "--folds", "1"], "--folds"),
    ],
)
def test_bad_invocation_exits_2_before_spark(tmp_path, capsys, argv, named):
    """A typo in a path or the master is a configuration error: one line, exit 2, no JVM."""
    (tmp_path / "file.txt").write_text("not a directory")
    code = main([a.format(tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("medspark: ") and named in err
    assert not (tmp_path / "wh").exists()


@pytest.mark.parametrize(
    ("warehouse", "key"),
    [
        ("{tmp}/wh_restricted", "--warehouse"),  # the restricted root of wh itself
        ("{tmp}/wh_restricted/inner", "--warehouse"),  # inside it
        ("{tmp}/keys/inner", "--warehouse"),  # inside a root that holds restricted tables
    ],
)
def test_a_warehouse_in_a_restricted_one_exits_2_before_spark(tmp_path, capsys, warehouse, key):
    """Analyst tables are never written into (or as) a restricted warehouse: one line, exit 2,
    nothing created (it used to run, and create ``wh_restricted/inner_restricted``)."""
    (tmp_path / "wh").mkdir()
    (tmp_path / "wh_restricted").mkdir()
    (tmp_path / "keys" / "restricted_phi_map" / "_delta_log").mkdir(parents=True)
    target = warehouse.format(tmp=tmp_path)
    code = main(["ingest", str(tmp_path / "wh"), "--warehouse", target])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith(
        f"medspark: configuration error: config key '{key}'"
    )
    assert "restricted" in err
    assert not Path(target).exists() or target.endswith("wh_restricted")
    assert not (tmp_path / "wh_restricted" / "inner_restricted").exists()


def test_restricted_warehouse_inside_the_analyst_one_exits_2(tmp_path, capsys):
    wh = tmp_path / "wh"
    code = main(
        ["ingest", str(tmp_path), "--warehouse", str(wh), "--restricted-warehouse", str(wh / "r")]
    )
    err = capsys.readouterr().err
    assert code == 2 and "--restricted-warehouse" in err and not wh.exists()


@pytest.mark.parametrize(
    ("command", "table", "hint"),
    [
        ("infer", "images", "run ingest and preprocess first"),
        ("preprocess", "scans", "run ingest first"),
        ("waveforms", "scans", "run ingest first"),
        ("volumes", "scans", "run ingest first"),
    ],
)
def test_a_step_on_an_empty_warehouse_says_what_to_run_first(
    tmp_path, capsys, command, table, hint
):
    """``infer`` on an empty warehouse printed a raw [PATH_NOT_FOUND] and left job_runs and
    stage_metrics behind; now one line before Spark starts, and nothing is written."""
    code = main([command, "--warehouse", str(tmp_path / "wh")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err == f"medspark: no {table} table at {tmp_path / 'wh' / table}: {hint}\n"
    assert not (tmp_path / "wh").exists() and not (tmp_path / "wh_restricted").exists()


@pytest.mark.parametrize(
    ("content", "named"),
    [(None, "not found"), ("sop_instance_uid,label\n1.2.3,nodule\n", "missing: frame")],
)
def test_a_bad_labels_file_exits_2_before_spark(tmp_path, capsys, content, named):
    labels = tmp_path / "labels.csv"
    if content is not None:
        labels.write_text(content)
    wh = tmp_path / "wh"
    code = main(["evaluate", "--warehouse", str(wh), "--labels", str(labels)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "'--labels'" in err and named in err and not wh.exists()


def test_the_cli_driver_jvm_keeps_a_full_size_code_cache():
    """The CLI's driver runs C1 only (QUICK_JIT), which shrinks the code cache to 48 MB; a long
    or busy session then filled it ("CodeCache is full. Compiler has been disabled"). The
    options must reserve the default's 240 MB. Asked of the JVM itself."""
    from medspark.cli import QUICK_JIT

    java = shutil.which("java") or str(Path(os.environ.get("JAVA_HOME", "/")) / "bin" / "java")
    flags = subprocess.run(
        [java, *QUICK_JIT.split(), "-XX:+PrintFlagsFinal", "-version"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    (line,) = [x for x in flags.splitlines() if " ReservedCodeCacheSize " in x]
    assert int(line.split("=")[1].split()[0]) >= 240 * 2**20
    assert "TieredStopAtLevel" in QUICK_JIT  # the start-up gain stays


@pytest.mark.spark
@pytest.mark.subprocess
def test_medspark_run_end_to_end(tmp_path, test_files):
    src = tmp_path / "in"
    src.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "README.txt"):
        shutil.copyfile(test_files / name, src / name)
    wh = tmp_path / "wh"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "medspark.cli",
            "run",
            str(src),
            "--warehouse",
            str(wh),
            "--spark-conf",
            "spark.ui.port=4050",
        ],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=600,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "wh", "wh_restricted"]  # no stray
    out = proc.stdout
    assert "4 item(s) read" in out  # three DICOM files and a text file
    assert "not_dicom" in out
    assert "2 frame(s) processed" in out  # CT_small and MR_small; rtplan has no pixels
    assert "slowest stage" in out
    for table in ("scans", "ingest_errors", "images", "predictions", "job_runs"):
        assert (wh / table / "_delta_log").is_dir(), table


@pytest.mark.spark
@pytest.mark.subprocess
def test_medspark_ingest_stream_takes_each_file_once(tmp_path, test_files):
    landing = tmp_path / "landing"
    landing.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm", "README.txt"):
        shutil.copyfile(test_files / name, landing / name)
    wh = tmp_path / "wh"
    # Its own interpreter: the CLI stops the SparkSession it used, which must not be the tests'.
    script = (
        "import shutil, sys; from medspark.cli import main; "
        f"a = main(['ingest-stream', {str(landing)!r}, '--warehouse', {str(wh)!r}]); "
        f"shutil.copyfile({str(test_files / 'rtplan.dcm')!r}, {str(landing / 'rtplan.dcm')!r}); "
        f"b = main(['ingest-stream', {str(landing)!r}, '--warehouse', {str(wh)!r}]); "
        "sys.exit(a or b)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, second = proc.stdout.split("tables:")[:2]
    assert "3 new file(s), 3 item(s)" in first  # two scans and a text file
    assert "1 new file(s), 1 item(s)" in second
    assert (wh / "_checkpoints").is_dir()
    from deltalake import DeltaTable

    runs = DeltaTable(str(wh / "job_runs")).to_pandas()
    assert sorted(runs["job"]) == ["ingest_stream", "ingest_stream"]
    assert sorted(runs["items_in"]) == [1, 3]
    # The micro-batches' jobs are the run's: Spark's stage accounting is recorded for both runs.
    stages = DeltaTable(str(wh / "stage_metrics")).to_pandas()
    per_run = stages.groupby("run_id").size()
    assert set(per_run.index) == set(runs["run_id"]) and (per_run >= 10).all(), per_run


def test_unreachable_spark_master_is_one_line_before_spark(tmp_path, capsys):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    master = f"spark://127.0.0.1:{port}"
    code = main(["ingest", str(tmp_path), "--warehouse", str(tmp_path / "wh"), "--master", master])
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("medspark: could not connect to the Spark")
    assert master in err and not (tmp_path / "wh").exists()


@pytest.mark.spark
@pytest.mark.subprocess
def test_a_damaged_table_is_one_line_naming_it_and_how_to_restore(spark, tmp_path, test_files):
    """A deleted data file, a corrupt _delta_log entry: the table, RESTORE, and a log file."""
    from medspark.config import PipelineConfig, with_overrides
    from medspark.pipeline import ingest

    src = tmp_path / "in"
    src.mkdir()
    shutil.copyfile(test_files / "CT_small.dcm", src / "ct.dcm")
    damaged = {}
    for kind in ("data_file", "log_entry"):
        wh = tmp_path / kind
        ingest(spark, [str(src)], with_overrides(PipelineConfig(), warehouse=str(wh)))
        if kind == "data_file":
            for part in (wh / "scans").glob("part-*.parquet"):
                part.unlink()
        else:
            last = sorted((wh / "scans" / "_delta_log").glob("*.json"))[-1]
            last.write_text('{"add": {"path": "part-0.parquet", "size": ')  # cut mid-write
        damaged[kind] = wh
    logs = tmp_path / "logs"
    script = "import sys; from medspark.cli import main; " + "; ".join(
        f"print('--', main(['preprocess', '--warehouse', {str(wh)!r}]), file=sys.stderr)"
        for wh in damaged.values()
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "MEDSPARK_LOG_DIR": str(logs)},
        timeout=600,
        cwd=tmp_path,
    )
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith(("medspark:", "--"))]
    assert [ln for ln in lines if ln.startswith("--")] == ["-- 1", "-- 1"], proc.stderr[-3000:]
    messages = [ln for ln in lines if ln.startswith("medspark:")]
    assert len(messages) == 2, proc.stderr[-3000:]
    for message, wh in zip(messages, damaged.values(), strict=True):
        assert f"table scans at {wh / 'scans'} cannot be read" in message, message
        assert f"RESTORE TABLE delta.`{wh / 'scans'}` TO VERSION AS OF" in message
        log = message.rsplit("(full trace: ", 1)[1].rstrip(")")
        assert log.startswith(str(logs)) and "Traceback" in Path(log).read_text()
    assert "\tat org.apache" not in proc.stderr  # no Java stack trace on the console


def test_no_java_exits_3_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no java on it
    code = main(["ingest", str(tmp_path), "--warehouse", str(tmp_path / "wh")])
    err = capsys.readouterr().err
    assert code == 3
    assert err.count("\n") == 1 and err.startswith("medspark: Java was not found")


@pytest.mark.parametrize(
    "text",
    [
        "[FAILED_READ_FILE.NO_HINT] Encountered error while reading file "
        "file:///data/w%20h/scans/_delta_log/00000000000000000001.json.  SQLSTATE: KD001",
        "[FAILED_READ_FILE.FILE_NOT_EXIST] File "
        "file:/data/w%20h/scans/part-00000-1f.snappy.parquet "
        "does not exist",
    ],
)
def test_a_delta_failure_is_described_by_its_table(text):
    from medspark.failures import describe

    line = describe(RuntimeError(text))
    assert line.startswith("table scans at /data/w h/scans cannot be read (")
    assert "RESTORE TABLE delta.`/data/w h/scans` TO VERSION AS OF <n>" in line
    assert "\n" not in line
    assert describe(ValueError("first line\n\tat org.apache.Foo")) == "ValueError: first line"
