"""Inference: predict_batch_udf equals a direct torch forward pass; clear model errors."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from medspark.config import ModelConfig, PipelineConfig, with_overrides
from medspark.errors import ConfigError
from medspark.inference.model import DEFAULT_MODEL_CARD, check_model, load_model, small_cnn
from medspark.inference.predict import decode_batch, forward_fixed_shape
from medspark.pipeline import evaluate, infer, predict_frames


def _config(tmp_path=None, batch_size: int = 4) -> PipelineConfig:
    cfg = PipelineConfig()
    cfg = dataclasses.replace(
        cfg, inference=dataclasses.replace(cfg.inference, batch_size=batch_size)
    )
    return with_overrides(cfg, warehouse=str(tmp_path) if tmp_path else None)


def _tensors(n: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (224, 224), dtype=np.uint8).tobytes() for _ in range(n)]


def _direct(tensors: list[bytes]) -> np.ndarray:
    cfg = ModelConfig()
    model = load_model(cfg)
    x = np.stack([np.frombuffer(t, np.uint8).reshape(224, 224) for t in tensors])
    with torch.inference_mode():
        logits = model((torch.from_numpy(x).float().unsqueeze(1) - cfg.mean) / cfg.std)
    return torch.softmax(logits, dim=1).numpy()


@pytest.mark.spark
@pytest.mark.parametrize(("n", "partitions"), [(1, 1), (5, 1), (9, 4)])
def test_spark_predictions_equal_direct_forward_pass(spark, n, partitions):
    # batch_size 4: n=1 is a short batch, n=5 is batch_size + 1, n=9 over 4 partitions where
    # at least one partition is empty (rows 0..8 round-robin'd with a skewed key).
    tensors = _tensors(n)
    rows = [(f"1.2.{i}", 0, t) for i, t in enumerate(tensors)]
    images = spark.createDataFrame(rows, "sop_instance_uid string, frame int, tensor binary")
    images = images.repartition(partitions, (images.sop_instance_uid == "1.2.0").cast("int"))
    if partitions > 1:
        sizes = images.rdd.glom().map(len).collect()
        assert 0 in sizes, sizes
    got = {r.sop_instance_uid: r for r in predict_frames(images, _config()).collect()}
    expected = _direct(tensors)
    assert len(got) == n
    for i in range(n):
        r = got[f"1.2.{i}"]
        np.testing.assert_allclose(r.probabilities, expected[i], rtol=1e-5, atol=1e-6)
        assert r.label == ["no_nodule", "nodule"][int(expected[i].argmax())]
        assert r.score == pytest.approx(float(expected[i].max()), rel=1e-5)
        assert sum(r.probabilities) == pytest.approx(1.0, abs=1e-5)
        assert (r.model, r.model_version) == ("medspark-nodule-demo", "1")


def test_cpu_forward_does_not_depend_on_the_batch_a_row_is_in():
    model = load_model(ModelConfig())
    torch.manual_seed(0)
    x = torch.randn(40, 1, 224, 224)
    with torch.inference_mode():
        whole = forward_fixed_shape(model, x)
        for size in (1, 3, 7, 16, 17):
            parts = torch.cat([forward_fixed_shape(model, p) for p in x.split(size)])
            assert torch.equal(parts, whole), size  # bit-identical, not merely close
        # and the same numbers as an unchunked pass, up to float rounding
        torch.testing.assert_close(whole, model(x), rtol=1e-4, atol=1e-4)


def test_decode_batch_converts_channels():
    cfg = ModelConfig()
    rgb = np.zeros((224, 224, 3), np.uint8)
    rgb[..., 0] = 100
    grey = np.full((224, 224), 7, np.uint8)
    out = decode_batch(np.array([rgb.tobytes(), grey.tobytes()], dtype=object), cfg)
    assert out.shape == (2, 224, 224, 1)
    assert out[0, 0, 0, 0] == round(100 * 0.299) and out[1, 0, 0, 0] == 7
    with pytest.raises(ValueError, match="224x224"):
        decode_batch(np.array([b"\0" * 10], dtype=object), cfg)


def test_missing_model_file_names_path_and_key(tmp_path):
    cfg = ModelConfig(name="m", path=str(tmp_path / "nope.pt"))
    with pytest.raises(ConfigError) as err:
        check_model(cfg)
    assert "nope.pt" in str(err.value) and "inference.models[m].path" in str(err.value)


def test_shape_mismatch_names_expected_shape(tmp_path):
    # A 3-class model where the config says 2 classes.
    path = tmp_path / "three.pt"
    torch.jit.script(small_cnn(1, 3)).save(str(path))
    with pytest.raises(ConfigError) as err:
        check_model(ModelConfig(name="m", path=str(path)))
    assert "output (N, 2)" in str(err.value) and "(1, 3)" in str(err.value)
    # Input size that differs from the images tensors.
    with pytest.raises(ConfigError, match="preprocess.output_size"):
        check_model(ModelConfig(name="m", input_size=[128, 128]), [224, 224])


def test_state_dict_format_loads_named_architecture(tmp_path):
    model = small_cnn(1, 2)
    path = tmp_path / "w.pt"
    torch.save(model.state_dict(), path)
    cfg = ModelConfig(
        name="sd", path=str(path), format="state_dict", architecture="medspark_small_cnn"
    )
    check_model(cfg)  # raises when the weights do not fit the named architecture
    loaded = load_model(cfg)
    x = torch.rand(2, 1, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.allclose(loaded(x), model.eval()(x))  # the very weights saved
    three = tmp_path / "three.pt"
    torch.save(small_cnn(1, 3).state_dict(), three)
    with pytest.raises(ConfigError, match="inference.models"):
        check_model(dataclasses.replace(cfg, path=str(three)))
    with pytest.raises(ConfigError, match="architecture"):
        ModelConfig(name="sd", path=str(path), format="state_dict")


def test_model_card_is_honest_and_model_is_small():
    card = json.loads(DEFAULT_MODEL_CARD.read_text())
    assert "synthetic" in card["warning"] and "DEMONSTRATION" in card["warning"]
    assert card["held_out_metrics"]["n_test"] >= 200
    assert DEFAULT_MODEL_CARD.with_name("model.pt").stat().st_size < 5 * 1024 * 1024
    assert card["input_contract"]["preprocess_config_hash"] == (
        PipelineConfig().preprocess.chain().config_hash()
    )


@pytest.mark.spark
def test_infer_is_idempotent_and_evaluate_writes_metrics(spark, tmp_path, pseudo):
    config = _config(tmp_path)
    tensors = _tensors(6, seed=3)
    originals = [f"1.2.840.99.{i}" for i in range(6)]
    rows = [(pseudo.uid(u), 0, t) for u, t in zip(originals, tensors, strict=True)]
    images = spark.createDataFrame(rows, "sop_instance_uid string, frame int, tensor binary")
    images.write.format("delta").save(config.table_path("images"))
    from delta.tables import DeltaTable

    first = infer(spark, config)
    table = DeltaTable.forPath(spark, config.table_path("predictions"))
    version = table.history(1).collect()[0].version
    stored = {r.sop_instance_uid: r.probabilities for r in table.toDF().collect()}
    second = infer(spark, config)
    # Batches cut differently (5 rows, not 4): same scores, so nothing to commit.
    third = infer(spark, _config(tmp_path, batch_size=5))
    assert first.frames == 6 and first.inserted == 6 and second.inserted == third.inserted == 0
    assert table.history(1).collect()[0].version == version  # no new table version
    assert not DeltaTable.isDeltaTable(spark, config.table_path("saliency"))  # saliency off
    again = {r.sop_instance_uid: r.probabilities for r in table.toDF().collect()}
    assert again == stored

    expected = _direct(tensors).argmax(1)
    truth = ["nodule" if e else "no_nodule" for e in expected]
    truth[0] = "nodule" if truth[0] == "no_nodule" else "no_nodule"  # one wrong prediction
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "sop_instance_uid,frame,label\n"
        + "".join(f"{u},0,{t}\n" for u, t in zip(originals, truth, strict=True))
        + "1.2.840.99.404,0,nodule\n"  # a label without prediction
    )
    rows = evaluate(spark, config, str(labels)).metrics
    overall = rows[0]
    assert overall["class_name"] is None
    assert overall["support"] == 6 and overall["unmatched_labels"] == 1
    assert overall["accuracy"] == pytest.approx(5 / 6)
    assert sum(map(sum, overall["confusion_matrix"])) == 6
    table = spark.read.format("delta").load(config.table_path("model_metrics"))
    assert table.count() == 3  # overall + one per class
