"""The ``medspark`` command line (also used by ``jobs/*.py`` under spark-submit).

Exit codes: 0 when the job ran (bad inputs are error rows, not failures), 2 for bad
configuration or arguments, 3 when the environment is missing something (Java, jars),
1 for anything else.

Whatever goes wrong reaches the console as one line starting ``medspark:``; a failure that is
not medspark's own (Spark, Delta, the file system) also writes its full trace to a log file,
whose path the line gives (``--verbose`` prints the trace as well).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from medspark.errors import ConfigError, EnvironmentProblem, MedsparkError, MissingInput

T = TypeVar("T")


def _spark_conf_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"--spark-conf {text!r}: expected KEY=VALUE")
    return key.strip(), value


def _common(
    parser: argparse.ArgumentParser, *, warehouse_required: bool = True, spark: bool = True
) -> None:
    parser.add_argument(
        "--warehouse",
        required=warehouse_required,
        help="directory holding the Delta tables (created if missing)",
    )
    parser.add_argument(
        "--restricted-warehouse",
        help="directory of the restricted_* tables (default: <warehouse>_restricted, mode 0700)",
    )
    parser.add_argument("--conf", help="pipeline YAML (default: conf/pipeline.yaml if present)")
    if spark:
        parser.add_argument("--master", help="Spark master URL (default from config: local[2])")
        parser.add_argument(
            "--spark-conf",
            action="append",
            type=_spark_conf_pair,
            default=[],
            metavar="KEY=VALUE",
            help="extra Spark property; repeatable",
        )
    parser.add_argument(
        "--verbose", action="store_true", help="print the full trace of a failure, not one line"
    )
    parser.add_argument(
        "--purpose",
        help="why restricted tables are read (recorded in restricted_access_log)",
    )
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="no progress line and no info lines (summaries and warnings are still printed)",
    )


def _selection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--study",
        action="append",
        default=[],
        help="only this study (pseudonymous Study Instance UID, as in scans); repeatable",
    )
    parser.add_argument(
        "--series",
        action="append",
        default=[],
        help="only this series (pseudonymous Series Instance UID); repeatable",
    )


def _file_commands(sub: Any) -> None:
    """``export``, ``serve`` and ``install-viewer``: DICOM files out of the warehouse, no Spark."""
    ex = sub.add_parser(
        "export", help="write scans as de-identified DICOM files (and their SEG files); no Spark"
    )
    ex.add_argument("--out", required=True, help="directory for <study>/<series>/<sop>.dcm")
    _selection(ex)
    _common(ex, spark=False)

    sv = sub.add_parser("serve", help="a read-only DICOMweb view of the warehouse; no Spark")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    sv.add_argument("--port", type=int, default=8042, help="port (default 8042)")
    sv.add_argument(
        "--token",
        help="bearer token every request must carry (required off loopback); "
        "default: $MEDSPARK_SERVE_TOKEN",
    )
    _common(sv, spark=False)

    iv = sub.add_parser(
        "install-viewer", help="download the OHIF viewer from npm for medspark serve (50 MB)"
    )
    iv.add_argument("--dir", help="where to put it (default: ~/.cache/medspark/ohif-<version>)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medspark", description="Medical-imaging data engineering on Apache Spark."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    ingest = sub.add_parser(
        "ingest", help="read DICOM files and archives into the scans and ingest_errors tables"
    )
    ingest.add_argument("sources", nargs="+", help="directories, DICOM files, zip/tar/tar.gz")
    _common(ingest)

    stream = sub.add_parser(
        "ingest-stream",
        help="ingest the files that arrived in a landing directory since the last run",
    )
    stream.add_argument("landing", help="landing directory (watched recursively)")
    stream.add_argument(
        "--checkpoint",
        help="streaming checkpoint (default: WAREHOUSE/_checkpoints/ingest_stream-<hash>)",
    )
    _common(stream)

    # Commands that work on the warehouse alone: the common options are all they take.
    for name, text in (
        ("preprocess", "decode frames of scans, run the OpenCV chain, write images"),
        (
            "waveforms",
            "decode the waveforms (ECG) of scans, write waveforms, ecg_metrics, waveform_errors",
        ),
        (
            "volumes",
            "rebuild the series table; with volumes.model, segment each series as a volume",
        ),
    ):
        _common(sub.add_parser(name, help=text))

    run = sub.add_parser("run", help="ingest, preprocess and infer in one Spark application")
    run.add_argument("sources", nargs="+", help="directories, DICOM files, zip/tar/tar.gz")
    _common(run)

    inf = sub.add_parser("infer", help="run a model on the images tensors, write predictions")
    inf.add_argument("--model", help="model name from inference.models (default: inference.model)")
    _common(inf)

    ev = sub.add_parser("evaluate", help="compare predictions with labels, write model_metrics")
    ev.add_argument(
        "--labels", required=True, help="CSV or Delta table: sop_instance_uid,frame,label"
    )
    ev.add_argument("--model", help="model name (default: inference.model)")
    _common(ev)

    fg = sub.add_parser(
        "forget",
        help="remove a patient (or some of their studies) from every table; keep them out",
    )
    who = fg.add_mutually_exclusive_group(required=True)
    who.add_argument("--patient-id", help="the original Patient ID (0010,0020)")
    who.add_argument("--patient-key", help="the pseudonymous patient key (scans.patient_id)")
    fg.add_argument(
        "--study",
        action="append",
        default=[],
        help="only this study (original or pseudonymous Study Instance UID); repeatable",
    )
    fg.add_argument("--reason", help="why (recorded in restricted_erasures)")
    fg.add_argument(
        "--purge", action="store_true", help="vacuum the replaced files now (retention zero)"
    )
    fg.add_argument(
        "--revoke",
        action="store_true",
        help="end an erasure: later runs ingest the subject's items again",
    )
    _common(fg)

    _file_commands(sub)

    tr = sub.add_parser("train-demo", help="retrain the bundled demonstration model (synthetic)")
    tr.add_argument("--out", required=True, help="directory for model.pt and model_card.json")
    tr.add_argument("--epochs", type=int, default=12)
    tr.add_argument("--n-train", type=int, default=1600)
    tr.add_argument(
        "--folds",
        type=int,
        help="also cross-validate with K patient-grouped folds (reported in the model card)",
    )

    demo = sub.add_parser("demo", help="build sample data from pydicom's files and run the flow")
    demo.add_argument(
        "--dir", default="medspark-demo", help="where the demo input and warehouse go"
    )
    demo.add_argument("--conf", help="pipeline YAML")
    demo.add_argument("--master", help="Spark master URL")
    demo.add_argument("--spark-conf", action="append", type=_spark_conf_pair, default=[])
    return parser


#: JVM options of the driver for one-shot CLI runs: only the C1 JIT compiler. A CLI run is over
#: before C2's optimised code pays back its compile time; measured on a 20-slice ``run``, the
#: cold Delta writes took 12.4 s instead of 18.8 s and the session started 1 s sooner (see
#: bench/README.md). Long-lived sessions (tests, notebooks, spark-submit) keep the default.
#: With C1 alone the JVM reserves a 48 MB code cache instead of 240 MB (``java
#: -XX:TieredStopAtLevel=1 -XX:+PrintFlagsFinal``): a ``run`` beside a ``waveforms`` on a
#: warehouse with some history filled it ("CodeCache is full. Compiler has been disabled", then
#: ``VirtualMachineError: Out of space in CodeCache``), so the cache keeps the default's size.
QUICK_JIT = "-XX:TieredStopAtLevel=1 -XX:ReservedCodeCacheSize=240m"


#: Spark master URLs medspark accepts (checked before the JVM starts).
_MASTER = re.compile(
    r"local(\[(\*|[1-9][0-9]*)(,\s*[1-9][0-9]*)?\])?"
    r"|local-cluster\[[1-9][0-9]*,\s*[1-9][0-9]*,\s*[1-9][0-9]*\]"
    r"|spark://[^\s/:,]+:[0-9]+(,[^\s/:,]+:[0-9]+)*"
    r"|yarn|k8s://\S+"
)
_MASTER_ALLOWED = "local, local[N], local[*], local[N,F], spark://HOST:PORT, yarn or k8s://URL"


def check_invocation(args: argparse.Namespace, config: Any) -> None:
    """What can be wrong with the command line or the config, checked before Spark starts:
    a master URL Spark would reject with a Java stack trace, a warehouse path that is a file,
    a source path that does not exist (a typo, not a bad input: exit 2 naming it)."""
    master = getattr(args, "master", None)
    if master is not None and not _MASTER.fullmatch(master):
        raise ConfigError("--master", master, _MASTER_ALLOWED)
    if master is None and not _MASTER.fullmatch(config.spark.master):
        raise ConfigError("spark.master", config.spark.master, _MASTER_ALLOWED)
    check_warehouses(config)
    for source in getattr(args, "sources", None) or []:
        if "://" not in source and not os.path.lexists(source):
            raise ConfigError("sources", source, "an existing file or directory (not found)")
    check_master_reachable(master or config.spark.master)


def check_warehouses(config: Any) -> None:
    """The warehouse and restricted warehouse are directories (or missing), and apart."""
    for key, path in (
        ("--warehouse", config.warehouse),
        ("--restricted-warehouse", config.restricted_warehouse),
    ):
        if path and Path(path).exists() and not Path(path).is_dir():
            raise ConfigError(key, path, "a directory (this path is a file)")
    check_warehouses_apart(config)


def _restricted_root_at(path: Path, by_tables: bool = True) -> bool:
    """Whether ``path`` is the root of a restricted warehouse: it is named ``<x>_restricted``
    beside an ``<x>`` (the default place of the restricted tables of warehouse ``<x>``), or
    (``by_tables``) it holds ``restricted_*`` tables."""
    base = path.name.removesuffix("_restricted")
    if base != path.name and path.with_name(base).is_dir():
        return True
    return by_tables and any(path.glob("restricted_*/_delta_log"))


def check_warehouses_apart(config: Any) -> None:
    """The analyst warehouse is never a restricted warehouse, nor inside one, nor holds one.

    Analyst tables written inside ``<x>_restricted`` would sit with the keys to
    re-identification (and a second ``..._restricted`` root be created inside it); a warehouse
    that is a restricted root would mix the two. Checked before Spark starts."""
    warehouse = Path(config.warehouse).absolute()
    restricted = config.restricted_root().absolute()
    allowed = "a folder apart from every restricted warehouse (not one, not inside one)"
    if warehouse == restricted or restricted in warehouse.parents:
        raise ConfigError("--warehouse", str(warehouse), allowed + f"; restricted: {restricted}")
    if warehouse in restricted.parents:
        raise ConfigError(
            "--restricted-warehouse", str(restricted), "a folder outside the analyst warehouse"
        )
    # The warehouse itself by name only: restricted tables inside it are an older layout,
    # which writers.ensure_restricted_root refuses with the command that moves them.
    for folder in (warehouse, *warehouse.parents):
        if folder.is_dir() and _restricted_root_at(folder, by_tables=folder != warehouse):
            raise ConfigError(
                "--warehouse", str(warehouse), allowed + f"; {folder} is a restricted warehouse"
            )


def check_master_reachable(master: str, timeout_s: float = 3.0) -> None:
    """A ``spark://`` master must answer on its port before the JVM starts: otherwise Spark
    retries for a minute and fails with pages of Java traces. (Other masters: Spark's own.)"""
    import socket

    if not master.startswith("spark://"):
        return
    hosts = master[len("spark://") :].split(",")
    problems = []
    for host_port in hosts:
        host, _, port = host_port.rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=timeout_s):
                return  # one master that answers is enough (standby masters)
        except OSError as exc:
            problems.append(f"{host_port}: {exc.strerror or exc}")
    raise MedsparkError(
        f"could not connect to the Spark master {master} ({'; '.join(problems)}): is it "
        "running, and reachable from this machine? (--master local[N] runs without one)"
    )


