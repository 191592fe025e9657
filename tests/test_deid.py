"""De-identification (PS3.15 Annex E) on pydicom's real files: pure tests, then one with Spark."""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import os
import pickle
import re
import stat
import warnings
from pathlib import Path

import pydicom
import pytest

from medspark.config import DeidConfig
from medspark.dicom.deid import (
    Pseudonymizer,
    pseudonymizer_from_config,
    resolve_secret,
)
from medspark.dicom.header import ItemError, parse_header
from medspark.errors import ConfigError

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
SECRET = b"unit-test-secret-0123456789abcdef"
OTHER_SECRET = b"another-secret-fedcba9876543210"
# UI attributes that name a class, syntax or software, not an instance: kept.
CLASS_UID_KEYWORDS = {
    "SOPClassUID",
    "MediaStorageSOPClassUID",
    "ReferencedSOPClassUID",
    "ReferencedSOPClassUIDInFile",
    "TransferSyntaxUID",
    "ImplementationClassUID",
    "CodingSchemeUID",
    "ContextUID",
}
UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
# A location that names the patient, as hospital exports often do.
LOCATION_PREFIX = "file:///exports/DOE_JOHN_0123456/"

# Attributes whose values must not survive, by pydicom keyword (from PS3.15 Table E.1-1).
IDENTIFYING_KEYWORDS = {
    "PatientName",
    "PatientID",
    "OtherPatientIDs",
    "OtherPatientIDsSequence",
    "OtherPatientNames",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "PatientMotherBirthName",
    "MilitaryRank",
    "MedicalRecordLocator",
    "EthnicGroup",
    "Occupation",
    "AdditionalPatientHistory",
    "PatientComments",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "ReferringPhysicianName",
    "ReferringPhysicianIdentificationSequence",
    "PerformingPhysicianName",
    "PerformingPhysicianIdentificationSequence",
    "NameOfPhysiciansReadingStudy",
    "PhysiciansReadingStudyIdentificationSequence",
    "RequestingPhysician",
    "OperatorsName",
    "PhysiciansOfRecord",
    "AccessionNumber",
    "StudyID",
    "DeviceSerialNumber",
    "RequestedProcedureID",
    "ScheduledProcedureStepID",
    "PerformedProcedureStepID",
    "AdmissionID",
    "IssuerOfPatientID",
    "StudyComments",
    "ImageComments",
    "StudyDescription",
    "SeriesDescription",
    "ProtocolName",
    "DerivationDescription",
    "RequestAttributesSequence",
    "ContentSequence",
    "FrameComments",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
}


def _config(**changes: object) -> DeidConfig:
    return dataclasses.replace(DeidConfig(), **changes)


def _pseudonymizer(secret: bytes = SECRET, **changes: object) -> Pseudonymizer:
    return Pseudonymizer(secret, _config(**changes))


def _bundled() -> list[tuple[str, bytes, dict]]:
    out = []
    for path in sorted(TEST_FILES.iterdir()):
        if not path.is_file():
            continue
        data = path.read_bytes()
        try:
            header = parse_header(data, LOCATION_PREFIX + path.name)
        except ItemError:
            continue
        out.append((path.name, data, header))
    return out


BUNDLED = _bundled()


def _row(header: dict, name: str = "x.dcm") -> dict:
    """A scans candidate row: header columns plus the source columns."""
    return {
        **header,
        "source_uri": "file:///data/in/" + name,
        "archive_member": None,
        "size": 1,
        "sha256": "0" * 64,
        "container": "plain",
    }


def _read(data: bytes) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(data), force=True)


def _strings(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, bytes):
        return []
    if isinstance(value, str | pydicom.valuerep.PersonName):
        return [str(value)]
    if isinstance(value, list | tuple | pydicom.multival.MultiValue):
        return [s for v in value for s in _strings(v)]
    return []


