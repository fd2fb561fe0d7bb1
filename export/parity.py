"""Prove the ONNX pair computes what the Keras model computes, on real validation images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

from catalog_captioner import images
from catalog_captioner.decoding import GreedyDecoder
from catalog_captioner.neighbours import NeighbourIndex
from export.keras_model import TrainedRun


def validation_pixels(run: TrainedRun, limit: int) -> np.ndarray:
    """Up to ``limit`` preprocessed validation images of the run (unreadable ones skipped)."""
    split = json.loads((run.path / "split.json").read_text())
    options = images.LoadOptions(image_root=Path(run.record["data"]["image_root"]))
    pixels = []
    for cell in split["val_images"]:
        try:
            pixels.append(images.load(cell, run.backbone.input_size, options))
        except images.ImageFailure:
            continue
        if len(pixels) == limit:
            break
    if not pixels:
        raise ValueError("no validation image of the run could be read for the parity check")
    return np.stack(pixels)


def memory_of(run: TrainedRun, outputs, index: NeighbourIndex | None) -> tuple[dict, np.ndarray]:
    """Encoder outputs (features, keys, hidden[, embedding]) -> decoder memory and state, as the runtime does."""
    features, keys, hidden, *embedding = [np.asarray(t) for t in outputs]
    memory = {"features": features, "keys": keys}
    if index is not None:
        memory["neighbours"], memory["similarity"] = index.search(embedding[0], run.config.neighbours)
    return memory, hidden


class KerasStep:
    def __init__(self, run: TrainedRun, folded: bool = True):
        self.fn = run.decoder_function(folded)

    def __call__(self, token, memory, hidden):
        retrieved = [memory[r] for r in ("neighbours", "similarity") if r in memory]
        outputs = self.fn(token.astype(np.int32), memory["features"], memory["keys"], hidden, *retrieved)
        return [np.asarray(t) for t in outputs]


class OnnxStep:
    def __init__(self, session: ort.InferenceSession):
        self.session = session

    def __call__(self, token, memory, hidden):
        feeds = {"token": token.astype(np.int32), "hidden": hidden, **memory}
        return self.session.run(["logits", "next_hidden", "attention"], feeds)


def greedy_tokens(run: TrainedRun, pixels: np.ndarray, folded: bool = True) -> list[list[int]]:
    """Keras greedy captions (token ids) of the parity images: the training form (``folded=False``,
    weights as trained) vs the exported form, to measure what rounding and folding changed."""
    memory, hidden = memory_of(run, run.encoder_function()(pixels), run.index)
    vocab = run.vocabulary
    return [h.tokens for h in GreedyDecoder(KerasStep(run, folded), vocab.start_id, vocab.end_id,
                                            run.config.max_length).decode(memory, hidden)]


def check_parity(run: TrainedRun, folder: Path, pixels: np.ndarray) -> dict:
    encoder = ort.InferenceSession(str(folder / "encoder.onnx"), providers=["CPUExecutionProvider"])
    decoder = ort.InferenceSession(str(folder / "decoder.onnx"), providers=["CPUExecutionProvider"])
    index = run.index
    keras_out = [np.asarray(t) for t in run.encoder_function()(pixels)]
    names = ["features", "keys", "hidden"] + (["embedding"] if index is not None else [])
    onnx_out = encoder.run(names, {encoder.get_inputs()[0].name: pixels})
    enc_diff = max(float(np.abs(a - b).max()) for a, b in zip(keras_out, onnx_out))
    keras_memory, keras_hidden = memory_of(run, keras_out, index)
    onnx_memory, onnx_hidden = memory_of(run, onnx_out, index)

    keras_step, onnx_step = KerasStep(run), OnnxStep(decoder)
    # Logits along the Keras greedy path, both graphs fed identical inputs at every step.
    hidden = keras_hidden
    token = np.full(len(pixels), run.vocabulary.start_id, np.int64)
    logit_diff = 0.0
    for _ in range(run.config.max_length):
        k_logits, k_hidden, k_att = keras_step(token, keras_memory, hidden)
        o_logits, o_hidden, o_att = onnx_step(token, keras_memory, hidden)
        logit_diff = max(logit_diff, float(np.abs(k_logits - o_logits).max()),
                         float(np.abs(k_hidden - o_hidden).max()), float(np.abs(k_att - o_att).max()))
        token, hidden = k_logits.argmax(-1), k_hidden

    start, end, length = run.vocabulary.start_id, run.vocabulary.end_id, run.config.max_length
    keras_caps = GreedyDecoder(keras_step, start, end, length).decode(keras_memory, keras_hidden)
    onnx_caps = GreedyDecoder(onnx_step, start, end, length).decode(onnx_memory, onnx_hidden)
    same = sum(a.tokens == b.tokens for a, b in zip(keras_caps, onnx_caps))
    extra = {}
    if index is not None:  # each side retrieved with its own embedding
        extra["same_neighbours"] = float(np.mean(np.all(keras_memory["neighbours"] == onnx_memory["neighbours"],
                                                        axis=(1, 2))))
    return {
        **extra,
        "images": int(len(pixels)),
        "max_abs_diff": max(enc_diff, logit_diff),
        "max_abs_diff_features": enc_diff,
        "max_abs_diff_logits": logit_diff,
        "greedy_match": same / len(pixels),
        "source": "validation split of the training run",
    }
