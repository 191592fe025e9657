from __future__ import annotations

from pathlib import Path

import pytest

from medspark.config import PipelineConfig, config_from_dict, load_config, with_overrides
from medspark.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_shipped_yaml_equals_the_defaults():
    assert load_config(REPO / "conf" / "pipeline.yaml") == PipelineConfig()


def test_unknown_key_names_key_and_lists_known_keys():
    with pytest.raises(ConfigError) as err:
        config_from_dict({"ingest": {"max_partition_byte": 10}})
    text = str(err.value)
    assert "ingest.max_partition_byte" in text
    assert "max_partition_bytes" in text  # what is allowed


def test_bad_value_names_key_value_and_bound():
    with pytest.raises(ConfigError) as err:
        config_from_dict({"ingest": {"max_archive_depth": 0}})
    assert err.value.key == "ingest.max_archive_depth"
    assert err.value.value == 0
    assert "from 1 to 8" in err.value.allowed


@pytest.mark.parametrize(
    ("data", "key", "allowed"),
    [
        ({"inference": {"saliency_method": "lime"}}, "inference.saliency_method", "occlusion"),
        (
            {"inference": {"occlusion_patch": 8, "occlusion_stride": 16}},
            "inference.occlusion_stride",
            "from 1 to occlusion_patch (8)",
        ),
        ({"inference": {"occlusion_patch": 300}}, "inference.occlusion_patch", "from 1 to 224"),
        ({"volumes": {"missing_slices": "fill"}}, "volumes.missing_slices", "interpolate"),
        ({"volumes": {"max_interpolated": 0}}, "volumes.max_interpolated", "from 1 to 64"),
    ],
)
def test_saliency_and_interpolation_keys_are_checked(data, key, allowed):
    with pytest.raises(ConfigError) as err:
        config_from_dict(data)
    assert err.value.key == key and allowed in err.value.allowed


def test_wrong_type_and_literal():
    with pytest.raises(ConfigError, match="spark.shuffle_partitions"):
        config_from_dict({"spark": {"shuffle_partitions": "many"}})
    with pytest.raises(ConfigError, match="one of: DEBUG, ERROR, INFO, WARN"):
        config_from_dict({"spark": {"log_level": "LOUD"}})
    with pytest.raises(ConfigError, match="tables.scans"):
        config_from_dict({"tables": {"scans": "drop table"}})


def test_values_are_typed():
    cfg = config_from_dict({"spark": {"conf": {"spark.executor.memory": "2g"}}, "warehouse": "/w"})
    assert cfg.spark.conf == {"spark.executor.memory": "2g"}
    assert cfg.table_path("scans") == str(Path("/w") / "scans")


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="--conf"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("spark: [unclosed\n")
    with pytest.raises(ConfigError, match="valid YAML"):
        load_config(bad)


def test_restricted_tables_live_apart_owner_only(tmp_path):
    import stat

    from medspark.tables.writers import ensure_restricted_root

    config = with_overrides(PipelineConfig(), warehouse=str(tmp_path / "wh"))
    assert Path(config.table_path("scans")) == tmp_path / "wh" / "scans"
    assert Path(config.table_path("restricted_phi_map")) == (
        tmp_path / "wh_restricted" / "restricted_phi_map"
    )
    root = ensure_restricted_root(config)
    assert root == tmp_path / "wh_restricted"
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    chosen = with_overrides(config, restricted_warehouse=str(tmp_path / "keys" / "r"))
    assert Path(chosen.table_path("restricted_images")) == tmp_path / "keys" / "r" / (
        "restricted_images"
    )
    assert stat.S_IMODE(ensure_restricted_root(chosen).stat().st_mode) == 0o700


def test_restricted_table_left_in_the_warehouse_is_refused(tmp_path):
    from medspark.tables.writers import ensure_restricted_root

    config = with_overrides(PipelineConfig(), warehouse=str(tmp_path / "wh"))
    (tmp_path / "wh" / "restricted_acquisitions" / "_delta_log").mkdir(parents=True)
    with pytest.raises(ConfigError) as err:
        ensure_restricted_root(config)
    text = str(err.value)
    assert "restricted_warehouse" in text and "mv " in text and "restricted_acquisitions" in text


def test_shipped_yaml_lists_every_key():
    import yaml

    from medspark.config import to_dict

    def keys(data, prefix=""):
        out = set()
        for k, v in data.items():
            out.add(prefix + k)
            if isinstance(v, dict) and k != "conf":
                out |= keys(v, f"{prefix}{k}.")
            if isinstance(v, list) and v and isinstance(v[0], dict) and k == "models":
                out |= {f"{prefix}{k}[].{m}" for m in v[0]}
        return out

    shipped = yaml.safe_load((REPO / "conf" / "pipeline.yaml").read_text())
    assert keys(shipped) == keys(to_dict(PipelineConfig()))


def test_config_and_ops_share_one_validator():
    from medspark.preprocess.chain import build_chain
    from medspark.preprocess.ops import OPS
    from medspark.validation import Allowed

    # output_size: one rule, whether the YAML or build_chain checks it.
    with pytest.raises(ConfigError) as from_yaml:
        config_from_dict({"preprocess": {"output_size": 5000}})
    with pytest.raises(ConfigError) as from_chain:
        build_chain([], None, 5000)
    assert str(from_yaml.value) == str(from_chain.value)
    assert from_yaml.value.allowed == "an integer from 8 to 4096"
    # The same words for a config key and an op parameter.
    assert isinstance(OPS["median_blur"].params["ksize"].allowed, Allowed)
    with pytest.raises(ConfigError) as err:
        config_from_dict({"preprocess": {"steps": [{"op": "median_blur", "ksize": 4}]}})
    assert err.value.key == "preprocess.steps[0].ksize" and err.value.value == 4
    assert err.value.allowed == "an odd integer from 3 to 255"


def test_allowed_describes_and_checks():
    from medspark.validation import Allowed

    assert Allowed(int, minimum=1, maximum=8).check("k", 3) == 3
    assert Allowed(float, minimum=0.0).check("k", 2) == 2.0  # an int is a number
    for rule, bad in (
        (Allowed(int, minimum=1, maximum=8), True),  # a bool is not a number
        (Allowed(int, minimum=1), 1.5),
        (Allowed(float, minimum=0.0, above=True, finite=True), float("nan")),
        (Allowed(str, pattern=r"^\w+$"), "a b"),
        (Allowed(choices=("b", "a")), "c"),
    ):
        with pytest.raises(ConfigError) as err:
            rule.check("k", bad)
        assert err.value.key == "k" and err.value.allowed == rule.describe()
    assert Allowed(choices=("b", "a")).describe() == "one of: a, b"
    assert Allowed(float, minimum=0.0, above=True, finite=True).describe() == (
        "a finite number > 0.0"
    )
