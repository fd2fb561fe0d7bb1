"""Prove the ONNX pair computes what the Keras model computes, on real validation images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

from catalog_captioner import images
from catalog_captioner.decoding import GreedyDecoder
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


class KerasStep:
    def __init__(self, run: TrainedRun):
        self.fn = run.decoder_function()

    def __call__(self, token, features, keys, hidden):
        return [np.asarray(t) for t in self.fn(token.astype(np.int32), features, keys, hidden)]


class OnnxStep:
    def __init__(self, session: ort.InferenceSession):
        self.session = session
        self.inputs = [i.name for i in session.get_inputs()]

    def __call__(self, token, features, keys, hidden):
        feeds = dict(zip(self.inputs, (token.astype(np.int32), features, keys, hidden)))
        return self.session.run(["logits", "next_hidden", "attention"], feeds)


def greedy_tokens(run: TrainedRun, pixels: np.ndarray) -> list[list[int]]:
    """Keras greedy captions (token ids) of the parity images, e.g. before and after rounding."""
    outs = [np.asarray(t) for t in run.encoder_function()(pixels)]
    vocab = run.vocabulary
    return [h.tokens for h in GreedyDecoder(KerasStep(run), vocab.start_id, vocab.end_id,
                                            run.config.max_length).decode(*outs)]


def check_parity(run: TrainedRun, folder: Path, pixels: np.ndarray) -> dict:
    encoder = ort.InferenceSession(str(folder / "encoder.onnx"), providers=["CPUExecutionProvider"])
    decoder = ort.InferenceSession(str(folder / "decoder.onnx"), providers=["CPUExecutionProvider"])
    keras_out = [np.asarray(t) for t in run.encoder_function()(pixels)]
    onnx_out = encoder.run(["features", "keys", "hidden"], {encoder.get_inputs()[0].name: pixels})
    enc_diff = max(float(np.abs(a - b).max()) for a, b in zip(keras_out, onnx_out))

    keras_step, onnx_step = KerasStep(run), OnnxStep(decoder)
    # Logits along the Keras greedy path, both graphs fed identical inputs at every step.
    features, keys, hidden = keras_out
    token = np.full(len(pixels), run.vocabulary.start_id, np.int64)
    logit_diff = 0.0
    for _ in range(run.config.max_length):
        k_logits, k_hidden, k_att = keras_step(token, features, keys, hidden)
        o_logits, o_hidden, o_att = onnx_step(token, features, keys, hidden)
        logit_diff = max(logit_diff, float(np.abs(k_logits - o_logits).max()),
                         float(np.abs(k_hidden - o_hidden).max()), float(np.abs(k_att - o_att).max()))
        token, hidden = k_logits.argmax(-1), k_hidden

    start, end, length = run.vocabulary.start_id, run.vocabulary.end_id, run.config.max_length
    keras_caps = GreedyDecoder(keras_step, start, end, length).decode(*keras_out)
    onnx_caps = GreedyDecoder(onnx_step, start, end, length).decode(*onnx_out)
    same = sum(a.tokens == b.tokens for a, b in zip(keras_caps, onnx_caps))
    return {
        "images": int(len(pixels)),
        "max_abs_diff": max(enc_diff, logit_diff),
        "max_abs_diff_features": enc_diff,
        "max_abs_diff_logits": logit_diff,
        "greedy_match": same / len(pixels),
        "source": "validation split of the training run",
    }
