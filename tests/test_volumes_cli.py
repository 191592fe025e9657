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