def _session(args: argparse.Namespace, config: Any) -> Any:
    from medspark.session import build_session

    extra = dict(args.spark_conf)
    # Spark's own SQL warehouse (unused by medspark, whose tables are paths) would otherwise be
    # an empty spark-warehouse/ left in the working directory by every run.
    extra.setdefault(
        "spark.sql.warehouse.dir",
        str(Path(tempfile.gettempdir()) / f"medspark-spark-sql-{os.getuid()}"),
    )
    if "spark.driver.extraJavaOptions" not in {**config.spark.conf, **extra}:
        extra["spark.driver.extraJavaOptions"] = QUICK_JIT
    verbose = getattr(args, "verbose", False)
    jvm_log = None
    if not verbose:  # the console is for medspark's lines: Spark's banner and warnings to a log
        from medspark.failures import log_dir

        jvm_log = log_dir() / f"medspark-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-jvm.log"
    spark = build_session(config.spark, master=args.master, extra_conf=extra, jvm_log=jvm_log)
    if not verbose:
        # The console is for medspark's own lines: a failed task would otherwise print its Java
        # stack trace there (Spark logs it at ERROR). The failure still reaches the user as one
        # line and its log file (main); --verbose keeps Spark's log at spark.log_level.
        spark.sparkContext.setLogLevel("FATAL")
    return spark


