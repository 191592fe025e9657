"""Table E.1-1 as data: the stored table against its source, and every attribute's action.

A probe file carries every attribute of the stored table that pydicom's dictionary knows (text,
dates, numbers, UIDs, sequences, binary), each with a marker value, at top level and again
inside a sequence item. It is de-identified with each option on and off, and every attribute's
outcome is checked against its row of the table: removed, emptied, dummy, kept, shifted, or
UID replaced consistently. A failure names the attribute.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import os

import pytest
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from medspark.config import DeidConfig, PipelineConfig, with_overrides
from medspark.dicom import deid_table
from medspark.dicom.deid import MEDSPARK_RULES, Pseudonymizer
from medspark.dicom.header import parse_header

SECRET = b"table-test-secret-0123456789abcdef"
# A sequence that Table E.1-1 does not list (kept), to carry the nested copy of every attribute.
CARRIER = "00082218"  # Anatomic Region Sequence
SOP_UID = "1.2.826.0.1.3680043.9.7777.1"
PATIENT_ID = "PROBE-PATIENT-0042"
MARKER_DATE = "20210315"
MARKER_TIME = "101112"
# Groups that a data set cannot hold as ordinary elements (command, file meta, padding).
SKIPPED_GROUPS = ("0000", "0002", "FFFC")

TABLE = deid_table.load_table()
# Pseudonyms of the release before this table (5ca2b5c), secret b"medspark-test-secret".
PINNED_UID = "2.25.226265555352678430092114019994255984052"
PINNED_PATIENT_KEY = "95810fc71faedbe6592e270d33b4cb05"
PINNED_SHIFT = -48


def _vr(tag: str) -> str | None:
    try:
        vr = str(dictionary_VR(int(tag, 16)))
    except KeyError:
        return None
    return vr.split(" or ")[0]


def _text_marker(tag: str) -> str:
    return f"M{tag}"  # 9 characters: valid for every text VR, CS and AE included


def _uid_marker(tag: str) -> str:
    return f"1.2.826.0.1.3680043.9.7777.{int(tag, 16)}"


def _marker(tag: str, vr: str) -> object:
    if vr == "SQ":
        item = Dataset()
        item.CodeMeaning = f"S{tag}"
        return [item]
    if vr == "PN":
        return f"M{tag}^PROBE"
    if vr == "UI":
        return _uid_marker(tag)
    if vr == "DA":
        return MARKER_DATE
    if vr == "DT":
        return MARKER_DATE + MARKER_TIME
    if vr == "TM":
        return MARKER_TIME
    if vr == "AS":
        return "042Y"
    if vr in ("IS", "US", "SS", "UL", "SL", "UV", "SV"):
        return 42
    if vr in ("DS", "FL", "FD"):
        return 4.5
    if vr == "AT":
        return 0x00100010
    if vr in ("OB", "OW", "OD", "OF", "OL", "OV", "UN"):
        return b"MARKERMARKERMARK"
    return _text_marker(tag)


def _probe_tags() -> dict[str, str]:
    """Every exact tag of the table that a data set can hold, with its VR."""
    out = {}
    for tag in TABLE.entries:
        vr = _vr(tag)
        # SOP Instance UID (0008,0018) carries the probe's own UID (checked on its own).
        if vr is None or tag[:4] in SKIPPED_GROUPS or tag in (CARRIER, "00080018"):
            continue
        out[tag] = vr
    return out


PROBE_TAGS = _probe_tags()
# Curves and overlays: concrete tags of the repeating groups the table lists as patterns.
REPEATING = {"50003000": "OB", "60003000": "OB", "60004000": "LT", "60024000": "LT"}


def _probe_bytes() -> bytes:
    ds = Dataset()
    for tag, vr in {**PROBE_TAGS, **REPEATING}.items():
        ds.add_new(int(tag, 16), vr, _marker(tag, vr))
    nested = Dataset()
    for tag, vr in PROBE_TAGS.items():
        nested.add_new(int(tag, 16), vr, _marker(tag, vr))
    ds.add_new(int(CARRIER, 16), "SQ", [nested])
    ds.SOPInstanceUID = SOP_UID
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.PatientID = PATIENT_ID
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = SOP_UID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


PROBE = _probe_bytes()


def _expected(tag: str, vr: str, cfg: DeidConfig) -> str:
    """What the table's row says happens to ``tag`` under ``cfg`` (the standard's rule: an
    option that is on and has an action in the row replaces the Basic Profile action)."""
    entry = TABLE.lookup(tag)
    assert entry is not None
    opts = entry.options
    if cfg.retain_patient_characteristics and "retain_patient_characteristics" in opts:
        code = opts["retain_patient_characteristics"]
    elif (
        cfg.keep_device_identity
        and opts.get("retain_device_identity") == "K"
        and not any(w in entry.name.split() for w in ("ID", "UID", "Identifier"))
        and "Serial Number" not in entry.name
    ):
        code = "K"
    elif cfg.shift_dates and opts.get("retain_modified_dates") == "C":
        code = "C"
    else:
        code = entry.basic
    if code == "X/Z/U*":
        return "U"
    code = code[0]
    if code == "C" and vr not in ("DA", "DT", "TM", "UI", "SQ"):
        return "X"  # medspark cleans no free text: removed
    return code


def _shifted(p: Pseudonymizer) -> str:
    days = p.date_shift_days(p.patient_key(PATIENT_ID))
    return (dt.date(2021, 3, 15) + dt.timedelta(days=days)).strftime("%Y%m%d")


def _check(tag: str, vr: str, action: str, doc: dict, p: Pseudonymizer, cfg: DeidConfig) -> None:
    """Assert the outcome of one attribute in one (top-level or nested) JSON object."""
    name = f"{TABLE.lookup(tag).name} ({tag[:4]},{tag[4:]}) VR {vr}, action {action}"
    element = doc.get(tag)
    values = None if element is None else element.get("Value")
    # medspark's VR rules, stricter than the table: never a person name, AE title or URL kept;
    # every UID replaced; every date shifted or removed.
    if action in ("K", "U", "C") and vr in ("PN", "AE", "UR"):
        assert not values, f"{name}: {vr} values are never kept"
        return
    if action == "X":
        assert element is None, f"{name}: should be removed, is {element}"
    elif action == "Z":
        assert element is not None and not values, f"{name}: should be empty, is {element}"
    elif action == "D":
        assert element is not None, f"{name}: should be a dummy, is missing"
        marker = _marker(tag, vr)
        if vr == "SQ":
            assert values == [], f"{name}: a dummy sequence is empty, is {values}"
        elif vr == "UI":
            assert values == [p.uid(marker)], f"{name}: dummy UID {values}"
        elif vr not in ("OB", "OW", "OD", "OF", "OL", "OV", "UN", "AT"):
            assert values and str(values[0]) != str(marker), f"{name}: still {values}"
    elif vr == "UI":
        assert values == [p.uid(_uid_marker(tag))], f"{name}: UID not replaced: {values}"
    elif vr in ("DA", "DT"):
        if not cfg.shift_dates:
            assert element is None, f"{name}: dates are removed without shift_dates"
        else:
            suffix = MARKER_TIME if vr == "DT" else ""
            assert values == [_shifted(p) + suffix], f"{name}: not shifted: {values}"
    elif vr == "TM":
        assert values == [MARKER_TIME], f"{name}: time of day kept with a whole-day shift"
    elif vr == "SQ":
        assert values and values[0]["00080104"]["Value"] == [f"S{tag}"], f"{name}: {values}"
    else:
        assert element is not None and (values or "InlineBinary" in element), (
            f"{name}: should be kept, is {element}"
        )


CONFIGS = {
    "defaults": {},
    "no_options": {
        "shift_dates": False,
        "keep_device_identity": False,
        "retain_patient_characteristics": False,
    },
    "all_options": {
        "shift_dates": True,
        "keep_device_identity": True,
        "retain_patient_characteristics": True,
    },
    "patient_characteristics_only": {
        "shift_dates": False,
        "keep_device_identity": False,
        "retain_patient_characteristics": True,
    },
}


def _deidentified(cfg: DeidConfig) -> tuple[Pseudonymizer, dict]:
    p = Pseudonymizer(SECRET, cfg)
    header = parse_header(PROBE, "file:///probe.dcm")
    row = {
        **header,
        "source_uri": "file:///probe.dcm",
        "archive_member": None,
        "size": len(PROBE),
        "sha256": "0" * 64,
    }
    return p, json.loads(p.deidentify_row(row)["header_json"])


def test_stored_table_is_the_machine_read_edition():
    """The Basic Profile column equals dicom-anonymizer's machine-read 2026c, tag for tag."""
    assert TABLE.edition == deid_table.DEFAULT_EDITION == "2026c"
    source = deid_table.basic_profile_from_dicom_anonymizer("2026c")
    stored = {e.tag: e.basic for e in TABLE.entries.values()}
    stored |= {e.tag: e.basic for _, e in TABLE.patterns}
    assert stored == source
    assert len(stored) == 655
    # Regeneration from the two sources gives the stored file byte for byte.
    assert deid_table.build_table("2026c") == json.loads(deid_table.TABLE_FILE.read_text())


