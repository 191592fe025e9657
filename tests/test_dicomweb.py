"""``medspark export`` and ``medspark serve`` on a real warehouse: the files, the error rows,
and a live DICOMweb server on 127.0.0.1 queried with dicomweb-client."""

from __future__ import annotations

import logging
import shutil
import socket
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
from conftest import TEST_FILES
from deltalake import DeltaTable

from medspark.cli import main
from medspark.config import PipelineConfig, with_overrides
from medspark.export import export
from medspark.metrics.runs import RunRecord
from medspark.pipeline import run_all
from medspark.serve import create_app
from medspark.tables.error_classes import BURNED_IN_WITHHELD, SOURCE_CHANGED
from medspark.volumes.dicom_seg import (
    seg_header,
    seg_relative_path,
    segmentation_dataset,
    source_datasets,
    write_atomically,
)
from medspark.volumes.synthetic import sphere_hu, write_series

PATIENT_ID = "PID-ALICE-4711"
STUDY = "1.2.826.0.1.3680043.8.498.77"
SERIES = "1.2.826.0.1.3680043.8.498.771"
SHAPE = (4, 24, 24)


@pytest.fixture(scope="module")
def built(spark, tmp_path_factory, test_files):
    """A warehouse of: a 4-slice CT series in a folder named after the patient (one slice in
    a zip), an ultrasound with regions (cleaned), one without (withheld), a JPEG 2000 MR
    (kept as encoded); and a DICOM SEG of the CT series beside it."""
    root = tmp_path_factory.mktemp("dicomweb")
    source = root / "in"
    patient = source / "Liddell^Alice"
    hu = sphere_hu(SHAPE, (2.0, 1.0, 1.0), (1.5, 12.0, 12.0), 6.0)
    paths = write_series(
        patient, hu, (2.0, 1.0, 1.0), series_uid=SERIES, study_uid=STUDY, patient_id=PATIENT_ID
    )
    with zipfile.ZipFile(patient / "export.zip", "w") as zf:
        zf.write(paths[-1], f"Liddell^Alice/{paths[-1].name}")
    paths[-1].unlink()
    for name in ("examples_ybr_color.dcm", "examples_rgb_color.dcm", "MR_small_jp2klossless.dcm"):
        shutil.copy(test_files / name, source / name)
    config = with_overrides(PipelineConfig(), warehouse=str(root / "warehouse"))
    run_all(spark, [str(source)], config, RunRecord(run_id="dicomweb-1", job="run"))

    scans = DeltaTable(config.table_path("scans")).to_pyarrow_table().to_pylist()
    rows = [r for r in scans if r["series_instance_uid"] == _series_of(scans)]
    for r in rows:
        r["seg_header"] = seg_header(r["header_json"])
    rows.sort(key=lambda r: r["image_position_patient"][2])
    seg = segmentation_dataset(
        source_datasets(rows),
        (hu > 0).astype(np.uint8),
        ["sphere"],
        model="threshold",
        version="1",
        software_version="0",
    )
    where = Path(config.warehouse) / seg_relative_path(
        rows[0]["series_instance_uid"], "threshold", "1"
    )
    write_atomically(seg, where)
    return config, source, scans


def _series_of(scans: list[dict]) -> str:
    """The pseudonymous series of the CT slices (four rows, modality CT)."""
    (series,) = {
        r["series_instance_uid"] for r in scans if r["modality"] == "CT" and r["rows"] == 24
    }
    return series


def _sop_of(scans: list[dict], name: str) -> str:
    """The pseudonymous SOP Instance UID of the bundled file ``name`` (by its SHA-256)."""
    import hashlib

    digest = hashlib.sha256((TEST_FILES / name).read_bytes()).hexdigest()
    (sop,) = [r["sop_instance_uid"] for r in scans if r["sha256"] == digest]
    return sop


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.dcm"))}


NEEDLES = [PATIENT_ID.encode(), b"Liddell", b"Alice", STUDY.encode(), SERIES.encode()]


