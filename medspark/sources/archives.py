"""Safe, in-memory iteration over scan inputs: loose files, zip, tar, tar.gz and gzip.

Nothing is ever extracted to disk: members are read into memory one at a time, so a member
name such as ``../../etc/passwd`` can never write anywhere, and memory holds one item, not a
whole archive. Every input item ends as exactly one :class:`Item`: either with its bytes, or
with an ``error_class`` and a message naming the reason. A broken archive yields the members
it could read and then one error item for the archive itself (``archive_member`` None).

Error classes produced here (declared, with their meaning, in
:mod:`medspark.tables.error_classes`): ``unreadable``, ``empty_file``, ``broken_archive``,
``corrupt_member``, ``encrypted_member``, ``unsafe_member``, ``too_large``, ``nested_too_deep``,
``decompression_bomb``.
"""

from __future__ import annotations

import gzip
import io
import os
import posixpath
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, Literal

from medspark.tables.error_classes import (
    BROKEN_ARCHIVE,
    CORRUPT_MEMBER,
    DECOMPRESSION_BOMB,
    EMPTY_FILE,
    ENCRYPTED_MEMBER,
    NESTED_TOO_DEEP,
    TOO_LARGE,
    UNREADABLE,
    UNSAFE_MEMBER,
)

ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
GZIP_MAGIC = b"\x1f\x8b"
_TAR_MAGIC_OFFSET = 257

ContainerKind = Literal["zip", "tar", "gzip", "plain"]


@dataclass(frozen=True)
class Item:
    """One input item: a loose file or an archive member, with its bytes or its error."""

    source_uri: str
    archive_member: str | None
    data: bytes | None = None
    error_class: str | None = None
    message: str | None = None
    container: ContainerKind | None = None  # what the source file is (sniffed, not its suffix)

    @property
    def location(self) -> str:
        """``uri`` or ``uri!member``, the form used in messages."""
        return (
            self.source_uri
            if self.archive_member is None
            else (f"{self.source_uri}!{self.archive_member}")
        )


@dataclass(frozen=True)
class Limits:
    """Bounds applied while reading; exceeding one produces an error item, never a crash."""

    max_item_bytes: int = 2 * 1024**3
    max_archive_depth: int = 2
    # Bounds against decompression bombs (one top-level archive, nested ones included).
    max_archive_bytes: int = 64 * 1024**3
    max_archive_members: int = 1_000_000
    max_compression_ratio: float = 200.0
    # Bombs inside one DICOM item (see medspark.dicom.header.check_item_cost).
    max_inflated_bytes: int = 512 * 1024**2
    max_frame_samples: int = 100_000_000


# Ratios are only judged above this size: tiny members (or blank images) compress very well.
_RATIO_MIN_BYTES = 1024 * 1024
BOMB = DECOMPRESSION_BOMB


@dataclass
class _Budget:
    """What one top-level unit has unpacked so far, checked against :class:`Limits`."""

    limits: Limits
    bytes_out: int = 0
    members: int = 0

    def take(self, n_bytes: int) -> str | None:
        """Account for one member; return the limit it breaks, or None."""
        self.members += 1
        self.bytes_out += n_bytes
        if self.members > self.limits.max_archive_members:
            return f"more than ingest.max_archive_members={self.limits.max_archive_members} members"
        if self.bytes_out > self.limits.max_archive_bytes:
            return (
                f"more than ingest.max_archive_bytes={self.limits.max_archive_bytes} bytes unpacked"
            )
        return None

    def ratio_problem(self, uncompressed: int, compressed: int) -> str | None:
        if uncompressed < _RATIO_MIN_BYTES:
            return None
        ratio = uncompressed / max(compressed, 1)
        if ratio > self.limits.max_compression_ratio:
            return (
                f"compression ratio {ratio:.0f} exceeds "
                f"ingest.max_compression_ratio={self.limits.max_compression_ratio:g}"
            )
        return None


@dataclass(frozen=True)
class InputUnit:
    """A slice of work for one partition: a file, or a range of members of a large zip."""

    path: str
    size: int
    member_range: tuple[int, int] | None = None  # [start, stop) over the zip's file entries


def to_uri(path: str | os.PathLike[str]) -> str:
    """Absolute ``file://`` URI of a local path (the ``source_uri`` column)."""
    return Path(path).absolute().as_uri()


def sniff(head: bytes) -> ContainerKind:
    """Classify bytes by their magic numbers, not by the file name.

    Hospital exports often lack extensions, and a ``.dcm`` name says nothing about the content.
    """
    if head[:4] in ZIP_MAGIC:
        return "zip"
    if head[:2] == GZIP_MAGIC:
        return "gzip"
    if len(head) >= _TAR_MAGIC_OFFSET + 5 and head[_TAR_MAGIC_OFFSET : _TAR_MAGIC_OFFSET + 5] == (
        b"ustar"
    ):
        return "tar"
    return "plain"