def test_probe_carries_most_of_the_table():
    # 655 rows; a few are command/meta elements, and some are unknown to pydicom's dictionary.
    assert len(PROBE_TAGS) > 550
    assert {vr for vr in PROBE_TAGS.values()} >= {"SQ", "UI", "DA", "DT", "TM", "PN", "LO", "OB"}


@pytest.mark.parametrize("config_name", sorted(CONFIGS))
def test_every_attribute_gets_its_action(config_name):
    cfg = dataclasses.replace(DeidConfig(), **CONFIGS[config_name])
    p, doc = _deidentified(cfg)
    nested = doc[CARRIER]["Value"][0]
    checked = 0
    for tag, vr in PROBE_TAGS.items():
        if tag in MEDSPARK_RULES:
            continue  # medspark's own rules: test_medspark_rules
        action = _expected(tag, vr, cfg)
        _check(tag, vr, action, doc, p, cfg)
        _check(tag, vr, action, nested, p, cfg)  # the same action inside a sequence item
        checked += 1
    assert checked > 550
    for tag in REPEATING:
        assert tag not in doc, f"repeating-group attribute ({tag[:4]},{tag[4:]}) survived"


@pytest.mark.parametrize("config_name", sorted(CONFIGS))
def test_no_marker_of_a_removed_attribute_survives(config_name):
    """Whatever the action's details, a text or UID marker of an attribute that is not kept
    appears nowhere in the de-identified header."""
    cfg = dataclasses.replace(DeidConfig(), **CONFIGS[config_name])
    _, doc = _deidentified(cfg)
    text = json.dumps(doc)
    leaked = []
    for tag, vr in PROBE_TAGS.items():
        action = "X" if tag in MEDSPARK_RULES else _expected(tag, vr, cfg)
        if action == "K" and vr not in ("PN", "AE", "UR", "UI"):
            continue
        if vr == "SQ" and action in ("K", "U"):
            continue
        markers = {
            "SQ": f"S{tag}",
            "UI": _uid_marker(tag),
            "PN": f"M{tag}^PROBE",
        }.get(vr, _text_marker(tag))
        if f'"{markers}"' in text:
            leaked.append(f"{TABLE.lookup(tag).name} ({tag[:4]},{tag[4:]})")
    assert not leaked, f"{len(leaked)} attribute(s) leaked: {leaked[:20]}"


