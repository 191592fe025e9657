"""notebooks/analyst_overview.ipynb runs top to bottom, on the demo's warehouse and a partial one.

The demo runs once per module in a subprocess (its own JVM); the notebook runs in a Jupyter
kernel started from this interpreter (another process, another JVM), so the Spark session of
conftest's ``spark`` fixture, if any, is never shared.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

# The notebook's packages are in the dev extra: a missing one is a failure, not a skip.
import duckdb  # noqa: F401
import ipykernel  # noqa: F401
import matplotlib  # noqa: F401
import nbclient
import nbformat
import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "analyst_overview.ipynb"
KERNEL_NAME = "medspark-test-python"


@pytest.fixture(scope="module")
def demo_warehouse(tmp_path_factory) -> Path:
    """A warehouse written by ``medspark demo`` (the test secret comes from conftest)."""
    workdir = tmp_path_factory.mktemp("notebook-demo")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "medspark.cli",
            "demo",
            "--dir",
            str(workdir),
            "--spark-conf",
            "spark.ui.enabled=false",
        ],
        env=dict(os.environ),
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, f"demo failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    warehouse = workdir / "warehouse"
    assert (warehouse / "scans" / "_delta_log").is_dir()
    return warehouse


def _kernel_manager(kernels_dir: Path):
    """A kernel manager whose only kernelspec runs ipykernel on this very interpreter.

    Jupyter's ``python3`` kernelspec may resolve to another Python (a user-level kernelspec in
    ~/.local/share/jupyter wins over the venv's), so the test brings its own.
    """
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    spec_dir = kernels_dir / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "medspark tests",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    ksm = KernelSpecManager(kernel_dirs=[str(kernels_dir)])
    return AsyncKernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=ksm)


def _run_notebook(warehouse: Path, workdir: Path, monkeypatch):
    """Execute the notebook with MEDSPARK_WAREHOUSE=warehouse; any failing cell raises."""
    monkeypatch.setenv("MEDSPARK_WAREHOUSE", str(warehouse))  # the kernel inherits os.environ
    monkeypatch.delenv("MPLBACKEND", raising=False)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=600,
        km=_kernel_manager(workdir / "kernels"),
        resources={"metadata": {"path": str(workdir)}},
    )
    try:
        client.execute()
    finally:
        nbformat.write(nb, workdir / "executed.ipynb")  # kept for debugging a failure
    return nb


def _outputs(nb) -> list:
    return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])]


def _text(nb) -> str:
    return "".join(out.get("text", "") for out in _outputs(nb) if out.output_type == "stream")


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None


@pytest.mark.spark
@pytest.mark.subprocess
def test_notebook_runs_on_demo_warehouse(demo_warehouse, tmp_path, monkeypatch):
    nb = _run_notebook(demo_warehouse, tmp_path, monkeypatch)
    outputs = _outputs(nb)
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.data]
    # modality by day, busy hours, labels, throughput, two contact sheets, 12 leads, heart rates,
    # ROC + reliability, AUC per subgroup
    assert len(images) >= 10, f"expected at least 10 plots, got {len(images)}"
    text = _text(nb)
    assert "nothing to plot" not in text
    assert "no saliency table" not in text  # the demo computes saliency: overlays are shown
    assert "Top-scoring positives: 12 frame(s), 12 with a saliency overlay" in text
    assert "Most uncertain frames (lowest score of the predicted label): 12 frame(s), 12 " in text
    assert "temporary views:" in text and "scanner_utilization" in text
    # the demo's 20 patients over two scanner models: every subgroup has 10, enough for intervals
    assert "evaluation run " in text and "model medspark-nodule-demo v1" in text
    assert "of them without an interval" in text


@pytest.mark.spark
@pytest.mark.subprocess
def test_notebook_skips_missing_tables(demo_warehouse, tmp_path, monkeypatch):
    partial = tmp_path / "partial-warehouse"
    for name in ("scans", "ingest_errors"):
        shutil.copytree(demo_warehouse / name, partial / name)
    nb = _run_notebook(partial, tmp_path, monkeypatch)
    images = [o for o in _outputs(nb) if o.output_type == "display_data" and "image/png" in o.data]
    assert images == []
    text = _text(nb)
    assert "nothing to plot: scanner_utilization is missing or empty" in text
    assert "nothing to plot: predictions is missing or empty" in text
    assert "nothing to plot: job_runs is missing" in text
    assert "nothing to plot: predictions or images is missing or empty" in text
    assert "nothing to plot: waveforms is missing or empty" in text
    assert "nothing to plot: ecg_metrics is missing or empty" in text
    assert "nothing to plot: model_evaluation is missing or empty" in text
