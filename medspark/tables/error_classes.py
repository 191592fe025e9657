"""Error classes: the values of ``error_class`` in ``ingest_errors`` and ``preprocess_errors``.

Declared once, here, beside the schemas: the code that writes an error row takes its class from
this module, and the table reference (``docs/tables.md``, :mod:`medspark.tables.docs`) lists
them from :data:`INGEST_ERROR_CLASSES` and :data:`PREPROCESS_ERROR_CLASSES`. Pure Python: it is
imported on the executors.
"""

from __future__ import annotations

# Reading an item (medspark.sources.archives, medspark.sources.members).
UNREADABLE = "unreadable"
EMPTY_FILE = "empty_file"
BROKEN_ARCHIVE = "broken_archive"
CORRUPT_MEMBER = "corrupt_member"
ENCRYPTED_MEMBER = "encrypted_member"
UNSAFE_MEMBER = "unsafe_member"
NESTED_TOO_DEEP = "nested_too_deep"
# Limits, at the archive level and inside one DICOM item (medspark.dicom.header).
TOO_LARGE = "too_large"
DECOMPRESSION_BOMB = "decompression_bomb"
# Parsing the header (medspark.dicom.header).
NOT_DICOM = "not_dicom"
TRUNCATED = "truncated"
INVALID_DICOM = "invalid_dicom"
MISSING_SOP_INSTANCE_UID = "missing_sop_instance_uid"
# Deduplication on SOP Instance UID (medspark.steps.resolve_duplicates).
DUPLICATE_COPY = "duplicate_copy"
DUPLICATE_SOP_INSTANCE = "duplicate_sop_instance"
# Preprocessing (medspark.preprocess.udf).
SOURCE_CHANGED = "source_changed"
UNDECODABLE_FILE = "undecodable_file"
UNDECODABLE_FRAME = "undecodable_frame"
PREPROCESS_FAILED = "preprocess_failed"

#: ``ingest_errors.error_class`` -> when an item gets it.
INGEST_ERROR_CLASSES: dict[str, str] = {
    UNREADABLE: "the file could not be opened or read (permissions, vanished)",
    EMPTY_FILE: "zero bytes",
    NOT_DICOM: "not a DICOM data set (no DICM prefix, no data element at the start)",
    TRUNCATED: "the file ends before a declared value, or before its pixel data",
    INVALID_DICOM: "pydicom cannot parse the data set",
    MISSING_SOP_INSTANCE_UID: "no SOP Instance UID (0008,0018), so no key",
    BROKEN_ARCHIVE: "the container itself is corrupt or truncated (members read before stay)",
    CORRUPT_MEMBER: "a member failed its CRC or could not be decompressed",
    ENCRYPTED_MEMBER: "a zip member is encrypted (no password is ever tried)",
    UNSAFE_MEMBER: "zip-slip names (absolute, '..'), links, devices; never followed",
    TOO_LARGE: "an item over ingest.max_item_bytes, or a frame over ingest.max_frame_samples",
    NESTED_TOO_DEEP: "an archive inside archives deeper than ingest.max_archive_depth",
    DECOMPRESSION_BOMB: (
        "beyond max_compression_ratio, max_archive_bytes, max_archive_members or "
        "max_inflated_bytes (a Deflated data set)"
    ),
    DUPLICATE_COPY: "same SOP Instance UID and same bytes as the kept instance, named",
    DUPLICATE_SOP_INSTANCE: "same SOP Instance UID, different content; the kept source is named",
}

#: ``preprocess_errors.error_class`` -> when a frame (or a whole item) gets it. An item the
#: reader refuses on the re-read keeps the class ingest gives it (``too_large``, ...).
PREPROCESS_ERROR_CLASSES: dict[str, str] = {
    UNREADABLE: "the item could not be read again",
    UNDECODABLE_FILE: "no usable Pixel Data, or an unsupported encoding (frame null)",
    UNDECODABLE_FRAME: "one frame failed to decode; the others still produce rows",
    PREPROCESS_FAILED: "an operation of the chain raised on this frame",
    SOURCE_CHANGED: "the item's SHA-256 differs from the one ingest recorded: ingest it again",
}
