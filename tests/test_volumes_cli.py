"""``medspark volumes`` before Spark starts: arguments and the 3D model check (no JVM)."""

from __future__ import annotations

from pathlib import Path

import yaml

from medspark.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]


def test_volumes_command_and_job_entry_point():
    args = build_parser().parse_args(["volumes", "--warehouse", "/tmp/wh"])
    assert (args.command, args.warehouse) == ("volumes", "/tmp/wh")
    assert 'main(["volumes", *sys.argv[1:]])' in (REPO / "jobs" / "volumes.py").read_text()


def test_bad_volume_model_is_a_configuration_error(tmp_path, capsys):
    from medspark.volumes.synthetic import save_threshold_model

    model = save_threshold_model(tmp_path / "t.ts")
    conf = tmp_path / "p.yaml"
    # The threshold model has two output channels; three labels cannot match them.
    volumes = {"model": {"path": str(model), "labels": ["a", "b", "c"], "roi_size": [8, 8, 8]}}
    conf.write_text(yaml.safe_dump({"volumes": volumes}))
    code = main(["volumes", "--warehouse", str(tmp_path / "wh"), "--conf", str(conf)])
    assert code == 2
    err = capsys.readouterr().err
    assert "volumes.model[volume-model].labels" in err and "output (1, 2, 8, 8, 8)" in err
    assert not (tmp_path / "wh").exists()  # nothing started, nothing written


def test_volumes_without_a_model_names_only_the_series_table():
    """It listed series_segments and series_errors among the tables written, without a model."""
    import dataclasses

    from medspark.cli import volumes_tables
    from medspark.config import PipelineConfig

    config = PipelineConfig()
    assert config.volumes.model is None
    assert volumes_tables(config) == ("series",)
    with_model = dataclasses.replace(
        config, volumes=dataclasses.replace(config.volumes, model=object())
    )
    assert volumes_tables(with_model) == ("series", "series_segments", "series_errors")


def test_highdicom_warnings_stay_off_the_console():
    """highdicom logs through ``logging``; with no handler (a Python worker), Python's
    last-resort handler printed its warnings on the console of ``medspark volumes``. In a fresh
    interpreter (pytest's own log capture would hide the fallback), with and without the
    handler medspark adds."""
    import subprocess
    import sys

    warn = "import logging; logging.getLogger('highdicom.seg.sop').warning('X is missing')"
    quiet = "from medspark.volumes.dicom_seg import _quiet_highdicom; _quiet_highdicom(); "
    plain = subprocess.run([sys.executable, "-c", warn], capture_output=True, text=True)
    assert "X is missing" in plain.stderr  # what a worker printed
    done = subprocess.run([sys.executable, "-c", quiet + warn], capture_output=True, text=True)
    assert done.returncode == 0 and done.stderr == ""