def _identifying_values(ds: pydicom.Dataset) -> tuple[set[str], set[str]]:
    """(values that must not survive, values of attributes that are kept) of a data set."""
    forbidden: set[str] = set()
    kept: set[str] = set()

    def walk(d: pydicom.Dataset, inside_removed: bool) -> None:
        for elem in d:
            removed = inside_removed or (
                elem.keyword in IDENTIFYING_KEYWORDS
                or elem.tag.is_private
                or elem.VR in ("PN", "AE", "UR")
            )
            if elem.VR == "SQ":
                for item in elem.value or []:
                    walk(item, removed)
                continue
            values = _strings(elem.value)
            if elem.VR == "UI":
                values = [v for v in values if not v.startswith("1.2.840.10008.")]
                if elem.keyword not in CLASS_UID_KEYWORDS:
                    forbidden.update(values)
                    continue
            if elem.VR == "DA":
                forbidden.update(values)  # shifted or removed
                continue
            (forbidden if removed else kept).update(values)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom converts values lazily and warns then
        walk(ds, False)
        if getattr(ds, "file_meta", None):
            walk(ds.file_meta, False)
    return forbidden, kept


def _leaves(row: dict) -> set[str]:
    """Every string in the row: column values, JSON values, PN components."""
    out: set[str] = set()

    def walk(value: object) -> None:
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        elif isinstance(value, str):
            out.add(value.strip(" \x00"))
            out.update(p for p in re.split(r"[\^=\\]", value) if p)

    for column, value in row.items():
        walk(json.loads(value) if column == "header_json" and value else value)
        if not isinstance(value, str | dict | list) and value is not None:
            out.add(str(value))
    return out


def _row_text(row: dict) -> str:
    return json.dumps(row, default=str, sort_keys=True)


def test_bundled_files_parse():
    assert len(BUNDLED) > 30  # the checks below must see many real files


@pytest.mark.parametrize("name", [name for name, _, _ in BUNDLED])
def test_no_identifying_value_survives(name):
    _, data, header = next(b for b in BUNDLED if b[0] == name)
    out = _pseudonymizer().deidentify_row(_row(header, name))
    text = _row_text(out)
    forbidden, kept = _identifying_values(_read(data))
    for column in ("patient_id", "sop_instance_uid", "study_instance_uid", "series_instance_uid"):
        if header[column]:
            forbidden.add(header[column])
    if header["institution_name"]:
        forbidden.add(header["institution_name"])
    # Short codes ("M", "1", "CT") and values also held by a kept attribute cannot be judged.
    # A value leaks when an output string equals it, or (8+ characters) contains it.
    leaves = _leaves(out)
    leaks = sorted(
        v
        for v in (v.strip(" \x00") for v in forbidden - kept)
        if len(v) >= 4 and (v in leaves or (len(v) >= 8 and v in text))
    )
    assert not leaks, f"{name}: identifying values in the output: {leaks[:5]}"
    # The source location (which names the patient here) is not inside the header JSON.
    assert LOCATION_PREFIX not in (out["header_json"] or "")
    assert out["institution_name"] is None


def test_ct_small_typed_columns_are_pseudonymised():
    header = parse_header((TEST_FILES / "CT_small.dcm").read_bytes(), "CT_small.dcm")
    p = _pseudonymizer()
    out = p.deidentify_row(_row(header))
    assert out["patient_id"] == p.patient_key(header["patient_id"])
    assert re.fullmatch(r"[0-9a-f]{32}", out["patient_id"])
    for column in ("sop_instance_uid", "study_instance_uid", "series_instance_uid"):
        assert out[column] == p.uid(header[column]) != header[column]
    assert out["sop_class_uid"] == header["sop_class_uid"]  # a class, not an instance
    assert out["transfer_syntax_uid"] == header["transfer_syntax_uid"]
    assert out["manufacturer"] == "GE MEDICAL SYSTEMS"  # device identity kept by default
    assert out["station_name"] == header["station_name"]
    assert out["modality"] == "CT" and out["rows"] == 128
    assert out["source_uri"] == "file:///data/in/x.dcm"  # keys come after (locate)
    doc = json.loads(out["header_json"])
    assert doc["00100020"]["Value"] == [out["patient_id"]]
    assert doc["00080018"]["Value"] == [out["sop_instance_uid"]]
    assert doc["00020003"]["Value"] == [out["sop_instance_uid"]]  # meta agrees with data set
    assert "Value" not in doc["00100010"]  # Patient's Name: Z
    assert "00080080" not in doc  # Institution Name: X


