"""Synthetic CT slices as real DICOM files: for the demo model, the demo data and benchmarks.

No real patient data ships with medspark, and no pretrained model can be downloaded, so the
project makes its own labelled data: chest-CT-like axial slices (body ellipse of soft tissue,
two lungs, spine, table-free), optionally with one small round nodule inside a lung. Values are
Hounsfield units stored as signed 16-bit with Rescale Intercept -1024, so they go through the same
modality LUT and windowing as real CT. This is a demonstration dataset, not a clinical one.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import numpy as np

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


@dataclass(frozen=True)
class SliceSpec:
    """What one synthetic slice shows; ``nodule`` is the label the demo model learns."""

    nodule: bool
    seed: int


def ct_slice_hu(spec: SliceSpec, size: int = 256) -> np.ndarray:
    """A synthetic axial chest slice in HU (int16, size x size)."""
    return ct_slice_with_nodule(spec, size)[0]


@dataclass(frozen=True)
class Nodule:
    """Where a slice's nodule is, in pixels of the slice: centre column ``x``, row ``y``, and
    ``radius``; a pixel (col, row) is nodule when (col/size - 0.5 - cx)^2 + (row/size - 0.5 -
    cy)^2 <= r^2 in the generator's units, i.e. within ``radius`` of (x, y) here."""

    x: float
    y: float
    radius: float

    def contains(self, col: float, row: float, margin: float = 0.0) -> bool:
        """Whether pixel (col, row) is inside the nodule (grown by ``margin`` pixels)."""
        return (col - self.x) ** 2 + (row - self.y) ** 2 <= (self.radius + margin) ** 2


def ct_slice_with_nodule(spec: SliceSpec, size: int = 256) -> tuple[np.ndarray, Nodule | None]:
    """:func:`ct_slice_hu` and where its nodule is (None without one): the ground truth that
    saliency is checked against (tests/test_saliency.py). The same draws in the same order,
    so the slice is the very one ``ct_slice_hu`` has always made for ``spec``."""
    rng = np.random.default_rng(spec.seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    img = np.full((size, size), -1000.0, dtype=np.float32)  # air
    a, b = rng.uniform(0.40, 0.46), rng.uniform(0.30, 0.36)
    body = (xx / a) ** 2 + (yy / b) ** 2 <= 1.0
    img[body] = rng.uniform(20, 60)  # soft tissue
    lungs = []
    for side in (-1, 1):
        cx, cy = side * rng.uniform(0.17, 0.21), rng.uniform(-0.04, 0.02)
        la, lb = rng.uniform(0.11, 0.14), rng.uniform(0.18, 0.22)
        lung = ((xx - cx) / la) ** 2 + ((yy - cy) / lb) ** 2 <= 1.0
        img[lung] = rng.uniform(-870, -820)
        lungs.append((cx, cy, la, lb))
    spine = (xx / 0.05) ** 2 + ((yy - 0.22) / 0.05) ** 2 <= 1.0
    img[spine] = rng.uniform(500, 900)
    # Vessels: a few small bright dots in the lungs, so that "bright spot" alone is not the label.
    for _ in range(rng.integers(3, 7)):
        cx, cy, la, lb = lungs[rng.integers(0, 2)]
        vx, vy = cx + rng.uniform(-0.6, 0.6) * la, cy + rng.uniform(-0.6, 0.6) * lb
        r = rng.uniform(0.004, 0.007)
        img[((xx - vx) ** 2 + (yy - vy) ** 2) <= r * r] = rng.uniform(-100, 40)
    if spec.nodule:
        cx, cy, la, lb = lungs[rng.integers(0, 2)]
        nx, ny = cx + rng.uniform(-0.5, 0.5) * la, cy + rng.uniform(-0.5, 0.5) * lb
        r = rng.uniform(0.018, 0.035)
        img[((xx - nx) ** 2 + (yy - ny) ** 2) <= r * r] = rng.uniform(-20, 60)
        nodule = Nodule(x=(nx + 0.5) * size, y=(ny + 0.5) * size, radius=r * size)
    else:
        nodule = None
    img += rng.normal(0, 12, img.shape).astype(np.float32)
    return np.clip(np.rint(img), -1024, 3071).astype(np.int16), nodule


def ct_dataset(
    hu: np.ndarray,
    *,
    sop_uid: str,
    study_uid: str,
    series_uid: str,
    patient_id: str = "SYNTH-0001",
    patient_name: str = "Synthetic^Patient",
    station: str = "CT01",
    manufacturer: str = "medspark synthetic",
    model: str = "SYN-CT",
    acquired: dt.datetime | None = None,
    instance_number: int = 1,
    spacing_mm: float = 0.7,
    window: tuple[float, float] = (-600.0, 1500.0),
) -> Any:
    """A CT Image Storage dataset (pydicom FileDataset) holding ``hu``.

    Stored values are HU + 1024 as signed 16-bit with Rescale Slope 1 / Intercept -1024, the
    common CT encoding. Window Center/Width default to a lung window so that nodules show.
    """
    acquired = acquired or dt.datetime(2026, 1, 5, 9, 0, 0)
    ds = new_dataset(CT_IMAGE_STORAGE, sop_uid)
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.Modality = "CT"
    ds.BodyPartExamined = "CHEST"
    ds.StationName = station
    ds.Manufacturer = manufacturer
    ds.ManufacturerModelName = model
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = acquired.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = acquired.strftime("%H%M%S")
    ds.InstanceNumber = instance_number
    set_hu_pixels(ds, hu)
    ds.WindowCenter = window[0]
    ds.WindowWidth = window[1]
    ds.PixelSpacing = [spacing_mm, spacing_mm]
    ds.SliceThickness = 1.0
    return ds


def new_dataset(sop_class: str, sop_uid: str) -> Any:
    """The start of every synthetic file: an empty dataset with its File Meta Information
    (Explicit VR Little Endian, 128-byte preamble) and its SOP Class and Instance UIDs
    (0008,0016), (0008,0018), the same in the meta and the data set."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    return ds


def set_hu_pixels(ds: Any, hu: np.ndarray) -> None:
    """The Image Pixel module of a CT slice holding ``hu`` (rows x columns Hounsfield units).

    Stored values are HU + 1024 as signed 16-bit with Rescale Slope 1 / Intercept -1024, the
    common CT encoding.
    """
    ds.Rows, ds.Columns = hu.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleSlope = 1
    ds.RescaleIntercept = -1024
    ds.PixelData = (hu.astype(np.int32) + 1024).astype(np.int16).tobytes()


def ct_slice_bytes(spec: SliceSpec, size: int = 256, **kwargs: Any) -> bytes:
    """A whole DICOM file (bytes) for ``spec``; UIDs derived from the seed unless given."""
    import io

    from pydicom.uid import generate_uid

    seed = str(spec.seed)
    kwargs.setdefault("sop_uid", generate_uid(entropy_srcs=["sop", seed]))
    kwargs.setdefault("study_uid", generate_uid(entropy_srcs=["study", seed]))
    kwargs.setdefault("series_uid", generate_uid(entropy_srcs=["series", seed]))
    ds = ct_dataset(ct_slice_hu(spec, size), **kwargs)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
