"""``medspark serve``: a read-only DICOMweb view of the de-identified warehouse (PS3.18).

QIDO-RS (search) is answered from ``scans`` (read with delta-rs at start, no Spark), WADO-RS
(retrieve) with the files ``medspark export`` writes: each instance is made by the one function
:func:`medspark.dicom.instance.deidentified_instance` from the source, re-read through
``restricted_locations`` with the SHA-256 check (see :mod:`medspark.export`). The DICOM SEG
files ``medspark volumes`` wrote appear in their study, so a viewer overlays them.

Resources, under ``/dicomweb``:

- ``/studies``, ``/studies/{study}/series``, ``/studies/{study}/series/{series}/instances``
  (and ``/series``, ``/instances``, ``/studies/{study}/instances``): QIDO-RS with attribute
  matching (single value, comma-separated UID list, ``*``/``?`` wildcards, date ranges
  ``A-B``), ``limit``, ``offset``, ``includefield``;
- ``.../metadata`` of a study, series or instance: DICOM JSON, Pixel Data as a ``BulkDataURI``
  to its frames, other bulk values to ``.../bulkdata/{tag}``;
- a study, series or instance (``multipart/related; type="application/dicom"``), an
  instance's frames (``multipart/related; type="application/octet-stream"``, the transfer
  syntax of the file: native Explicit VR Little Endian, or the source's compressed syntax).

A request names UIDs only: they are looked up in the catalog built at start, never joined
into a path. Unknown UIDs get 404, a malformed UID or query 400, a missing or wrong bearer
token 401, each with one log line; errors never carry a traceback. The server binds
127.0.0.1 unless told otherwise, and refuses another address without ``--token``.
"""

from __future__ import annotations

import fnmatch
import hmac
import json
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medspark.config import PipelineConfig
from medspark.dicom.header import ItemError
from medspark.export import ScanSource, make_instances, scan_sources, segmentation_files

LOG = logging.getLogger(__name__)

UID_PATTERN = re.compile(r"[0-9]+(\.[0-9]+)*")
DICOM_JSON = "application/dicom+json"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
NATIVE_SYNTAXES = frozenset({"1.2.840.10008.1.2", EXPLICIT_LE})

#: Attributes returned at each level (tags of PS3.18 Table 10.6.3-3, -4, -5).
STUDY_TAGS = (
    "00080005", "00080020", "00080030", "00080050", "00080090", "00100010", "00100020",
    "00100030", "00100040", "0020000D", "00200010", "00081030",
)  # fmt: skip
SERIES_TAGS = ("00080060", "0020000E", "00200011", "0008103E", "00080021", "00080031")
INSTANCE_TAGS = ("00080016", "00080018", "00200013", "00280010", "00280011", "00280008")
#: Attributes medspark computes (not in any one header).
MODALITIES_IN_STUDY = "00080061"
STUDY_SERIES, STUDY_INSTANCES, SERIES_INSTANCES = "00201206", "00201208", "00201209"


