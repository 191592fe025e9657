"""Error classes: the values of ``error_class`` in the five error tables (``ingest_errors``,
``preprocess_errors``, ``waveform_errors``, ``series_errors``, ``export_errors``).

Declared once, here, beside the schemas: the code that writes an error row takes its class from
this module, the table registry (:data:`medspark.tables.schemas.TABLES`) names each error
table's classes, and the table reference (``docs/tables.md``) lists them from there. Pure
Python: it is imported on the executors.
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
# An item of a patient or study erased by medspark forget (medspark.erasure).
ERASED_SUBJECT = "erased_subject"
# Preprocessing (medspark.preprocess.udf).
SOURCE_CHANGED = "source_changed"
UNDECODABLE_FILE = "undecodable_file"
UNDECODABLE_FRAME = "undecodable_frame"
PREPROCESS_FAILED = "preprocess_failed"
# Waveforms (medspark.waveforms.decode).
NO_WAVEFORM = "no_waveform"
BAD_CHANNEL_DEFINITION = "bad_channel_definition"
UNSUPPORTED_WAVEFORM = "unsupported_waveform"
WAVEFORM_DATA_TOO_SHORT = "waveform_data_too_short"
UNREADABLE_WAVEFORM = "unreadable_waveform"
WAVEFORM_TOO_LARGE = "waveform_too_large"
# Series as volumes (medspark.volumes.assemble, medspark.volumes.steps).
IRREGULAR_SERIES = "irregular_series"
SERIES_TOO_LARGE = "series_too_large"
NOT_MONOCHROME = "not_monochrome"
SEGMENTATION_FAILED = "segmentation_failed"
SEG_FAILED = "seg_failed"
# De-identified DICOM files (medspark.dicom.instance, medspark.export).
BURNED_IN_WITHHELD = "burned_in_withheld"
NOT_DEIDENTIFIED = "not_deidentified"

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
    ERASED_SUBJECT: (
        "an item of a patient or study erased with medspark forget: not read further, and the "
        "row names neither (its location is a keyed hash)"
    ),
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

#: ``waveform_errors.error_class`` -> when an instance (or one multiplex group) gets it.
WAVEFORM_ERROR_CLASSES: dict[str, str] = {
    NO_WAVEFORM: "no Waveform Sequence (5400,0100), or it is empty",
    BAD_CHANNEL_DEFINITION: "channel counts, sensitivity or units disagree",
    UNSUPPORTED_WAVEFORM: "a bits / sample interpretation pair PS3.3 does not define",
    WAVEFORM_DATA_TOO_SHORT: "fewer bytes than channels x samples",
    UNREADABLE_WAVEFORM: "not DICOM, or pydicom could not parse it",
    WAVEFORM_TOO_LARGE: "more samples than the step's limit",
    SOURCE_CHANGED: "the item's SHA-256 differs from the one ingest recorded",
    UNREADABLE: "the item could not be read again",
}

#: ``series_errors.error_class`` -> when a series gets it (or the reader's class of an
#: instance it could not read again).
SERIES_ERROR_CLASSES: dict[str, str] = {
    IRREGULAR_SERIES: "the geometry is not a regular volume (see series.verdict)",
    SERIES_TOO_LARGE: "more voxels than volumes.max_voxels",
    NOT_MONOCHROME: "a colour series: the volume models take one channel",
    UNREADABLE: "an instance could not be read again",
    SOURCE_CHANGED: "an instance's SHA-256 differs from the one ingest recorded",
    UNDECODABLE_FILE: "an instance has no usable Pixel Data",
    UNDECODABLE_FRAME: "a frame failed to decode",
    SEGMENTATION_FAILED: "the model raised on the volume",
    SEG_FAILED: "the DICOM SEG file could not be written",
}

#: ``export_errors.error_class`` -> when an instance is not exported (or the reader's class of
#: an item it could not read again: ``too_large``, ``decompression_bomb``, ...).
EXPORT_ERROR_CLASSES: dict[str, str] = {
    UNREADABLE: "the item could not be read again (vanished, permissions)",
    SOURCE_CHANGED: "the item's SHA-256 differs from the one ingest recorded: ingest it again",
    BURNED_IN_WITHHELD: (
        "flagged for burned-in text with no Sequence of Ultrasound Regions (0018,6011) to keep "
        "(deid.burned_in: clean): no file is written"
    ),
    UNDECODABLE_FILE: "the pixels must be cleaned and cannot be decoded, or pydicom cannot read it",
    NOT_DEIDENTIFIED: (
        "its scans header is not marked Patient Identity Removed (0012,0062) YES (written with "
        "deid.enabled false): no file is written"
    ),
}