def list_files(paths: Iterable[str | os.PathLike[str]]) -> tuple[list[tuple[str, int]], list[Item]]:
    """Expand directories recursively into ``(path, size)`` pairs, sorted for determinism.

    Symbolic links are not followed (a link in a landing folder may point anywhere). A path that
    does not exist, cannot be listed or is not a regular file becomes an error item instead of
    stopping the job.
    """
    found: dict[str, int] = {}
    errors: list[Item] = []

    def not_followed(path: str) -> None:
        uri = to_uri(path)
        errors.append(
            Item(
                uri,
                None,
                error_class=UNSAFE_MEMBER,
                message=f"{uri}: not a regular file (link or device); not followed",
            )
        )

    def visit_file(path: str) -> None:
        try:
            st = os.lstat(path)
        except OSError as exc:
            errors.append(Item(to_uri(path), None, error_class=UNREADABLE, message=str(exc)))
            return
        if stat.S_ISREG(st.st_mode):
            found[path] = st.st_size
        else:
            not_followed(path)

    for raw in paths:
        path = os.path.abspath(os.fspath(raw))
        if not (os.path.isdir(path) and not os.path.islink(path)):
            visit_file(path)
            continue
        for root, dirs, files in os.walk(path, followlinks=False):
            for name in [d for d in dirs if os.path.islink(os.path.join(root, d))]:
                not_followed(os.path.join(root, name))
                dirs.remove(name)
            dirs.sort()
            for name in sorted(files):
                visit_file(os.path.join(root, name))
    return sorted(found.items()), errors


def plan_units(files: list[tuple[str, int]], max_partition_bytes: int) -> list[InputUnit]:
    """Turn files into work units; a zip larger than ``max_partition_bytes`` is split by member.

    A zip's central directory makes its members addressable, so a big zip can be read by
    several partitions at once. Tar and gzip streams cannot be split without reading them, so
    each is one unit (read as a stream, member by member).
    """
    units: list[InputUnit] = []
    for path, size in files:
        if size > max_partition_bytes and _is_zip(path):
            units.extend(_split_zip(path, size, max_partition_bytes))
        else:
            units.append(InputUnit(path, size))
    return units


def _is_zip(path: str) -> bool:
    try:
        with open(path, "rb") as fh:
            return sniff(fh.read(4)) == "zip"
    except OSError:
        return False


def _split_zip(path: str, size: int, max_partition_bytes: int) -> list[InputUnit]:
    try:
        with zipfile.ZipFile(path) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
    except (zipfile.BadZipFile, OSError, ValueError):
        return [InputUnit(path, size)]  # the executor reports the broken archive
    units: list[InputUnit] = []
    start, acc = 0, 0
    for idx, info in enumerate(infos):
        acc += info.compress_size
        if acc >= max_partition_bytes:
            units.append(InputUnit(path, acc, (start, idx + 1)))
            start, acc = idx + 1, 0
    if start < len(infos) or not units:
        units.append(InputUnit(path, acc, (start, len(infos))))
    return units


def balance(units: list[InputUnit], num_partitions: int) -> list[list[InputUnit]]:
    """Greedy largest-first bin packing of units into at most ``num_partitions`` bins."""
    bins: list[list[InputUnit]] = [[] for _ in range(max(1, min(num_partitions, len(units))))]
    loads = [0] * len(bins)
    for unit in sorted(units, key=lambda u: (-u.size, u.path, u.member_range or (0, 0))):
        i = loads.index(min(loads))
        bins[i].append(unit)
        loads[i] += max(unit.size, 1)
    for b in bins:  # read files in path order within a partition (friendlier to disks)
        b.sort(key=lambda u: (u.path, u.member_range or (0, 0)))
    return [b for b in bins if b]


def iter_unit(unit: InputUnit, limits: Limits) -> Iterator[Item]:
    """Yield every item of one unit; never raises for bad input.

    Each item carries the ``container`` kind of its source file (``plain``, ``zip``, ``tar``
    or ``gzip``), sniffed from its first bytes: ``scans.container`` records it, and a later
    re-read (:func:`medspark.sources.members.read_items`) goes by it, not by the suffix.
    """
    uri = to_uri(unit.path)
    try:
        with open(unit.path, "rb") as fh:
            head = fh.read(512)
            fh.seek(0)
            kind = sniff(head)
            if kind == "plain":
                if unit.size > limits.max_item_bytes:
                    yield replace(_too_large(uri, None, unit.size, limits), container=kind)
                    return
                data = fh.read()
                yield replace(_plain_item(uri, None, data), container=kind)
                return
            budget = _Budget(limits)
            for item in _iter_container(fh, kind, uri, "", 1, budget, unit.member_range):
                yield replace(item, container=kind)
    except OSError as exc:
        yield Item(uri, None, error_class=UNREADABLE, message=f"{uri}: {exc}")


