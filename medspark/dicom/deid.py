"""De-identification of analyst tables: DICOM PS3.15 Annex E, Basic Application Level
Confidentiality Profile, applied to the ``scans`` rows and their DICOM JSON header.

Layers:

* :func:`resolve_secret` finds the secret that keys every pseudonym (environment variable,
  secret file, or a file generated once in the user's config directory).
* :class:`Pseudonymizer` is the pure-Python core (no Spark): consistent UIDs
  (:meth:`~Pseudonymizer.uid`), pseudonymous patient keys, per-patient date shifts, the profile
  applied to a DICOM JSON document (:meth:`~Pseudonymizer.deidentify_dataset_json`) and to one
  ``scans`` row (:meth:`~Pseudonymizer.deidentify_row`). It is picklable and is shipped to
  executors as part of the task closure.
* :func:`locate_sources` and :func:`restore_sources` are thin Spark wrappers (the pass of
  :mod:`medspark.onepass` calls :meth:`Pseudonymizer.deidentify_row` on each item itself).

Everything is a keyed hash (HMAC-SHA256) of the original value with the secret: the same input
and secret give the same pseudonym on every executor and in every run, so re-ingesting a file
updates its row instead of adding one, and studies from different runs stay linked. Whoever
holds the secret and an original value can confirm a pseudonym; nobody can invert one. A change
of secret therefore changes every pseudonym (all keys of the ``scans`` table): keep it.

The attribute actions are those of PS3.15 Table E.1-1, machine-read and stored as data with
its edition (:mod:`medspark.dicom.deid_table`, ``deid_e1_1.json``; edition 2026c); this module
holds only the logic. :data:`MEDSPARK_RULES` adds a few rules that are stricter than the table.
The codes are those of Table E.1-1:

* ``X`` remove; ``Z`` replace with a zero-length value; ``D`` replace with a dummy value;
  ``U`` replace with a consistent UID; ``K`` keep; ``C`` clean (for dates: shift).

Choices, deliberate for analyst tables (no DICOM object is written back, so Type 1/2
conformance of the JSON does not matter, while leaking does):

* ``D`` gives a dummy of the element's VR (``ANONYMIZED``, ``19000101``, 0, an empty sequence;
  a consistent UID for UI), except Patient ID (0010,0020), whose dummy is the pseudonymous
  patient key (analysts count patients with it).
* Combined actions (``X/Z``, ``X/D``, ``Z/D``, ``X/Z/D``) take the first, strictest choice;
  ``X/Z/U*`` reference sequences (Referenced Image (0008,1140), Source Image (0008,2112), ...)
  are kept and cleaned recursively, their UIDs replaced (the ``U`` choice), so references
  between pseudonymised instances still resolve.
* Every attribute inside a sequence item gets the same action as at top level, at any depth.
* Options: Retain Longitudinal Temporal Information with Modified Dates (``shift_dates``),
  Retain Patient Characteristics and Retain Device Identity, each from its column of the
  table. An option's ``C`` on free text removes it (medspark cleans no text). Retain Device
  Identity keeps station, manufacturer and model but never a serial number, device id or
  device UID (:data:`_DEVICE_ID_NAME`). Clean Descriptors, Clean Structured Content, Clean
  Graphics, Retain UIDs and Retain Institution Identity are not offered: those attributes get
  their Basic Profile action.
* Every UI value is replaced (``U``) except UIDs defined by DICOM (root 1.2.840.10008.) and
  attributes that hold class, syntax or coding-scheme UIDs (:data:`KEPT_UID_TAGS`), not only the
  UIDs listed in E.1-1: a UID from the hospital's root is a link back to its PACS.
* Every PN value (person name), AE title and UR (URL) value is removed (or emptied), listed or
  not, unless the table gives it a dummy: names of staff, the hospital's application entities
  and retrieve URLs (which carry original UIDs) identify the source. Stricter than E.1-1.
* Dates (VR DA, DT) anywhere are shifted by the patient's offset with ``shift_dates`` (Retain
  Longitudinal Temporal Information with Modified Dates Option, E.3.6), else removed; the
  option's "C" is implemented as a whole-day shift, so times (VR TM) are kept as they are. With
  ``shift_dates`` off, the times that E.1-1 lists (Study Time (0008,0030), ...) get their
  Basic Profile action with their dates. Patient's Birth Date (0010,0030) is emptied in every
  case (E.1-1 gives no option that keeps it); Patient's Age (0010,1010) is the option that
  retains age.
* Burned-in text in pixels is handled by preprocessing (``deid.burned_in``), not here: this
  module sees the header only.
* Free text in attributes that E.1-1 does not list (e.g. a site putting a name into Body Part
  Examined (0018,0015)) is not detected: the profile assumes standard use of attributes.
* Private attributes (odd group) are removed unless listed in ``safe_private_tags`` (Retain
  Safe Private Option, E.3.10), matched by tag with its block byte only: the private creator
  string is not checked, so a safe list must only name tags from the vendors actually ingested.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import stat
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medspark.config import DeidConfig
from medspark.dicom.deid_table import ActionTable, load_table
from medspark.errors import ConfigError

LOG = logging.getLogger(__name__)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

SECRET_FILE_NAME = "deid_secret"

#: Columns of error rows whose text names the file (``ingest_errors.message`` and the
#: ``error_message`` of rows before they are split into tables).
LOCATION_MESSAGES = ("message", "error_message")

# Action codes of PS3.15 Table E.1-1.
REMOVE = "X"
EMPTY = "Z"
DUMMY = "D"
KEEP = "K"
CLEAN = "C"
UID = "U"

# Option columns of Table E.1-1 that medspark offers (see medspark.dicom.deid_table).
DATES = "retain_modified_dates"  # Retain Longitudinal Temporal Information with Modified Dates
PATIENT = "retain_patient_characteristics"  # Retain Patient Characteristics
DEVICE = "retain_device_identity"  # Retain Device Identity

#: medspark's own rules, applied before Table E.1-1: tag -> (keyword, action, option or "").
#: Each is stricter than the table or fills a gap it leaves for analyst tables.
MEDSPARK_RULES: dict[str, tuple[str, str, str]] = {
    # Z in E.1-1; the dummy here is the pseudonymous patient key (analysts count patients).
    "00100020": ("PatientID", DUMMY, ""),
    # Not in E.1-1 (kept by the Basic Profile); together with Station Name they name the
    # scanner, so medspark keeps them only with Retain Device Identity.
    "00080070": ("Manufacturer", KEEP, DEVICE),
    "00081090": ("ManufacturerModelName", KEEP, DEVICE),
    # Not in the 2026c table as machine-read; patient identity or history, removed as the
    # hand-typed table of earlier medspark versions did, so no attribute became less strict.
    "00100024": ("IssuerOfPatientIDQualifiersSequence", REMOVE, ""),
    "00100033": ("PatientBirthDateInAlternativeCalendar", REMOVE, ""),
    "00100034": ("PatientDeathDateInAlternativeCalendar", REMOVE, ""),
    "00100035": ("PatientAlternativeCalendar", REMOVE, ""),
    "00381234": ("ReferencedPatientAliasSequence", REMOVE, ""),
    "00203404": ("ModifyingDeviceManufacturer", REMOVE, ""),
    # Not in E.1-1; an issuer names the hospital that assigned the accession number.
    "00080051": ("IssuerOfAccessionNumberSequence", REMOVE, ""),
    # Not in E.1-1; would carry original values (encrypted, but with the hospital's keys).
    "04000500": ("EncryptedAttributesSequence", REMOVE, ""),
    # File meta (PS3.10; E.1-1 covers the data set): the application entities that sent and
    # received the file name the hospital's systems; private information is a vendor's.
    "00020016": ("SourceApplicationEntityTitle", REMOVE, ""),
    "00020017": ("SendingApplicationEntityTitle", REMOVE, ""),
    "00020018": ("ReceivingApplicationEntityTitle", REMOVE, ""),
    "00020100": ("PrivateInformationCreatorUID", REMOVE, ""),
    "00020102": ("PrivateInformation", REMOVE, ""),
}

#: Device identifiers that Retain Device Identity would keep but medspark removes always: a
#: serial number or device id names one machine in one hospital. Chosen from the table's own
#: names, so a new edition's identifiers are covered without a hand-typed list.
_DEVICE_ID_NAME = re.compile(r"\b(Serial Number|ID|UID|Identifier)\b")


#: UI attributes whose value names a class, syntax, scheme or template, not an instance: kept.
#: (Any value under the DICOM root 1.2.840.10008. is kept too, wherever it appears.)
KEPT_UID_TAGS: frozenset[str] = frozenset(
    {
        "00020002",  # Media Storage SOP Class UID
        "00020010",  # Transfer Syntax UID
        "00020012",  # Implementation Class UID (the writing software, not the site)
        "00041510",  # Referenced SOP Class UID in File
        "00041512",  # Referenced Transfer Syntax UID in File
        "00080016",  # SOP Class UID
        "0008001A",  # Related General SOP Class UID
        "0008001B",  # Original Specialized SOP Class UID
        "00080062",  # SOP Classes in Study
        "0008010C",  # Coding Scheme UID
        "00080117",  # Context UID
        "00080118",  # Mapping Resource UID
        "00081150",  # Referenced SOP Class UID
    }
)

#: Patient Identity Removed (0012,0062), De-identification Method (0012,0063) and its Code
#: Sequence (0012,0064), Longitudinal Temporal Information Modified (0028,0303).
TAG_IDENTITY_REMOVED = "00120062"
TAG_DEID_METHOD = "00120063"
TAG_DEID_METHOD_CODES = "00120064"
TAG_LONGITUDINAL_MODIFIED = "00280303"
TAG_PATIENT_ID = "00100020"
TAG_SOP_INSTANCE_UID = "00080018"
TAG_MEDIA_SOP_INSTANCE_UID = "00020003"

#: CID 7050 De-identification Method codes (scheme DCM) written to (0012,0064).
CODE_BASIC_PROFILE = ("113100", "Basic Application Confidentiality Profile")
CODE_MODIFIED_DATES = ("113107", "Retain Longitudinal Temporal Information Modified Dates Option")
CODE_PATIENT_CHARACTERISTICS = ("113108", "Retain Patient Characteristics Option")
CODE_DEVICE_IDENTITY = ("113109", "Retain Device Identity Option")
CODE_SAFE_PRIVATE = ("113111", "Retain Safe Private Option")

_DICOM_UID_ROOT = "1.2.840.10008."
_MAX_UID_LEN = 64
# VRs whose every value identifies a person, an application entity or a location of the source.
_ALWAYS_REMOVED_VRS = {"PN": EMPTY, "AE": REMOVE, "UR": REMOVE}
_DATE_VRS = ("DA", "DT")
#: Dummy values (Table E.1-1 ``D``) by VR; a VR not listed is emptied instead.
DUMMY_TEXT = "ANONYMIZED"
_DUMMY_VALUES: dict[str, Any] = {
    **dict.fromkeys(("AE", "CS", "SH", "LO", "ST", "LT", "UT", "UC", "UR"), DUMMY_TEXT),
    "PN": {"Alphabetic": DUMMY_TEXT},
    "DA": "19000101",
    "DT": "19000101000000",
    "TM": "000000",
    "AS": "000Y",
    "IS": 0,
    "DS": 0,
    **dict.fromkeys(("US", "SS", "UL", "SL", "UV", "SV", "FL", "FD"), 0),
}

#: ``scans`` columns and what :meth:`Pseudonymizer.deidentify_row` does with them. Anything else
#: is refused: a new column must be classified here before it can reach an analyst table.
UID_COLUMNS = ("sop_instance_uid", "study_instance_uid", "series_instance_uid")
DEVICE_COLUMNS = ("station_name", "manufacturer", "manufacturer_model_name")
PASSTHROUGH_COLUMNS = frozenset(
    {
        # Class/syntax UIDs and image geometry: no identity.
        "sop_class_uid",
        "transfer_syntax_uid",
        "modality",
        "body_part_examined",
        "rows",
        "columns",
        "number_of_frames",
        "samples_per_pixel",
        "bits_allocated",
        "bits_stored",
        "photometric_interpretation",
        "pixel_spacing",
        "imager_pixel_spacing",
        "slice_thickness",
        "image_position_patient",
        "image_orientation_patient",
        "has_pixels",
        # Source fields: location keys by the time rows reach a table (Pseudonymizer.locate;
        # hospital exports often name folders after the patient, /export/DOE_JOHN_1234567/),
        # the paths with deid.keep_paths.
        "source_uri",
        "archive_member",
        # size and SHA-256 of the original bytes: not identifying by themselves, but the hash
        # lets whoever holds the original file confirm it is in the table.
        "size",
        "sha256",
        # plain, zip, tar or gzip: the kind of file, nothing of its content.
        "container",
        # Bookkeeping columns of the written table.
        "run_id",
        "ingested_at",
    }
)
HANDLED_COLUMNS = frozenset(
    {
        *UID_COLUMNS,
        *DEVICE_COLUMNS,
        "patient_id",
        "study_date",
        "study_time",
        "study_datetime",
        "acquisition_datetime",
        "institution_name",
        "header_json",
    }
)


# --------------------------------------------------------------------------------------
# Secret
# --------------------------------------------------------------------------------------


def default_secret_path() -> Path:
    """``$XDG_CONFIG_HOME/medspark/deid_secret``, ``~/.config/medspark/deid_secret`` if unset.

    The XDG Base Directory specification says a relative XDG_CONFIG_HOME is invalid and must be
    ignored; so is an empty one.
    """
    base = os.environ.get("XDG_CONFIG_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".config"
    return root / "medspark" / SECRET_FILE_NAME


def _read_secret_file(path: Path) -> bytes:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        warnings.warn(
            f"de-identification secret {path} is accessible by group or others "
            f"(mode {stat.S_IMODE(mode):04o}); restrict it with: chmod 600 {path}",
            UserWarning,
            stacklevel=3,
        )
    secret = path.read_bytes().strip()
    if not secret:
        raise ConfigError("deid.secret_file", str(path), "a file holding a non-empty secret")
    return secret


def _create_secret_file(path: Path) -> bytes:
    """Write 32 random bytes (hex) to ``path`` with mode 0600, unless another process won.

    The file is written under a temporary name and published with ``os.link``, which fails
    when the target exists: two processes starting at once never see a half-written secret,
    and both end up with the one that was published first.
    """
    created_dir = not path.parent.exists()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if created_dir:
        os.chmod(path.parent, 0o700)  # mkdir's mode is filtered by the umask
    secret = secrets.token_hex(32).encode("ascii")
    fd, tmp = tempfile.mkstemp(prefix=".deid_secret.", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(secret + b"\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return _read_secret_file(path)
    finally:
        os.unlink(tmp)
    LOG.warning(
        "created the de-identification secret %s (mode 0600); keep it and back it up: without "
        "it pseudonyms and date shifts cannot be reproduced",
        path,
    )
    return secret


def resolve_secret(config: DeidConfig) -> bytes:
    """The secret that keys every pseudonym and date shift.

    In order: the environment variable named by ``config.secret_env`` when set and non-empty;
    else ``config.secret_file``, which must exist; else :func:`default_secret_path`, created
    with 64 random hex digits (mode 0600, directory 0700) on first use, with one line on
    stderr saying where, and reused afterwards. A secret file that group or others can read is
    used with a warning (refusing it would stop a running pipeline over a chmod).
    """
    if config.secret_env:
        value = os.environ.get(config.secret_env, "")
        if value.strip():
            return value.strip().encode("utf-8")
    if config.secret_file:
        path = Path(config.secret_file).expanduser()
        if not path.is_file():
            raise ConfigError(
                "deid.secret_file",
                str(path),
                f"an existing file holding the secret (not found: {path})",
            )
        return _read_secret_file(path)
    path = default_secret_path()
    if path.exists():
        return _read_secret_file(path)
    return _create_secret_file(path)


# --------------------------------------------------------------------------------------
# Pseudonymizer
# --------------------------------------------------------------------------------------


def _parse_private_tag(text: str) -> str:
    tag = re.sub(r"[\s(),]", "", text).upper()
    if not re.fullmatch(r"[0-9A-F]{8}", tag) or int(tag[:4], 16) % 2 == 0:
        raise ConfigError(
            "deid.safe_private_tags", text, '"(gggg,eeee)" with an odd (private) group gggg'
        )
    return tag


def _is_private(tag: str) -> bool:
    return int(tag[:4], 16) % 2 == 1


@dataclasses.dataclass(frozen=True)
class _Shift:
    days: int | None  # None: dates are removed


class Pseudonymizer:
    """Keyed pseudonyms and the Annex E profile, pure Python; picklable for Spark executors.

    The secret is never part of ``repr`` (Spark and pytest print objects in error reports).
    """

    def __init__(self, secret: bytes, config: DeidConfig) -> None:
        if not secret:
            raise ValueError("the de-identification secret is empty")
        self._secret = bytes(secret)
        self.config = config
        self._safe_private = frozenset(_parse_private_tag(t) for t in config.safe_private_tags)
        # Private creator elements (gggg,00xx) of the blocks that hold safe tags (gggg,xxee).
        self._safe_creators = frozenset(f"{t[:4]}00{t[4:6]}" for t in self._safe_private)

    @property
    def _table(self) -> ActionTable:
        # Loaded once per process (cached), not pickled into every task's closure.
        return load_table()

    def __repr__(self) -> str:
        return f"Pseudonymizer(secret=<{len(self._secret)} bytes>, config={self.config!r})"

    # -- keyed hashes ------------------------------------------------------------------

    def _mac(self, domain: str, *parts: str) -> bytes:
        # Domain separation: a UID, a patient id and a date-shift input never collide.
        message = "\x00".join((domain, *parts)).encode("utf-8")
        return hmac.digest(self._secret, message, hashlib.sha256)

    def uid(self, original: str) -> str:
        """Consistent replacement UID: ``2.25.`` + a 128-bit integer from HMAC-SHA256.

        PS3.5 B.2 allows UIDs under the root 2.25 formed from a UUID as one decimal integer;
        the first 128 bits of the keyed hash are given the UUID version 8 ("custom", RFC 9562)
        and variant bits, so the integer is a well-formed UUID. At most 39 digits: the UID is
        at most 44 characters, with no leading zero in any component. Trailing padding
        (space, NUL) of the original is ignored; an empty original stays empty.
        """
        text = original.strip(" \x00")
        if not text:
            return ""
        value = int.from_bytes(self._mac("uid", text)[:16], "big")
        value = (value & ~(0xF << 76)) | (0x8 << 76)  # version 8
        value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122/9562 variant
        return f"2.25.{value}"

    def patient_key(self, patient_id: str | None, issuer: str | None = None) -> str:
        """Pseudonymous patient key: 32 hex digits of HMAC-SHA256 over Patient ID (0010,0020).

        ``issuer`` is Issuer of Patient ID (0010,0021), which scopes the id when several
        assigning authorities are mixed. :meth:`deidentify_row` does not pass it: sites fill it
        inconsistently across modalities, and one patient split into two keys also gets two
        date shifts. A missing Patient ID gives the key of the empty id (one shared "unknown
        patient"), so such rows still get a stable date shift.
        """
        pid = (patient_id or "").strip(" \x00")
        scope = (issuer or "").strip(" \x00")
        return self._mac("patient", scope, pid).hex()[:32]

    def erasure_hash(self, scope: str, pseudonym: str) -> str:
        """The keyed hash an erasure is recorded by (``restricted_erasures.subject_hash``):
        of the patient key (``scope`` ``patient``) or the study's pseudonymous Study Instance
        UID (``study``), in a domain of its own, so it equals neither the key nor any other
        value medspark writes, and no one without the secret can link it to a patient."""
        return "erased-" + self._mac("erasure", scope, pseudonym).hex()[:32]

    def date_shift_days(self, patient_key: str) -> int:
        """Per-patient date offset in ``[-max_date_shift_days, -1]``: into the past, never 0.

        Keyed by the secret, so the offset cannot be recomputed from the patient key alone.
        """
        span = self.config.max_date_shift_days
        n = int.from_bytes(self._mac("dateshift", patient_key)[:8], "big")
        return -(n % span) - 1

    def _shift(self, patient_key: str) -> _Shift:
        if not self.config.shift_dates:
            return _Shift(None)
        return _Shift(self.date_shift_days(patient_key))

    # -- DICOM JSON --------------------------------------------------------------------

    def _action(self, tag: str) -> str | None:
        """The effective action for ``tag``, options applied; None when no rule lists it.

        :data:`MEDSPARK_RULES` first, then Table E.1-1 (:mod:`medspark.dicom.deid_table`,
        repeating groups such as Curve Data (50xx,xxxx) included). An option that is on and
        has an action in the attribute's row replaces the Basic Profile action: ``K`` keeps,
        ``C`` cleans (dates: shifted; anything else: removed, as medspark cleans no free
        text). A combined Basic Profile action takes its strictest choice (``X/Z`` -> ``X``,
        ``Z/D`` -> ``Z``), except ``X/Z/U*``, which keeps the reference sequence and replaces
        its UIDs (``U``) so references between pseudonymised instances still resolve.
        """
        cfg = self.config
        rule = MEDSPARK_RULES.get(tag)
        if rule is not None:
            _, action, option = rule
            if option == DEVICE:
                return action if cfg.keep_device_identity else REMOVE
            return action
        entry = self._table.lookup(tag)
        if entry is None:
            return None
        if cfg.retain_patient_characteristics and (code := entry.option(PATIENT)):
            return KEEP if code == KEEP else REMOVE
        if (
            cfg.keep_device_identity
            and entry.option(DEVICE) == KEEP
            and not _DEVICE_ID_NAME.search(entry.name)
        ):
            return KEEP
        if cfg.shift_dates and entry.option(DATES) == CLEAN:
            return CLEAN
        if entry.basic == "X/Z/U*":
            return UID
        return entry.basic[0]

    def _shift_date(self, value: str, days: int) -> str | None:
        text = value.strip().replace(".", "")  # ACR-NEMA wrote YYYY.MM.DD
        if len(text) != 8 or not text.isdigit():
            return None
        try:
            day = dt.date(int(text[:4]), int(text[4:6]), int(text[6:8]))
        except ValueError:
            return None
        return (day + dt.timedelta(days=days)).strftime("%Y%m%d")

    def _shift_datetime(self, value: str, days: int) -> str | None:
        # DT: YYYYMMDD then optional time, fraction and &ZZXX offset, kept verbatim. A partial
        # DT (year or year-month only) cannot be shifted by days and is dropped.
        text = value.strip()
        shifted = self._shift_date(text[:8], days) if len(text) >= 8 else None
        return None if shifted is None else shifted + text[8:]

    def _dates(self, element: dict[str, Any], vr: str, shift: _Shift) -> dict[str, Any] | None:
        values = element.get("Value")
        if shift.days is None:
            return None
        if not values:
            return element
        fn = self._shift_date if vr == "DA" else self._shift_datetime
        out = [v2 for v in values if isinstance(v, str) and (v2 := fn(v, shift.days))]
        return {"vr": vr, "Value": out} if out else {"vr": vr}

    def _uid_value(self, tag: str, value: str) -> str:
        if tag in KEPT_UID_TAGS or value.startswith(_DICOM_UID_ROOT):
            return value
        return self.uid(value)

    def _clean(
        self, doc: dict[str, Any], shift: _Shift, patient_key: str, new_sop: str
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for tag, element in doc.items():
            tag = tag.upper()
            if not isinstance(element, dict):
                continue  # not DICOM JSON; dropped rather than trusted
            vr = element.get("vr", "UN")
            if tag[4:] == "0000":
                continue  # group lengths: meaningless once values change (PS3.18 F.2.1)
            if _is_private(tag):
                if tag in self._safe_private or tag in self._safe_creators:
                    out[tag] = self._element(tag, element, vr, shift, patient_key, new_sop)
                continue
            action = self._action(tag)
            if action == REMOVE:
                continue
            if action == EMPTY:
                out[tag] = {"vr": vr}
                continue
            if action == DUMMY:
                out[tag] = (
                    {"vr": vr, "Value": [patient_key]}
                    if tag == TAG_PATIENT_ID
                    else self._dummy(tag, element, vr)
                )
                continue
            if action == KEEP and vr not in ("SQ", "UI", *_DATE_VRS, *_ALWAYS_REMOVED_VRS):
                out[tag] = element
                continue
            if action == CLEAN and vr not in ("SQ", "UI", "TM", *_DATE_VRS):
                continue  # free text is not cleaned here: removed
            if vr == "TM" and action in (None, CLEAN):
                # Not listed, or shifted by whole days: the time of day stays true.
                out[tag] = element
                continue
            cleaned = self._element(tag, element, vr, shift, patient_key, new_sop)
            if cleaned is not None:
                out[tag] = cleaned
        return out

    def _element(
        self,
        tag: str,
        element: dict[str, Any],
        vr: str,
        shift: _Shift,
        patient_key: str,
        new_sop: str,
    ) -> dict[str, Any] | None:
        """Generic per-VR handling of an element the table keeps (or does not list)."""
        if "BulkDataURI" in element:
            # The URI names the source file (and so maybe the patient): point it at the
            # pseudonymised instance instead.
            return {"vr": vr, "BulkDataURI": f"deid:{new_sop}#{tag}"}
        if vr == "SQ":
            items = element.get("Value") or []
            return {
                "vr": vr,
                "Value": [
                    self._clean(item, shift, patient_key, new_sop)
                    for item in items
                    if isinstance(item, dict)
                ],
            }
        if vr == "UI":
            values = element.get("Value")
            if not values:
                return element
            return {
                "vr": vr,
                "Value": [self._uid_value(tag, v) if isinstance(v, str) else v for v in values],
            }
        if vr in _DATE_VRS:
            return self._dates(element, vr, shift)
        if vr in _ALWAYS_REMOVED_VRS:
            return {"vr": vr} if _ALWAYS_REMOVED_VRS[vr] == EMPTY else None
        return element

    def _dummy(self, tag: str, element: dict[str, Any], vr: str) -> dict[str, Any]:
        """Table E.1-1 ``D``: a value of the element's VR that carries nothing of the original.

        Sequences become empty; UIDs the consistent pseudonymous UID (references still
        resolve); binary values and AT are emptied (a dummy of bytes would still be bytes).
        """
        if vr == "SQ":
            return {"vr": vr, "Value": []}
        if vr == "UI":
            values = element.get("Value") or []
            return {"vr": vr, "Value": [self.uid(v) for v in values if isinstance(v, str)]}
        dummy = _DUMMY_VALUES.get(vr)
        return {"vr": vr} if dummy is None else {"vr": vr, "Value": [dummy]}

    def _method_marks(self) -> dict[str, Any]:
        cfg = self.config
        codes = [CODE_BASIC_PROFILE]
        names = ["DICOM PS3.15 E Basic Application Confidentiality Profile"]
        if cfg.shift_dates:
            codes.append(CODE_MODIFIED_DATES)
            names.append("Retain Longitudinal Temporal Info Modified Dates")
        if cfg.retain_patient_characteristics:
            codes.append(CODE_PATIENT_CHARACTERISTICS)
            names.append("Retain Patient Characteristics")
        if cfg.keep_device_identity:
            # Retains station, manufacturer and model; serial numbers are removed regardless.
            codes.append(CODE_DEVICE_IDENTITY)
            names.append("Retain Device Identity (no serial numbers)")
        if self._safe_private:
            codes.append(CODE_SAFE_PRIVATE)
            names.append("Retain Safe Private")
        names.append(f"medspark deid v2, PS3.15 {self._table.edition} Table E.1-1")
        marks: dict[str, Any] = {
            TAG_IDENTITY_REMOVED: {"vr": "CS", "Value": ["YES"]},
            # LO, VM 1-n: one value per profile/option, each within LO's 64 characters.
            TAG_DEID_METHOD: {"vr": "LO", "Value": names},
            TAG_DEID_METHOD_CODES: {
                "vr": "SQ",
                "Value": [
                    {
                        "00080100": {"vr": "SH", "Value": [code]},
                        "00080102": {"vr": "SH", "Value": ["DCM"]},
                        "00080104": {"vr": "LO", "Value": [meaning]},
                    }
                    for code, meaning in codes
                ],
            },
            TAG_LONGITUDINAL_MODIFIED: {
                "vr": "CS",
                "Value": ["MODIFIED" if cfg.shift_dates else "REMOVED"],
            },
        }
        return marks

    def deidentify_dataset_json(self, header_json: str, patient_key: str) -> str:
        """Apply the profile to one DICOM JSON document (PS3.18 Annex F), sequences included.

        Listed attributes get their Table E.1-1 action (see :meth:`_action` and the module
        docstring); instance UIDs are replaced with :meth:`uid`; dates are shifted by the
        patient's :meth:`date_shift_days` (or removed); private attributes are removed unless
        safe; bulk-data URIs point at the pseudonymised SOP Instance UID. The result is marked
        with Patient Identity Removed (0012,0062) "YES", De-identification Method (0012,0063)
        and Code Sequence (0012,0064) (CID 7050), and Longitudinal Temporal Information
        Modified (0028,0303) "MODIFIED" (dates shifted) or "REMOVED".
        """
        doc = json.loads(header_json)
        if not isinstance(doc, dict):
            raise ValueError("header_json is not a DICOM JSON object")
        sop = _first_value(doc, TAG_SOP_INSTANCE_UID) or _first_value(
            doc, TAG_MEDIA_SOP_INSTANCE_UID
        )
        new_sop = self.uid(sop) if sop else "unknown"
        out = self._clean(doc, self._shift(patient_key), patient_key, new_sop)
        out.update(self._method_marks())
        return json.dumps(out, sort_keys=True, separators=(",", ":"))

    # -- scans rows --------------------------------------------------------------------

    def deidentify_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """One ``scans`` row (typed columns + ``header_json``) de-identified; a new dict.

        ``patient_id`` becomes the patient key; the instance/series/study UIDs are replaced
        with :meth:`uid` (the same values as in the JSON); ``study_date``, ``study_datetime``
        and ``acquisition_datetime`` are shifted by the patient's offset (``None`` when dates
        are removed, and then ``study_time`` too, as Study Time (0008,0030) is Z in E.1-1);
        ``institution_name`` is removed (Institution Name (0008,0080), X/Z/D); station,
        manufacturer and model are kept unless ``keep_device_identity`` is off. Columns that
        carry no identity pass through, ``source_uri`` and ``archive_member`` included (see
        :data:`PASSTHROUGH_COLUMNS` for the risk). Any other column raises ``ValueError``: an
        unclassified column must not reach an analyst table by default.
        """
        unknown = sorted(set(row) - PASSTHROUGH_COLUMNS - HANDLED_COLUMNS)
        if unknown:
            raise ValueError(
                f"de-identification does not know the column(s) {unknown}; classify them in "
                "medspark.dicom.deid before writing them to an analyst table"
            )
        out = dict(row)
        key = self.patient_key(row.get("patient_id"))
        if "patient_id" in row:
            out["patient_id"] = key if row["patient_id"] is not None else None
        for column in UID_COLUMNS:
            if row.get(column) is not None:
                out[column] = self.uid(row[column])
        shift = self._shift(key)
        for column in ("study_date", "study_datetime", "acquisition_datetime"):
            if column in row:
                value = row[column]
                if value is None or shift.days is None:
                    out[column] = None
                else:
                    out[column] = value + dt.timedelta(days=shift.days)
        if "study_time" in row and shift.days is None:
            out["study_time"] = None
        if "institution_name" in row:
            out["institution_name"] = None
        if not self.config.keep_device_identity:
            for column in DEVICE_COLUMNS:
                if column in row:
                    out[column] = None
        if row.get("header_json") is not None:
            out["header_json"] = self.deidentify_dataset_json(row["header_json"], key)
        return out

    # -- locations -----------------------------------------------------------------------

    def location_keys(self, uri: str, member: str | None) -> tuple[str, str | None]:
        """The location key of a file or archive (``source_uri``) and of a member inside it
        (``archive_member``): ``loc-`` / ``member-`` and 32 hex digits of HMAC-SHA256, so the
        same path always gives the same key (re-runs match, keys stay unique) and nothing of
        the path can be read from it. The member key covers the archive too: two archives'
        ``IM0001`` get different keys."""
        uri_key = "loc-" + self._mac("location", uri).hex()[:32]
        if member is None:
            return uri_key, None
        return uri_key, "member-" + self._mac("member", uri, member).hex()[:32]

    def locate(self, row: dict[str, Any], messages: Sequence[str] = LOCATION_MESSAGES) -> None:
        """Put location keys in ``row``'s ``source_uri`` and ``archive_member`` (in place),
        the paths in ``original_source_uri`` / ``original_archive_member`` (bound for
        ``restricted_locations``), and the keys in place of the paths in its message columns.
        With ``deid.keep_paths`` the paths stay and the ``original_*`` columns repeat them."""
        uri, member = row.get("source_uri"), row.get("archive_member")
        row["original_source_uri"], row["original_archive_member"] = uri, member
        if uri is None or self.config.keep_paths:
            return
        uri_key, member_key = self.location_keys(uri, member)
        for column in messages:
            if row.get(column):
                row[column] = redact_location(row[column], uri, member, uri_key, member_key)
        row["source_uri"], row["archive_member"] = uri_key, member_key

    def phi_map_rows(self, row: dict[str, Any]) -> list[tuple[str, str, str]]:
        """``(kind, original, pseudonym)`` for the patient id and the three instance UIDs."""
        out: list[tuple[str, str, str]] = []
        if row.get("patient_id") is not None:
            out.append(("patient_id", row["patient_id"], self.patient_key(row["patient_id"])))
        for column in UID_COLUMNS:
            if row.get(column):
                out.append((column, row[column], self.uid(row[column])))
        return out


def redact_location(
    text: str, uri: str, member: str | None, uri_key: str, member_key: str | None
) -> str:
    """``text`` with the location's URI (and its local path, and the member path) replaced by
    their keys. Longest forms first, so ``uri!member`` becomes ``key!member_key``."""
    from urllib.parse import unquote, urlparse

    pairs = []
    if member is not None and member_key is not None:
        pairs.append((f"{uri}!{member}", f"{uri_key}!{member_key}"))
    pairs.append((uri, uri_key))
    if uri.startswith("file:"):
        path = unquote(urlparse(uri).path)
        pairs.append((path, uri_key))
    if member:
        pairs.append((member, member_key or ""))
    for old, new in pairs:
        text = text.replace(old, new)
    return text


def _first_value(doc: dict[str, Any], tag: str) -> str | None:
    element = doc.get(tag)
    if isinstance(element, dict):
        values = element.get("Value")
        if values and isinstance(values[0], str):
            return values[0]
    return None


def pseudonymizer_from_config(config: DeidConfig) -> Pseudonymizer | None:
    """The :class:`Pseudonymizer` for ``config``, or None when de-identification is disabled.

    Resolves the secret on the driver (it may create the secret file): call it once per job.
    """
    if not config.enabled:
        return None
    return Pseudonymizer(resolve_secret(config), config)


# --------------------------------------------------------------------------------------
# Spark
# --------------------------------------------------------------------------------------


#: The columns :func:`locate_sources` adds: where the item really is (for
#: ``restricted_locations``).
ORIGINAL_LOCATION = ("original_source_uri", "original_archive_member")


def locates(pseudonymizer: Pseudonymizer | None) -> bool:
    """Whether analyst tables get location keys: de-identification on, ``keep_paths`` off."""
    return pseudonymizer is not None and not pseudonymizer.config.keep_paths


def locate_sources(
    df: DataFrame, pseudonymizer: Pseudonymizer | None, message: str | None = None
) -> DataFrame:
    """``df`` with location keys in ``source_uri`` / ``archive_member`` (and in the text of
    the ``message`` column), the paths in :data:`ORIGINAL_LOCATION` columns
    (:meth:`Pseudonymizer.locate`). Without keys to put (:func:`locates` false) the paths stay
    and the ``original_*`` columns repeat them.

    One Arrow-batched Python UDF over the two (three) short string columns: the rest of the
    row does not travel to Python for it.
    """
    from pyspark.sql import functions as F

    if not locates(pseudonymizer):
        return df.withColumns(
            {
                "original_source_uri": F.col("source_uri"),
                "original_archive_member": F.col("archive_member"),
            }
        )
    p = pseudonymizer
    located_type = (
        "source_uri string, archive_member string, message string, "
        "original_source_uri string, original_archive_member string"
    )

    def locate_one(uri: str, member: str | None, text: str | None) -> dict[str, Any]:
        row = {"source_uri": uri, "archive_member": member, "message": text}
        p.locate(row, ("message",))
        return row

    located = F.udf(locate_one, located_type, useArrow=True)(
        F.col("source_uri"),
        F.col("archive_member"),
        F.col(message) if message else F.lit(None).cast("string"),
    )
    columns = ["source_uri", "archive_member", *ORIGINAL_LOCATION]
    out = df.withColumn("_located", located)
    out = out.withColumns({c: F.col(f"_located.{c}") for c in columns})
    if message:
        out = out.withColumn(message, F.col("_located.message"))
    return out.drop("_located")


def restore_sources(df: DataFrame, locations: DataFrame | None) -> DataFrame:
    """``df`` with the paths of its location keys back in ``source_uri`` / ``archive_member``
    (looked up in ``locations``, the ``restricted_locations`` table), to read the files again.
    A key with no row there stays as it is: rows written with ``deid.keep_paths``, or by a
    release before location keys, hold the path itself."""
    from pyspark.sql import functions as F

    if locations is None:
        return df
    paths = locations.select(
        F.col("source_uri").alias("_key_uri"),
        F.col("archive_member").alias("_key_member"),
        *ORIGINAL_LOCATION,
    )
    joined = df.join(
        paths,
        (df["source_uri"] == paths["_key_uri"])
        & df["archive_member"].eqNullSafe(paths["_key_member"]),
        "left",
    )
    return joined.withColumns(
        {
            "archive_member": F.when(
                F.col("original_source_uri").isNotNull(), F.col("original_archive_member")
            ).otherwise(F.col("archive_member")),
            "source_uri": F.coalesce("original_source_uri", "source_uri"),
        }
    ).drop("_key_uri", "_key_member", *ORIGINAL_LOCATION)
