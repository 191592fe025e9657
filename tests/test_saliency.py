"""Saliency (Grad-CAM): the peak falls on the nodule of synthetic slices; geometry, boxes, PNG."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from medspark.config import ModelConfig, PipelineConfig
from medspark.errors import ConfigError
from medspark.inference.model import check_model, load_model, small_cnn
from medspark.inference.saliency import (
    content_map,
    geometry,
    gradcam,
    has_saliency,
    occlusion,
    overlay_png,
    saliency_fields,
    saliency_method,
    scale_box,
    thumbnail_shape,
    top_region,
)
from medspark.preprocess.udf import PreprocessSettings, process_item
from medspark.synthetic import SliceSpec, ct_slice_bytes, ct_slice_hu, ct_slice_with_nodule

#: The demo model's held-out seeds (model_card.json test_seeds); odd seeds have a nodule.
HELD_OUT = range(20262725, 20262725 + 120)


def _frames(seeds: range) -> tuple[list[dict], list]:
    pre = PipelineConfig().preprocess
    settings = PreprocessSettings(pre.chain(), pre.window_value(), pre.thumbnail_size, 64)
    key = {"sop_instance_uid": "t", "source_uri": "synthetic", "archive_member": None}
    rows, nodules = [], []
    for seed in seeds:
        spec = SliceSpec(True, seed)
        (row,) = process_item(ct_slice_bytes(spec), key, settings)
        rows.append(row)
        nodules.append(ct_slice_with_nodule(spec)[1])
    return rows, nodules


def _inputs(rows: list[dict]) -> torch.Tensor:
    cfg = ModelConfig()
    x = np.stack([np.frombuffer(r["tensor"], np.uint8).reshape(224, 224) for r in rows])
    return (torch.from_numpy(x).float().unsqueeze(1) - cfg.mean) / cfg.std


def test_peak_falls_inside_the_nodule_for_most_positives():
    # 60 positives the demo model never trained on (all 60 predicted nodule). Measured: the
    # peak (the map's maximum, in the frame's pixels) is inside the nodule for 46 of these 60
    # (77 %; 79 of the first 100 held-out positives, 80 of 100 from the demo's seeds
    # 1000001...), within 4 px of its rim for 59, and the box holds the nodule's centre for 58.
    # The nodule's radius is 5-9 px of a 256 px slice; the map's cells are 9 px.
    rows, nodules = _frames(range(HELD_OUT.start + 1, HELD_OUT.stop, 2))
    model = load_model(ModelConfig())
    x = _inputs(rows)
    with torch.inference_mode():
        predicted = model(x).argmax(1)
    nodule = torch.ones(len(rows), dtype=torch.long)
    cams = gradcam(model, x, nodule, chunk=16).numpy()
    inside = near = boxed = 0
    for row, where, cam in zip(rows, nodules, cams, strict=True):
        f = saliency_fields(cam, row["thumbnail_png"], 256, 256, (224, 224), 128)
        x_peak, y_peak = f["peak"]
        inside += where.contains(x_peak + 0.5, y_peak + 0.5)
        near += where.contains(x_peak + 0.5, y_peak + 0.5, margin=4)
        x0, y0, x1, y1 = f["bbox_frame"]
        boxed += x0 <= where.x <= x1 + 1 and y0 <= where.y <= y1 + 1
    assert len(rows) == 60 and int((predicted == 1).sum()) == 60
    assert inside >= 40, inside  # two thirds; measured 46
    assert near >= 57, near  # measured 59
    assert boxed >= 55, boxed  # measured 58


def test_synthetic_nodule_is_where_the_slice_shows_it():
    hu, where = ct_slice_with_nodule(SliceSpec(True, 7))
    assert np.array_equal(hu, ct_slice_hu(SliceSpec(True, 7)))  # the same slice as ever
    assert where is not None and 4 <= where.radius <= 9.5
    assert -40 <= hu[round(where.y), round(where.x)] <= 100  # soft tissue, not lung (-850)
    assert ct_slice_with_nodule(SliceSpec(False, 8))[1] is None


def test_gradcam_does_not_depend_on_the_batch_a_row_is_in():
    model = load_model(ModelConfig())
    x = torch.rand(20, 1, 224, 224, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([i % 2 for i in range(20)])
    whole = gradcam(model, x, target, chunk=16)
    assert whole.shape == (20, 28, 28) and float(whole.min()) >= 0
    pairs = zip(x.split(3), target.split(3), strict=True)
    parts = torch.cat([gradcam(model, p, t, chunk=16) for p, t in pairs])
    assert torch.equal(parts, whole)


def test_gradcam_of_a_pooling_linear_head_is_the_class_activation_map():
    # With head = global average pooling + linear, Grad-CAM's channel weights are the linear
    # layer's weights / (h*w): the map is CAM (Zhou et al. 2016), up to that constant.
    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
            self.fc = torch.nn.Linear(4, 2)

        def features(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.conv(x))

        def head(self, f: torch.Tensor) -> torch.Tensor:
            return self.fc(f.mean(dim=(2, 3)))

    torch.manual_seed(0)
    net = Net().eval()
    x = torch.rand(2, 1, 8, 8)
    cam = gradcam(net, x, torch.tensor([1, 0]))
    f = net.features(x).detach()
    for i, c in enumerate([1, 0]):
        expected = torch.relu((net.fc.weight[c].view(4, 1, 1) * f[i]).sum(0)) / 64
        torch.testing.assert_close(cam[i], expected)


def test_geometry_follows_resize_pad_and_thumbnail():
    geo = geometry(100, 200, (224, 224), 128)  # a wide frame: padded above and below
    assert (geo.top, geo.left, geo.height, geo.width) == (56, 0, 112, 224)
    assert (geo.thumb_rows, geo.thumb_columns) == (64, 128)
    small = geometry(60, 80, (224, 224), 128)  # thumbnails are never enlarged
    assert (small.thumb_rows, small.thumb_columns) == (60, 80)
    assert geometry(None, None, (224, 224), 128).height == 224


def test_map_is_aligned_with_the_feature_cells():
    # A map of 4 cells on a 16 px input, one hot cell: its peak is at 4 * j (a "same"-padded
    # stride-4 layer's centre), not at 4 * j + 1.5 as an image resize would put it.
    cam = np.zeros((4, 4), np.float32)
    cam[1, 2] = 3.0
    m = content_map(cam, geometry(16, 16, (16, 16), 16), (16, 16))
    assert m.shape == (16, 16) and m.max() == 1.0
    assert np.unravel_index(int(m.argmax()), m.shape) == (4, 8)
    zeros = np.zeros((4, 4), np.float32)
    assert not content_map(zeros, geometry(16, 16, (16, 16), 16), (16, 16)).any()


def test_top_region_is_the_hot_spot_around_the_peak():
    m = np.zeros((20, 30), np.float32)
    m[2:5, 3:7] = 0.6
    m[3, 4] = 1.0
    m[10:15, 20:28] = 0.7  # a second hot spot, apart: not in the box
    peak, box = top_region(m)
    assert peak == (4, 3) and box == (3, 2, 6, 4)
    assert top_region(np.zeros((5, 5), np.float32)) == (None, None)


def test_scale_box_covers_the_same_area():
    assert scale_box((0, 0, 223, 223), (224, 224), (256, 256)) == (0, 0, 255, 255)
    assert scale_box((10, 20, 10, 20), (224, 224), (256, 256)) == (11, 22, 12, 23)
    assert scale_box((10, 20, 10, 20), (224, 224), (128, 128)) == (5, 11, 6, 11)


def test_overlay_png_has_the_thumbnail_size_and_shows_the_heat():
    thumb = np.full((64, 128), 90, np.uint8)
    ok, png = cv2.imencode(".png", thumb)
    assert ok and thumbnail_shape(png.tobytes()) == (64, 128)
    m = np.zeros((112, 224), np.float32)
    m[:, 112:] = 1.0
    out = cv2.imdecode(np.frombuffer(overlay_png(m, png.tobytes(), (64, 128)), np.uint8), 1)
    assert out.shape == (64, 128, 3)
    hot, cold = out[32, 120].astype(int), out[32, 8].astype(int)  # BGR
    assert hot[2] > hot[0] + 40 and cold[0] > cold[2] + 40  # red where hot, blue where cold
    blind = cv2.imdecode(np.frombuffer(overlay_png(m, None, (64, 128)), np.uint8), 1)
    assert blind.shape == (64, 128, 3) and blind[32, 8].max() < 90  # no pixel of the frame


def test_saliency_fields_of_a_frame():
    cam = np.zeros((28, 28), np.float32)
    cam[10, 20] = 2.5
    f = saliency_fields(cam, None, 512, 256, (224, 224), 128)  # tall frame, no thumbnail
    png = cv2.imdecode(np.frombuffer(f["heatmap_png"], np.uint8), 1)
    assert png.shape == (128, 64, 3)
    assert f["peak_value"] == 2.5 and f["map_shape"] == [28, 28]
    x0, y0, x1, y1 = f["bbox_frame"]
    assert 0 <= x0 <= f["peak"][0] <= x1 < 256 and 0 <= y0 <= f["peak"][1] <= y1 < 512
    tx0, ty0, tx1, ty1 = f["bbox"]
    assert 0 <= tx0 <= tx1 < 64 and 0 <= ty0 <= ty1 < 128
    empty = saliency_fields(np.zeros((28, 28), np.float32), None, 256, 256, (224, 224), 128)
    assert empty["bbox"] is None and empty["peak"] is None and empty["peak_value"] == 0.0


def test_saliency_needs_the_convention_and_says_so(tmp_path):
    assert has_saliency(load_model(ModelConfig()))
    check_model(ModelConfig(), [224, 224], saliency=True)
    plain = tmp_path / "plain.pt"
    torch.jit.script(torch.nn.Sequential(*small_cnn(1, 2))).save(str(plain))
    cfg = ModelConfig(name="plain", path=str(plain))
    check_model(cfg, [224, 224])  # fine without saliency
    check_model(cfg, [224, 224], saliency=True)  # auto: occlusion, which any model allows
    check_model(cfg, [224, 224], saliency=True, method="occlusion")
    with pytest.raises(ConfigError) as err:
        check_model(cfg, [224, 224], saliency=True, method="gradcam")
    text = str(err.value)
    assert "inference.saliency_method" in text and "features" in text and "plain.pt" in text
    assert "auto or occlusion" in text


def test_method_rule_is_written_once():
    demo = load_model(ModelConfig())
    plain = torch.nn.Sequential(*small_cnn(1, 2))
    assert saliency_method("auto", demo) == "grad-cam"
    assert saliency_method("auto", plain) == "occlusion"
    assert saliency_method("occlusion", demo) == "occlusion"
    assert saliency_method("gradcam", plain) == "grad-cam"  # check_model refuses it before
    with pytest.raises(ValueError):
        saliency_method("lime", demo)


class _Window(torch.nn.Module):
    """Class 1's logit is the brightness of rows 40-55, columns 100-115: the only evidence."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        evidence = x[:, 0, 40:56, 100:116].mean(dim=(1, 2)) * 10
        return torch.stack([torch.zeros_like(evidence), evidence], dim=1)


