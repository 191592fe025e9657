from pathlib import Path

from medspark.tables.docs import table_reference

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_table_reference_matches_schemas():
    text = README.read_text()
    start = text.index("\n", text.index("<!-- tables:start")) + 1
    end = text.index("<!-- tables:end -->")
    assert text[start:end] == table_reference(), "run: python -m medspark.tables.docs"
