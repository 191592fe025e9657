"""Building the SparkSession: Delta, Arrow, the worker interpreter, local defaults.

Only ``jobs/`` and the CLI call :func:`build_session`; library code receives ``spark``.

Delta's jars come from Maven Central, not from PyPI. The first start resolves the whole
dependency closure of ``io.delta:delta-spark_<spark>_<scala>`` through Spark's Ivy into
``~/.cache/medspark/ivy`` (``MEDSPARK_CACHE`` moves it) and records the resolved jar files in a
manifest; later starts pass those files with ``spark.jars`` and fetch nothing.

The first fetch runs in a child process of its own, under a lock on the cache: two first
starts at once (two commands on a fresh machine) used to run Ivy on one cache together and
both die, and Ivy's report (about 250 lines) went to the console. Now one of them fetches,
the other waits for the lock and finds the manifest; the console gets one line, the report
goes to a log file.

Under ``spark-submit`` the JVM already exists and its classpath can no longer change, so the
Delta jars must come with the submit command (``--packages``); :func:`build_session` then checks
that they are there and says what to add if not.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from medspark.config import SparkConfig
from medspark.errors import EnvironmentProblem

LOG = logging.getLogger(__name__)

DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"


def cache_dir() -> Path:
    """Where medspark caches jars (and, later, other downloads)."""
    return Path(os.environ.get("MEDSPARK_CACHE", Path.home() / ".cache" / "medspark"))


def delta_coordinates() -> str:
    """Maven coordinates of the delta-spark jar matching the installed pyspark and delta-spark."""
    from importlib.metadata import version

    import pyspark

    spark_mm = ".".join(pyspark.__version__.split(".")[:2])
    return f"io.delta:delta-spark_{spark_mm}_2.13:{version('delta-spark')}"


def _manifest_path(coords: str) -> Path:
    return cache_dir() / "jars" / (coords.replace(":", "_") + ".txt")


def cached_delta_jars(coords: str) -> list[str] | None:
    """The jar files resolved by an earlier start, or None if any is missing."""
    manifest = _manifest_path(coords)
    if not manifest.is_file():
        return None
    jars = [line.strip() for line in manifest.read_text().splitlines() if line.strip()]
    if not jars or not all(Path(j).is_file() for j in jars):
        return None
    return jars


def _record_delta_jars(coords: str, spark_jars: str) -> None:
    jars = [j.removeprefix("file://") for j in spark_jars.split(",") if j.strip()]
    if jars and all(Path(j).is_file() for j in jars):
        manifest = _manifest_path(coords)
        manifest.parent.mkdir(parents=True, exist_ok=True)
        manifest.write_text("\n".join(jars) + "\n")


#: The child process of a first fetch: a throwaway session with ``spark.jars.packages`` (Spark's
#: own Ivy resolution, as a start without the manifest did), whose resolved ``spark.jars``
#: become the manifest. argv: coordinates, the ``spark.jars.*`` resolution settings as JSON.
_FETCH_SCRIPT = """
import sys
from pyspark.sql import SparkSession
from medspark.session import _record_delta_jars
import json
coords, settings = sys.argv[1], json.loads(sys.argv[2])
builder = (SparkSession.builder.master("local[1]").appName("medspark-fetch-jars")
           .config("spark.jars.packages", coords).config("spark.ui.enabled", "false")
           .config("spark.driver.host", "127.0.0.1"))
for key, value in {"spark.driver.bindAddress": "127.0.0.1", **settings}.items():
    builder = builder.config(key, value)