def test_occlusion_map_marks_the_evidence_and_only_it():
    x = torch.full((3, 1, 128, 160), 0.5)
    target = torch.tensor([1, 1, 0])
    maps = occlusion(_Window(), x, target, patch=16, stride=8, chunk=16)
    assert maps.shape == (3, 16, 20) and float(maps.min()) >= 0
    hot = maps[0] > 0
    # The window is cells 5-6 x 12-14 (8 px cells); a patch touching it starts at cells 4-6 x
    # 11-14 and covers that cell and the next: the map is positive on 4-7 x 11-15, nowhere else.
    rows, cols = np.nonzero(hot.numpy())
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (4, 7, 11, 15)
    assert np.unravel_index(int(maps[0].argmax()), (16, 20)) in {(5, 12), (5, 13), (6, 12), (6, 13)}
    assert torch.equal(maps[0], maps[1])
    assert float(maps[2].max()) == 0.0  # class 0 loses nothing when the window is hidden
    # The peak is in the window's pixels once the map is on the frame.
    f = saliency_fields(maps[0].numpy(), None, 128, 160, (128, 160), 128, cell=8)
    assert 100 <= f["peak"][0] <= 115 and 40 <= f["peak"][1] <= 55 and f["map_shape"] == [16, 20]
    # A row's map does not depend on its batch.
    alone = occlusion(_Window(), x[:1], target[:1], patch=16, stride=8, chunk=16)
    assert torch.equal(alone[0], maps[0])


