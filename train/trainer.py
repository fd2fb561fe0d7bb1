"""``catcap train``: catalog -> cached backbone maps -> teacher-forced training -> run folder.

The run folder holds everything ``catcap export`` needs: ``config.json`` (model,
backbone, vocabulary, data record), ``model.weights.h5``, ``backbone.weights.h5``
(the frozen bottom, so export never needs the original weights file),
``split.json``, ``history.csv`` and ``loss.png``.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from catalog_captioner import catalog as catalogs
from catalog_captioner import images
from catalog_captioner.errors import UsageError
from catalog_captioner.text import Vocabulary, tokenize


@dataclass(frozen=True)
class TrainOptions:
    catalog: Path
    out: Path
    image_col: str | None = None
    caption_col: str = "caption"
    image_root: Path | None = None
    backbone: str = "efficientnet_lite0"
    backbone_weights: str | None = None
    input_size: int | None = None
    fine_tune_blocks: int = 0
    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 1e-3
    patience: int = 3
    lr_decay: float = 1.0  # multiply the learning rate by this after an epoch without improvement (1 = off)
    val_fraction: float = 0.1
    seed: int = 13
    min_count: int = 2
    max_length: int = 20
    embedding_dim: int = 256
    units: int = 512
    feature_dim: int = 256
    attention_units: int = 256
    attribute_cols: tuple[str, ...] = ()
    attribute_weight: float = 0.5
    label_smoothing: float = 0.0
    dropout: float = 0.0
    neighbours: int = 0  # retrieval-augmented decoder: K training titles read per image (0: off)
    neighbour_length: int = 12
    region_colours: bool = False  # each region's mean RGB beside its CNN features (train.colours)
    limit: int | None = None
    cache_dir: Path | None = None
    verbose: int = 2


@dataclass
class CatalogData:
    frame: pd.DataFrame
    image_col: str
    path: Path
    image_root: Path
    skipped_empty: int = 0


def read_catalog(path: Path, image_col: str | None, caption_col: str, image_root: Path | None,
                 limit: int | None = None, fmt: str | None = None, require_captions: bool = True) -> CatalogData:
    """The whole catalog as text cells, rows without caption words dropped (and counted)."""
    frame, column = catalogs.read_table(path, image_col, fmt, limit)
    if require_captions and caption_col not in frame.columns:
        raise UsageError(f"--caption-col {caption_col!r} is not a column; the catalog has: {', '.join(frame.columns)}")
    skipped = 0
    if require_captions:
        has_words = frame[caption_col].map(lambda c: bool(tokenize(c)))
        skipped = int((~has_words).sum())
        frame = frame[has_words].reset_index(drop=True)
    root = image_root or path.resolve().parent
    return CatalogData(frame, column, path.resolve(), Path(root).resolve(), skipped)


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Reproducible shuffle-split: the same (n, fraction, seed) always gives the same split."""
    if not 0 < val_fraction < 1:
        raise UsageError("--val-fraction must be between 0 and 1")
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(n * val_fraction)))
    if n - n_val < 1:
        raise UsageError(f"the catalog has {n} usable rows: too few to split into train and validation")
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def encode_captions(captions, vocab: Vocabulary, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Teacher-forcing pairs: inputs <start> w1..wn, targets w1..wn <end>, padded with 0."""
    inputs = np.zeros((len(captions), max_length + 1), np.int32)
    targets = np.zeros_like(inputs)
    for i, caption in enumerate(captions):
        ids = vocab.encode(caption)[:max_length]
        inputs[i, : len(ids) + 1] = [vocab.start_id, *ids]
        targets[i, : len(ids) + 1] = [*ids, vocab.end_id]
    return inputs, targets


@dataclass
class AttributeCodes:
    column: str
    classes: list[str] = field(default_factory=list)

    def labels(self, values) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index.get(str(v), -1) for v in values], np.int32)


def train(options: TrainOptions, log=None) -> Path:
    """Train and write the run folder; returns its path."""
    log = log or (lambda message: print(f"catcap train: {message}", flush=True))
    import keras

    from train.backbones import build_backbone
    from train.features import FeatureCache, default_cache_root
    from train.model import AttributeLoss, MaskedCaptionLoss, ModelConfig, build_model

    if not 0 < options.lr_decay <= 1:
        raise UsageError("--lr-decay must be in (0, 1]; 1 keeps the learning rate constant")
    started = time.time()
    keras.utils.set_random_seed(options.seed)
    data = read_catalog(options.catalog, options.image_col, options.caption_col, options.image_root, options.limit)
    for column in options.attribute_cols:
        if column not in data.frame.columns:
            raise UsageError(f"--attribute-cols: {column!r} is not a column of the catalog")
    if len(data.frame) < 2:
        raise UsageError(f"{options.catalog} has {len(data.frame)} rows with a caption; training needs at least 2")
    log(f"{len(data.frame)} rows with captions ({data.skipped_empty} empty captions skipped)")

    backbone = build_backbone(options.backbone, options.backbone_weights, options.input_size,
                              options.fine_tune_blocks)
    cache = FeatureCache(options.cache_dir or default_cache_root(), backbone)
    load_options = images.LoadOptions(image_root=data.image_root)
    cached = cache.compute(data.frame[data.image_col].tolist(), load_options, log=log,
                           colour_grid=backbone.grid if options.region_colours else None)
    maps, ok, failures, cache_stats = cached.maps, cached.ok, cached.failures, cached.stats
    keep = np.flatnonzero(ok)
    if len(keep) < 2:
        raise UsageError(f"only {len(keep)} images could be read ({dict(failures)}); nothing to train on")
    frame = data.frame.iloc[keep].reset_index(drop=True)
    maps = maps[keep]
    x_extra = {"colours": cached.colours[keep]} if options.region_colours else {}
    train_idx, val_idx = split_indices(len(frame), options.val_fraction, options.seed)

    captions = frame[options.caption_col].tolist()
    vocab = Vocabulary.build([captions[i] for i in train_idx], min_count=options.min_count)
    longest = max(len(tokenize(captions[i])) for i in train_idx)
    max_length = min(options.max_length, longest)
    inputs, targets = encode_captions(captions, vocab, max_length)
    attributes = []
    for column in options.attribute_cols:
        values = frame[column].tolist()
        classes = sorted({values[i] for i in train_idx if values[i]})
        attributes.append(AttributeCodes(column, classes))
    neighbours = max(0, min(options.neighbours, len(train_idx) - 1))  # a training image never reads itself
    config = ModelConfig(vocab_size=len(vocab), max_length=max_length, feature_dim=options.feature_dim,
                         embedding_dim=options.embedding_dim, units=options.units,
                         attention_units=options.attention_units, dropout=options.dropout,
                         attributes=tuple((a.column, len(a.classes)) for a in attributes if a.classes),
                         neighbours=neighbours, neighbour_length=options.neighbour_length if neighbours else 0,
                         region_colours=options.region_colours)
    log(f"vocabulary {len(vocab)} words (min count {options.min_count}); max length {max_length}; "
        f"{len(train_idx)} train / {len(val_idx)} validation images; cache map {backbone.cache_shape}")

    if config.neighbours:
        index, retrieved = _retrieval_inputs(maps, captions, train_idx, vocab, config, log)
        x_extra.update(retrieved)
    model = build_model(config, backbone.top, backbone.cache_shape)
    losses = {"caption": MaskedCaptionLoss(options.label_smoothing)}
    weights = {"caption": 1.0}
    y = {"caption": targets}
    for codes in attributes:
        if codes.classes:
            losses[f"attr_{codes.column}"] = AttributeLoss()
            weights[f"attr_{codes.column}"] = options.attribute_weight
            y[f"attr_{codes.column}"] = codes.labels(frame[codes.column].tolist())
    model.compile(optimizer=keras.optimizers.Adam(options.learning_rate, clipnorm=5.0), loss=losses,
                  loss_weights=weights)

    def dataset(index, shuffle):
        import tensorflow as tf

        x = {"cached": maps[index], "tokens": inputs[index], **{k: v[index] for k, v in x_extra.items()}}
        ds = tf.data.Dataset.from_tensor_slices((x, {k: v[index] for k, v in y.items()}))
        if shuffle:
            ds = ds.shuffle(min(len(index), 20000), seed=options.seed, reshuffle_each_iteration=True)
        return ds.batch(options.batch_size).prefetch(2)

    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    # Everything but the decoder weights is written first, and the best weights after every
    # improving epoch, so an interrupted run can still be exported.
    backbone.bottom.save_weights(str(out / "backbone.weights.h5"))
    if config.neighbours:
        index.save(out / "neighbours.npz")
    for name, index in (("train.csv", train_idx), ("val.csv", val_idx)):
        write_split(frame.iloc[index], data.image_col, data.image_root, out / name)
    (out / "split.json").write_text(json.dumps({
        "seed": options.seed, "val_fraction": options.val_fraction,
        "val_images": frame[data.image_col].iloc[val_idx].tolist(),
        "val_captions": [captions[i] for i in val_idx],
    }))
    record = {
        "model": config.to_dict(),
        "backbone": {"name": backbone.name, "input_size": backbone.input_size, "weights_id": backbone.weights_id,
                     "weights": options.backbone_weights or "imagenet", "fine_tune_blocks": options.fine_tune_blocks,
                     "cache_shape": list(backbone.cache_shape)},
        "vocabulary": list(vocab.words),
        "attributes": {a.column: a.classes for a in attributes},
        "data": {"catalog": str(data.path), "image_col": data.image_col, "caption_col": options.caption_col,
                 "image_root": str(data.image_root), "rows": int(len(data.frame) + data.skipped_empty),
                 "empty_captions_skipped": data.skipped_empty, "images_skipped": dict(failures),
                 "train_images": int(len(train_idx)), "val_images": int(len(val_idx)), "feature_cache": cache_stats},
        "training": {"status": "running",
                     "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options).items()}},
    }
    (out / "config.json").write_text(json.dumps(record, indent=2))
    # With auxiliary heads, stop on the caption loss alone: the attribute losses overfit
    # epochs before the caption loss stops falling, and the captions are what ships.
    monitor = "val_caption_loss" if len(losses) > 1 else "val_loss"
    stopper = keras.callbacks.EarlyStopping(monitor=monitor, mode="min", patience=options.patience,
                                            restore_best_weights=True, verbose=1)
    checkpoint = keras.callbacks.ModelCheckpoint(str(out / "model.weights.h5"), monitor=monitor, mode="min",
                                                 save_best_only=True, save_weights_only=True)
    callbacks = [stopper, checkpoint]
    if options.lr_decay < 1.0:  # before the logger, which then records the rate of every epoch
        callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor=monitor, mode="min", factor=options.lr_decay,
                                                           patience=0, min_lr=1e-6, verbose=1))
    callbacks.append(keras.callbacks.CSVLogger(str(out / "history.csv")))
    history = model.fit(dataset(train_idx, True), validation_data=dataset(val_idx, False), epochs=options.epochs,
                        callbacks=callbacks,
                        verbose=options.verbose)
    val_losses = history.history["val_loss"]
    monitored = history.history[monitor]
    best_epoch = int(np.argmin(monitored)) + 1
    epochs_run = len(val_losses)
    what = "validation caption loss" if monitor == "val_caption_loss" else "validation loss"
    stop_reason = (f"{what} did not improve for {options.patience} epochs after epoch {best_epoch}"
                   if stopper.stopped_epoch else f"reached --epochs {options.epochs}")
    model.save_weights(str(out / "model.weights.h5"))  # the best epoch's (restored by early stopping)
    record["training"].update(status="finished", epochs_run=epochs_run, best_epoch=best_epoch, stopped=stop_reason,
                              monitor=monitor, best_val_loss=float(val_losses[best_epoch - 1]),
                              best_val_caption_loss=float(history.history.get("val_caption_loss", val_losses)[best_epoch - 1]),
                              final_train_loss=float(history.history["loss"][-1]),
                              seconds=round(time.time() - started, 1))
    (out / "config.json").write_text(json.dumps(record, indent=2))
    plot_history(history.history, best_epoch, stop_reason, out / "loss.png")
    log(f"best epoch {best_epoch}/{epochs_run} ({monitor} {min(monitored):.4f}); {stop_reason}; wrote {out}")
    return out


def _retrieval_inputs(maps, captions, train_idx, vocab, config, log):
    """The index of training keys + titles, and every row's K retrieved titles (never its own)."""
    from catalog_captioner.neighbours import NeighbourIndex
    from train.neighbours import embed, title_tokens

    started = time.time()
    keys = embed(maps)
    index = NeighbourIndex.from_keys(keys[train_idx], title_tokens([captions[i] for i in train_idx], vocab,
                                                          config.neighbour_length))
    own = np.full(len(maps), -1)
    own[train_idx] = np.arange(len(train_idx))
    tokens, similarity = index.search(keys, config.neighbours, exclude=own)
    log(f"retrieval: {config.neighbours} titles per image from {index.size} training images "
        f"({time.time() - started:.0f}s)")
    return index, {"neighbours": tokens, "similarity": similarity}


def write_split(frame: pd.DataFrame, image_col: str, root: Path, path: Path) -> None:
    """The split's rows as a catalog with absolute image paths (for `catcap evaluate`)."""
    frame = frame.copy()
    frame[image_col] = [str(images.resolve(c, root)) for c in frame[image_col]]
    frame.to_csv(path, index=False)


def plot_history(history: dict, best_epoch: int, reason: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = np.arange(1, len(history["loss"]) + 1)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(epochs, history["loss"], marker="o", label="train loss")
    ax.plot(epochs, history["val_loss"], marker="o", label="validation loss")
    if "val_caption_loss" in history and any(k.startswith("attr_") for k in history):
        ax.plot(epochs, history["caption_loss"], marker=".", linestyle=":", label="train caption loss")
        ax.plot(epochs, history["val_caption_loss"], marker=".", linestyle=":", label="validation caption loss")
    ax.axvline(best_epoch, color="grey", linestyle="--", label=f"best (epoch {best_epoch}, weights kept)")
    rates = history.get("learning_rate", [])
    drops = [e for e in range(1, len(rates)) if rates[e] < rates[e - 1]]
    for n, e in enumerate(drops):  # the rate of epoch e+1 (1-based) was lowered after epoch e
        ax.axvline(e + 0.5, color="tab:purple", linestyle=":", label="learning rate lowered" if n == 0 else None)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(f"Stopped: {reason}", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