def _load(args: argparse.Namespace, warehouse: str | None) -> Any:
    from medspark.config import load_config, with_overrides

    config = load_config(args.conf)
    restricted = getattr(args, "restricted_warehouse", None)
    return with_overrides(
        config,
        warehouse=warehouse,
        restricted_warehouse=str(Path(restricted).absolute()) if restricted else None,
    )


def _recorded(
    args: argparse.Namespace,
    job: str,
    step: Callable[[Any, Any, Any], T],
    config: Any = None,
    meanwhile: Callable[[Any], None] | None = None,
) -> tuple[Any, T]:
    """Load the config, build the session, run ``step`` as one recorded run, stop Spark.

    ``meanwhile(config)`` runs in a thread while the JVM starts (the driver is mostly waiting
    then): a check that would otherwise add its seconds after the start, such as loading the
    model. Its exception is raised before ``step`` runs.
    """
    from concurrent.futures import ThreadPoolExecutor

    from medspark.metrics.runs import recorded_run
    from medspark.pipeline import new_run_id

    config = config or _load(args, str(Path(args.warehouse).absolute()))
    check_invocation(args, config)
    check_step_input(job, config)
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(meanwhile, config) if meanwhile else None
        spark = _session(args, config)
        try:
            if pending is not None:
                pending.result()
        except BaseException:
            spark.stop()
            raise
    from medspark.progress import progress_line

    quiet = getattr(args, "quiet", False)
    try:
        with (
            recorded_run(spark, config, job, new_run_id()) as record,
            progress_line(spark, enabled=False if quiet else None),
        ):
            result = step(spark, config, record)
    finally:
        spark.stop()
    return config, result