def test_occlusion_peak_falls_inside_the_nodule_about_as_often_as_gradcam():
    # The first 10 held-out positives, occlusion at the default patch and stride (16, 16):
    # 1970 forward passes, the cost of this test. Measured on these 10: Grad-CAM's peak inside
    # the nodule for 8, occlusion's for 5; on the first 20: 16 and 12; on 100
    # (bench/saliency_accuracy.py, the same frames and code): 77 and 65.
    rows, nodules = _frames(range(HELD_OUT.start + 1, HELD_OUT.start + 21, 2))
    model = load_model(ModelConfig())
    x = _inputs(rows)
    nodule = torch.ones(len(rows), dtype=torch.long)
    hits = {}
    for method, maps, cell in (
        ("grad-cam", gradcam(model, x, nodule, chunk=16).numpy(), None),
        ("occlusion", occlusion(model, x, nodule, 16, 16, chunk=16).numpy(), 16),
    ):
        inside = 0
        for row, where, cam in zip(rows, nodules, maps, strict=True):
            f = saliency_fields(cam, row["thumbnail_png"], 256, 256, (224, 224), 128, cell)
            inside += where.contains(f["peak"][0] + 0.5, f["peak"][1] + 0.5)
        hits[method] = inside
    assert hits["grad-cam"] >= 7 and hits["occlusion"] >= 4, hits
    assert hits["occlusion"] >= hits["grad-cam"] - 4, hits


