"""The table registry (medspark.tables.schemas.TABLES) is the one declaration of the tables:
the config's ``tables`` section, the shipped YAML and the docs agree with it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from medspark.config import TablesConfig
from medspark.tables.docs import table_reference
from medspark.tables.schemas import TABLES

CONF = Path(__file__).resolve().parents[1] / "conf" / "pipeline.yaml"


def test_the_config_names_every_registered_table_by_its_default_name():
    fields = {f.name: f.default for f in dataclasses.fields(TablesConfig)}
    assert fields == {name: name for name in TABLES}


def test_the_shipped_yaml_lists_every_table_with_its_default_name():
    tables = yaml.safe_load(CONF.read_text())["tables"]
    assert tables == {name: name for name in TABLES}


def test_restricted_tables_are_named_so_and_only_they():
    allowed = {f.name: f.metadata["allowed"] for f in dataclasses.fields(TablesConfig)}
    for name, table in TABLES.items():
        assert table.restricted == name.startswith("restricted_"), name
        # the config refuses a restricted table renamed without the prefix
        assert ("restricted_" in (allowed[name].pattern or "")) == table.restricted, name


def test_keys_are_columns_and_error_tables_declare_their_classes():
    for name, table in TABLES.items():
        columns = set(table.schema.fieldNames())
        assert set(table.key) <= columns, name
        assert bool(table.error_classes) == name.endswith("_errors"), name
        if table.error_classes:
            assert "error_class" in columns
            assert f"Error classes in `{name}`" in table_reference()
