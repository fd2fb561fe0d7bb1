"""`catcap train` and `catcap export`: real backbones, real training, ONNX that provably matches Keras."""

from __future__ import annotations

import csv
import json
import pickle

import numpy as np
import pytest

from tests.conftest import catcap

tf = pytest.importorskip("tensorflow", reason="the train extra is not installed")


def _classify(backbone, pixels: np.ndarray) -> np.ndarray:
    fmap = np.asarray(backbone.top(backbone.bottom(pixels.astype("float32"))))
    logits = fmap.mean(axis=(1, 2)) @ backbone.classifier[0] + backbone.classifier[1]
    return logits


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite2"])
def test_converted_imagenet_weights_recognise_real_photos(name):
    from PIL import Image
    from skimage import data

    from catalog_captioner.images import preprocess
    from train.backbones import build_backbone

    backbone = build_backbone(name)
    size = backbone.input_size
    photos = np.stack([preprocess(Image.fromarray(data.coffee()), size), preprocess(Image.fromarray(data.chelsea()), size)])
    top = _classify(backbone, photos).argmax(axis=1)
    assert top[0] == 967, "coffee.png should be an espresso (ImageNet 967)"
    assert 281 <= top[1] <= 285, "chelsea.png should be a domestic cat (ImageNet 281-285)"
    if name == "efficientnet_lite0":  # every tensor of the state dict but the 1000-way classifier
        assert backbone.bottom.count_params() + backbone.top.count_params() == 4_694_024 - 1_281_000


def test_fine_tuning_moves_the_cache_point_down_without_changing_the_network():
    """--fine-tune-blocks N: the last N MBConv blocks + head become the trainable top; the rest is cached."""
    from train.backbones import build_backbone

    pixels = np.random.default_rng(0).uniform(0, 255, (2, 96, 96, 3)).astype("float32")
    frozen = build_backbone("efficientnet_lite0", None, 96, fine_tune_blocks=0)
    tuned = build_backbone("efficientnet_lite0", None, 96, fine_tune_blocks=3)
    assert not frozen.top.trainable_weights and not tuned.bottom.trainable_weights
    blocks = sorted({w.path.split("/")[0].split("_")[0] for w in tuned.top.trainable_weights})
    assert blocks == ["block13", "block14", "block15", "head"]
    assert tuned.cache_shape == (3, 3, 192) and tuned.grid == frozen.grid == (3, 3)
    assert tuned.weights_id != frozen.weights_id  # different cache points never share cache entries
    same = np.asarray(tuned.top(tuned.bottom(pixels)))
    np.testing.assert_allclose(same, np.asarray(frozen.top(frozen.bottom(pixels))), atol=1e-4)


def test_weights_reader_refuses_anything_but_tensors(tmp_path):
    from train.torch_weights import UnsafeWeightsError, load_state_dict

    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        for obj in (0x1950A86A20F9469CFC6C, 1001, {}, Evil()):
            pickle.dump(obj, handle, protocol=2)
    with pytest.raises(UnsafeWeightsError, match="print: only tensors"):
        load_state_dict(path)


def test_a_training_run_holds_everything_export_needs(tiny_run):
    for name in ("config.json", "model.weights.h5", "backbone.weights.h5", "split.json", "history.csv", "loss.png"):
        assert (tiny_run / name).is_file(), name
    record = json.loads((tiny_run / "config.json").read_text())
    assert record["backbone"]["name"] == "efficientnet_lite0" and record["backbone"]["input_size"] == 96
    assert record["data"]["train_images"] + record["data"]["val_images"] == 72
    assert record["vocabulary"][:4] == ["<pad>", "<start>", "<end>", "<unk>"]
    history = list(csv.DictReader(open(tiny_run / "history.csv")))
    assert float(history[-1]["loss"]) < float(history[0]["loss"])  # it learned
    assert float(history[-1]["val_loss"]) < float(history[0]["val_loss"])
    assert record["training"]["best_epoch"] >= 1 and record["training"]["stopped"]
    split = json.loads((tiny_run / "split.json").read_text())
    assert len(split["val_images"]) == record["data"]["val_images"]


def test_features_are_cached_and_bad_images_skipped_and_counted(tiny_run, shapes_catalog, tmp_path):
    rows = shapes_catalog.read_text().splitlines()
    rows.append("999,img/does_not_exist.jpg,Acme Ghost Square,Red")
    catalog = shapes_catalog.parent / "with_missing.csv"
    catalog.write_text("\n".join(rows) + "\n")
    out = tmp_path / "run2"
    result = catcap("train", catalog, "--out", out, "--input-size", "96", "--epochs", "1", "--units", "32",
                    "--embedding-dim", "16", "--feature-dim", "16", "--cache-dir", tiny_run.parent / "cache")
    assert "72 from cache, 0 computed, 1 skipped" in result.stdout
    record = json.loads((out / "config.json").read_text())
    assert record["data"]["images_skipped"] == {"missing": 1}
    assert record["data"]["feature_cache"] == {"cached": 72, "computed": 0}


