"""Re-reading ingested items by location: a loose file, or a member of a (nested) archive.

The preprocessing step gets ``(source_uri, archive_member)`` pairs from ``scans`` and reads the
bytes on the executor, so scan bytes never travel through Spark. It reads them through the
reader ingest used, with the same limits (:func:`read_items`): one reader for every read.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable, Iterator
from urllib.parse import unquote, urlparse

from medspark.sources.archives import Limits


def uri_to_path(uri: str) -> str:
    """``file://`` URI -> local path (the inverse of :func:`medspark.sources.archives.to_uri`)."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("", "file"):
        raise ValueError(f"{uri}: only local file:// sources can be re-read")
    return unquote(parsed.path)


class ItemReadError(Exception):
    """An item the reader refused on a re-read (a limit, an unreadable archive), with the
    error class ingest gives the same item (``too_large``, ``decompression_bomb``, ...)."""

    def __init__(self, error_class: str, message: str) -> None:
        super().__init__(message)
        self.error_class = error_class


def read_items(
    requests: Iterable[tuple[str, str | None]], limits: Limits | None = None
) -> Iterator[tuple[tuple[str, str | None], bytes | Exception]]:
    """Yield ``((source_uri, archive_member), bytes or the exception)`` for every request.

    The re-read goes through the reader ingest used (:func:`~medspark.sources.archives.
    iter_unit`), with the same ``limits``: the container kind is sniffed, nested archives are
    opened to the same depth, and the size, member-count and compression-ratio bounds apply,
    so an item that ingest would refuse is refused here too (:class:`ItemReadError` with its
    class). A tar or gzip stream is read once, front to back; a zip member by member. Order
    follows containers, not the requests; each request is answered exactly once.
    """
    from medspark.sources.archives import InputUnit, iter_unit

    limits = limits or Limits()
    by_uri: dict[str, set[str | None]] = defaultdict(set)
    for uri, member in requests:
        by_uri[uri].add(member)
    for uri, members in by_uri.items():
        try:
            path = uri_to_path(uri)
            size = os.stat(path).st_size
        except (ValueError, OSError) as exc:
            for member in members:
                yield (uri, member), exc
            continue
        remaining = set(members)
        for item in iter_unit(InputUnit(path, size), limits):
            if item.archive_member not in remaining:
                continue
            remaining.discard(item.archive_member)
            if item.error_class is not None:
                content: bytes | Exception = ItemReadError(item.error_class, item.message or "")
            else:
                content = item.data or b""
            yield (uri, item.archive_member), content
            if not remaining:
                break
        for member in sorted(remaining, key=str):
            where = uri if member is None else f"{uri}!{member}"
            yield (uri, member), FileNotFoundError(f"{where}: not found on re-read")


def read_verified(
    requests: Iterable[tuple[str, str | None, str | None]], limits: Limits | None = None
) -> Iterator[tuple[tuple[str, str | None], bytes | ItemReadError]]:
    """:func:`read_items` for ``(source_uri, archive_member, sha256)`` requests, each item's
    bytes checked against the SHA-256 that ingest recorded (``scans.sha256``; None: not
    checked). A refused, vanished or changed item comes back as an :class:`ItemReadError`
    with its class (``unreadable``, ``source_changed``, or the reader's) and a message naming
    its location: a file replaced since ingest is never taken for the scan it was."""
    import hashlib

    from medspark.tables.error_classes import SOURCE_CHANGED, UNREADABLE

    expected: dict[tuple[str, str | None], str | None] = {}
    for uri, member, sha in requests:
        expected[(uri, member)] = sha
    for (uri, member), content in read_items(expected, limits):
        where = uri if member is None else f"{uri}!{member}"
        if isinstance(content, ItemReadError):
            yield (uri, member), ItemReadError(content.error_class, f"{where}: {content}")
        elif isinstance(content, Exception):
            yield (uri, member), ItemReadError(UNREADABLE, f"{where}: {content}")
        else:
            sha = expected[(uri, member)]
            digest = hashlib.sha256(content).hexdigest()
            if sha is not None and digest != sha:
                yield (
                    (uri, member),
                    ItemReadError(
                        SOURCE_CHANGED,
                        f"{where}: changed since ingest (SHA-256 {digest} now, {sha} when "
                        "ingested); ingest it again",
                    ),
                )
            else:
                yield (uri, member), content
