"""PS3.15 Table E.1-1 (Application Level Confidentiality Profile Attributes) as data.

The table lives in ``deid_e1_1.json`` beside this module, one entry per attribute: its name,
its Basic Profile action and the actions of the option columns medspark offers. It is machine-
read, never hand-typed:

* The Basic Profile column and the names come from dicom-anonymizer (PyPI ``dicom-anonymizer``,
  BSD licence, ``dicomanonymizer/dicom_anonymization_databases/dicomfields_<edition>.py``),
  which publishes each edition of the table as machine-read Python lists.
* The option columns (Retain Device Identity, Retain Patient Characteristics, Retain
  Longitudinal Temporal Information with Modified Dates, Clean Descriptors, Retain Institution
  Identity, Retain UIDs) come from ``deid_options.json``, machine-read from the standard's
  table by innolitics/dicom-standard (``standard/confidentiality_profile_attributes.json``).
  That extraction may be older than the Basic Profile's edition: an attribute it does not list
  gets no option action, so it keeps its Basic Profile action whatever option is on
  (the strict side). Attributes of VR DA, DT and TM are the exception: the Modified Dates
  option applies to every date and time (PS3.15 E.3.6), so they get ``C`` from their VR.

:func:`regenerate` rebuilds ``deid_e1_1.json`` where dicom-anonymizer is installed (a dev
dependency); ``tests/test_deid_table.py`` checks the stored table against it, so a new edition
is one call and a diff to review. At run time only the JSON is read.

Action codes (Table E.1-1): ``D`` dummy, ``Z`` zero-length, ``X`` remove, ``K`` keep, ``C``
clean, ``U`` consistent UID; combined codes such as ``X/Z/D`` leave the choice to the
de-identifier (the IOD's Type decides); ``X/Z/U*`` applies to sequences of references whose
UIDs are replaced.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TABLE_FILE = Path(__file__).with_name("deid_e1_1.json")
OPTIONS_FILE = Path(__file__).with_name("deid_options.json")
#: The edition of PS3.15 whose Table E.1-1 medspark applies.
DEFAULT_EDITION = "2026c"

#: Option columns of Table E.1-1 that the stored table carries.
OPTION_COLUMNS = (
    "retain_device_identity",
    "retain_patient_characteristics",
    "retain_modified_dates",
    "clean_descriptors",
    "retain_institution_identity",
    "retain_uids",
)

_CATEGORIES = {
    "D_TAGS": "D",
    "Z_TAGS": "Z",
    "X_TAGS": "X",
    "U_TAGS": "U",
    "Z_D_TAGS": "Z/D",
    "X_Z_TAGS": "X/Z",
    "X_D_TAGS": "X/D",
    "X_Z_D_TAGS": "X/Z/D",
    "X_Z_U_STAR_TAGS": "X/Z/U*",
}
_DATE_TIME_VRS = ("DA", "DT", "TM")


@dataclass(frozen=True)
class Entry:
    """One row of Table E.1-1: ``tag`` is 8 hex digits, ``X`` for a repeating-group digit."""

    tag: str
    name: str
    basic: str
    options: dict[str, str]

    def option(self, column: str) -> str | None:
        return self.options.get(column)


@dataclass(frozen=True)
class ActionTable:
    """The stored table: exact tags, and the repeating-group patterns (curves, overlays)."""

    edition: str
    source: str
    entries: dict[str, Entry]
    patterns: tuple[tuple[re.Pattern[str], Entry], ...]

    def lookup(self, tag: str) -> Entry | None:
        """The entry for ``tag`` (8 upper-case hex digits), exact first, then a pattern."""
        entry = self.entries.get(tag)
        if entry is not None:
            return entry
        for pattern, candidate in self.patterns:
            if pattern.fullmatch(tag):
                return candidate
        return None

    def __len__(self) -> int:
        return len(self.entries) + len(self.patterns)


def _pattern(tag: str) -> re.Pattern[str]:
    # Repeating groups of PS3.5 7.6: (50xx,eeee) and (60xx,eeee) have even xx only.
    regex = "".join("[0-9A-F]" if c == "X" else c for c in tag)
    return re.compile(regex)


@functools.lru_cache(maxsize=4)
def load_table(path: str | None = None) -> ActionTable:
    """The stored table (cached per process; executors load it once per Python worker)."""
    doc = json.loads(Path(path or TABLE_FILE).read_text(encoding="utf-8"))
    entries: dict[str, Entry] = {}
    patterns: list[tuple[re.Pattern[str], Entry]] = []
    for tag, row in doc["attributes"].items():
        entry = Entry(tag, row["name"], row["basic"], dict(row.get("options", {})))
        if "X" in tag:
            patterns.append((_pattern(tag), entry))
        else:
            entries[tag] = entry
    return ActionTable(doc["edition"], doc["source"], entries, tuple(patterns))


def edition() -> str:
    """The edition of the stored table, e.g. ``"2026c"`` (recorded in ``job_runs``)."""
    return load_table().edition


# --------------------------------------------------------------------------------------
# Regeneration (dev only: needs dicom-anonymizer)
# --------------------------------------------------------------------------------------


def _tag_text(t: tuple[int, ...]) -> str:
    """dicom-anonymizer's ``(group, element[, group_mask, element_mask])`` as 8 hex digits."""
    group, element = t[0], t[1]
    text = f"{group:04X}{element:04X}"
    if len(t) == 4:
        group_mask, element_mask = t[2], t[3]
        digits = list(text)
        for i in range(4):
            if not (group_mask >> (12 - 4 * i)) & 0xF:
                digits[i] = "X"
            if not (element_mask >> (12 - 4 * i)) & 0xF:
                digits[4 + i] = "X"
        text = "".join(digits)
    return text


