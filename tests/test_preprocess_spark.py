"""Preprocessing through Spark: every decodable frame lands in images, failures in errors."""

from __future__ import annotations

import shutil
import tarfile
import zipfile
from pathlib import Path
from urllib.parse import unquote

import cv2
import numpy as np
import pytest
from helpers import assert_rows_equal

from medspark.config import PipelineConfig, with_overrides
from medspark.dicom.pixels import DicomPixelError, iter_frames, to_display
from medspark.pipeline import ingest, preprocess, with_paths

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def processed(spark, tmp_path_factory, test_files):
    root = tmp_path_factory.mktemp("pre")
    dicoms = sorted(test_files.glob("*.dcm"))
    loose = root / "loose"
    loose.mkdir()
    for p in dicoms[::3]:
        shutil.copyfile(p, loose / p.name)
    with zipfile.ZipFile(root / "a.zip", "w") as zf:
        for p in dicoms[1::3]:
            zf.write(p, f"z/{p.name}")
    with tarfile.open(root / "b.tar.gz", "w:gz") as tf:
        for p in dicoms[2::3]:
            tf.add(p, arcname=f"t/{p.name}")
    config = with_overrides(PipelineConfig(), warehouse=str(root / "wh"))
    ingest(spark, [str(loose), str(root / "a.zip"), str(root / "b.tar.gz")], config)
    first = preprocess(spark, config)
    second = preprocess(spark, config)
    return {
        "config": config,
        "first": first,
        "second": second,
        "dicoms": {p.name: p for p in dicoms},
    }


def _load(spark, processed, name):
    return spark.read.format("delta").load(processed["config"].table_path(name))


def _expected_frames(path):
    """Frame outcomes computed directly with the pure decoder, without Spark."""
    try:
        frames = list(iter_frames(path))
    except DicomPixelError:
        return None
    return {f.index: f.pixels is not None for f in frames}


def test_every_frame_of_every_pixel_instance_is_accounted_for(spark, processed):
    scans = with_paths(spark, processed["config"], _load(spark, processed, "scans"))
    scans = scans.where("has_pixels").collect()
    images = _load(spark, processed, "images").select("sop_instance_uid", "frame").collect()
    errors = _load(spark, processed, "preprocess_errors").collect()
    got_images = {(r[0], r[1]) for r in images}
    got_errors = {(r.sop_instance_uid, r.frame): r.error_class for r in errors}
    assert len(images) == len(got_images)
    assert not got_images & set(got_errors)
    expected_ok = 0
    for scan in scans:
        name = unquote((scan.archive_member or scan.source_uri).rsplit("/", 1)[-1])
        expected = _expected_frames(processed["dicoms"][name])
        sop = scan.sop_instance_uid
        if expected is None:
            assert got_errors.get((sop, None)) == "undecodable_file", name
            continue
        for index, ok in expected.items():
            expected_ok += ok
            if ok:
                assert (sop, index) in got_images, (name, index)
            else:
                assert got_errors.get((sop, index)) == "undecodable_frame", (name, index)
    assert len(got_images) == expected_ok  # and nothing beyond what the decoder yields
    assert expected_ok > 50


def test_rerun_adds_no_rows(spark, processed):
    first, second = processed["first"], processed["second"]
    assert second.frames == first.frames
    assert _load(spark, processed, "images").count() == first.frames
    assert second.errors_by_class == first.errors_by_class