#: The table each step reads, and what writes it: a step asked for before its input exists
#: says so in one line before Spark starts, and writes nothing (no ``job_runs`` row either).
STEP_INPUTS = {
    "preprocess": ("scans", "run ingest first"),
    "infer": ("images", "run ingest and preprocess first"),
    "waveforms": ("scans", "run ingest first"),
    "volumes": ("scans", "run ingest first"),
    "evaluate": ("predictions", "run infer first"),
}


def check_step_input(job: str, config: Any) -> None:
    """Raise :class:`MissingInput` when the table ``job`` reads is not in the warehouse."""
    if job not in STEP_INPUTS:
        return
    table, hint = STEP_INPUTS[job]
    location = config.table_path(table)
    if "://" in location:
        return  # not a local path: Spark finds out
    path = Path(location)
    if not (path / "_delta_log").is_dir():
        raise MissingInput(f"no {table} table at {path}: {hint}")


def _step_command(
    args: argparse.Namespace,
    job: str,
    run: Callable[[Any, Any, str], Any],
    record_into: Callable[[Any, Any], None],
    tables: Sequence[str],
    config: Any = None,
) -> int:
    """A command that is one step: ``run(spark, config, run_id)`` as a recorded run whose
    result ``record_into`` copies into its ``job_runs`` record; prints the summary and the
    tables written."""

    def step(spark: Any, config: Any, record: Any) -> Any:
        result = run(spark, config, record.run_id)
        record_into(record, result)
        return result

    config, result = _recorded(args, job, step, config)
    print(result.summary())
    print("tables: " + ", ".join(config.table_path(t) for t in tables))
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from medspark.pipeline import ingest, record_ingest

    def run(spark: Any, config: Any, run_id: str) -> Any:
        return ingest(spark, args.sources, config, run_id)

    return _step_command(args, "ingest", run, record_ingest, ("scans", "ingest_errors"))