def basic_profile_from_dicom_anonymizer(edition: str = DEFAULT_EDITION) -> dict[str, str]:
    """``{tag: basic action}`` from dicom-anonymizer's machine-read edition of the table."""
    import importlib

    module = importlib.import_module(
        f"dicomanonymizer.dicom_anonymization_databases.dicomfields_{edition}"
    )
    out: dict[str, str] = {}
    for category, code in _CATEGORIES.items():
        for t in getattr(module, category):
            out[_tag_text(t)] = code
    return out


def _names_from_source(edition: str) -> dict[str, str]:
    """Attribute names from the comments of dicom-anonymizer's module (``# Name``)."""
    import importlib.util

    spec = importlib.util.find_spec(
        f"dicomanonymizer.dicom_anonymization_databases.dicomfields_{edition}"
    )
    assert spec is not None and spec.origin is not None
    names: dict[str, str] = {}
    line_re = re.compile(r"^\s*\((0x[0-9A-Fa-f]+(?:,\s*0x[0-9A-Fa-f]+){1,3})\),\s*#\s*(.+)$")
    for line in Path(spec.origin).read_text(encoding="utf-8").splitlines():
        m = line_re.match(line)
        if m:
            parts = tuple(int(p, 16) for p in m.group(1).split(","))
            names[_tag_text(parts)] = m.group(2).strip()
    return names


def _vr(tag: str) -> str | None:
    if "X" in tag:
        return None
    from pydicom.datadict import dictionary_VR

    try:
        return str(dictionary_VR(int(tag, 16)))
    except KeyError:
        return None


def build_table(edition: str = DEFAULT_EDITION) -> dict[str, Any]:
    """The document stored as ``deid_e1_1.json``, built from its two machine-read sources."""
    import importlib.metadata

    basic = basic_profile_from_dicom_anonymizer(edition)
    names = _names_from_source(edition)
    options_doc = json.loads(OPTIONS_FILE.read_text(encoding="utf-8"))
    columns: dict[str, dict[str, str]] = options_doc["columns"]
    attributes: dict[str, Any] = {}
    for tag in sorted(basic):
        options = {c: columns[c][tag] for c in OPTION_COLUMNS if tag in columns.get(c, {})}
        vr = _vr(tag)
        if vr is not None and vr.split(" or ")[0] in _DATE_TIME_VRS:
            options.setdefault("retain_modified_dates", "C")
        row: dict[str, Any] = {
            "name": names.get(tag) or options_doc["names"].get(tag, ""),
            "basic": basic[tag],
        }
        if options:
            row["options"] = options
        attributes[tag] = row
    version = importlib.metadata.version("dicom-anonymizer")
    return {
        "edition": edition,
        "source": (
            f"PS3.15 {edition} Table E.1-1; Basic Profile column: dicom-anonymizer {version} "
            f"dicomfields_{edition}; option columns: {options_doc['source']} at "
            f"{options_doc['source_commit']}"
        ),
        "attributes": attributes,
    }


def regenerate(edition: str = DEFAULT_EDITION, path: Path = TABLE_FILE) -> int:
    """Write ``deid_e1_1.json`` for ``edition``; returns the number of attributes."""
    doc = build_table(edition)
    path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    load_table.cache_clear()
    return len(doc["attributes"])


if __name__ == "__main__":  # python -m medspark.dicom.deid_table [edition]
    import sys

    n = regenerate(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_EDITION)
    print(f"wrote {TABLE_FILE} ({n} attributes)")