def _all_uids(doc: dict) -> list[tuple[str, str]]:
    out = []
    for tag, element in doc.items():
        if element.get("vr") == "UI":
            out += [(tag, v) for v in element.get("Value", []) if v]
        if element.get("vr") == "SQ":
            for item in element.get("Value", []):
                out += _all_uids(item)
    return out


def test_uids_are_valid_and_only_class_uids_are_kept():
    p = _pseudonymizer()
    seen = 0
    for name, data, header in BUNDLED:
        out = p.deidentify_row(_row(header, name))
        forbidden, kept = _identifying_values(_read(data))
        originals = {v for v in forbidden - kept if "." in v}
        for tag, value in _all_uids(json.loads(out["header_json"])):
            seen += 1
            assert UID_RE.fullmatch(value), (name, tag, value)
            assert len(value) <= 64, (name, tag, value)
            assert all(c == "0" or not c.startswith("0") for c in value.split(".")), value
            assert value not in originals, (name, tag, value)
            assert value.startswith(("2.25.", "1.2.840.10008.")) or tag in {
                "00020012",  # Implementation Class UID (software)
                "0008010C",  # Coding Scheme UID
                "00080016",  # SOP Class UID (private classes)
                "00081150",  # Referenced SOP Class UID
                "00020002",
            }, (name, tag, value)
    assert seen > 100


def test_uid_shape():
    p = _pseudonymizer()
    for original in ("1.2.3", "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322 ", "9" * 64):
        new = p.uid(original)
        assert UID_RE.fullmatch(new) and len(new) <= 64
        assert new.startswith("2.25.") and not new[5:].startswith("0")
    assert p.uid("1.2.3") == p.uid("1.2.3\x00")  # padding is not part of the UID
    assert p.uid("") == ""


def test_same_secret_same_pseudonyms_everywhere():
    a, b = _pseudonymizer(), _pseudonymizer()
    shipped = pickle.loads(pickle.dumps(a))  # what an executor gets
    header = parse_header((TEST_FILES / "MR_small.dcm").read_bytes(), "MR_small.dcm")
    rows = [p.deidentify_row(_row(header)) for p in (a, b, shipped)]
    assert rows[0] == rows[1] == rows[2]
    assert a.uid("1.2.3.4") == shipped.uid("1.2.3.4")
    assert a.patient_key("PAT1") == shipped.patient_key("PAT1")
    assert a.date_shift_days("k") == shipped.date_shift_days("k")


def test_different_secret_different_pseudonyms():
    a, b = _pseudonymizer(), _pseudonymizer(OTHER_SECRET)
    header = parse_header((TEST_FILES / "MR_small.dcm").read_bytes(), "MR_small.dcm")
    ra, rb = a.deidentify_row(_row(header)), b.deidentify_row(_row(header))
    for column in ("patient_id", "sop_instance_uid", "study_instance_uid", "series_instance_uid"):
        assert ra[column] != rb[column]
    assert a.uid("1.2.3.4") != b.uid("1.2.3.4")
    shifts_a = [a.date_shift_days(a.patient_key(f"P{i}")) for i in range(20)]
    shifts_b = [b.date_shift_days(b.patient_key(f"P{i}")) for i in range(20)]
    assert shifts_a != shifts_b


def test_patient_key_scoped_by_issuer():
    p = _pseudonymizer()
    assert p.patient_key("123") != p.patient_key("123", "HOSPITAL_B")
    assert p.patient_key("123") == p.patient_key("123 ")


def test_date_shift_is_nonzero_and_bounded():
    p = _pseudonymizer(max_date_shift_days=30)
    shifts = {p.date_shift_days(p.patient_key(f"P{i}")) for i in range(500)}
    assert shifts <= set(range(-30, 0)) and len(shifts) > 20
    single = _pseudonymizer(max_date_shift_days=1)
    assert single.date_shift_days("anything") == -1


def _with_study_date(name: str, study_date: str) -> dict:
    ds = _read((TEST_FILES / name).read_bytes())
    ds.StudyDate = study_date
    ds.SeriesDate = study_date
    ds.SOPInstanceUID = ds.SOPInstanceUID + ".9"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return parse_header(buf.getvalue(), name)


