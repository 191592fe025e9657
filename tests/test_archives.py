"""Archive iteration without Spark: every item accounted for, nothing extracted."""

from __future__ import annotations

import gzip
import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from medspark.sources.archives import (
    InputUnit,
    Limits,
    balance,
    iter_unit,
    list_files,
    plan_units,
    sniff,
    to_uri,
)


def _items(path: Path, limits: Limits | None = None, member_range=None):
    return list(
        iter_unit(InputUnit(str(path), path.stat().st_size, member_range), limits or Limits())
    )


def _tar_add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def test_sniff_by_magic_not_name(tmp_path, test_files):
    ct = (test_files / "CT_small.dcm").read_bytes()
    assert sniff(ct[:512]) == "plain"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a", ct)
    assert sniff(buf.getvalue()[:512]) == "zip"
    assert sniff(gzip.compress(ct)[:512]) == "gzip"
    tbuf = io.BytesIO()
    with tarfile.open(fileobj=tbuf, mode="w") as tf:
        _tar_add(tf, "a.dcm", ct)
    assert sniff(tbuf.getvalue()[:512]) == "tar"


def test_zip_members_in_memory_with_unsafe_and_encrypted(tmp_path, test_files):
    ct = (test_files / "CT_small.dcm").read_bytes()
    path = tmp_path / "export"  # no extension: detected by magic
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("study/ct.dcm", ct)
        zf.writestr("../../evil.dcm", ct)
        zf.writestr("/abs.dcm", ct)
        zf.writestr("dir/", b"")
        zf.writestr("empty.dcm", b"")
    # Mark one member as encrypted (the flag bit is all zipfile looks at before decrypting).
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("secret.dcm", ct)
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("secret.dcm")
        local = info.header_offset
    raw[local + 6] |= 0x1  # local header flag bits
    central = raw.rfind(b"PK\x01\x02")  # the last central entry is secret.dcm
    raw[central + 8] |= 0x1
    path.write_bytes(bytes(raw))

    items = {it.archive_member: it for it in _items(path)}
    assert set(items) == {"study/ct.dcm", "../../evil.dcm", "/abs.dcm", "empty.dcm", "secret.dcm"}
    assert items["study/ct.dcm"].data == ct
    assert items["study/ct.dcm"].source_uri == to_uri(path)
    assert items["../../evil.dcm"].error_class == "unsafe_member"
    assert items["/abs.dcm"].error_class == "unsafe_member"
    assert items["empty.dcm"].error_class == "empty_file"
    assert items["secret.dcm"].error_class == "encrypted_member"
    assert not (tmp_path.parent / "evil.dcm").exists()


def test_zip_crc_failure_is_one_member_error(tmp_path, test_files):
    ct = (test_files / "CT_small.dcm").read_bytes()
    path = tmp_path / "crc.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("good.dcm", ct)
        zf.writestr("bad.dcm", ct)
    raw = bytearray(path.read_bytes())
    second = raw.find(b"PK\x03\x04", 10)
    raw[second + 30 + len("bad.dcm") + 500] ^= 0xFF  # flip a byte inside bad.dcm's data
    path.write_bytes(bytes(raw))
    items = {it.archive_member: it for it in _items(path)}
    assert items["good.dcm"].data == ct
    assert items["bad.dcm"].error_class == "corrupt_member"
    assert "CRC" in items["bad.dcm"].message


def test_broken_zip_is_one_row(tmp_path):
    path = tmp_path / "broken.zip"
    path.write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    items = _items(path)
    assert len(items) == 1
    assert items[0].archive_member is None
    assert items[0].error_class == "broken_archive"
    assert str(path.name) in items[0].message


def test_tar_gz_links_devices_and_truncation(tmp_path, test_files):
    ct = (test_files / "CT_small.dcm").read_bytes()
    mr = (test_files / "MR_small.dcm").read_bytes()
    path = tmp_path / "export.tgz"
    with tarfile.open(path, "w:gz") as tf:
        _tar_add(tf, "a/ct.dcm", ct)
        link = tarfile.TarInfo("a/link.dcm")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tf.addfile(link)
        hard = tarfile.TarInfo("a/hard.dcm")
        hard.type = tarfile.LNKTYPE
        hard.linkname = "a/ct.dcm"
        tf.addfile(hard)
        dev = tarfile.TarInfo("a/dev")
        dev.type = tarfile.CHRTYPE
        tf.addfile(dev)
        _tar_add(tf, "a/mr.dcm", mr)
    items = {it.archive_member: it for it in _items(path)}
    assert items["a/ct.dcm"].data == ct and items["a/mr.dcm"].data == mr
    for name in ("a/link.dcm", "a/hard.dcm", "a/dev"):
        assert items[name].error_class == "unsafe_member", name

    # Truncate the compressed stream: the members before the cut stay, plus one archive row.
    data = path.read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(data[:-300])  # inside the last member, a/mr.dcm
    items = _items(cut)
    archive_rows = [it for it in items if it.archive_member is None]
    assert len(archive_rows) == 1 and archive_rows[0].error_class == "broken_archive"
    assert "truncated" in archive_rows[0].message or "corrupt" in archive_rows[0].message
    assert any(it.archive_member == "a/ct.dcm" and it.data == ct for it in items)


