"""De-identification: the DataFrame -> DataFrame step between parsing and writing.

Every analyst table passes through :func:`deidentify_scans` before it is written. This first
version is the identity: the PS3.15 Annex E Basic Application Level Confidentiality Profile
(pseudonymous UIDs from a keyed hash, removal of Table E.1-1 attributes from the typed columns
and the DICOM JSON header, date shifting) is the subject of its own issue and lands here, so
no other module has to change when it does.
"""

from __future__ import annotations

from pyspark.sql import DataFrame


def deidentify_scans(scans: DataFrame) -> DataFrame:
    """Return ``scans`` with identifying values removed (identity until de-identification lands)."""
    return scans