def test_dates_shift_keeps_intervals_within_a_patient():
    p = _pseudonymizer()
    first = p.deidentify_row(_row(_with_study_date("CT_small.dcm", "20040119")))
    later = p.deidentify_row(_row(_with_study_date("CT_small.dcm", "20040129")))
    assert first["patient_id"] == later["patient_id"]
    assert (later["study_date"] - first["study_date"]).days == 10
    assert (later["study_datetime"] - first["study_datetime"]).days == 10
    shift = p.date_shift_days(first["patient_id"])
    assert shift < 0
    assert first["study_date"] == dt.date(2004, 1, 19) + dt.timedelta(days=shift)
    # The header JSON is shifted by the same offset as the typed columns.
    for row in (first, later):
        doc = json.loads(row["header_json"])
        assert doc["00080020"]["Value"] == [row["study_date"].strftime("%Y%m%d")]
        assert doc["00080030"]["Value"] == ["072730"]  # time of day kept
        assert doc["00280303"]["Value"] == ["MODIFIED"]
        assert "Value" not in doc["00100030"]  # birth date removed, not shifted
    assert first["study_time"] == "07:27:30"


def test_dates_removed_without_shift_option():
    p = _pseudonymizer(shift_dates=False)
    header = parse_header((TEST_FILES / "CT_small.dcm").read_bytes(), "CT_small.dcm")
    out = p.deidentify_row(_row(header))
    assert out["study_date"] is out["study_datetime"] is out["acquisition_datetime"] is None
    assert out["study_time"] is None
    doc = json.loads(out["header_json"])
    assert not [t for t, e in doc.items() if e.get("vr") in ("DA", "DT") and e.get("Value")]
    assert "Value" not in doc["00080030"]  # Study Time: Z
    assert doc["00280303"]["Value"] == ["REMOVED"]
    codes = [i["00080100"]["Value"][0] for i in doc["00120064"]["Value"]]
    assert "113107" not in codes


def test_deidentification_marks():
    p = _pseudonymizer(retain_patient_characteristics=True)
    for name, _, header in BUNDLED:
        doc = json.loads(p.deidentify_row(_row(header, name))["header_json"])
        assert doc["00120062"] == {"vr": "CS", "Value": ["YES"]}, name
        assert all(len(v) <= 64 for v in doc["00120063"]["Value"])  # LO
        codes = {i["00080100"]["Value"][0] for i in doc["00120064"]["Value"]}
        assert codes == {"113100", "113107", "113108", "113109"}, name
        assert all(i["00080102"]["Value"] == ["DCM"] for i in doc["00120064"]["Value"])
    basic = _pseudonymizer(shift_dates=False, keep_device_identity=False)
    doc = json.loads(basic.deidentify_row(_row(BUNDLED[0][2]))["header_json"])
    assert {i["00080100"]["Value"][0] for i in doc["00120064"]["Value"]} == {"113100"}


def test_patient_characteristics_option():
    header = parse_header((TEST_FILES / "CT_small.dcm").read_bytes(), "CT_small.dcm")
    plain = json.loads(_pseudonymizer().deidentify_row(_row(header))["header_json"])
    kept = json.loads(
        _pseudonymizer(retain_patient_characteristics=True).deidentify_row(_row(header))[
            "header_json"
        ]
    )
    assert "Value" not in plain["00100040"]  # Patient's Sex: Z
    assert kept["00100040"]["Value"] == ["O"]


def test_device_identity_removed_when_not_kept():
    header = parse_header((TEST_FILES / "CT_small.dcm").read_bytes(), "CT_small.dcm")
    out = _pseudonymizer(keep_device_identity=False).deidentify_row(_row(header))
    assert out["station_name"] is out["manufacturer"] is out["manufacturer_model_name"] is None
    doc = json.loads(out["header_json"])
    assert not {"00081010", "00080070", "00081090"} & set(doc)
    assert "GE MEDICAL" not in out["header_json"]