def test_tensor_thumbnail_and_stats_of_ct_small(spark, processed, test_files, pseudo):
    sop = pseudo.uid("1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322")
    row = _load(spark, processed, "images").where(f"sop_instance_uid = '{sop}'").collect()
    assert len(row) == 1
    row = row[0]
    assert row.tensor_shape == [224, 224] and row.tensor_dtype == "uint8"
    tensor = np.frombuffer(row.tensor, dtype=np.uint8).reshape(row.tensor_shape)
    chain = PipelineConfig().preprocess.chain()
    frame = next(iter_frames(test_files / "CT_small.dcm"))
    expected = chain.apply(to_display(frame, "auto")).tensor
    assert np.array_equal(tensor, expected)
    thumb = cv2.imdecode(np.frombuffer(row.thumbnail_png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert thumb.shape == (128, 128)
    assert row.mask_area_px > 0 and row.mask_components >= 1
    assert row.mask_area_mm2 == pytest.approx(row.mask_area_px * 0.661468**2, rel=1e-6)
    assert row.config_hash == chain.config_hash()
    assert (row.frame_rows, row.frame_columns) == (128, 128)


def test_colour_frames_keep_three_channels(spark, processed):
    shapes = {
        tuple(r.tensor_shape)
        for r in _load(spark, processed, "images").select("tensor_shape").collect()
    }
    assert (224, 224, 3) in shapes and (224, 224) in shapes


def test_burned_in_annotation_flags(spark, processed, pseudo):
    scans = _load(spark, processed, "scans").select("sop_instance_uid", "modality", "sop_class_uid")
    rows = _load(spark, processed, "images").join(scans, "sop_instance_uid").collect()
    flagged = {(r.modality, r.burned_in_reason) for r in rows if r.burned_in_annotation}
    assert any(m == "US" for m, _ in flagged), flagged
    assert any(reason == "Secondary Capture SOP class" for _, reason in flagged), flagged
    for r in rows:
        expected = r.modality == "US" or r.sop_class_uid.startswith("1.2.840.10008.5.1.4.1.1.7")
        if not expected:  # Burned In Annotation (0028,0301) = YES is the only other reason
            assert r.burned_in_annotation == (r.burned_in_reason is not None)
            if r.burned_in_annotation:
                assert "0028,0301" in r.burned_in_reason
        else:
            assert r.burned_in_annotation is True and r.burned_in_reason
    ct = pseudo.uid("1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322")
    assert [r.burned_in_annotation for r in rows if r.sop_instance_uid == ct] == [False]


def test_split_frame_ranges_give_the_same_rows(spark, processed):
    """Multi-frame files split into ranges of 4 frames: same rows as one task per file."""
    import dataclasses

    from medspark.pipeline import frame_ranges, pixel_instances

    config = processed["config"]
    scans = _load(spark, processed, "scans")
    ranges = frame_ranges(pixel_instances(scans), 4).collect()
    by_sop: dict[str, list[tuple[int, int]]] = {}
    for r in ranges:
        by_sop.setdefault(r.sop_instance_uid, []).append((r.frame_start, r.frame_stop))
    frames = {r.sop_instance_uid: r.number_of_frames for r in scans.collect()}
    for sop, spans in by_sop.items():  # contiguous ranges of at most 4 covering every frame
        if frames[sop] <= 4:
            assert spans == [(None, None)]  # small files stay whole
            continue
        spans.sort()
        assert spans[0][0] == 0 and spans[-1][1] == frames[sop]
        assert all(b - a <= 4 for a, b in spans)
        assert all(spans[i][1] == spans[i + 1][0] for i in range(len(spans) - 1))
    assert max(len(s) for s in by_sop.values()) >= 4  # some file really was split

    split = dataclasses.replace(
        config,
        preprocess=dataclasses.replace(config.preprocess, frames_per_task=4),
        tables=dataclasses.replace(
            config.tables, images="images_split", preprocess_errors="preprocess_errors_split"
        ),
    )
    preprocess(spark, split)
    for table, cols in (
        ("images", ["sop_instance_uid", "frame", "tensor", "mask_area_px", "thumbnail_png"]),
        ("preprocess_errors", ["sop_instance_uid", "frame", "error_class"]),
    ):
        parts = spark.read.format("delta").load(split.table_path(table))
        whole = _load(spark, processed, table)
        # No bundled file fails preprocessing since GDCM decodes JPEG-lossy.dcm: an empty
        # preprocess_errors on both sides is the expected outcome here, not a vacuous pass.
        assert_rows_equal(
            parts,
            whole,
            ["sop_instance_uid", "frame"],
            columns=cols,
            what=table,
            allow_empty=table == "preprocess_errors",
        )


def test_burned_in_frames_are_cleaned_or_withheld(spark, processed):
    """Default ``deid.burned_in: clean``: flagged frames with ultrasound regions are cleaned,
    the others keep their images row without pixels, which live in restricted_images only."""
    import stat

    from medspark.pipeline import model_inputs

    config = processed["config"]
    rows = _load(spark, processed, "images").collect()
    actions = {}
    for r in rows:
        actions.setdefault(r.burned_in_action, []).append(r)
        assert (r.burned_in_action is None) == (not r.burned_in_annotation)
    assert actions.get("cleaned") and actions.get("withheld"), sorted(map(str, actions))
    assert "kept" not in actions
    for r in actions["cleaned"] + actions.get(None, []):
        assert r.tensor and r.thumbnail_png
    for r in actions["withheld"]:
        assert r.tensor is None and r.thumbnail_png is None and r.tensor_shape
    restricted = _load(spark, processed, "restricted_images").collect()
    assert {(r.sop_instance_uid, r.frame) for r in restricted} == {
        (r.sop_instance_uid, r.frame) for r in actions["withheld"]
    }
    assert all(r.tensor and r.thumbnail_png for r in restricted)
    # Restricted tables live apart from the warehouse, under an owner-only root.
    root = config.restricted_root()
    assert root.parent == Path(config.warehouse).parent and root != Path(config.warehouse)
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert Path(config.table_path("restricted_images")).parent == root
    assert Path(config.table_path("restricted_acquisitions")).parent == root
    assert not (Path(config.warehouse) / "restricted_acquisitions").exists()
    # The model still sees every frame: withheld tensors come from restricted_images.
    inputs = model_inputs(spark, config).collect()
    assert len(inputs) == len(rows) and all(r.tensor for r in inputs)


def test_a_file_replaced_since_ingest_is_source_changed(spark, tmp_path, test_files):
    """preprocess re-reads through the ingest reader and checks each item's SHA-256."""
    src = tmp_path / "in"
    src.mkdir()
    shutil.copyfile(test_files / "CT_small.dcm", src / "ct.dcm")
    shutil.copyfile(test_files / "MR_small.dcm", src / "mr.dcm")
    config = with_overrides(PipelineConfig(), warehouse=str(tmp_path / "wh"))
    ingest(spark, [str(src)], config)
    shutil.copyfile(test_files / "JPEG2000.dcm", src / "ct.dcm")  # other bytes, same name
    result = preprocess(spark, config)
    assert result.errors_by_class == {"source_changed": 1}
    errors = spark.read.format("delta").load(config.table_path("preprocess_errors"))
    (error,) = errors.collect()
    assert error.source_uri.startswith("loc-") and "ct.dcm" not in error.message  # a key
    assert error.message.startswith(error.source_uri) and "changed since ingest" in error.message
    (located,) = with_paths(spark, config, errors).collect()
    assert located.source_uri.endswith("/ct.dcm")
    images = with_paths(spark, config, spark.read.format("delta").load(config.table_path("images")))
    assert [r.source_uri.rsplit("/", 1)[-1] for r in images.collect()] == ["mr.dcm"]
    scans = spark.read.format("delta").load(config.table_path("scans")).collect()
    assert {r.container for r in scans} == {"plain"}
