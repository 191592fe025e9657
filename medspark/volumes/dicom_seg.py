"""Segment masks as DICOM Segmentation objects (highdicom) for viewers, beside the warehouse.

One SEG file per series and model version, written on the executor in the same task that
segmented the series (:func:`medspark.volumes.steps.volume_rows`); only its path (relative to
the warehouse) comes back, as ``series_segments.seg_path``:
``<warehouse>/segmentations/<Series Instance UID>/<model>-<version>.dcm``.

What it refers to: the SEG is built (``highdicom.seg.Segmentation``) from *source datasets*
made here from the ``scans`` rows of the series, which are already de-identified: SOP
Instance UID (0008,0018), Study / Series Instance UID (0020,000D) / (0020,000E) and Patient ID
(0010,0020) are the pseudonyms ``scans`` holds, Study Date (0008,0020) is the shifted date.
The few attributes a SEG copies from its source that ``scans`` has no column for (Patient's
Name (0010,0010), Birth Date (0010,0030), Sex (0010,0040), Study ID (0020,0010), Accession
Number (0008,0050), Referring Physician's Name (0008,0090), Frame of Reference UID
(0020,0052), and the de-identification marks Patient Identity Removed (0012,0062),
De-identification Method (0012,0063) / Code Sequence (0012,0064)) are taken from the
de-identified ``scans.header_json`` (:data:`SEG_HEADER_TAGS`): the SEG says nothing about the
patient that ``scans`` does not. No original file is opened for it.

Geometry: the model segments the preprocessed grid (reoriented, resampled, cropped); the SEG's
frames are on the source slices' grid, so that every frame refers to its source image (what
viewers expect). The label array is carried back to it by nearest neighbour through the two
affines (:func:`labels_on_grid`). A segment's volume from the SEG's frames therefore differs
from ``series_segments.volume_ml`` (measured on the segmented grid) by the resampling, a few
percent for a 1 mm grid and 2.5 mm slices.

Re-runs do not churn: the SEG's own UIDs (Series and SOP Instance UID, Dimension Organization
UID (0020,9164)) are derived from the series' pseudonymous UID, the model and its version
(:func:`derived_uid`), the dates in it are the study's (shifted) date and time instead of the
time of writing, and the file is written to a temporary name and renamed over the old one, so
the same input gives the same bytes at the same path, and a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "SEG_DIR",
    "SEG_HEADER_TAGS",
    "derived_uid",
    "labels_on_grid",
    "seg_header",
    "seg_relative_path",
    "segmentation_dataset",
    "source_datasets",
    "write_atomically",
]

#: Folder of the SEG files under the warehouse directory.
SEG_DIR = "segmentations"

#: Attributes copied from the de-identified ``scans.header_json`` into the source datasets
#: (DICOM JSON tags, PS3.18 F): patient and study module values a SEG repeats, the Frame of
#: Reference, and the de-identification marks.
SEG_HEADER_TAGS = (
    "00100010",  # Patient's Name
    "00100030",  # Patient's Birth Date
    "00100040",  # Patient's Sex
    "00200010",  # Study ID
    "00080050",  # Accession Number
    "00080090",  # Referring Physician's Name
    "00200052",  # Frame of Reference UID
    "00120062",  # Patient Identity Removed
    "00120063",  # De-identification Method
    "00120064",  # De-identification Method Code Sequence
    "00280303",  # Longitudinal Temporal Information Modified
)

_COPIED_TO_SEG = ("00120062", "00120063", "00120064", "00280303")


def derived_uid(*parts: str) -> str:
    """A UID under ``2.25`` from SHA-256 of ``parts`` (UUID version 8 and variant bits set, as
    :meth:`medspark.dicom.deid.Pseudonymizer.uid` does). The parts are already pseudonymous
    (the series' UID in ``scans``), so no secret is needed for the result to reveal nothing;
    the same parts always give the same UID."""
    digest = hashlib.sha256("\x00".join(("medspark-seg", *parts)).encode("utf-8")).digest()
    value = int.from_bytes(digest[:16], "big")
    value = (value & ~(0xF << 76)) | (0x8 << 76)
    value = (value & ~(0x3 << 62)) | (0x2 << 62)
    return f"2.25.{value}"


def seg_relative_path(series_uid: str, model: str, version: str) -> str:
    """``segmentations/<series uid>/<model>-<version>.dcm``, relative to the warehouse."""
    return f"{SEG_DIR}/{series_uid}/{model}-{version}.dcm"


def labels_on_grid(
    labels: np.ndarray,
    labels_affine: np.ndarray,
    target_affine: np.ndarray,
    target_shape: Sequence[int],
) -> np.ndarray:
    """``labels`` (uint8 ``[k, j, i]`` on ``labels_affine``) resampled by nearest neighbour to
    the grid ``target_affine`` of ``target_shape`` (both affines ``(k, j, i, 1)`` -> LPS mm);
    target voxels whose centre falls outside the labelled grid are 0. One slice at a time."""
    m = np.linalg.inv(np.asarray(labels_affine, dtype=float)) @ np.asarray(target_affine, float)
    n_k, n_j, n_i = (int(v) for v in target_shape)
    jj, ii = np.meshgrid(np.arange(n_j, dtype=float), np.arange(n_i, dtype=float), indexing="ij")
    out = np.zeros((n_k, n_j, n_i), dtype=np.uint8)
    bounds = labels.shape
    for k in range(n_k):
        idx = [np.rint(m[c, 0] * k + m[c, 1] * jj + m[c, 2] * ii + m[c, 3]) for c in range(3)]
        ok = np.ones((n_j, n_i), dtype=bool)
        for c in range(3):
            ok &= (idx[c] >= 0) & (idx[c] <= bounds[c] - 1)
        if ok.any():
            a, b, c = (idx[n][ok].astype(np.intp) for n in range(3))
            out[k][ok] = labels[a, b, c]
    return out


def _header_subset(value: Any) -> dict[str, Any]:
    """The ``seg_header`` column (JSON object tag -> element JSON, from
    :data:`SEG_HEADER_TAGS`) as a DICOM JSON dict; elements absent from the header dropped."""
    if not value:
        return {}
    doc = json.loads(value) if isinstance(value, str) else dict(value)
    out = {}
    for tag, element in doc.items():
        if element is None:
            continue
        out[tag] = json.loads(element) if isinstance(element, str) else element
    return out


def source_datasets(
    rows_in_order: Sequence[Mapping[str, Any]], frame_of_reference: str | None = None
) -> list[Any]:
    """pydicom Datasets standing for the source images (one per slice, in array order), made
    from ``scans`` rows (:data:`medspark.volumes.steps.SEG_INPUT_COLUMNS`): the pseudonymous
    UIDs and patient key, the shifted study date, the geometry columns, and the de-identified
    header values of :data:`SEG_HEADER_TAGS` (``seg_header``). ``frame_of_reference`` is used
    where the header has none (a non-conformant source; derived from the series' UID)."""
    from pydicom.dataset import Dataset

    out = []
    for row in rows_in_order:
        ds = Dataset.from_json(_header_subset(row.get("seg_header")))
        ds.SOPInstanceUID = row["sop_instance_uid"]
        ds.SOPClassUID = row.get("sop_class_uid") or "1.2.840.10008.5.1.4.1.1.2"
        ds.StudyInstanceUID = row["study_instance_uid"]
        ds.SeriesInstanceUID = row["series_instance_uid"]
        ds.PatientID = row.get("patient_id") or ""
        for keyword in ("PatientName", "PatientBirthDate", "PatientSex", "StudyID"):
            if keyword not in ds:
                setattr(ds, keyword, "")
        if "AccessionNumber" not in ds:
            ds.AccessionNumber = ""
        if "ReferringPhysicianName" not in ds:
            ds.ReferringPhysicianName = ""
        date = row.get("study_date")
        ds.StudyDate = date.strftime("%Y%m%d") if date is not None else ""
        time = row.get("study_time")
        ds.StudyTime = time.replace(":", "") if time else ""
        ds.Modality = row.get("modality") or "OT"
        if "FrameOfReferenceUID" not in ds or not ds.FrameOfReferenceUID:
            ds.FrameOfReferenceUID = frame_of_reference or derived_uid(
                row["series_instance_uid"], "frame-of-reference"
            )
        ds.Rows = int(row["rows"])
        ds.Columns = int(row["columns"])
        ds.PixelSpacing = [float(v) for v in row["pixel_spacing"]]
        ds.ImageOrientationPatient = [float(v) for v in row["image_orientation_patient"]]
        ds.ImagePositionPatient = [float(v) for v in row["image_position_patient"]]
        if row.get("slice_thickness") is not None:
            ds.SliceThickness = float(row["slice_thickness"])
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        out.append(ds)
    return out


def _codes(label: str) -> tuple[Any, Any]:
    """(Segmented Property Category, Type) codes of a label name: SNOMED CT lung and nodule,
    any other name Tissue (the segment label carries the name)."""
    from pydicom.sr.codedict import codes

    known = {
        "lung": (codes.SCT.AnatomicalStructure, codes.SCT.Lung),
        "lungs": (codes.SCT.AnatomicalStructure, codes.SCT.Lung),
        "nodule": (codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Nodule),
    }
    return known.get(label.lower(), (codes.SCT.Tissue, codes.SCT.Tissue))


def _quiet_highdicom() -> None:
    """highdicom reports each attribute it copies (INFO) or finds missing (WARNING) through
    ``logging``; a Python worker configures no handler, so Python's last-resort handler printed
    those warnings on the console of ``medspark volumes``. The outcome that matters is the
    row: ``seg_path``, or a ``seg_failed`` error with its reason. A handler on the library's
    logger stops the fallback; ``--verbose`` users can still attach their own."""
    import logging

    logger = logging.getLogger("highdicom")
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())


def segmentation_dataset(
    sources: Sequence[Any],
    labels: np.ndarray,
    label_names: Sequence[str],
    *,
    model: str,
    version: str,
    software_version: str,
) -> Any:
    """The SEG (a ``highdicom.seg.Segmentation``, BINARY, one segment per label name, value 1,
    2, ... in ``labels`` of shape (len(sources), rows, columns)), with deterministic UIDs and
    dates (see the module docstring)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    _quiet_highdicom()
    first = sources[0]
    series_uid = str(first.SeriesInstanceUID)
    algorithm = hd.AlgorithmIdentificationSequence(
        name=model, version=version, family=codes.DCM.ArtificialIntelligence, source="medspark"
    )
    descriptions = []
    for value, name in enumerate(label_names, start=1):
        category, kind = _codes(name)
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=value,
                segment_label=name,
                segmented_property_category=category,
                segmented_property_type=kind,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
            )
        )
    date = str(first.get("StudyDate") or "") or "19000101"
    time = str(first.get("StudyTime") or "") or "000000"
    seg = hd.seg.Segmentation(
        source_images=list(sources),
        pixel_array=labels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=derived_uid(series_uid, model, version, "series"),
        series_number=900,
        sop_instance_uid=derived_uid(series_uid, model, version, "instance"),
        instance_number=1,
        manufacturer="medspark",
        manufacturer_model_name="medspark volumes",
        software_versions=software_version,
        device_serial_number="none",
        content_description=f"{model} {version}"[:64],
        content_label="MEDSPARK",
        content_date=date,
        content_time=time,
        series_date=date,
        series_time=time,
    )
    # Deterministic bytes: no time of writing, no random UID.
    for keyword in ("InstanceCreationDate", "InstanceCreationTime"):
        if keyword in seg:
            delattr(seg, keyword)
    for item in seg.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            del item.ContributionDateTime
    dim_uid = derived_uid(series_uid, model, version, "dimension-organization")
    for item in seg.get("DimensionOrganizationSequence", []):
        item.DimensionOrganizationUID = dim_uid
    for item in seg.get("DimensionIndexSequence", []):
        item.DimensionOrganizationUID = dim_uid
    for tag in _COPIED_TO_SEG:
        element = first.get(int(tag, 16))
        if element is not None:
            seg[int(tag, 16)] = element
    return seg


def write_atomically(dataset: Any, path: str | Path) -> None:
    """Write ``dataset`` to ``path`` through a temporary file in the same folder and a rename:
    a reader sees the old file or the new one, never half of one; identical bytes already
    there are left as they are."""
    from io import BytesIO

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return
    except FileNotFoundError:
        pass
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def seg_header(header_json: str | None) -> str | None:
    """The ``seg_header`` value of one ``scans.header_json`` in pure Python: what
    :func:`medspark.volumes.steps.segment_series` computes in Spark with ``get_json_object``
    (for tests and callers without Spark)."""
    if not header_json:
        return None
    doc = json.loads(header_json)
    return json.dumps(
        {t: json.dumps(doc[t], separators=(",", ":")) for t in SEG_HEADER_TAGS if t in doc}
    )
