from medspark.tables.docs import TABLES_DOC, generated_part, table_reference


def test_table_reference_matches_schemas():
    text = TABLES_DOC.read_text()
    assert generated_part(text) == table_reference(), "run: python -m medspark.tables.docs --write"


def test_rewrite_replaces_only_the_generated_part(tmp_path):
    from medspark.tables.docs import END, START, rewrite

    doc = tmp_path / "tables.md"
    doc.write_text(f"# intro\n{START} -->\nstale\n{END}\ntail\n")
    assert rewrite(doc)
    assert doc.read_text() == f"# intro\n{START} -->\n{table_reference()}{END}\ntail\n"
    assert not rewrite(doc)


def test_spark_local_conf_matches_what_medspark_sets():
    from pathlib import Path

    from medspark.config import SparkConfig
    from medspark.session import base_conf

    conf = Path(__file__).resolve().parents[1] / "conf" / "spark-local.conf"
    pairs = [ln.split(None, 1) for ln in conf.read_text().splitlines() if ln and ln[0] != "#"]
    shipped = {k: v.strip() for k, v in pairs}
    assert shipped == {k: v for k, v in base_conf(SparkConfig()).items() if k in shipped}
    assert "spark.sql.extensions" in shipped