def test_export_writes_every_scan_as_a_deidentified_file(built, tmp_path):
    config, _, scans = built
    result = export(config, tmp_path / "out")
    files = _files(tmp_path / "out")
    by_sop = {r["sop_instance_uid"]: r for r in scans}
    withheld = {_sop_of(scans, "examples_rgb_color.dcm")}
    assert result.errors_by_class == {BURNED_IN_WITHHELD: 1} and len(withheld) == 1
    assert result.instances == len(scans) - 1 and result.segmentations == 1
    assert len(files) == len(scans)  # every scan but the withheld one, and the SEG
    for relative, data in files.items():
        study, series, name = relative.split("/")
        ds = pydicom.dcmread(Path(tmp_path / "out" / relative))
        assert (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID + ".dcm") == (
            study,
            series,
            name,
        )
        for needle in NEEDLES:
            assert needle not in data, (relative, needle)
        if ds.Modality == "SEG":
            assert (
                ds.StudyInstanceUID
                == by_sop[
                    ds.ReferencedSeriesSequence[0]
                    .ReferencedInstanceSequence[0]
                    .ReferencedSOPInstanceUID
                ]["study_instance_uid"]
            )
            continue
        row = by_sop[ds.SOPInstanceUID]
        assert (row["study_instance_uid"], row["series_instance_uid"]) == (study, series)
        assert ds.PatientID == row["patient_id"]
        assert ds.PatientIdentityRemoved == "YES"
    errors = DeltaTable(config.table_path("export_errors")).to_pyarrow_table().to_pylist()
    assert [(e["sop_instance_uid"], e["error_class"]) for e in errors] == [
        (next(iter(withheld)), BURNED_IN_WITHHELD)
    ]
    # Re-running writes identical bytes, and adds no error row.
    export(config, tmp_path / "again")
    assert _files(tmp_path / "again") == files
    assert DeltaTable(config.table_path("export_errors")).to_pyarrow_table().num_rows == 1


def test_a_changed_source_is_an_error_row_not_a_different_file(built, tmp_path):
    config, source, scans = built
    victim = source / "MR_small_jp2klossless.dcm"
    original = victim.read_bytes()
    (mr,) = [r for r in scans if r["modality"] == "MR"]
    try:
        victim.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        result = export(config, tmp_path / "out", studies=[mr["study_instance_uid"]])
        assert result.instances == 0 and result.errors_by_class == {SOURCE_CHANGED: 1}
        assert not list((tmp_path / "out").rglob("*.dcm"))
        rows = DeltaTable(config.table_path("export_errors")).to_pyarrow_table().to_pylist()
        (row,) = [r for r in rows if r["sop_instance_uid"] == mr["sop_instance_uid"]]
        assert row["error_class"] == SOURCE_CHANGED
        assert str(source) not in row["message"] and mr["source_uri"] in row["message"]
    finally:
        victim.write_bytes(original)
    again = export(config, tmp_path / "out", studies=[mr["study_instance_uid"]])
    assert again.instances == 1 and again.cleared == 1


def test_export_command_line(built, tmp_path, capsys):
    config, _, scans = built
    study = next(r for r in scans if r["series_instance_uid"] == _series_of(scans))[
        "study_instance_uid"
    ]
    out = tmp_path / "cli"
    code = main(["export", "--warehouse", config.warehouse, "--out", str(out), "--study", study])
    assert code == 0
    assert {p.parts[-3] for p in out.rglob("*.dcm")} == {study}
    code = main(["export", "--warehouse", config.warehouse, "--out", str(out), "--study", "1.2'3"])
    err = capsys.readouterr().err
    assert code == 2 and "'--study'" in err and err.count("\n") == 1


# -- serve -----------------------------------------------------------------------------


def _start(app):
    """Run ``app`` with uvicorn on 127.0.0.1, on a free port, in a thread."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    instance = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=instance.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(200):
        if instance.started:
            break
        time.sleep(0.05)
    return instance, thread, f"http://127.0.0.1:{port}/dicomweb"


@pytest.fixture(scope="module")
def server(built):
    """``medspark serve``'s application on 127.0.0.1 (see :func:`_start`)."""
    config, _, _ = built
    instance, thread, url = _start(create_app(config))
    yield url
    instance.should_exit = True
    thread.join(timeout=10)


