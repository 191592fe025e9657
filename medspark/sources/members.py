"""Re-reading ingested items by location: a loose file, or a member of a (nested) archive.

The preprocessing step gets ``(source_uri, archive_member)`` pairs from ``scans`` and reads the
bytes on the executor, so scan bytes never travel through Spark. Requests are grouped by
container: a zip is opened once and its members read by name (random access); a tar or gzip
stream is read once, front to back, picking the requested members as they pass. Nested members
(``outer.zip!inner/x.dcm``) are resolved through the outer member's bytes.
"""

from __future__ import annotations

import io
import tarfile
import zipfile
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

from medspark.sources.archives import GZIP_MAGIC, sniff


def uri_to_path(uri: str) -> str:
    """``file://`` URI -> local path (the inverse of :func:`medspark.sources.archives.to_uri`)."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("", "file"):
        raise ValueError(f"{uri}: only local file:// sources can be re-read")
    return unquote(parsed.path)


def _read_from_container(
    data: io.BufferedIOBase | io.BytesIO, members: set[str]
) -> Iterator[tuple[str, bytes | Exception]]:
    """Yield ``(member, bytes)`` for every requested top-level member of one container."""
    head = data.read(512)
    data.seek(0)
    kind = sniff(head)
    if kind == "zip":
        with zipfile.ZipFile(data) as zf:
            for member in sorted(members):
                try:
                    yield member, zf.read(member)
                except (KeyError, zipfile.BadZipFile, OSError, RuntimeError) as exc:
                    yield member, exc
        return
    if kind in ("tar", "gzip"):
        remaining = set(members)
        try:
            with tarfile.open(fileobj=data, mode="r|*") as tf:
                for info in tf:
                    if info.name in remaining and info.isreg():
                        src = tf.extractfile(info)
                        yield info.name, src.read() if src is not None else b""
                        remaining.discard(info.name)
                        if not remaining:
                            break
        except tarfile.ReadError:
            if head[:2] != GZIP_MAGIC:
                raise
            import gzip

            data.seek(0)
            with gzip.GzipFile(fileobj=data) as gz:
                content = gz.read()
            for member in list(remaining):  # a single-file gzip has one (derived) member name
                yield member, content
                remaining.discard(member)
        for member in sorted(remaining):
            yield member, FileNotFoundError(f"member {member!r} not found in the archive")
        return
    raise ValueError("not an archive")


def _resolve(
    container: io.BufferedIOBase | io.BytesIO, members: set[str]
) -> Iterator[tuple[str, bytes | Exception]]:
    """Resolve possibly nested member paths (``a.zip!b.dcm``) inside ``container``."""
    direct: set[str] = set()
    nested: dict[str, set[str]] = defaultdict(set)
    for member in members:
        outer, sep, inner = member.partition("!")
        if sep:
            nested[outer].add(inner)
        else:
            direct.add(member)
    wanted = direct | set(nested)
    for name, content in _read_from_container(container, wanted):
        if name in direct:
            yield name, content
        if name in nested:
            inners = nested[name]
            if isinstance(content, Exception):
                for inner in inners:
                    yield f"{name}!{inner}", content
                continue
            for inner, inner_content in _resolve(io.BytesIO(content), inners):
                yield f"{name}!{inner}", inner_content


def read_items(
    requests: Iterable[tuple[str, str | None]],
) -> Iterator[tuple[tuple[str, str | None], bytes | Exception]]:
    """Yield ``((source_uri, archive_member), bytes or the exception)`` for every request.

    Order follows containers, not the requests; each request is answered exactly once.
    """
    by_uri: dict[str, set[str | None]] = defaultdict(set)
    for uri, member in requests:
        by_uri[uri].add(member)
    for uri, members in by_uri.items():
        try:
            path = uri_to_path(uri)
        except ValueError as exc:
            for member in members:
                yield (uri, member), exc
            continue
        if None in members:
            try:
                yield (uri, None), Path(path).read_bytes()
            except OSError as exc:
                yield (uri, None), exc
        named = {m for m in members if m is not None}
        if not named:
            continue
        answered: set[str] = set()
        try:
            with open(path, "rb") as fh:
                for member, content in _resolve(fh, named):
                    answered.add(member)
                    yield (uri, member), content
        except Exception as exc:  # noqa: BLE001 - any failure answers the rest with it
            for member in named - answered:
                yield (uri, member), exc