def test_saliency_changes_no_prediction_and_gives_a_row_each():
    from medspark.inference.predict import PredictSettings, make_predict_fn_factory

    rows, _ = _frames(range(HELD_OUT.start, HELD_OUT.start + 5))
    tensors = np.empty(5, dtype=object)
    tensors[:] = [r["tensor"] for r in rows]
    beside = [np.empty(5, dtype=object) for _ in range(3)]
    for i, name in enumerate(("thumbnail_png", "frame_rows", "frame_columns")):
        beside[i][:] = [r[name] for r in rows]
    beside[0][4] = None  # a withheld frame: no thumbnail
    off = make_predict_fn_factory(PredictSettings(ModelConfig(), device="cpu"))()
    on = make_predict_fn_factory(PredictSettings(ModelConfig(), device="cpu", saliency=True))()
    plain, salient = off(tensors), on(tensors, *beside)
    for name in ("label", "score", "probabilities"):
        assert np.array_equal(plain[name], salient[name]), name
    assert "heatmap_png_b64" not in plain
    assert list(salient["saliency_target"]) == list(plain["label"])
    assert list(salient["saliency_method"]) == ["grad-cam"] * 5  # auto, a model with the methods
    assert salient["bbox_ints"].shape == (5, 4) and salient["map_shape"].tolist() == [[28, 28]] * 5
    assert (salient["peak_x"] >= 0).all() and (salient["peak_x"] < 256).all()


def _with_saliency(config: PipelineConfig, on: bool = True) -> PipelineConfig:
    import dataclasses

    return dataclasses.replace(config, inference=dataclasses.replace(config.inference, saliency=on))


def _rows(spark, config: PipelineConfig, table: str) -> dict:
    df = spark.read.format("delta").load(config.table_path(table))
    return {(r.sop_instance_uid, r.frame): r for r in df.collect()}


@pytest.mark.spark
def test_infer_and_run_write_a_saliency_row_per_prediction(spark, tmp_path, test_files):
    """A row per prediction, keyed like it, with a PNG of the thumbnail's size and boxes in
    bounds; a re-run commits nothing; ``run`` writes the same maps from its one pass."""
    import shutil

    from delta.tables import DeltaTable

    from medspark.config import with_overrides
    from medspark.metrics.runs import RunRecord
    from medspark.pipeline import infer, ingest, preprocess, run_all

    src = tmp_path / "in"
    src.mkdir()
    for seed in (1000001, 1000002, 1000003):
        (src / f"{seed}.dcm").write_bytes(ct_slice_bytes(SliceSpec(seed % 2 == 1, seed)))
    # Ultrasound without regions: its pixels are withheld, so its overlay has none either.
    shutil.copyfile(test_files / "examples_rgb_color.dcm", src / "us.dcm")
    # (Saliency off, infer and run write no saliency table: test_inference, test_onepass.)
    on = _with_saliency(with_overrides(PipelineConfig(), warehouse=str(tmp_path / "steps")))
    ingest(spark, [str(src)], on)
    preprocess(spark, on)
    infer(spark, on)
    predictions = _rows(spark, on, "predictions")
    images = _rows(spark, on, "images")
    saliency = _rows(spark, on, "saliency")
    assert saliency.keys() == predictions.keys() and len(saliency) == 4
    for key, s in saliency.items():
        p, image = predictions[key], images[key]
        assert (s.model, s.model_version, s.target_class) == (p.model, p.model_version, p.label)
        assert s.method == "grad-cam" and s.map_shape == [28, 28] and s.peak_value > 0
        png = cv2.imdecode(np.frombuffer(s.heatmap_png, np.uint8), cv2.IMREAD_COLOR)
        if image.thumbnail_png is not None:
            assert png.shape[:2] == thumbnail_shape(image.thumbnail_png)
        else:  # withheld: the thumbnail's size, over black
            assert image.burned_in_action == "withheld"
            longest = max(image.frame_rows, image.frame_columns)
            assert max(png.shape[:2]) == min(128, longest)
        rows, cols = png.shape[:2]
        b, f = s.bbox, s.bbox_frame
        assert 0 <= b.x_min <= b.x_max < cols and 0 <= b.y_min <= b.y_max < rows
        assert 0 <= f.x_min <= s.peak_x <= f.x_max < image.frame_columns
        assert 0 <= f.y_min <= s.peak_y <= f.y_max < image.frame_rows
    table = DeltaTable.forPath(spark, on.table_path("saliency"))
    version = table.history(1).collect()[0].version
    infer(spark, on)  # the same maps again: nothing to commit
    assert table.history(1).collect()[0].version == version

    # run: the same rows from its one pass (computed in the driver for this small input).
    one = _with_saliency(with_overrides(PipelineConfig(), warehouse=str(tmp_path / "pass")))
    run_all(spark, [str(src)], one, RunRecord(run_id="pass-1", job="run"))
    ran = _rows(spark, one, "saliency")
    assert ran.keys() == saliency.keys()
    for key, s in ran.items():
        assert s.target_class == saliency[key].target_class
        assert s.bbox_frame == saliency[key].bbox_frame
        assert (s.peak_x, s.peak_y) == (saliency[key].peak_x, saliency[key].peak_y)
        assert s.peak_value == pytest.approx(saliency[key].peak_value, rel=1e-4)