def test_dicomweb_client_searches_and_retrieves(built, server, tmp_path):
    from dicomweb_client.api import DICOMwebClient

    config, _, scans = built
    export(config, tmp_path / "out")
    exported = _files(tmp_path / "out")
    client = DICOMwebClient(server)
    ct_series = _series_of(scans)
    (ct,) = {r["study_instance_uid"] for r in scans if r["series_instance_uid"] == ct_series}
    key = next(r["patient_id"] for r in scans if r["study_instance_uid"] == ct)

    studies = client.search_for_studies()
    assert {s["0020000D"]["Value"][0] for s in studies} == {r["study_instance_uid"] for r in scans}
    found = client.search_for_studies(search_filters={"PatientID": key})
    assert [s["0020000D"]["Value"][0] for s in found] == [ct]
    assert found[0]["00080061"]["Value"] == ["CT", "SEG"]  # the SEG is in its study
    assert client.search_for_studies(search_filters={"PatientID": key[:6] + "*"})[0] == found[0]
    date = found[0]["00080020"]["Value"][0]
    assert len(client.search_for_studies(search_filters={"StudyDate": f"{date}-{date}"})) >= 1
    assert client.search_for_studies(search_filters={"StudyDate": "19000101-19000102"}) == []
    assert len(client.search_for_studies(search_filters={"ModalitiesInStudy": "MR"})) == 1
    assert len(client.search_for_studies(limit=2)) == 2
    assert client.search_for_studies(offset=len(studies)) == []

    series = client.search_for_series(ct)
    assert {s["00080060"]["Value"][0] for s in series} == {"CT", "SEG"}
    instances = client.search_for_instances(ct, ct_series)
    assert len(instances) == 4
    metadata = client.retrieve_series_metadata(ct, ct_series)
    assert len(metadata) == 4 and all("BulkDataURI" in m["7FE00010"] for m in metadata)

    sop = instances[0]["00080018"]["Value"][0]
    path = f"{ct}/{ct_series}/{sop}.dcm"
    ds = client.retrieve_instance(ct, ct_series, sop)
    assert ds.SOPInstanceUID == sop
    assert pydicom.dcmread(tmp_path / "out" / path).PixelData == ds.PixelData
    (frame,) = client.retrieve_instance_frames(ct, ct_series, sop, [1])
    assert frame == pydicom.dcmread(tmp_path / "out" / path).PixelData
    # The SEG instance is retrieved as exported.
    (seg_series,) = [s["0020000E"]["Value"][0] for s in series if s["00080060"]["Value"] == ["SEG"]]
    (seg,) = client.search_for_instances(ct, seg_series)
    seg_sop = seg["00080018"]["Value"][0]
    seg_ds = client.retrieve_instance(ct, seg_series, seg_sop)
    assert (
        seg_ds.PixelData
        == pydicom.dcmread(tmp_path / "out" / f"{ct}/{seg_series}/{seg_sop}.dcm").PixelData
    )
    # The US instance: cleaned frames, 30 of them, as the exported file has them.
    (us,) = [r for r in scans if r["sop_instance_uid"] == _sop_of(scans, "examples_ybr_color.dcm")]
    frames = client.retrieve_instance_frames(
        us["study_instance_uid"], us["series_instance_uid"], us["sop_instance_uid"], [1, 30]
    )
    us_file = pydicom.dcmread(
        tmp_path / "out" / f"{us['study_instance_uid']}/{us['series_instance_uid']}/"
        f"{us['sop_instance_uid']}.dcm"
    )
    size = 320 * 240 * 3
    assert frames == [us_file.PixelData[:size], us_file.PixelData[29 * size : 30 * size]]
    assert len(exported) == len(scans)