class RequestError(Exception):
    """A request that cannot be answered: its HTTP status and the reason (one log line)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def check_uid(value: str, what: str) -> str:
    """``value`` if it is a UID (digits and dots, at most 64 characters), else a 400."""
    if len(value) > 64 or not UID_PATTERN.fullmatch(value):
        raise RequestError(400, f"{what} {value[:80]!r} is not a UID")
    return value


# -- the catalog ------------------------------------------------------------------------


@dataclass
class Entry:
    """One instance: its de-identified header (DICOM JSON, file meta left out) and how its
    file is made (a ``scans`` row) or found (a SEG file under the warehouse)."""

    study: str
    series: str
    sop: str
    header: dict[str, Any]
    source: ScanSource | None = None
    seg_path: Path | None = None


def _value(doc: dict[str, Any], tag: str) -> Any:
    values = (doc.get(tag) or {}).get("Value") or [None]
    return values[0]


@dataclass
class Catalog:
    """Every instance of the warehouse by study, series and SOP Instance UID."""

    instances: dict[str, Entry] = field(default_factory=dict)
    by_series: dict[str, list[str]] = field(default_factory=dict)
    by_study: dict[str, list[str]] = field(default_factory=dict)
    #: Study-level documents, computed on first use (the catalog does not change once built).
    study_docs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, entry: Entry) -> None:
        if entry.sop in self.instances:
            return
        self.study_docs.pop(entry.study, None)
        self.instances[entry.sop] = entry
        series = self.by_series.setdefault(entry.series, [])
        if not series:
            self.by_study.setdefault(entry.study, []).append(entry.series)
        series.append(entry.sop)

    def study(self, study: str) -> list[str]:
        check_uid(study, "study")
        if study not in self.by_study:
            raise RequestError(404, f"no study {study}")
        return self.by_study[study]

    def series(self, study: str, series: str) -> list[str]:
        check_uid(series, "series")
        if series not in self.study(study) or series not in self.by_series:
            raise RequestError(404, f"no series {series} in study {study}")
        return self.by_series[series]

    def instance(self, study: str, series: str, sop: str) -> Entry:
        check_uid(sop, "instance")
        if sop not in self.series(study, series):
            raise RequestError(404, f"no instance {sop} in series {series}")
        return self.instances[sop]


def load_catalog(config: PipelineConfig) -> Catalog:
    """The catalog of the warehouse: ``scans`` rows (read access to ``restricted_locations``
    is logged under ``serve``) and the SEG files of their series."""
    import pydicom

    catalog = Catalog()
    sources = scan_sources(config, function="serve")
    unaddressable = 0
    for s in sorted(sources, key=lambda s: s.sop_instance_uid):
        if not (s.study_instance_uid and s.series_instance_uid):
            unaddressable += 1  # no Study or Series Instance UID: no DICOMweb address
            continue
        doc = json.loads(s.header_json)
        header = {tag: v for tag, v in doc.items() if not tag.startswith("0002")}
        catalog.add(
            Entry(
                s.study_instance_uid or "",
                s.series_instance_uid or "",
                s.sop_instance_uid,
                header,
                s,
            )
        )
    if unaddressable:
        LOG.info("%d scan(s) without a study or series UID are not served", unaddressable)
    for path in segmentation_files(config, catalog.by_series):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        header = ds.to_json_dict(1024, lambda element: "")
        catalog.add(
            Entry(
                ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, header, seg_path=path
            )
        )
    return catalog


# -- QIDO-RS matching ---------------------------------------------------------------------


def _tag_of(key: str) -> str:
    """A query key (keyword like ``PatientID`` or tag like ``00100020``) as 8 hex digits."""
    from pydicom.datadict import tag_for_keyword

    if re.fullmatch(r"[0-9A-Fa-f]{8}", key):
        return key.upper()
    tag = tag_for_keyword(key)
    if tag is None:
        raise RequestError(400, f"unknown attribute {key[:80]!r} in the query")
    return f"{tag:08X}"


def _text_values(element: dict[str, Any] | None) -> list[str]:
    out = []
    for v in (element or {}).get("Value") or []:
        if isinstance(v, dict):  # PN
            out.append(str(v.get("Alphabetic", "")))
        elif v is not None:
            out.append(str(v))
    return out


def _matches(element: dict[str, Any] | None, wanted: str, vr: str | None) -> bool:
    """PS3.4 C.2.2.2 matching of one attribute: universal (empty), list of UIDs, range of
    dates/times (``A-B``, ``A-``, ``-B``), wildcard (``*``, ``?``; case-insensitive for
    person names), else single value."""
    if wanted == "" or wanted == "*":
        return True
    values = _text_values(element)
    if vr == "UI":
        return bool(set(values) & set(wanted.split(",")))
    if vr in ("DA", "TM", "DT") and "-" in wanted:
        low, high = wanted.split("-", 1)
        return any((not low or v >= low) and (not high or v <= high) for v in values)
    if "*" in wanted or "?" in wanted:
        pattern = wanted.lower() if vr == "PN" else wanted
        return any(fnmatch.fnmatchcase(v.lower() if vr == "PN" else v, pattern) for v in values)
    return wanted in values


@dataclass(frozen=True)
class Query:
    """A QIDO-RS query: attribute filters (tag, value, VR), paging and extra fields."""

    filters: tuple[tuple[str, str, str | None], ...]
    limit: int | None
    offset: int
    include: frozenset[str] | None  # None: all the level's attributes


def parse_query(params: Iterable[tuple[str, str]]) -> Query:
    """Read ``limit``, ``offset``, ``includefield``, ``fuzzymatching`` (accepted, not used) and
    the attribute keys of a query string; anything malformed is a 400."""
    from pydicom.datadict import dictionary_VR

    filters: list[tuple[str, str, str | None]] = []
    limit, offset, include = None, 0, set()
    for key, value in params:
        if key in ("limit", "offset"):
            if not value.isdigit():
                raise RequestError(400, f"{key}={value[:40]!r} is not a whole number")
            if key == "limit":
                limit = int(value)
            else:
                offset = int(value)
        elif key == "includefield":
            include.update(value.split(","))
        elif key == "fuzzymatching":
            continue
        else:
            tag = _tag_of(key)
            try:
                vr = dictionary_VR(int(tag, 16))
            except KeyError:
                vr = None
            filters.append((tag, value, vr))
    fields = None if "all" in include else frozenset(_tag_of(k) for k in include if k)
    return Query(tuple(filters), limit, offset, fields)


def _page(results: list[dict[str, Any]], query: Query) -> list[dict[str, Any]]:
    out = results[query.offset :]
    return out[: query.limit] if query.limit is not None else out


def _keep(doc: dict[str, Any], tags: Sequence[str], query: Query) -> dict[str, Any]:
    wanted = set(tags) | {t for t, _, _ in query.filters}
    if query.include is None:
        wanted |= set(doc)
    else:
        wanted |= query.include
    return {tag: doc[tag] for tag in sorted(wanted) if tag in doc}


def _filtered(docs: Iterable[dict[str, Any]], query: Query) -> list[dict[str, Any]]:
    return [
        doc
        for doc in docs
        if all(_matches(doc.get(tag), wanted, vr) for tag, wanted, vr in query.filters)
    ]


def study_document(catalog: Catalog, study: str) -> dict[str, Any]:
    """The study-level attributes of ``study`` (from its first instance), with the counts and
    Modalities in Study (0008,0061) computed over its series; computed once per study."""
    if study not in catalog.study_docs:
        catalog.study_docs[study] = _study_document(catalog, study)
    return catalog.study_docs[study]


def _study_document(catalog: Catalog, study: str) -> dict[str, Any]:
    series = catalog.by_study[study]
    first = catalog.instances[catalog.by_series[series[0]][0]].header
    doc = {tag: first[tag] for tag in STUDY_TAGS if tag in first}
    modalities = sorted(
        {
            str(_value(catalog.instances[catalog.by_series[s][0]].header, "00080060") or "")
            for s in series
        }
        - {""}
    )
    doc[MODALITIES_IN_STUDY] = {"vr": "CS", "Value": modalities}
    doc[STUDY_SERIES] = {"vr": "IS", "Value": [len(series)]}
    doc[STUDY_INSTANCES] = {"vr": "IS", "Value": [sum(len(catalog.by_series[s]) for s in series)]}
    doc["0020000D"] = {"vr": "UI", "Value": [study]}
    return doc


def series_document(catalog: Catalog, series: str) -> dict[str, Any]:
    first = catalog.instances[catalog.by_series[series][0]]
    doc = {tag: first.header[tag] for tag in SERIES_TAGS if tag in first.header}
    doc["0020000D"] = {"vr": "UI", "Value": [first.study]}
    doc["0020000E"] = {"vr": "UI", "Value": [series]}
    doc[SERIES_INSTANCES] = {"vr": "IS", "Value": [len(catalog.by_series[series])]}
    return doc


def instance_document(entry: Entry) -> dict[str, Any]:
    doc = {tag: entry.header[tag] for tag in INSTANCE_TAGS if tag in entry.header}
    doc["0020000D"] = {"vr": "UI", "Value": [entry.study]}
    doc["0020000E"] = {"vr": "UI", "Value": [entry.series]}
    doc["00080018"] = {"vr": "UI", "Value": [entry.sop]}
    return doc


def search_studies(catalog: Catalog, query: Query) -> list[dict[str, Any]]:
    docs = [study_document(catalog, s) for s in sorted(catalog.by_study)]
    tags = STUDY_TAGS + (MODALITIES_IN_STUDY, STUDY_SERIES, STUDY_INSTANCES)
    return [_keep(d, tags, query) for d in _page(_filtered(docs, query), query)]


def search_series(catalog: Catalog, query: Query, study: str | None) -> list[dict[str, Any]]:
    studies = [study] if study is not None else sorted(catalog.by_study)
    docs = []
    for st in studies:
        for se in catalog.study(st):
            docs.append({**study_document(catalog, st), **series_document(catalog, se)})
    tags = SERIES_TAGS + ("0020000D", SERIES_INSTANCES)
    return [_keep(d, tags, query) for d in _page(_filtered(docs, query), query)]


def search_instances(
    catalog: Catalog, query: Query, study: str | None, series: str | None
) -> list[dict[str, Any]]:
    if series is not None and study is not None:
        pairs = [(study, series)]
    else:
        studies = [study] if study is not None else sorted(catalog.by_study)
        pairs = [(st, se) for st in studies for se in catalog.study(st)]
    docs = []
    for st, se in pairs:
        context = {**study_document(catalog, st), **series_document(catalog, se)}
        for sop in catalog.series(st, se):
            docs.append({**context, **instance_document(catalog.instances[sop])})
    tags = INSTANCE_TAGS + ("0020000D", "0020000E")
    return [_keep(d, tags, query) for d in _page(_filtered(docs, query), query)]


# -- WADO-RS: files, metadata, frames ----------------------------------------------------


class Files:
    """The de-identified files of the catalog's instances, made on first request and kept in
    a bounded least-recently-used cache (``max_bytes``)."""

    def __init__(self, config: PipelineConfig, max_bytes: int = 512 * 1024 * 1024) -> None:
        from medspark.export import _limits

        self._burned_in = config.deid.burned_in
        self._limits = _limits(config)
        self._max = max_bytes
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._frames: dict[str, tuple[list[bytes], str]] = {}  # split once, dropped with the file
        self._size = 0
        self._lock = threading.Lock()

    def _remember(self, sop: str, data: bytes) -> None:
        with self._lock:
            if sop in self._cache:
                return
            self._cache[sop] = data
            self._size += len(data)
            while self._size > self._max and len(self._cache) > 1:
                old_sop, old = self._cache.popitem(last=False)
                self._size -= len(old)
                if self._frames.pop(old_sop, None) is not None:
                    self._size -= len(old)

    def frames(self, sop: str, data: bytes) -> tuple[list[bytes], str]:
        """:func:`split_frames` of an instance's file, kept while the file is (its frames
        count as much again against the cache's bytes)."""
        with self._lock:
            if sop in self._frames:
                return self._frames[sop]
        split = split_frames(data)
        with self._lock:
            if sop in self._cache and sop not in self._frames:
                self._frames[sop] = split
                self._size += len(data)
        return split

    def get(self, entries: Sequence[Entry]) -> list[tuple[Entry, bytes | ItemError]]:
        """The file of each entry (in order), or why it has none."""
        made: dict[str, bytes | ItemError] = {}
        missing = []
        with self._lock:
            for e in entries:
                if e.sop in self._cache:
                    self._cache.move_to_end(e.sop)
                    made[e.sop] = self._cache[e.sop]
                elif e.seg_path is not None:
                    made[e.sop] = e.seg_path.read_bytes()
                elif e.source is not None:
                    missing.append(e.source)
        for source, result in make_instances(missing, self._burned_in, self._limits):
            made[source.sop_instance_uid] = result
            if isinstance(result, bytes):
                self._remember(source.sop_instance_uid, result)
        return [(e, made[e.sop]) for e in entries]