def _plain_model(tmp_path) -> ModelConfig:
    """A TorchScript classifier without features/head: a user's own model, as usually exported
    (the demo model's layers, scripted as a plain Sequential; untrained)."""
    torch.manual_seed(0)
    path = tmp_path / "plain.pt"
    torch.jit.script(torch.nn.Sequential(*small_cnn(1, 2)).eval()).save(str(path))
    return ModelConfig(name="plain", path=str(path))


def test_a_model_without_features_and_head_gets_occlusion_maps(tmp_path):
    from medspark.inference.predict import PredictSettings, make_predict_fn_factory

    rows, _ = _frames(range(HELD_OUT.start, HELD_OUT.start + 3))
    tensors = np.empty(3, dtype=object)
    tensors[:] = [r["tensor"] for r in rows]
    beside = [np.empty(3, dtype=object) for _ in range(3)]
    for i, name in enumerate(("thumbnail_png", "frame_rows", "frame_columns")):
        beside[i][:] = [r[name] for r in rows]
    settings = PredictSettings(_plain_model(tmp_path), device="cpu", saliency=True)
    out = make_predict_fn_factory(settings)()(tensors, *beside)
    assert list(out["saliency_method"]) == ["occlusion"] * 3
    assert out["map_shape"].tolist() == [[14, 14]] * 3  # ceil(224 / 16)
    assert list(out["saliency_target"]) == list(out["label"])
    assert ((out["peak_x"] >= -1) & (out["peak_x"] < 256)).all()


@pytest.mark.spark
def test_run_with_a_model_without_features_writes_occlusion_rows(spark, tmp_path):
    """The issue's acceptance: a TorchScript model without features/head, saliency on, the
    default method: saliency rows with method occlusion, one per prediction."""
    import dataclasses

    from medspark.config import with_overrides
    from medspark.metrics.runs import RunRecord
    from medspark.pipeline import run_all

    src = tmp_path / "in"
    src.mkdir()
    for seed in (1000001, 1000002):
        (src / f"{seed}.dcm").write_bytes(ct_slice_bytes(SliceSpec(seed % 2 == 1, seed)))
    plain = _plain_model(tmp_path)
    base = with_overrides(PipelineConfig(), warehouse=str(tmp_path / "wh"))
    config = dataclasses.replace(
        base,
        inference=dataclasses.replace(base.inference, model="plain", models=[plain], saliency=True),
    )
    assert config.inference.saliency_method == "auto"
    run_all(spark, [str(src)], config, RunRecord(run_id="plain-1", job="run"))
    predictions = _rows(spark, config, "predictions")
    saliency = _rows(spark, config, "saliency")
    assert saliency.keys() == predictions.keys() and len(saliency) == 2
    for key, s in saliency.items():
        assert s.method == "occlusion" and s.model == "plain" and s.map_shape == [14, 14]
        assert s.target_class == predictions[key].label and len(s.heatmap_png) > 100