spark = builder.getOrCreate()
_record_delta_jars(coords, spark.sparkContext.getConf().get("spark.jars", ""))
spark.stop()
"""


#: The settings of a session that steer Ivy's resolution (a site's mirror, its own Ivy
#: settings or folder): the child process of a first fetch gets them too.
RESOLUTION_KEYS = ("spark.jars.repositories", "spark.jars.ivySettings", "spark.jars.ivy")

#: The longest a first fetch may take (a slow network, large jars) before it is given up.
FETCH_TIMEOUT_S = 1800


def fetch_delta_jars(coords: str, conf: dict[str, str] | None = None) -> list[str]:
    """The Delta jar files, fetched once per cache: under an exclusive lock on
    ``<cache>/jars/.fetch.lock``, a start that finds no manifest resolves the jars in a child
    process (its output in a log file, one line on the console), with the resolution
    settings of ``conf`` (:data:`RESOLUTION_KEYS`); a start that waited for the lock finds the
    manifest the other wrote and fetches nothing."""
    import fcntl
    import json
    import subprocess
    import time

    from medspark.failures import log_dir

    folder = cache_dir() / "jars"
    folder.mkdir(parents=True, exist_ok=True)
    settings = {"spark.jars.ivy": str(cache_dir() / "ivy")}
    settings.update({k: v for k, v in (conf or {}).items() if k in RESOLUTION_KEYS})
    with open(folder / ".fetch.lock", "w") as lock:
        try:  # released when the file closes, or the process dies
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            LOG.warning("waiting for another start to finish its jar fetch (%s)", lock.name)
            fcntl.flock(lock, fcntl.LOCK_EX)
        jars = cached_delta_jars(coords)
        if jars:
            return jars
        log = log_dir() / f"medspark-fetch-jars-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.log"
        LOG.warning(
            "fetching Delta Lake jars (%s) into %s, first start only (details: %s)",
            coords,
            settings["spark.jars.ivy"],
            log,
        )
        with open(log, "w", encoding="utf-8") as out:
            try:
                done = subprocess.run(
                    [sys.executable, "-c", _FETCH_SCRIPT, coords, json.dumps(settings)],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env={**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"},
                    timeout=FETCH_TIMEOUT_S,
                )
                failed = done.returncode != 0
            except subprocess.TimeoutExpired:
                failed = True
        jars = cached_delta_jars(coords)
        if failed or not jars:
            raise EnvironmentProblem(
                f"the Delta jars ({coords}) could not be fetched from Maven Central (or the "
                f"spark.jars.repositories given) into {settings['spark.jars.ivy']} (details: "
                f"{log}): connect once, or set MEDSPARK_CACHE to a cache filled elsewhere."
            )
        return jars


def check_java() -> None:
    """Fail with one clear line when no Java runtime can be found."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home and Path(java_home, "bin", "java").exists():
        return
    if shutil.which("java"):
        return
    raise EnvironmentProblem(
        "Java was not found: Spark needs a Java 17 runtime. Install one (Debian/Ubuntu: "
        "apt-get install openjdk-17-jre-headless) or set JAVA_HOME."
    )


def _running_under_spark_submit() -> bool:
    # spark-submit starts the JVM first and hands pyspark the gateway port.
    return "PYSPARK_GATEWAY_PORT" in os.environ


def _submitted_conf() -> dict[str, str]:
    """The properties spark-submit put in its JVM (``--master``, ``--conf``, the properties
    file); empty when not submitted.

    ``SparkConf()`` alone does not see them: without a gateway it is an empty Python-side
    conf. Attaching to spark-submit's gateway first makes it read the JVM's.
    """
    if not _running_under_spark_submit():
        return {}
    from pyspark import SparkConf, SparkContext

    SparkContext._ensure_initialized()
    return dict(SparkConf().getAll())


def effective_master(master: str | None, config: SparkConfig) -> str:
    """The master the session gets: spark-submit's ``--master`` when submitted (it is already
    in the JVM, and wins), else ``master`` (the CLI's ``--master``), else the YAML's."""
    return _submitted_conf().get("spark.master") or master or config.master


