"""Library code talks through logging; the commands show it (medspark.logs)."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import medspark
from medspark.logs import configure, install_default

#: Modules that are commands (their output is what they print), not library code.
COMMANDS = {"cli.py", "demo.py", "tables/docs.py", "dicom/deid_table.py", "volumes/train.py"}


def test_info_goes_to_stdout_and_warnings_to_stderr_as_one_medspark_line(capsys):
    log = logging.getLogger("medspark.tables.writers")
    try:
        configure()
        configure()  # again: still one line per message
        log.info("run r1: 3 stage(s)")
        log.warning("the write to scans lost a commit race")
        out, err = capsys.readouterr()
        assert out == "run r1: 3 stage(s)\n"
        assert err == "medspark: the write to scans lost a commit race\n"
        configure(quiet=True)
        log.info("hidden")
        log.warning("shown")
        out, err = capsys.readouterr()
        assert (out, err) == ("", "medspark: shown\n")
    finally:
        root = logging.getLogger("medspark")
        for handler in list(root.handlers):
            root.removeHandler(handler)
        root.setLevel(logging.NOTSET)
        root.propagate = True
        install_default()


def test_without_logging_configured_a_warning_is_one_medspark_line():
    import subprocess
    import sys

    code = (
        "import logging, medspark\n"
        "logging.getLogger('medspark.session').warning('fetching jars')\n"
        "logging.getLogger('medspark.session').info('not shown')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert (proc.stdout, proc.stderr) == ("", "medspark: fetching jars\n")


def test_library_code_does_not_print():
    root = Path(medspark.__file__).parent
    printing = []
    for path in sorted(root.rglob("*.py")):
        if path.relative_to(root).as_posix() in COMMANDS:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                printing.append(f"{path.relative_to(root)}:{node.lineno}")
    assert printing == []