def cmd_ingest_stream(args: argparse.Namespace) -> int:
    from medspark.pipeline import record_ingest
    from medspark.stream import ingest_stream

    def run(spark: Any, config: Any, run_id: str) -> Any:
        return ingest_stream(spark, args.landing, config, checkpoint=args.checkpoint, run_id=run_id)

    def record_batches(record: Any, result: Any) -> None:
        for batch in result.batches:
            record_ingest(record, batch.ingested)

    return _step_command(args, "ingest_stream", run, record_batches, ("scans", "ingest_errors"))


def cmd_preprocess(args: argparse.Namespace) -> int:
    from medspark.pipeline import preprocess, record_preprocess

    return _step_command(
        args, "preprocess", preprocess, record_preprocess, ("images", "preprocess_errors")
    )


def cmd_waveforms(args: argparse.Namespace) -> int:
    from medspark.waveforms.step import record_waveforms, run_waveforms

    tables = ("waveforms", "ecg_metrics", "waveform_errors")
    return _step_command(args, "waveforms", run_waveforms, record_waveforms, tables)


def cmd_volumes(args: argparse.Namespace) -> int:
    from medspark.volumes.steps import record_volumes, volumes

    # The 3D model is checked before Spark starts: a wrong path or shape is exit code 2 at once.
    config = _load(args, str(Path(args.warehouse).absolute()))
    if config.volumes.model is not None:
        from medspark.volumes.segment import check_volume_model
        from medspark.volumes.steps import volume_task

        check_volume_model(volume_task(config).model)
    return _step_command(args, "volumes", volumes, record_volumes, volumes_tables(config), config)


def volumes_tables(config: Any) -> tuple[str, ...]:
    """The tables ``medspark volumes`` writes: without a 3D model, the series table only."""
    if config.volumes.model is None:
        return ("series",)
    return ("series", "series_segments", "series_errors")


def cmd_infer(args: argparse.Namespace) -> int:
    from medspark.pipeline import infer, record_infer

    config = _load(args, str(Path(args.warehouse).absolute()))
    config.inference.model_config(args.model)  # unknown name: fail before Spark starts

    def run(spark: Any, config: Any, run_id: str) -> Any:
        return infer(spark, config, args.model, run_id)

    return _step_command(args, "infer", run, record_infer, ("predictions",), config)


def cmd_run(args: argparse.Namespace) -> int:
    from medspark.pipeline import prepare_pass, run_all
    from medspark.session import effective_master

    plans: list[Any] = []

    def prepare(config: Any) -> None:
        # While the JVM starts: check the model, plan the input, and compute a small local
        # input's pass in this process (see medspark.pipeline.prepare_pass).
        if config.volumes.in_run:  # the 3D model too: a bad one is exit code 2 before any work
            from medspark.volumes.segment import check_volume_model
            from medspark.volumes.steps import volume_task

            check_volume_model(volume_task(config).model)
        # The master is spark-submit's when submitted: a cluster's pass runs on its executors.
        master = effective_master(args.master, config.spark)
        plans.append(prepare_pass(args.sources, config, master))

    def step(spark: Any, config: Any, record: Any) -> Any:
        from medspark.volumes.steps import volumes_after_run
        from medspark.waveforms.step import waveforms_after_run

        results = run_all(spark, args.sources, config, record, plans[0] if plans else None)
        waves = waveforms_after_run(spark, config, record)  # None: no waveform in this run
        vols = volumes_after_run(spark, config, record)  # None: volumes.in_run off, no series
        return (*results, *(r for r in (waves, vols) if r is not None))

    config, results = _recorded(args, "run", step, meanwhile=prepare)
    for result in results:
        print(result.summary())
    print(f"warehouse: {config.warehouse}")
    return 0


