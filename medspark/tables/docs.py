"""Render the table reference (README) from the declared schemas.

``python -m medspark.tables.docs`` prints the Markdown; the README's table reference is this
output, and a test fails when the two drift apart.
"""

from __future__ import annotations

from medspark.tables.schemas import TABLES


def table_reference() -> str:
    """Markdown: one section per table, one row per column (name, type, null, meaning)."""
    out: list[str] = []
    for name, (schema, keys) in TABLES.items():
        out.append(f"#### `{name}` (key: {', '.join(f'`{k}`' for k in keys)})\n")
        out.append("| column | type | nullable | meaning |")
        out.append("|---|---|---|---|")
        for f in schema.fields:
            comment = f.metadata.get("comment", "")
            null = "yes" if f.nullable else "no"
            out.append(f"| `{f.name}` | {f.dataType.simpleString()} | {null} | {comment} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(table_reference())
