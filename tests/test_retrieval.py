"""The retrieval-augmented decoder: trained, exported and run like the plain one, plus its index."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from catalog_captioner import Captioner
from catalog_captioner.bundle import ModelBundle
from catalog_captioner.errors import BundleError
from catalog_captioner.neighbours import NeighbourIndex
from tests.conftest import ROOT, catcap, draw_product


@pytest.fixture(scope="module")
def retrieval_run(shapes_catalog, tmp_path_factory):
    pytest.importorskip("tensorflow", reason="the train extra is not installed")
    out = tmp_path_factory.mktemp("rrun") / "run"
    catcap("train", shapes_catalog, "--out", out, "--input-size", "96", "--epochs", "10", "--batch-size", "16",
           "--units", "64", "--embedding-dim", "32", "--feature-dim", "64", "--val-fraction", "0.2",
           "--learning-rate", "0.005", "--patience", "10", "--min-count", "1", "--neighbours", "3", "--lr-decay", "0.5",
           "--region-colours", "--fine-tune-blocks", "3", "--cache-dir", out.parent / "cache")
    return out


@pytest.fixture(scope="module")
def retrieval_bundle(retrieval_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("rbundle") / "bundle"
    catcap("export", retrieval_run, "--out", out)
    return out


def test_search_returns_the_most_similar_titles_best_first_and_can_exclude_a_row():
    keys = np.eye(4, dtype=np.float32)
    keys[3] = [0.8, 0.6, 0, 0]
    titles = np.arange(4 * 3, dtype=np.int32).reshape(4, 3) + 4
    index = NeighbourIndex.from_keys(keys, titles)
    tokens, sims = index.search(np.array([[1, 0, 0, 0]], np.float32), 2)
    assert tokens[0].tolist() == [titles[0].tolist(), titles[3].tolist()]
    assert sims[0, 0] == pytest.approx(1.0, abs=0.01) and sims[0, 1] == pytest.approx(0.8, abs=0.01)
    tokens, _ = index.search(np.array([[1, 0, 0, 0]], np.float32), 2, exclude=np.array([0]))
    assert tokens[0, 0].tolist() == titles[3].tolist()  # a training image never reads its own title


def test_the_index_round_trips_through_its_file(tmp_path):
    rng = np.random.default_rng(0)
    keys = rng.normal(size=(50, 8)).astype(np.float32)
    index = NeighbourIndex.from_keys(keys / np.linalg.norm(keys, axis=1, keepdims=True), rng.integers(0, 9, (50, 5)))
    index.save(tmp_path / "n.npz")
    again = NeighbourIndex.load(tmp_path / "n.npz")
    assert np.array_equal(again.keys, index.keys) and np.array_equal(again.tokens, index.tokens)
    queries = keys[:7] / np.linalg.norm(keys[:7], axis=1, keepdims=True)
    assert np.array_equal(again.search(queries, 3)[0], index.search(queries, 3)[0])


def test_a_retrieval_run_exports_to_a_bundle_with_its_index(retrieval_run, retrieval_bundle):
    config = json.loads((retrieval_run / "config.json").read_text())
    assert config["model"]["neighbours"] == 3 and (retrieval_run / "neighbours.npz").is_file()
    assert config["model"]["region_colours"]  # the default model's configuration: colours exported too
    record = json.loads((retrieval_bundle / "model.json").read_text())
    assert record["format_version"] == 2
    assert record["retrieval"]["neighbours"] == 3 and record["retrieval"]["images"] == config["data"]["train_images"]
    assert "embedding" in record["encoder"]["outputs"]
    assert {"neighbours", "similarity"} <= set(record["decoder"]["inputs"])
    parity = record["parity"]
    assert parity["max_abs_diff"] <= 1e-4 and parity["greedy_match"] >= 0.99 and parity["same_neighbours"] == 1.0
    bundle = ModelBundle.load(retrieval_bundle)
    assert bundle.neighbours.size == config["data"]["train_images"] and bundle.neighbour_count == 3


def test_the_fine_tuned_blocks_learn_while_the_cached_bottom_keeps_its_imagenet_weights(retrieval_run):
    from export.keras_model import load_run
    from train.backbones import build_backbone

    run = load_run(retrieval_run)
    assert run.record["backbone"]["fine_tune_blocks"] == 3  # the default model's configuration
    imagenet = build_backbone("efficientnet_lite0", None, 96, fine_tune_blocks=3)
    for trained, original in zip(run.backbone.bottom.weights, imagenet.bottom.weights):
        np.testing.assert_array_equal(np.asarray(trained), np.asarray(original), err_msg=trained.path)
    moved = {a.path.split("/")[0] for a, b in zip(run.backbone.top.trainable_weights, imagenet.top.trainable_weights)
             if not np.allclose(np.asarray(a), np.asarray(b))}
    assert {"block13_expand", "block14_project", "block15_dw", "head"} <= moved


def test_the_learning_rate_drops_only_after_an_epoch_without_improvement(retrieval_run):
    history = pd.read_csv(retrieval_run / "history.csv")
    rates, losses = history["learning_rate"].tolist(), history["val_loss"].tolist()
    assert rates[0] == pytest.approx(0.005)
    for epoch in range(1, len(rates)):
        if rates[epoch] < rates[epoch - 1]:
            assert losses[epoch - 1] >= min(losses[:epoch - 1]), epoch  # epoch-1 did not improve
            assert rates[epoch] == pytest.approx(rates[epoch - 1] * 0.5)
        else:
            assert rates[epoch] == pytest.approx(rates[epoch - 1])


def test_catcap_run_captions_with_a_retrieval_bundle(retrieval_bundle, shapes_catalog, tmp_path):
    out = tmp_path / "out.csv"
    catcap("run", shapes_catalog, "--model", retrieval_bundle, "--out", out, "--caption-col", "predicted")
    frame = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert (frame.predicted_status == "ok").all() and len(frame) == 72
    exact = np.mean([p.lower() == r.lower() for p, r in zip(frame["predicted"], frame["caption"])])
    assert exact >= 0.7, frame[["caption", "predicted"]].head(12)


def test_retrieved_titles_reach_the_decoder(retrieval_bundle):
    captioner = Captioner.load(retrieval_bundle, device="cpu", beam_size=1)
    pixels = np.stack([np.asarray(draw_product("blue", "circle", seed=s).resize((96, 96))) for s in range(3)])
    memory, hidden = captioner.encode(pixels)
    assert memory["neighbours"].shape == (3, 3, captioner.bundle.neighbours.title_length)
    assert memory["similarity"].shape == (3, 3) and (np.diff(memory["similarity"], axis=1) <= 1e-6).all()
    words = {captioner.bundle.vocabulary.words[t] for t in memory["neighbours"][0, 0] if t > 3}
    assert words == {"acme", "blue", "circle"}  # the nearest training image is a blue circle


def test_a_damaged_index_is_refused(retrieval_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(retrieval_bundle, copy)
    with open(copy / "neighbours.npz", "ab") as handle:
        handle.write(b"x")
    with pytest.raises(BundleError, match="neighbours.npz fails its checksum"):
        ModelBundle.load(copy)


def test_the_benchmark_times_a_retrieval_model_with_region_colours_on_both_sides(retrieval_run, retrieval_bundle):
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "throughput.py"), "--model", str(retrieval_bundle), "--run",
         str(retrieval_run), "--images", "8", "--rss-scale", "2", "--batch-size", "4"],
        capture_output=True, text=True, check=True, timeout=600)
    lines = result.stdout.strip().splitlines()
    assert any(line.startswith("  of which retrieval") for line in lines)
    assert any(line.startswith("keras (TensorFlow") for line in lines)  # the Keras side computes the colours too
    assert re.match(r"endtoend_over_model=\d+\.\d+ onnx_over_keras=\d+\.\d+", lines[-1]), lines[-1]