def test_private_tags_removed_unless_safe():
    header = parse_header((TEST_FILES / "CT_small.dcm").read_bytes(), "CT_small.dcm")
    original = json.loads(header["header_json"])
    private = sorted(t for t in original if int(t[:4], 16) % 2 == 1)
    assert "00091001" in private and "00090010" in private

    out = json.loads(_pseudonymizer().deidentify_row(_row(header))["header_json"])
    assert not [t for t in out if int(t[:4], 16) % 2 == 1]

    safe = _pseudonymizer(safe_private_tags=["(0009,1001)"])
    out = json.loads(safe.deidentify_row(_row(header))["header_json"])
    assert sorted(t for t in out if int(t[:4], 16) % 2 == 1) == ["00090010", "00091001"]
    assert out["00091001"] == original["00091001"]

    with pytest.raises(ConfigError, match="safe_private_tags"):
        _pseudonymizer(safe_private_tags=["(0008,0080)"])


def test_bulk_data_uri_points_at_pseudonymised_instance():
    header = parse_header(
        (TEST_FILES / "CT_small.dcm").read_bytes(), LOCATION_PREFIX + "CT_small.dcm"
    )
    out = _pseudonymizer().deidentify_row(_row(header))
    doc = json.loads(out["header_json"])
    assert doc["7FE00010"]["BulkDataURI"] == f"deid:{out['sop_instance_uid']}#7FE00010"
    assert "DOE_JOHN" not in out["header_json"]


def test_sequences_are_cleaned_recursively():
    ds = _read((TEST_FILES / "CT_small.dcm").read_bytes())
    item = pydicom.Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    item.ReferencedSOPInstanceUID = "1.2.999.42.7"
    item.PersonName = "Smith^Nested"
    item.ObservationDateTime = "20040119101010.5+0100"
    ds.ReferencedImageSequence = [item]
    # Not listed in Table E.1-1: removed by VR (PN, AE, UR), the JSON keeps no trace.
    item.EvaluatorName = "Jones^Evaluator"
    ds.RetrieveAETitle = "HOSPPACS1"
    ds.RetrieveURL = "https://pacs.example.org/studies/1.2.999.42"
    ds.OtherPatientIDsSequence = [pydicom.Dataset()]
    ds.OtherPatientIDsSequence[0].PatientID = "OTHER-ID-77"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    p = _pseudonymizer()
    out = p.deidentify_row(_row(parse_header(buf.getvalue(), "x")))
    doc = json.loads(out["header_json"])
    ref = doc["00081140"]["Value"][0]
    assert ref["00081150"]["Value"] == ["1.2.840.10008.5.1.4.1.1.2"]
    assert ref["00081155"]["Value"] == [p.uid("1.2.999.42.7")]  # resolves to the new SOP UID
    # Person Name (0040,A123) is D in Table E.1-1 2026c: a dummy, the same as at top level.
    assert ref["0040A123"]["Value"] == [{"Alphabetic": "ANONYMIZED"}]
    shift = p.date_shift_days(out["patient_id"])
    expected = (dt.date(2004, 1, 19) + dt.timedelta(days=shift)).strftime("%Y%m%d")
    assert ref["0040A032"]["Value"] == [expected + "101010.5+0100"]
    assert "00101002" not in doc
    assert "Value" not in ref["00142006"]
    assert "00080054" not in doc and "00081190" not in doc
    for secret_text in (
        "Smith",
        "Jones",
        "HOSPPACS1",
        "pacs.example",
        "OTHER-ID-77",
        "1.2.999.42",
        "20040119",
    ):
        assert secret_text not in out["header_json"]


def test_unknown_column_is_refused():
    header = parse_header((TEST_FILES / "CT_small.dcm").read_bytes(), "CT_small.dcm")
    with pytest.raises(ValueError, match="patient_name"):
        _pseudonymizer().deidentify_row({**_row(header), "patient_name": "Doe^John"})


def test_repr_does_not_show_the_secret():
    assert SECRET.decode() not in repr(_pseudonymizer())


# --------------------------------------------------------------------------------------
# Secret resolution
# --------------------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    monkeypatch.delenv("MEDSPARK_DEID_SECRET", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    return tmp_path


def test_secret_file_generated_once_with_owner_only_mode(clean_env, caplog):
    caplog.set_level("WARNING", logger="medspark")
    first = resolve_secret(DeidConfig())
    path = clean_env / "xdg" / "medspark" / "deid_secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert re.fullmatch(rb"[0-9a-f]{64}", first)
    (said,) = [r.getMessage() for r in caplog.records]  # one warning, naming the file
    assert str(path) in said and "back" in said
    caplog.clear()
    assert resolve_secret(DeidConfig()) == first  # reused
    assert caplog.records == []


