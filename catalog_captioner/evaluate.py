"""``catcap evaluate``: caption a labelled catalog and score the captions against its titles.

Metrics come from pycocoevalcap (BLEU-1..4, ROUGE-L, CIDEr-D) on our own tokenizer
(:func:`catalog_captioner.text.tokenize`: lower-case words, no Java PTB tokenizer),
plus exact match and catalog-attribute accuracies. The nearest-neighbour retrieval
peer (``train.retrieval``) is scored on the same rows when a reference catalog is given.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from catalog_captioner import catalog as catalogs
from catalog_captioner.captioner import Captioner
from catalog_captioner.errors import UsageError
from catalog_captioner.text import tokenize

TOKENIZER = "catcap lower-case word tokenizer ([a-z0-9]+ joined by ' & + . -)"


@dataclass(frozen=True)
class EvaluateOptions:
    catalog: Path
    out: Path
    model: Path | None = None
    caption_col: str = "caption"
    image_col: str | None = None
    image_root: Path | None = None
    reference: Path | None = None
    limit: int | None = None
    beam_size: int | None = None
    batch_size: int = 32
    device: str = "auto"
    contact_sheet: int = 24
    seed: int = 0
    cache_dir: Path | None = None  # feature cache of the retrieval peer (as catcap train --cache-dir)


def _words(value) -> list[str]:
    return tokenize(value) if isinstance(value, str) else []


def attribute_accuracy(predictions: list[str], references: list[str], values: list[str]) -> tuple[float, int]:
    """Share of rows whose prediction names the attribute, over rows whose reference names it."""
    hits = total = 0
    for pred, ref, value in zip(predictions, references, values):
        words = _words(value)
        if not words:
            continue
        ref_words, pred_words = _words(ref), _words(pred)
        if _contains(ref_words, words):
            total += 1
            hits += _contains(pred_words, words)
    return (hits / total if total else float("nan")), total


def _contains(sentence: list[str], phrase: list[str]) -> bool:
    n = len(phrase)
    return any(sentence[i:i + n] == phrase for i in range(len(sentence) - n + 1))


def score(predictions: list[str], references: list[str], frame: pd.DataFrame | None = None) -> dict:
    """All caption metrics for aligned prediction/reference lists."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    gts = {i: [" ".join(_words(r))] for i, r in enumerate(references)}
    res = {i: [" ".join(_words(p)) or "<empty>"] for i, p in enumerate(predictions)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    metrics = {f"bleu{n + 1}": float(b) for n, b in enumerate(bleu)}
    metrics.update(rouge_l=float(rouge), cider=float(cider),
                   exact_match=float(np.mean([_words(p) == _words(r) for p, r in zip(predictions, references)])))
    articles = [(_words(r) or [""])[-1] for r in references]
    metrics["article_acc"] = float(np.mean([a in _words(p) for a, p in zip(articles, predictions)]))
    if frame is not None:
        for column, key in (("baseColour", "colour_acc"), ("gender", "gender_acc")):
            if column in frame.columns:
                acc, rows = attribute_accuracy(predictions, references, frame[column].tolist())
                metrics[key], metrics[f"{key}_rows"] = acc, rows
    metrics["rows"] = len(predictions)
    return metrics


def evaluate(options: EvaluateOptions, log=print) -> dict:
    frame, image_col = catalogs.read_table(options.catalog, options.image_col, limit=options.limit)
    if options.caption_col not in frame.columns:
        raise UsageError(f"--caption-col {options.caption_col!r} is not a column; the catalog has: "
                         f"{', '.join(frame.columns)}")
    frame = frame[frame[options.caption_col].map(lambda c: bool(_words(c)))].reset_index(drop=True)
    root = (options.image_root or options.catalog.resolve().parent).resolve()
    captioner = Captioner.load(options.model, device=options.device, beam_size=options.beam_size, image_root=root)
    log(f"captioning {len(frame)} rows with {captioner.bundle.record.get('name', captioner.bundle.path)}")
    results = captioner.caption(frame[image_col].tolist(), batch_size=options.batch_size)
    ok = [i for i, r in enumerate(results) if r.status == "ok"]
    if not ok:
        raise UsageError("no image of the catalog could be read; nothing to evaluate")
    kept = frame.iloc[ok].reset_index(drop=True)
    references = kept[options.caption_col].tolist()
    predictions = [results[i].caption for i in ok]
    report = {"catalog": str(options.catalog), "model": str(captioner.bundle.path), "tokenizer": TOKENIZER,
              "beam_size": captioner.decoding.beam_size, "length_penalty": captioner.decoding.length_penalty,
              "block_repeats": captioner.decoding.block_repeats, "skipped_images": len(frame) - len(ok),
              "model_metrics": score(predictions, references, kept)}
    peer_predictions = None
    if options.reference is not None:
        from train.retrieval import RetrievalPeer

        peer = RetrievalPeer.fit(options.reference, options.caption_col, cache_dir=options.cache_dir, log=log)
        peer_predictions = peer.predict(kept[image_col].tolist(), root)
        report["retrieval_metrics"] = score(peer_predictions, references, kept)
        report["retrieval"] = peer.describe()
    options.out.mkdir(parents=True, exist_ok=True)
    samples = kept.assign(prediction=predictions, **({"retrieval": peer_predictions} if peer_predictions else {}))
    samples.to_csv(options.out / "predictions.csv", index=False)
    (options.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (options.out / "report.md").write_text(markdown_report(report))
    if options.contact_sheet:
        contact_sheet(samples, image_col, root, options.caption_col, options.out / "contact_sheet.png",
                      options.contact_sheet, captioner.input_size, options.seed)
    return report


METRIC_ROWS = [("BLEU-1", "bleu1"), ("BLEU-2", "bleu2"), ("BLEU-3", "bleu3"), ("BLEU-4", "bleu4"),
               ("ROUGE-L", "rouge_l"), ("CIDEr-D", "cider"), ("exact match", "exact_match"),
               ("colour accuracy", "colour_acc"), ("gender accuracy", "gender_acc"), ("article accuracy", "article_acc")]


def markdown_report(report: dict) -> str:
    model, peer = report["model_metrics"], report.get("retrieval_metrics")
    lines = [f"# catcap evaluation: {report['catalog']}", "",
             f"Model `{report['model']}`, beam {report['beam_size']}, {model['rows']} rows "
             f"({report['skipped_images']} unreadable images skipped). Tokenizer: {report['tokenizer']}.", "",
             "| metric | model |" + (" retrieval peer |" if peer else ""),
             "| --- | --- |" + (" --- |" if peer else "")]
    for label, key in METRIC_ROWS:
        if key in model:
            lines.append(f"| {label} | {model[key]:.3f} |" + (f" {peer[key]:.3f} |" if peer and key in peer else ""))
    if peer:
        lines += ["", f"Retrieval peer: {report['retrieval']}"]
    return "\n".join(lines) + "\n"


def contact_sheet(samples: pd.DataFrame, image_col: str, root: Path, caption_col: str, path: Path, count: int,
                  size: int, seed: int) -> None:
    """A grid of sample images with predicted (and retrieval) vs reference captions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from catalog_captioner import images

    chosen = samples.sample(n=min(count, len(samples)), random_state=seed)
    cols = 4
    rows = int(np.ceil(len(chosen) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 4.2, rows * 4.6), squeeze=False)
    options = images.LoadOptions(image_root=root)
    for ax, (_, row) in zip(axes.flat, chosen.iterrows()):
        ax.imshow(images.load(row[image_col], size, options))
        text = f"pred: {row['prediction']}\nref:  {row[caption_col]}"
        if "retrieval" in row:
            text += f"\nNN:   {row['retrieval']}"
        ax.set_title(text, fontsize=7.5, loc="left", family="monospace")
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