def _plain_item(uri: str, member: str | None, data: bytes) -> Item:
    if not data:
        where = uri if member is None else f"{uri}!{member}"
        return Item(uri, member, error_class=EMPTY_FILE, message=f"{where}: file is empty")
    return Item(uri, member, data=data)


def _too_large(uri: str, member: str | None, size: int, limits: Limits) -> Item:
    return Item(
        uri,
        member,
        error_class=TOO_LARGE,
        message=f"item of {size} bytes exceeds ingest.max_item_bytes={limits.max_item_bytes}",
    )


def _unsafe_name(name: str) -> str | None:
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "absolute member name"
    parts = name.replace("\\", "/").split("/")
    if ".." in parts:
        return "member name escapes the archive ('..')"
    return None


def _member_items(
    uri: str, prefix: str, name: str, data: bytes, depth: int, budget: _Budget
) -> Iterator[Item]:
    """An archive member's bytes: a DICOM candidate, or a nested archive to open."""
    member = prefix + name
    kind = sniff(data[:512])
    if kind == "plain":
        yield _plain_item(uri, member, data)
        return
    if depth >= budget.limits.max_archive_depth:
        yield Item(
            uri,
            member,
            error_class=NESTED_TOO_DEEP,
            message=(
                f"{uri}!{member}: archive nested deeper than "
                f"ingest.max_archive_depth={budget.limits.max_archive_depth}"
            ),
        )
        return
    yield from _iter_container(io.BytesIO(data), kind, uri, member + "!", depth + 1, budget, None)


def _iter_container(
    fh: BinaryIO,
    kind: ContainerKind,
    uri: str,
    prefix: str,
    depth: int,
    budget: _Budget,
    member_range: tuple[int, int] | None,
) -> Iterator[Item]:
    archive_member = prefix[:-1] if prefix else None  # the archive itself, for error rows
    if kind == "zip":
        yield from _iter_zip(fh, uri, prefix, archive_member, depth, budget, member_range)
    elif kind in ("tar", "gzip"):
        yield from _iter_tar_or_gzip(fh, uri, prefix, archive_member, depth, budget)


def _iter_zip(
    fh: BinaryIO,
    uri: str,
    prefix: str,
    archive_member: str | None,
    depth: int,
    budget: _Budget,
    member_range: tuple[int, int] | None,
) -> Iterator[Item]:
    limits = budget.limits
    where = uri if archive_member is None else f"{uri}!{archive_member}"
    try:
        zf = zipfile.ZipFile(fh)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        yield Item(uri, archive_member, error_class=BROKEN_ARCHIVE, message=f"{where}: {exc}")
        return
    with zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        if len(infos) > limits.max_archive_members:
            # One row for the whole archive, from the unit that starts it (a split zip's
            # other units stay silent, so the row is not written twice).
            if not member_range or member_range[0] == 0:
                yield Item(
                    uri,
                    archive_member,
                    error_class=BOMB,
                    message=(
                        f"{where}: {len(infos)} members, more than "
                        f"ingest.max_archive_members={limits.max_archive_members}; not read"
                    ),
                )
            return
        if member_range is not None:
            infos = infos[member_range[0] : member_range[1]]
        stopped: str | None = None
        for info in infos:
            member = prefix + info.filename
            if stopped:
                yield Item(uri, member, error_class=BOMB, message=f"{uri}!{member}: {stopped}")
                continue
            reason = _unsafe_name(info.filename)
            if reason:
                yield Item(
                    uri, member, error_class=UNSAFE_MEMBER, message=f"{uri}!{member}: {reason}"
                )
                continue
            if info.flag_bits & 0x1:
                yield Item(
                    uri,
                    member,
                    error_class=ENCRYPTED_MEMBER,
                    message=f"{uri}!{member}: member is encrypted; not read",
                )
                continue
            if info.file_size > limits.max_item_bytes:
                yield _too_large(uri, member, info.file_size, limits)
                continue
            ratio = budget.ratio_problem(info.file_size, info.compress_size)
            if ratio:
                yield Item(uri, member, error_class=BOMB, message=f"{uri}!{member}: {ratio}")
                continue
            try:
                with zf.open(info) as src:
                    # The header's size may lie: never read more than the limit allows.
                    data = src.read(limits.max_item_bytes + 1)
            except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
                # zipfile raises BadZipFile("Bad CRC-32 ...") for a CRC failure.
                yield Item(
                    uri, member, error_class=CORRUPT_MEMBER, message=f"{uri}!{member}: {exc}"
                )
                continue
            except RuntimeError as exc:  # encrypted entries flagged differently
                yield Item(
                    uri, member, error_class=ENCRYPTED_MEMBER, message=f"{uri}!{member}: {exc}"
                )
                continue
            if len(data) > limits.max_item_bytes:
                yield _too_large(uri, member, len(data), limits)
                continue
            over = budget.take(len(data))
            if over:
                stopped = f"archive not read further: {over}"
                yield Item(uri, member, error_class=BOMB, message=f"{uri}!{member}: {stopped}")
                continue
            yield from _member_items(uri, prefix, info.filename, data, depth, budget)


