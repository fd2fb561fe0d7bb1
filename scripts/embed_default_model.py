"""Copy an exported bundle into the package as the default model, with its evaluation record.

Usage: python scripts/embed_default_model.py BUNDLE EVAL_REPORT_JSON VAL_CSV [--beam-size N]
The metrics (model and retrieval peer, same validation split) go into model.json's
"metrics"; the bundle's checksums cover the ONNX files, which are copied unchanged.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
from pathlib import Path

import pandas as pd

from catalog_captioner.bundle import ModelBundle, default_model_dir

KEYS = ("bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "cider", "exact_match", "colour_acc", "gender_acc",
        "article_acc", "rows")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("bundle", type=Path)
    parser.add_argument("report", type=Path)
    parser.add_argument("val_csv", type=Path)
    parser.add_argument("--beam-size", type=int, default=1, help="the decoding the metrics were measured with")
    args = parser.parse_args()

    report = json.loads(args.report.read_text())
    val_ids = pd.read_csv(args.val_csv, dtype=str, keep_default_na=False)["id"].tolist()
    target = default_model_dir()
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(args.bundle, target)
    record = json.loads((target / "model.json").read_text())
    record["name"] = "catcap-default-fashion-lite0"
    record["decoding"]["default_beam_size"] = args.beam_size
    record["metrics"] = {
        "split": "validation split of the training run (seed 13, 10% of Fashion Product Images)",
        "tokenizer": report["tokenizer"],
        "beam_size": report["beam_size"],
        "model": {k: report["model_metrics"][k] for k in KEYS if k in report["model_metrics"]},
        "retrieval_peer": {k: report["retrieval_metrics"][k] for k in KEYS if k in report["retrieval_metrics"]},
        "retrieval_peer_method": report["retrieval"],
        # A random sample: the split's first rows (catalog order) are older, atypical products.
        "validation_ids_sample": sorted(random.Random(0).sample(val_ids, min(500, len(val_ids))), key=int),
    }
    (target / "model.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    ModelBundle.load(target)
    print(f"embedded {args.bundle} as {target}")


if __name__ == "__main__":
    main()