#: The columns a labels file must have (medspark.inference.evaluate.read_labels).
LABEL_COLUMNS = ("sop_instance_uid", "frame", "label")


def check_labels(source: str) -> None:
    """The ``--labels`` file, checked before Spark starts: it exists, and a CSV file's header
    names the label columns. (A Delta table folder is checked by ``read_labels``.)"""
    path = Path(source)
    allowed = f"a CSV file with a header {','.join(LABEL_COLUMNS)} or a Delta table folder"
    if "://" in source:
        return
    if not path.exists():
        raise ConfigError("--labels", source, allowed + " (not found)")
    if path.is_dir():
        if not (path / "_delta_log").is_dir():
            raise ConfigError("--labels", source, allowed + " (a folder without _delta_log)")
        return
    try:
        with path.open(encoding="utf-8-sig") as fh:
            header = fh.readline()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("--labels", source, f"{allowed} (unreadable: {exc})") from None
    missing = set(LABEL_COLUMNS) - {c.strip() for c in header.strip().split(",")}
    if missing:
        raise ConfigError("--labels", source, f"{allowed} (missing: {', '.join(sorted(missing))})")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from medspark.pipeline import evaluate

    check_labels(args.labels)
    config = _load(args, str(Path(args.warehouse).absolute()))
    # Before Spark starts: a positive class that is not the model's.
    model = config.inference.model_config(args.model)
    config.evaluation.positive_class_of(model.class_names, model.name)

    def step(spark: Any, config: Any, record: Any) -> Any:
        result = evaluate(spark, config, args.labels, args.model, record.run_id)
        overall = result.metrics[0]
        record.items_in = overall["support"] + overall["unmatched_labels"]
        record.rows_out["model_metrics"] = len(result.metrics)
        record.rows_out["model_evaluation"] = len(result.evaluation)
        record.rows_out["model_calibration"] = len(result.calibration)
        record.rows_out["model_roc"] = len(result.roc)
        return result

    config, result = _recorded(args, "evaluate", step, config)
    for line in result.summary_lines(config):
        print(line)
    tables = ("model_metrics", "model_evaluation", "model_calibration", "model_roc")
    print("tables: " + ", ".join(config.table_path(t) for t in tables))
    return 0


def cmd_forget(args: argparse.Namespace) -> int:
    from medspark.erasure import forget, revoke

    subject = {"patient_id": args.patient_id, "patient_key": args.patient_key}
    if args.revoke:
        config = _load(args, str(Path(args.warehouse).absolute()))
        n = revoke(config, studies=args.study, **subject)
        print(f"{n} erasure record(s) revoked: later runs ingest the subject's items again")
        return 0

    def step(spark: Any, config: Any, record: Any) -> Any:
        result = forget(
            spark,
            config,
            studies=args.study,
            reason=args.reason,
            purge=args.purge,
            run_id=record.run_id,
            **subject,
        )
        record.rows_out.update({f"{t} (removed)": n for t, n in result.rows_removed.items() if n})
        return result

    _, result = _recorded(args, "forget", step)
    print(result.summary())
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from medspark.export import export

    config = _load(args, str(Path(args.warehouse).absolute()))
    check_warehouses(config)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError("--out", args.out, "a directory (this path is a file)")
    for key, values in (("--study", args.study), ("--series", args.series)):
        for value in values:
            if len(value) > 64 or not re.fullmatch(r"[0-9]+(\.[0-9]+)*", value):
                raise ConfigError(key, value, "a UID: digits and dots, at most 64 characters")
    result = export(config, out, studies=args.study, series=args.series)
    print(result.summary())
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from medspark.serve import check_binding, serve

    config = _load(args, str(Path(args.warehouse).absolute()))
    check_warehouses(config)
    if not 0 < args.port < 65536:
        raise ConfigError("--port", args.port, "a port number from 1 to 65535")
    token = args.token or os.environ.get("MEDSPARK_SERVE_TOKEN") or None
    check_binding(args.host, token)
    serve(config, host=args.host, port=args.port, token=token)
    return 0