def test_no_identifying_value_in_any_response(built, server):
    _, _, scans = built
    bodies = [requests.get(server + "/studies", timeout=10).content]
    for study in {r["study_instance_uid"] for r in scans}:
        bodies.append(requests.get(f"{server}/studies/{study}/series", timeout=10).content)
        bodies.append(requests.get(f"{server}/studies/{study}/metadata", timeout=30).content)
        bodies.append(requests.get(f"{server}/studies/{study}", timeout=30).content)
    assert all(bodies)
    for body in bodies:
        for needle in NEEDLES:
            assert needle not in body


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/studies/1.2.3", 404),
        ("/studies/1.2.3/series/4.5/instances/6.7", 404),
        ("/studies/abc/series", 400),
        ("/studies/..%2F..%2Fetc%2Fpasswd/series", 404),
        ("/studies/1.2.3%27%3B/series", 400),
        ("/studies?limit=ten", 400),
        ("/studies?NoSuchAttribute=1", 400),
        ("/nothing/here", 404),
    ],
)
def test_bad_requests_get_their_status_and_one_log_line(server, caplog, path, status):
    with caplog.at_level(logging.WARNING, logger="medspark.serve"):
        response = requests.get(server + path, timeout=10)
    assert response.status_code == status
    assert "Traceback" not in response.text
    lines = [r for r in caplog.records if r.name == "medspark.serve"]
    assert len(lines) == 1 and f"-> {status}" in lines[0].getMessage()


def test_a_token_is_required_when_set(built):
    config, _, _ = built
    instance, thread, url = _start(create_app(config, token="s3cret"))
    try:
        assert requests.get(url + "/studies", timeout=10).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert requests.get(url + "/studies", headers=wrong, timeout=10).status_code == 401
        right = {"Authorization": "Bearer s3cret"}
        assert requests.get(url + "/studies", headers=right, timeout=10).status_code == 200
    finally:
        instance.should_exit = True
        thread.join(timeout=10)


def test_serve_refuses_another_address_without_a_token(built, capsys):
    config, _, _ = built
    code = main(["serve", "--warehouse", config.warehouse, "--host", "0.0.0.0"])
    assert code == 2
    assert "'--token'" in capsys.readouterr().err


# -- the OHIF viewer in a browser --------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


def _viewport_png(page) -> np.ndarray:
    """The main viewport (the largest canvas) as an RGB array."""
    import cv2

    canvases = page.locator("canvas").all()
    box = max((c.bounding_box() for c in canvases), key=lambda b: b["width"] * b["height"])
    png = page.screenshot(clip=box)
    return cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_ohif_opens_a_study_from_the_list_and_overlays_its_seg(built):
    """OHIF, installed from npm (medspark install-viewer), served at /viewer by medspark serve,
    in headless Chromium: the study list shows the CT study with its SEG; opening it in the
    Segmentation mode draws the image; loading the SEG lists its segment and changes the
    image. The screenshots are kept in test-artifacts/."""
    from playwright.sync_api import sync_playwright

    from medspark.viewer import install, installed

    config, _, scans = built
    viewer = installed() or install()
    instance, thread, url = _start(create_app(config, viewer=viewer))
    base = url.removesuffix("/dicomweb")
    failed: list[tuple[int, str]] = []
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM,
                args=["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"],
            )
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on(
                "response", lambda r: failed.append((r.status, r.url)) if r.status >= 400 else None
            )
            page.goto(base + "/viewer/")
            row = page.get_by_text("CT\\SEG").first
            row.wait_for(timeout=90_000)
            row.click()
            page.get_by_role("button", name="Segmentation").click()
            page.get_by_text("I:1 (1/4)").wait_for(timeout=90_000)  # the CT's first slice
            page.wait_for_timeout(2000)
            image = _viewport_png(page)
            page.screenshot(path=ARTIFACTS / "ohif_study.png")
            assert image.std() > 10, "the viewport is blank"

            page.get_by_text("SEG", exact=True).last.dblclick()
            page.get_by_text("sphere").first.wait_for(timeout=60_000)
            page.wait_for_timeout(2000)
            overlaid = _viewport_png(page)
            page.screenshot(path=ARTIFACTS / "ohif_seg.png")
            browser.close()
    finally:
        instance.should_exit = True
        thread.join(timeout=10)
    assert not failed, failed
    assert overlaid.shape == image.shape
    changed = np.abs(overlaid.astype(int) - image.astype(int)).max(axis=2) > 30
    assert changed.mean() > 0.01, "the SEG drew nothing over the image"