def test_single_gzip_file_is_one_item(test_files, tmp_path):
    # pydicom ships zipMR.gz: a gzip-compressed DICOM file.
    items = _items(test_files / "zipMR.gz")
    assert len(items) == 1
    assert items[0].archive_member == "zipMR"
    assert items[0].data[128:132] == b"DICM"


def test_nested_archive_depth_limit(tmp_path, test_files):
    ct = (test_files / "CT_small.dcm").read_bytes()
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("ct.dcm", ct)
    outer = tmp_path / "outer.zip"
    with zipfile.ZipFile(outer, "w") as zf:
        zf.writestr("inner.zip", inner.getvalue())
    items = _items(outer, Limits(max_archive_depth=2))
    assert [(it.archive_member, it.data == ct) for it in items] == [("inner.zip!ct.dcm", True)]
    items = _items(outer, Limits(max_archive_depth=1))
    assert [(it.archive_member, it.error_class) for it in items] == [
        ("inner.zip", "nested_too_deep")
    ]


def test_too_large_item(tmp_path, test_files):
    ct = (test_files / "CT_small.dcm").read_bytes()
    path = tmp_path / "big.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ct.dcm", ct)
    items = _items(path, Limits(max_item_bytes=1024))
    assert items[0].error_class == "too_large"
    assert "max_item_bytes=1024" in items[0].message


def test_list_files_recursive_sorted_no_symlinks(tmp_path, test_files):
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "deep").mkdir(parents=True)
    (tmp_path / "b" / "2.dcm").write_bytes(b"x")
    (tmp_path / "a" / "deep" / "1").write_bytes(b"yy")
    (tmp_path / "link").symlink_to(tmp_path / "b" / "2.dcm")
    files, errors = list_files([tmp_path, tmp_path / "missing"])
    assert [Path(p).relative_to(tmp_path).as_posix() for p, _ in files] == ["a/deep/1", "b/2.dcm"]
    assert sorted(e.error_class for e in errors) == ["unreadable", "unsafe_member"]


def test_plan_splits_big_zip_and_balance_covers_all(tmp_path, test_files):
    ct = (test_files / "CT_small.dcm").read_bytes()
    path = tmp_path / "big.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for i in range(10):
            zf.writestr(f"{i}.dcm", ct)
    units = plan_units([(str(path), path.stat().st_size)], max_partition_bytes=3 * len(ct))
    assert len(units) == 4
    members = [m for u in units for m in (it.archive_member for it in iter_unit(u, Limits()))]
    assert sorted(members) == sorted(f"{i}.dcm" for i in range(10))  # each exactly once
    bins = balance(units, 2)
    assert len(bins) == 2 and sorted(u.member_range for b in bins for u in b) == sorted(
        u.member_range for u in units
    )


@pytest.mark.parametrize("content", [b"", b"hello"])
def test_loose_plain_files(tmp_path, content):
    path = tmp_path / "f.dcm"
    path.write_bytes(content)
    (item,) = _items(path)
    assert item.archive_member is None
    if content:
        assert item.data == content and item.error_class is None
    else:
        assert item.error_class == "empty_file"


def test_zip_bomb_member_is_refused_by_ratio(tmp_path, test_files):
    ct = (test_files / "CT_small.dcm").read_bytes()
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.dcm", b"\0" * (50 * 1024 * 1024))  # ~1000:1
        zf.writestr("ct.dcm", ct)
    items = {it.archive_member: it for it in _items(path)}
    assert items["zeros.dcm"].error_class == "decompression_bomb"
    assert "max_compression_ratio=200" in items["zeros.dcm"].message
    assert items["ct.dcm"].data == ct  # the other members are still read


def test_tar_gz_bomb_stops_at_ratio_with_one_archive_row(tmp_path):
    path = tmp_path / "bomb.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for i in range(4):
            _tar_add(tf, f"z{i}.dcm", b"\0" * (8 * 1024 * 1024))
    items = _items(path)
    assert [(it.archive_member, it.error_class) for it in items] == [(None, "decompression_bomb")]
    assert "compression ratio" in items[0].message


def test_archive_byte_and_member_budgets(tmp_path, test_files):
    ct = (test_files / "CT_small.dcm").read_bytes()
    path = tmp_path / "many.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(5):
            zf.writestr(f"{i}.dcm", ct)
    items = _items(path, Limits(max_archive_bytes=2 * len(ct) + 10))
    classes = [it.error_class for it in items]
    assert classes[:2] == [None, None]
    assert classes[2:] == ["decompression_bomb"] * 3  # every member still has its row
    assert "max_archive_bytes" in items[2].message
    items = _items(path, Limits(max_archive_members=3))
    assert [(it.archive_member, it.error_class) for it in items] == [(None, "decompression_bomb")]
