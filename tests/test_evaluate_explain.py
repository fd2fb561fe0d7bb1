"""`catcap evaluate` scores captions beside the retrieval peer; `catcap explain` draws attention per word."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from catalog_captioner.evaluate import attribute_accuracy, score
from tests.conftest import catcap


def test_metrics_on_known_captions():
    refs = ["Nike Men Black Shoes", "Puma Women Red Top", "Acme Unisex Blue Bag"]
    perfect = score(refs, refs)
    assert perfect["bleu4"] == pytest.approx(1.0, abs=1e-6) and perfect["exact_match"] == 1.0
    assert perfect["rouge_l"] == pytest.approx(1.0) and perfect["article_acc"] == 1.0
    wrong = score(["Adidas Men Black Shoes", "Puma Women Green Top", "Acme Unisex Blue Wallet"], refs)
    assert 0 < wrong["bleu4"] < 1 and wrong["exact_match"] == 0.0
    assert wrong["article_acc"] == pytest.approx(2 / 3)
    assert wrong["cider"] < perfect["cider"]


def test_attribute_accuracy_counts_only_rows_whose_reference_names_the_value():
    preds = ["Nike Men Navy Blue Shirt", "Nike Men Blue Shirt", "Puma Women Red Top", "Acme Bag"]
    refs = ["Nike Men Navy Blue Shirt", "Nike Men Navy Blue Shirt", "Puma Women Top", "Acme Green Bag"]
    acc, rows = attribute_accuracy(preds, refs, ["Navy Blue", "Navy Blue", "Red", "Green"])
    assert rows == 3  # the third reference does not say "red"
    assert acc == pytest.approx(1 / 3)  # "blue" alone is not "navy blue"
    acc, rows = attribute_accuracy(["x"], ["y"], [""])
    assert rows == 0 and math.isnan(acc)


def test_evaluate_writes_reports_and_scores_the_retrieval_peer(tiny_bundle, shapes_catalog, tmp_path):
    out = tmp_path / "eval"
    result = catcap("evaluate", shapes_catalog, "--model", tiny_bundle, "--reference", shapes_catalog,
                    "--out", out, "--contact-sheet", "8")
    report = json.loads((out / "report.json").read_text())
    model, peer = report["model_metrics"], report["retrieval_metrics"]
    assert model["rows"] == 72 and 0 <= model["bleu4"] <= 1 and model["colour_acc_rows"] == 72
    assert model["colour_acc"] >= 0.7
    # Every image is in its own reference set: its nearest neighbour is itself.
    assert peer["exact_match"] == 1.0 and peer["rouge_l"] == pytest.approx(1.0)
    assert peer["bleu3"] == pytest.approx(1.0, abs=1e-6)  # 3-word titles have no 4-grams for BLEU-4
    assert "| BLEU-4 |" in result.stdout and "retrieval peer" in (out / "report.md").read_text()
    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.size[0] > 600 and sheet.size[1] > 400
    assert (out / "predictions.csv").read_text().startswith("id,image,caption,baseColour,prediction,retrieval")


def test_explain_draws_one_attention_panel_per_word(tiny_bundle, shapes_catalog, tmp_path):
    image = shapes_catalog.parent / "img" / "red_circle_0.jpg"
    result = catcap("explain", image, "--model", tiny_bundle, "--out", tmp_path / "att.png")
    caption = result.stdout.splitlines()[0]
    assert caption.startswith("Acme")
    figure = Image.open(tmp_path / "att.png")
    assert figure.size[0] >= 2 * 200

    from catalog_captioner import Captioner

    captioner = Captioner.load(tiny_bundle, device="cpu", keep_attention=True)
    res = captioner.caption([image])[0]
    assert res.attention.shape == (len(res.words), captioner.bundle.regions)
    assert np.allclose(res.attention.sum(axis=1), 1.0, atol=1e-4)  # a distribution over regions per word


def test_explain_reports_an_unreadable_image_clearly(tiny_bundle, tmp_path):
    result = catcap("explain", tmp_path / "nope.jpg", "--model", tiny_bundle, "--out", tmp_path / "a.png",
                    check=False)
    assert result.returncode == 2 and "cannot read" in result.stderr and "Traceback" not in result.stderr
