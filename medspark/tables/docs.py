"""Render the table reference (``docs/tables.md``) from the declared schemas and error classes.

``python -m medspark.tables.docs`` prints the Markdown; ``python -m medspark.tables.docs --write``
rewrites the generated part of ``docs/tables.md`` (between ``<!-- tables:start`` and
``<!-- tables:end -->``). A test fails when the file and this output drift apart.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

from medspark.tables.schemas import TABLES

#: The file whose generated part is :func:`table_reference` (in a source checkout).
TABLES_DOC = Path(__file__).resolve().parents[2] / "docs" / "tables.md"
START = "<!-- tables:start"
END = "<!-- tables:end -->"


#: Notes under a table's error classes.
_NOTES = {
    "preprocess_errors": "An item the reader refuses on the re-read keeps the class ingest gives "
    "it (`too_large`, `decompression_bomb`, ...).",
}


def _error_classes(table: str, classes: Mapping[str, str], note: str = "") -> list[str]:
    out = [f"#### Error classes in `{table}`\n", "| error_class | when |", "|---|---|"]
    out += [f"| `{name}` | {meaning} |" for name, meaning in classes.items()]
    out += ["", note, ""] if note else [""]
    return out


def table_reference() -> str:
    """Markdown: one section per table, one row per column (name, type, null, meaning), then
    the error classes of each error table, from the registry (:data:`TABLES`)."""
    out: list[str] = []
    for name, table in TABLES.items():
        where = ", restricted" if table.restricted else ""
        keys = ", ".join(f"`{k}`" for k in table.key)
        out.append(f"#### `{name}` (key: {keys}{where})\n")
        out.append(f"{table.summary[0].upper()}{table.summary[1:]}.\n")
        out.append("| column | type | nullable | meaning |")
        out.append("|---|---|---|---|")
        for f in table.schema.fields:
            comment = f.metadata.get("comment", "")
            null = "yes" if f.nullable else "no"
            out.append(f"| `{f.name}` | {f.dataType.simpleString()} | {null} | {comment} |")
        out.append("")
    for name, table in TABLES.items():
        if table.error_classes:
            out += _error_classes(name, table.error_classes, _NOTES.get(name, ""))
    return "\n".join(out)


def generated_part(text: str) -> str:
    """The part of a document between its start and end markers (the start line excluded)."""
    start = text.index("\n", text.index(START)) + 1
    return text[start : text.index(END)]


def rewrite(path: Path = TABLES_DOC) -> bool:
    """Replace the generated part of ``path`` with :func:`table_reference`; True if it changed."""
    text = path.read_text()
    old = generated_part(text)
    new = table_reference()
    if old == new:
        return False
    start = text.index("\n", text.index(START)) + 1
    path.write_text(text[:start] + new + text[text.index(END) :])
    return True


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        changed = rewrite()
        print(f"{TABLES_DOC}: {'rewritten' if changed else 'already up to date'}")
    elif sys.argv[1:]:
        sys.exit("usage: python -m medspark.tables.docs [--write]")
    else:
        print(table_reference())