def cmd_install_viewer(args: argparse.Namespace) -> int:
    from medspark.errors import EnvironmentProblem
    from medspark.viewer import OHIF_VERSION, TARBALL_URL, install

    try:
        folder = install(Path(args.dir) if args.dir else None)
    except OSError as exc:
        raise EnvironmentProblem(f"could not download {TARBALL_URL}: {exc}") from exc
    print(f"OHIF {OHIF_VERSION} installed in {folder}; medspark serve shows it at /viewer/")
    return 0


def cmd_train_demo(args: argparse.Namespace) -> int:
    import json

    from medspark.inference.train import train_demo_model

    if args.folds is not None and not 2 <= args.folds <= 20:
        raise ConfigError("--folds", args.folds, "an integer from 2 to 20")
    card = train_demo_model(
        Path(args.out), n_train=args.n_train, epochs=args.epochs, folds=args.folds
    )
    print(json.dumps(card["held_out_metrics"], indent=2))
    if "cross_validation" in card:
        cv = card["cross_validation"]
        for name, summary in cv["summary"].items():
            print(
                f"cross-validation ({cv['folds']} patient-grouped folds) {name}: "
                f"mean {summary['mean']:.4f}, sd {summary['sd']:.4f}, "
                f"range {summary['min']:.4f}-{summary['max']:.4f}"
            )
    print(f"model and card written to {args.out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from medspark.demo import run_demo

    config = _load(args, str((Path(args.dir) / "warehouse").absolute()))
    spark = _session(args, config)
    try:
        # Saliency on for the showcase, unless a --conf file decides.
        saliency = args.conf is None or config.inference.saliency
        run_demo(spark, config, Path(args.dir), saliency=saliency)
    finally:
        spark.stop()
    return 0


COMMANDS = {
    "ingest": cmd_ingest,
    "ingest-stream": cmd_ingest_stream,
    "preprocess": cmd_preprocess,
    "waveforms": cmd_waveforms,
    "infer": cmd_infer,
    "volumes": cmd_volumes,
    "run": cmd_run,
    "evaluate": cmd_evaluate,
    "forget": cmd_forget,
    "export": cmd_export,
    "serve": cmd_serve,
    "install-viewer": cmd_install_viewer,
    "train-demo": cmd_train_demo,
    "demo": cmd_demo,
}


#: The one line and exit code of medspark's own errors: 2 a bad invocation or configuration,
#: 3 the environment (Java, the jars), 1 anything else the command refused.
EXIT_CODES: dict[type[MedsparkError], tuple[str, int]] = {
    ConfigError: ("configuration error: ", 2),
    MissingInput: ("", 2),
    EnvironmentProblem: ("", 3),
    MedsparkError: ("", 1),
}


def main(argv: Sequence[str] | None = None) -> int:
    from medspark.access import set_context
    from medspark.logs import configure

    args = build_parser().parse_args(argv)
    configure(quiet=getattr(args, "quiet", False))
    set_context(args.command, getattr(args, "purpose", None))
    try:
        return COMMANDS[args.command](args)
    except MedsparkError as exc:
        # the first class that matches: (line prefix, exit code)
        prefix, code = next(v for k, v in EXIT_CODES.items() if isinstance(exc, k))
        print(f"medspark: {prefix}{exc}", file=sys.stderr)
        return code
    except Exception as exc:  # noqa: BLE001 - Spark, Delta, the file system: one line + a log
        from medspark.failures import describe, disk_full, disk_full_line, write_trace

        try:
            log: Any = write_trace(exc)
        except OSError:  # the log folder's disk is full too
            log = "not written: its disk is full too"
        if getattr(args, "verbose", False):
            import traceback

            traceback.print_exception(exc, file=sys.stderr)
        warehouse = getattr(args, "warehouse", None) or getattr(args, "dir", None)
        what = disk_full_line(warehouse) if warehouse and disk_full(exc) else describe(exc)
        print(f"medspark: {what} (full trace: {log})", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