def base_conf(config: SparkConfig) -> dict[str, str]:
    """Spark properties medspark sets, before the user's own ``spark.conf`` entries."""
    conf = {
        "spark.sql.extensions": DELTA_EXTENSION,
        "spark.sql.catalog.spark_catalog": DELTA_CATALOG,
        # Python workers must run the driver's interpreter, or imports fail inside UDFs.
        "spark.pyspark.python": sys.executable,
        "spark.pyspark.driver.python": sys.executable,
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(config.arrow_max_records_per_batch),
        "spark.sql.shuffle.partitions": str(config.shuffle_partitions),
        # Delta reconstructs table state with 50 partitions by default: far too many here.
        "spark.databricks.delta.snapshotPartitions": str(max(1, config.shuffle_partitions)),
        "spark.sql.session.timeZone": "UTC",
        "spark.driver.memory": config.driver_memory,
        "spark.ui.showConsoleProgress": "false",
        "spark.python.worker.reuse": "true",
        "spark.sql.sources.partitionOverwriteMode": "dynamic",
    }
    if config.master.startswith("local"):
        conf["spark.driver.host"] = "127.0.0.1"
        conf["spark.driver.bindAddress"] = "127.0.0.1"
    return conf


def build_session(
    config: SparkConfig | None = None,
    *,
    master: str | None = None,
    extra_conf: dict[str, str] | None = None,
    jvm_log: Path | None = None,
) -> Any:
    """Build (or, under spark-submit, adopt) a SparkSession with Delta enabled.

    ``master`` and ``extra_conf`` override the config (they come from ``--master`` and
    ``--spark-conf``). ``jvm_log``: a file that gets the JVM's stderr for its whole life
    (start-up banner, warnings, executors' and Python workers' output) instead of the console
    (the CLI's choice without ``--verbose``). Returns the session; raises
    :class:`EnvironmentProblem` with one clear line when Java or the Delta jars are missing.
    """
    import contextlib

    from pyspark.errors import PySparkRuntimeError
    from pyspark.sql import SparkSession

    from medspark.failures import stderr_to

    config = config or SparkConfig()
    submitted = _running_under_spark_submit()
    # spark-submit's own properties (--master, --conf, --properties-file) are already in the
    # JVM and are the most specific choice: they win over the YAML and the defaults. The
    # master in particular: a YAML "local[2]" must not pin the driver to 127.0.0.1 when the
    # application runs on a cluster.
    given = _submitted_conf()
    master = given.get("spark.master") or master or config.master
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    conf = base_conf(SparkConfig(**{**config.__dict__, "master": master}))
    conf.update(config.conf)
    conf.update(extra_conf or {})

    builder = SparkSession.builder.appName(config.app_name)
    coords = delta_coordinates()
    if not submitted:
        check_java()
        if master.startswith("local"):
            os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        builder = builder.master(master)
        jars = cached_delta_jars(coords) or fetch_delta_jars(coords, conf)
        conf["spark.jars"] = ",".join([*jars, *filter(None, [conf.get("spark.jars")])])
    for key, value in conf.items():
        if submitted and (
            key in given or key in ("spark.driver.memory", "spark.pyspark.driver.python")
        ):
            continue  # given to spark-submit, or fixed by it before Python started
        builder = builder.config(key, value)
    try:
        with stderr_to(jvm_log) if jvm_log else contextlib.nullcontext():
            spark = builder.getOrCreate()
    except PySparkRuntimeError as exc:
        where = jvm_log or "the lines above"
        raise EnvironmentProblem(
            f"Spark could not start ({exc.getErrorClass()}): see {where}"
        ) from None
    spark.sparkContext.setLogLevel(config.log_level)
    if submitted:
        _require_delta_classes(spark, coords)
    return spark


def _require_delta_classes(spark: Any, coords: str) -> None:
    jvm = spark.sparkContext._jvm
    try:
        jvm.java.lang.Class.forName(
            DELTA_EXTENSION, True, jvm.java.lang.Thread.currentThread().getContextClassLoader()
        )
    except Exception:  # noqa: BLE001 - py4j wraps ClassNotFoundException
        raise EnvironmentProblem(
            f"Delta classes are not on the classpath: add '--packages {coords}' (or the "
            "jars with --jars) to spark-submit."
        ) from None