def metadata(entry: Entry, data: bytes, base: str) -> dict[str, Any]:
    """DICOM JSON of a made file, file meta left out: Pixel Data (7FE0,0010) as a BulkDataURI
    to the instance's frames, other bulk values to ``.../bulkdata/{tag}``."""
    import io
    import warnings

    import pydicom

    url = f"{base}/studies/{entry.study}/series/{entry.series}/instances/{entry.sop}"

    def bulk(element: Any) -> str:
        tag = f"{element.tag:08X}"
        if tag in ("7FE00010", "7FE00008", "7FE00009"):
            frames = int(ds.get("NumberOfFrames", 1) or 1)
            return f"{url}/frames/{','.join(str(i) for i in range(1, frames + 1))}"
        return f"{url}/bulkdata/{tag}"

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(io.BytesIO(data))
        doc = ds.to_json_dict(1024, bulk)
    doc["00020010"] = {"vr": "UI", "Value": [str(ds.file_meta.TransferSyntaxUID)]}
    return doc


def split_frames(data: bytes) -> tuple[list[bytes], str]:
    """Every frame of a made file, and their transfer syntax: native frames as Explicit VR
    Little Endian bytes, encapsulated ones as stored."""
    import io
    import warnings

    import pydicom
    from pydicom.encaps import generate_frames

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(io.BytesIO(data))
    syntax = str(ds.file_meta.TransferSyntaxUID)
    count = int(ds.get("NumberOfFrames", 1) or 1)
    if "PixelData" not in ds:
        raise RequestError(404, "the instance has no Pixel Data (7FE0,0010)")
    if syntax in NATIVE_SYNTAXES:
        bits = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1))
        bits *= int(ds.BitsAllocated)
        if bits % 8:
            raise RequestError(406, "frames of Bits Allocated 1 are not served one by one")
        size, pixels = bits // 8, ds.PixelData
        return [pixels[n * size : (n + 1) * size] for n in range(count)], EXPLICIT_LE
    return list(generate_frames(ds.PixelData, number_of_frames=count)), syntax