def test_medspark_rules():
    for options in CONFIGS.values():
        cfg = dataclasses.replace(DeidConfig(), **options)
        p, doc = _deidentified(cfg)
        assert doc["00100020"]["Value"] == [p.patient_key(PATIENT_ID)]
        for tag, (_, action, option) in MEDSPARK_RULES.items():
            if tag in doc and tag != "00100020":
                assert action == "K" and option and cfg.keep_device_identity, tag


def test_marks_name_the_edition():
    _, doc = _deidentified(DeidConfig())
    assert "medspark deid v2, PS3.15 2026c Table E.1-1" in doc["00120063"]["Value"]
    assert all(len(v) <= 64 for v in doc["00120063"]["Value"])  # LO


def test_pseudonyms_unchanged_by_the_new_table():
    """Item 7 of the issue: the same input and secret give the same keys as before."""
    p = Pseudonymizer(b"medspark-test-secret", DeidConfig())
    # Values computed with the hand-typed table's release (5ca2b5c) for the same inputs.
    assert p.uid("1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322") == PINNED_UID
    assert p.patient_key("1CT1") == PINNED_PATIENT_KEY
    assert p.date_shift_days(PINNED_PATIENT_KEY) == PINNED_SHIFT


@pytest.mark.spark
def test_probe_ingested_on_spark_matches_the_pure_profile(spark, tmp_path):
    """The probe through the real ingest: the scans row's header is the pure profile's."""
    from medspark.pipeline import ingest

    src = tmp_path / "in"
    src.mkdir()
    (src / "probe.dcm").write_bytes(PROBE)
    config = with_overrides(PipelineConfig(), warehouse=str(tmp_path / "wh"))
    result = ingest(spark, [str(src)], config)
    assert result.scans == 1
    row = spark.read.format("delta").load(config.table_path("scans")).collect()[0]
    secret = os.environ["MEDSPARK_DEID_SECRET"].encode()
    p = Pseudonymizer(secret, config.deid)
    doc = json.loads(row["header_json"])
    nested = doc[CARRIER]["Value"][0]
    for tag, vr in PROBE_TAGS.items():
        if tag not in MEDSPARK_RULES:
            action = _expected(tag, vr, config.deid)
            _check(tag, vr, action, doc, p, config.deid)
            _check(tag, vr, action, nested, p, config.deid)
    assert row["patient_id"] == p.patient_key(PATIENT_ID)
    assert row["sop_instance_uid"] == p.uid(SOP_UID)
