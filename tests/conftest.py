"""Shared fixtures: one local-mode SparkSession with Delta for the whole test run."""

from __future__ import annotations

import os
from pathlib import Path

import pydicom
import pytest

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"

# A fixed de-identification secret for the whole run: pseudonyms are reproducible in tests and
# nothing is written to the user's config directory. test_deid.py covers the other sources.
os.environ.setdefault("MEDSPARK_DEID_SECRET", "medspark-test-secret")


def pytest_collection_modifyitems(items):
    """Every test that uses the ``spark`` fixture is a ``spark`` test, marked or not."""
    for item in items:
        if "spark" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.spark)


@pytest.fixture(scope="session")
def pseudo():
    """The pseudonymizer the pipeline uses with the default config and the test secret."""
    from medspark.config import PipelineConfig
    from medspark.dicom.deid import pseudonymizer_from_config

    return pseudonymizer_from_config(PipelineConfig().deid)


@pytest.fixture(scope="session")
def test_files() -> Path:
    """pydicom's bundled real DICOM files (read directly: get_testdata_file may go online)."""
    return TEST_FILES


@pytest.fixture(scope="session")
def spark():
    from medspark.config import SparkConfig
    from medspark.session import build_session

    session = build_session(
        SparkConfig(master="local[2]", app_name="medspark-tests", shuffle_partitions=2),
        # The UI stays on: its REST API is where stage_metrics come from.
        extra_conf={"spark.ui.showConsoleProgress": "false"},
    )
    yield session
    session.stop()