def test_split_is_reproducible():
    from train.trainer import split_indices

    a, b = split_indices(100, 0.2, seed=7), split_indices(100, 0.2, seed=7)
    assert (a[0] == b[0]).all() and (a[1] == b[1]).all() and len(a[1]) == 20
    assert set(a[0]).isdisjoint(a[1]) and len(set(a[0]) | set(a[1])) == 100
    assert not (split_indices(100, 0.2, seed=8)[1] == a[1]).all()


def test_captions_become_teacher_forcing_pairs():
    from catalog_captioner.text import Vocabulary
    from train.trainer import encode_captions

    vocab = Vocabulary.build(["Nike Men Black Shoes", "Nike Women Red Top"], min_count=1)
    inputs, targets = encode_captions(["Nike Men Black Shoes", "Zara Top"], vocab, max_length=4)
    nike, men = vocab.encode("nike men")
    assert inputs[0, :2].tolist() == [vocab.start_id, nike] and targets[0, -1] == vocab.end_id
    assert inputs[1].tolist()[:3] == [vocab.start_id, vocab.unk_id, vocab.encode("top")[0]]
    assert targets[1].tolist() == [vocab.unk_id, vocab.encode("top")[0], vocab.end_id, 0, 0]


def test_training_errors_are_clear(shapes_catalog, tmp_path):
    result = catcap("train", shapes_catalog, "--out", tmp_path / "r", "--caption-col", "title", check=False)
    assert result.returncode == 2 and "'title' is not a column" in result.stderr
    result = catcap("train", shapes_catalog, "--out", tmp_path / "r", "--backbone", "resnet9000", check=False)
    assert result.returncode == 2 and "unknown backbone" in result.stderr


def test_export_records_parity_and_refuses_to_write_when_it_fails(tiny_run, tiny_bundle, tmp_path):
    record = json.loads((tiny_bundle / "model.json").read_text())
    parity = record["parity"]
    assert parity["images"] >= 10 and parity["max_abs_diff"] <= 1e-4 and parity["greedy_match"] >= 0.99
    result = catcap("export", tiny_run, "--out", tmp_path / "strict", "--max-abs-diff", "0", check=False)
    assert result.returncode == 1 and "ONNX disagrees with Keras" in result.stderr
    assert not (tmp_path / "strict").exists()


def test_inception_resnet_v2_trains_and_exports_with_random_weights(shapes_catalog, tmp_path):
    out, bundle = tmp_path / "irv2", tmp_path / "irv2-bundle"
    catcap("train", shapes_catalog, "--out", out, "--backbone", "inception_resnet_v2", "--backbone-weights", "none",
           "--input-size", "75", "--epochs", "1", "--units", "32", "--embedding-dim", "16", "--feature-dim", "16",
           "--cache-dir", tmp_path / "cache", "--limit", "24", "--val-fraction", "0.25")
    record = json.loads((out / "config.json").read_text())
    assert record["backbone"]["cache_shape"] == [1, 1, 1536]
    catcap("export", out, "--out", bundle, "--min-greedy-match", "0.99")
    model = json.loads((bundle / "model.json").read_text())
    assert model["backbone"] == "inception_resnet_v2" and model["parity"]["max_abs_diff"] <= 1e-4


def test_inception_resnet_v2_takes_a_local_weights_file(tmp_path):
    import keras

    from train.backbones import build_backbone

    reference = keras.applications.InceptionResNetV2(include_top=False, weights=None, input_shape=(75, 75, 3))
    path = tmp_path / "irv2_notop.weights.h5"
    reference.save_weights(str(path))
    backbone = build_backbone("inception_resnet_v2", str(path), 75)
    net = backbone.bottom.layers[-1]
    assert np.allclose(net.weights[0].numpy(), reference.weights[0].numpy())
    with pytest.raises(Exception, match="is not a file"):
        build_backbone("inception_resnet_v2", str(tmp_path / "nope.h5"), 75)


def test_decoder_weights_are_stored_as_float16_without_changing_the_arithmetic(tiny_bundle):
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(tiny_bundle / "decoder.onnx")).graph
    halves = [i for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
    assert halves and all(i.name.endswith("__f16") for i in halves)
    casts = {n.input[0] for n in graph.node if n.op_type == "Cast"}
    assert {i.name for i in halves} <= casts  # each is cast back to float32 before use
    assert sum(numpy_helper.to_array(i).size for i in halves) > 0.9 * sum(
        numpy_helper.to_array(i).size for i in graph.initializer)
    record = json.loads((tiny_bundle / "model.json").read_text())
    assert record["export"]["decoder_weights"] == "float16 storage, float32 arithmetic"
    assert record["parity"]["max_abs_diff"] <= 1e-4  # against Keras with the same rounded weights