def pick_frames(frames: Sequence[bytes], numbers: Sequence[int]) -> list[bytes]:
    """Frames ``numbers`` (1-based) of ``frames``; a number out of range is a 404."""
    bad = [n for n in numbers if not 1 <= n <= len(frames)]
    if bad:
        raise RequestError(404, f"no frame {bad[0]} (the instance has {len(frames)})")
    return [frames[n - 1] for n in numbers]


# -- HTTP -------------------------------------------------------------------------------


def _multipart(parts: Sequence[tuple[bytes, str]], kind: str) -> Any:
    """A ``multipart/related`` response (PS3.18 8.7.3.4): each part's bytes and Content-Type."""
    import secrets

    from starlette.responses import Response

    boundary = secrets.token_hex(16)
    chunks = []
    for data, content_type in parts:
        chunks.append(f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode())
        chunks.append(data)
        chunks.append(b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    media = f'multipart/related; type="{kind}"; boundary={boundary}'
    return Response(b"".join(chunks), media_type=media)


def _json(docs: Any) -> Any:
    from starlette.responses import Response

    body = json.dumps(docs, separators=(",", ":"))
    return Response(body, media_type=DICOM_JSON)


def _accepted_syntaxes(accept: str) -> set[str] | None:
    """The transfer syntaxes an Accept header names (None: any)."""
    found = set(re.findall(r"transfer-syntax=\"?([0-9.*]+)", accept))
    return None if not found or "*" in found else found


class Server:
    """The endpoints over one catalog (see the module docstring)."""

    def __init__(self, config: PipelineConfig, catalog: Catalog, token: str | None) -> None:
        self.catalog = catalog
        self.files = Files(config)
        self.token = token

    def _made(self, entries: Sequence[Entry]) -> list[tuple[Entry, bytes]]:
        out = []
        for entry, made in self.files.get(entries):
            if isinstance(made, ItemError):
                if len(entries) == 1:
                    raise RequestError(404, f"instance {entry.sop}: {made.error_class}")
                LOG.warning("instance %s left out: %s", entry.sop, made.error_class)
                continue
            out.append((entry, made))
        return out

    def _entries(self, params: dict[str, str]) -> list[Entry]:
        study, series, sop = params.get("study"), params.get("series"), params.get("sop")
        if sop is not None:
            return [self.catalog.instance(study or "", series or "", sop)]
        if series is not None:
            sops = self.catalog.series(study or "", series)
        else:
            sops = [i for se in self.catalog.study(study or "") for i in self.catalog.by_series[se]]
        return [self.catalog.instances[s] for s in sops]

    def search(self, request: Any, level: str) -> Any:
        params = request.path_params
        query = parse_query(request.query_params.multi_items())
        study, series = params.get("study"), params.get("series")
        if level == "studies":
            return _json(search_studies(self.catalog, query))
        if study is not None:
            self.catalog.study(study)
        if level == "series":
            return _json(search_series(self.catalog, query, study))
        if series is not None:
            self.catalog.series(study or "", series)
        return _json(search_instances(self.catalog, query, study, series))

    def metadata(self, request: Any) -> Any:
        host = request.headers.get("host") or f"{request.url.hostname}:{request.url.port}"
        base = f"{request.url.scheme}://{host}/dicomweb"
        made = self._made(self._entries(request.path_params))
        return _json([metadata(entry, data, base) for entry, data in made])

    def retrieve(self, request: Any) -> Any:
        made = self._made(self._entries(request.path_params))
        parts = []
        for _, data in made:
            parts.append((data, "application/dicom"))
        return _multipart(parts, "application/dicom")

    def frames(self, request: Any) -> Any:
        text = request.path_params["frames"]
        if not re.fullmatch(r"[0-9]+(,[0-9]+)*", text) or len(text) > 4000:
            raise RequestError(400, f"frame list {text[:40]!r} is not numbers separated by commas")
        ((entry, data),) = self._made(self._entries(request.path_params))
        every, syntax = self.files.frames(entry.sop, data)
        frames = pick_frames(every, [int(n) for n in text.split(",")])
        wanted = _accepted_syntaxes(request.headers.get("accept", ""))
        if wanted is not None and syntax not in wanted:
            raise RequestError(406, f"frames are {syntax}; the request accepts {sorted(wanted)}")
        kind = f"application/octet-stream; transfer-syntax={syntax}"
        return _multipart([(f, kind) for f in frames], "application/octet-stream")

    def bulkdata(self, request: Any) -> Any:
        import io

        import pydicom

        tag = request.path_params["tag"]
        if not re.fullmatch(r"[0-9A-Fa-f]{8}", tag):
            raise RequestError(400, f"{tag[:20]!r} is not a tag")
        ((_, data),) = self._made(self._entries(request.path_params))
        ds = pydicom.dcmread(io.BytesIO(data))
        element = ds.get(int(tag, 16))
        if element is None or not isinstance(element.value, bytes):
            raise RequestError(404, f"no bulk value {tag}")
        return _multipart([(element.value, "application/octet-stream")], "application/octet-stream")

    def guarded(self, handler: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """``handler`` with the token check and the error answers: a :class:`RequestError`
        is its status and one log line; anything else a 500 and one log line (the full trace
        at debug level only)."""
        from starlette.responses import PlainTextResponse

        def endpoint(request: Any) -> Any:
            try:
                if self.token is not None:
                    given = request.headers.get("authorization", "")
                    if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
                        raise RequestError(401, "missing or wrong bearer token")
                return handler(request)
            except RequestError as exc:
                LOG.warning("%s %s -> %d: %s", request.method, request.url.path, exc.status, exc)
                headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
                return PlainTextResponse(str(exc), status_code=exc.status, headers=headers)
            except Exception as exc:  # noqa: BLE001 - a request must not show a traceback
                LOG.error("%s %s -> 500: %s", request.method, request.url.path, type(exc).__name__)
                LOG.debug("trace", exc_info=True)
                return PlainTextResponse("internal error", status_code=500)

        return endpoint


def viewer_routes(folder: Path | None) -> list[Any]:
    """``/viewer``: the installed OHIF viewer's files (:mod:`medspark.viewer`); any other path
    under it is the page itself (the viewer routes in the browser). A path outside the folder
    is never served. Without an install, one line saying how to install it."""
    import mimetypes

    from starlette.responses import FileResponse, PlainTextResponse, RedirectResponse
    from starlette.routing import Route

    root = folder.resolve() if folder is not None else None

    def page(request: Any) -> Any:
        if root is None:
            LOG.warning("GET %s -> 404: the viewer is not installed", request.url.path)
            return PlainTextResponse(
                "the OHIF viewer is not installed: run medspark install-viewer", status_code=404
            )
        wanted = (root / request.path_params.get("path", "")).resolve()
        if not (wanted.is_file() and wanted.is_relative_to(root)):
            wanted = root / "index.html"
        kind = "application/wasm" if wanted.suffix == ".wasm" else mimetypes.guess_type(wanted)[0]
        return FileResponse(wanted, media_type=kind or "application/octet-stream")

    return [
        Route("/viewer", lambda request: RedirectResponse("/viewer/")),
        Route("/viewer/{path:path}", page),
    ]


def create_app(
    config: PipelineConfig,
    token: str | None = None,
    catalog: Catalog | None = None,
    viewer: Path | None = None,
) -> Any:
    """The ASGI application (Starlette) of ``medspark serve``; ``viewer`` is the folder of an
    installed OHIF (:func:`medspark.viewer.installed`)."""
    from starlette.applications import Starlette
    from starlette.routing import Route

    server = Server(config, catalog if catalog is not None else load_catalog(config), token)
    g = server.guarded
    study = "/dicomweb/studies/{study}"
    series = study + "/series/{series}"
    instance = series + "/instances/{sop}"
    routes = [
        Route("/dicomweb/studies", g(lambda r: server.search(r, "studies"))),
        Route("/dicomweb/series", g(lambda r: server.search(r, "series"))),
        Route("/dicomweb/instances", g(lambda r: server.search(r, "instances"))),
        Route(study + "/series", g(lambda r: server.search(r, "series"))),
        Route(study + "/instances", g(lambda r: server.search(r, "instances"))),
        Route(series + "/instances", g(lambda r: server.search(r, "instances"))),
        Route(study + "/metadata", g(server.metadata)),
        Route(series + "/metadata", g(server.metadata)),
        Route(instance + "/metadata", g(server.metadata)),
        Route(instance + "/frames/{frames}", g(server.frames)),
        Route(instance + "/bulkdata/{tag}", g(server.bulkdata)),
        Route(study, g(server.retrieve)),
        Route(series, g(server.retrieve)),
        Route(instance, g(server.retrieve)),
        *viewer_routes(viewer),
    ]

    def not_found(request: Any, exc: Any) -> Any:
        from starlette.responses import PlainTextResponse

        status = getattr(exc, "status_code", 404)
        LOG.warning("%s %s -> %d: no such resource", request.method, request.url.path, status)
        return PlainTextResponse("no such resource", status_code=status)

    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})


LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


def check_binding(host: str, token: str | None) -> None:
    """Refuse to serve a non-loopback address without a token."""
    from medspark.errors import ConfigError

    if host not in LOOPBACK and not token:
        raise ConfigError("--token", None, f"a bearer token to serve on {host} (not loopback)")


def serve(
    config: PipelineConfig, host: str = "127.0.0.1", port: int = 8042, token: str | None = None
) -> None:
    """Serve the warehouse until interrupted."""
    import uvicorn

    from medspark.viewer import installed

    check_binding(host, token)
    viewer = installed()
    app = create_app(config, token, viewer=viewer)
    LOG.info("serving DICOMweb at http://%s:%d/dicomweb", host, port)
    if viewer is not None:
        LOG.info("the OHIF viewer at http://%s:%d/viewer/", host, port)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
