"""The embedded default model: ships in the package, loads offline, captions real product photos well."""

from __future__ import annotations

import pandas as pd
import pytest

from catalog_captioner import Captioner, ModelBundle, default_model_dir
from tests.conftest import SHARED, catcap, draw_product


def test_the_default_bundle_ships_inside_the_package_and_loads_offline():
    bundle = ModelBundle.load()  # no path: the embedded bundle, checksums verified
    assert bundle.path == default_model_dir()
    record = bundle.record
    assert record["backbone"] == "efficientnet_lite0"
    parity = record["parity"]
    assert parity["max_abs_diff"] <= parity["limit_max_abs_diff"] <= 2e-4 and parity["greedy_match"] == 1.0
    assert parity["max_abs_diff_logits"] <= 1e-4
    model, peer = record["metrics"]["model"], record["metrics"]["retrieval_peer"]
    assert model["rows"] == peer["rows"] > 4000  # both scored on the same validation split
    # The first bar: beat nearest-neighbour retrieval on every column.
    for key in ("bleu4", "cider", "colour_acc", "gender_acc", "article_acc", "rouge_l", "exact_match"):
        assert model[key] > peer[key], key
    assert model["cider"] >= 3.0
    assert record["retrieval"]["images"] == record["training"]["data"]["train_images"]
    size = sum(f.stat().st_size for f in default_model_dir().iterdir())
    assert size < 42e6


def test_catcap_run_without_model_uses_the_default(tmp_path):
    for i, (colour, shape) in enumerate([("red", "square"), ("blue", "circle")]):
        draw_product(colour, shape, size=224, seed=i).save(tmp_path / f"{i}.png")
    (tmp_path / "c.csv").write_text("sku,image\n001,0.png\n002,1.png\n")
    catcap("run", tmp_path / "c.csv", "--out", tmp_path / "o.csv")
    frame = pd.read_csv(tmp_path / "o.csv", dtype=str, keep_default_na=False)
    assert frame["caption_status"].tolist() == ["ok", "ok"] and all(frame["caption"] != "")
    assert frame["sku"].tolist() == ["001", "002"]


@pytest.mark.skipif(not (SHARED / "catalog.csv").is_file(),
                    reason="../shared/datasets/fashion-products is absent: the real-photo check needs it")
def test_the_default_model_names_colour_gender_and_article_of_real_validation_photos():
    from catalog_captioner.evaluate import score

    record = ModelBundle.load().record
    val_ids = set(record["metrics"]["validation_ids_sample"])
    frame = pd.read_csv(SHARED / "catalog.csv", dtype=str, keep_default_na=False)
    frame = frame[frame["id"].isin(val_ids)].head(300)
    assert len(frame) >= 100
    captioner = Captioner.load(device="cpu", image_root=SHARED)
    results = captioner.caption(frame["image"].tolist())
    assert all(r.status == "ok" for r in results)
    metrics = score([r.caption for r in results], frame["caption"].tolist(), frame)
    # Measured on the whole validation split: gender 0.91, colour 0.68, article 0.72, BLEU-4 0.33 (greedy).
    assert metrics["gender_acc"] >= 0.8 and metrics["colour_acc"] >= 0.55 and metrics["article_acc"] >= 0.6, metrics
    assert metrics["bleu4"] >= 0.22, metrics
