"""Shared fixtures: one local-mode SparkSession with Delta for the whole test run."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


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
        extra_conf={"spark.ui.enabled": "false"},
    )
    yield session
    session.stop()