def _iter_tar_or_gzip(
    fh: BinaryIO,
    uri: str,
    prefix: str,
    archive_member: str | None,
    depth: int,
    budget: _Budget,
) -> Iterator[Item]:
    limits = budget.limits
    where = uri if archive_member is None else f"{uri}!{archive_member}"
    start = fh.tell()
    try:
        tf = tarfile.open(fileobj=fh, mode="r|*")  # noqa: SIM115 - closed in the finally below
    except (tarfile.ReadError, OSError, EOFError, gzip.BadGzipFile) as exc:
        # Not a tar stream. A plain .gz of one file (e.g. a gzipped DICOM) is one item.
        fh.seek(start)
        yield from _iter_single_gzip(fh, uri, archive_member, depth, budget, exc)
        return
    count = 0
    unpacked = 0
    try:
        for info in tf:
            member = prefix + info.name
            if info.isdir():
                continue
            reason = _unsafe_name(info.name)
            if info.issym() or info.islnk():
                reason = f"link to {info.linkname!r}; links are never followed"
            elif not info.isreg():
                reason = reason or "device, FIFO or other special member; not read"
            if reason:
                yield Item(
                    uri, member, error_class=UNSAFE_MEMBER, message=f"{uri}!{member}: {reason}"
                )
                continue
            if info.size > limits.max_item_bytes:
                yield _too_large(uri, member, info.size, limits)
                continue
            src = tf.extractfile(info)
            data = src.read() if src is not None else b""
            if len(data) < info.size:
                raise EOFError(
                    f"member {info.name!r} is truncated ({len(data)} of {info.size} bytes)"
                )
            count += 1
            unpacked += len(data)
            over = budget.take(len(data)) or budget.ratio_problem(unpacked, fh.tell() - start)
            if over:
                yield Item(
                    uri,
                    archive_member,
                    error_class=BOMB,
                    message=f"{where}: archive not read past member {count} ({info.name}): {over}",
                )
                return
            yield from _member_items(uri, prefix, info.name, data, depth, budget)
    except (tarfile.TarError, OSError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        yield Item(
            uri,
            archive_member,
            error_class=BROKEN_ARCHIVE,
            message=f"{where}: archive is corrupt or truncated after {count} member(s): {exc}",
        )
    finally:
        tf.close()


def _iter_single_gzip(
    fh: BinaryIO,
    uri: str,
    archive_member: str | None,
    depth: int,
    budget: _Budget,
    tar_error: BaseException,
) -> Iterator[Item]:
    limits = budget.limits
    where = uri if archive_member is None else f"{uri}!{archive_member}"
    start = fh.tell()
    if fh.read(2) != GZIP_MAGIC:
        yield Item(uri, archive_member, error_class=BROKEN_ARCHIVE, message=f"{where}: {tar_error}")
        return
    fh.seek(start)
    try:
        with gzip.GzipFile(fileobj=fh) as gz:
            data = gz.read(limits.max_item_bytes + 1)
    except (OSError, EOFError, zlib.error) as exc:
        yield Item(uri, archive_member, error_class=BROKEN_ARCHIVE, message=f"{where}: {exc}")
        return
    if len(data) > limits.max_item_bytes:
        yield _too_large(uri, archive_member, len(data), limits)
        return
    over = budget.take(len(data)) or budget.ratio_problem(len(data), fh.tell() - start)
    if over:
        yield Item(uri, archive_member, error_class=BOMB, message=f"{where}: {over}")
        return
    base = posixpath.basename(archive_member or Path(uri).name)
    name = base[:-3] if base.lower().endswith(".gz") else base + ".ungz"
    prefix = "" if archive_member is None else archive_member + "!"
    yield from _member_items(uri, prefix, name, data, depth, budget)