def test_env_var_wins(clean_env, monkeypatch):
    secret_file = clean_env / "s"
    secret_file.write_text("from-file\n")
    secret_file.chmod(0o600)
    monkeypatch.setenv("MEDSPARK_DEID_SECRET", "from-env")
    config = DeidConfig(secret_file=str(secret_file))
    assert resolve_secret(config) == b"from-env"
    monkeypatch.setenv("MEDSPARK_DEID_SECRET", "")  # empty: ignored
    assert resolve_secret(config) == b"from-file"
    assert not (clean_env / "xdg").exists()  # nothing generated


def test_missing_secret_file_names_the_path(clean_env):
    missing = clean_env / "nope" / "secret"
    with pytest.raises(ConfigError, match=re.escape(str(missing))):
        resolve_secret(DeidConfig(secret_file=str(missing)))


def test_group_readable_secret_file_warns(clean_env):
    secret_file = clean_env / "s"
    secret_file.write_text("shared")
    os.chmod(secret_file, 0o644)
    with pytest.warns(UserWarning, match="chmod 600"):
        assert resolve_secret(DeidConfig(secret_file=str(secret_file))) == b"shared"


def test_disabled_config_gives_no_pseudonymizer(clean_env):
    assert pseudonymizer_from_config(DeidConfig(enabled=False)) is None
    assert not (clean_env / "xdg").exists()


# --------------------------------------------------------------------------------------
# Spark
# --------------------------------------------------------------------------------------


@pytest.mark.spark
def test_every_scans_column_is_classified_for_de_identification():
    """deidentify_row raises on a column it does not know: the pass gives it exactly these."""
    from medspark.dicom.deid import HANDLED_COLUMNS, PASSTHROUGH_COLUMNS
    from medspark.tables.schemas import HEADER_FIELDS, SOURCE_FIELDS

    names = {f.name for f in HEADER_FIELDS + SOURCE_FIELDS}
    assert names - PASSTHROUGH_COLUMNS - HANDLED_COLUMNS == set()
    p = _pseudonymizer()
    with pytest.raises(ValueError, match="unclassified_column"):
        p.deidentify_row({"unclassified_column": 1})


# ------------------------------------------------------------------ locations


def test_locate_puts_keys_in_place_of_paths_and_messages():
    p = _pseudonymizer()
    uri, member = "file:///export/DOE%5EJOHN_12345/pacs.zip", "DOE^JOHN/IM0001"
    row = {
        "source_uri": uri,
        "archive_member": member,
        "error_message": f"{uri}!{member}: truncated (read /export/DOE^JOHN_12345/pacs.zip)",
    }
    p.locate(row)
    uri_key, member_key = p.location_keys(uri, member)
    assert re.fullmatch(r"loc-[0-9a-f]{32}", uri_key)
    assert re.fullmatch(r"member-[0-9a-f]{32}", member_key)
    assert (row["source_uri"], row["archive_member"]) == (uri_key, member_key)
    assert (row["original_source_uri"], row["original_archive_member"]) == (uri, member)
    assert row["error_message"] == f"{uri_key}!{member_key}: truncated (read {uri_key})"
    assert "DOE" not in row["error_message"]
    # Stable across calls and processes (HMAC of the path); the member key covers the archive;
    # another secret gives other keys.
    assert p.location_keys(uri, member) == (uri_key, member_key)
    assert p.location_keys("file:///other.zip", member)[1] != member_key
    assert _pseudonymizer(b"another secret" * 3).location_keys(uri, None)[0] != uri_key
    assert p.location_keys(uri, None) == (uri_key, None)


def test_keep_paths_keeps_paths():
    p = _pseudonymizer(keep_paths=True)
    row = {
        "source_uri": "file:///DOE/x.dcm",
        "archive_member": None,
        "message": "file:///DOE/x.dcm",
    }
    p.locate(row)
    assert row["source_uri"] == row["original_source_uri"] == "file:///DOE/x.dcm"
    assert row["message"] == "file:///DOE/x.dcm"
