"""Retrieval for the retrieval-augmented decoder: which training titles each image reads.

The key of an image is its frozen backbone map (the cached bottom), averaged over
the regions and L2-normalised. It is computed from the feature cache during
training and by ``encoder.onnx`` (output ``embedding``) at run time, and the
index of training keys + titles travels in the bundle (``neighbours.npz``). The
runtime half of the search is :mod:`catalog_captioner.neighbours`.
"""

from __future__ import annotations

import numpy as np

from catalog_captioner.text import Vocabulary


def embed(maps: np.ndarray, batch: int = 4096) -> np.ndarray:
    """Cached maps (N,h,w,C) -> unit-length pooled keys (N,C) float32."""
    out = np.concatenate([maps[s:s + batch].astype(np.float32).mean(axis=(1, 2)) for s in range(0, len(maps), batch)])
    return out / (np.linalg.norm(out, axis=1, keepdims=True) + 1e-12)


def title_tokens(captions, vocab: Vocabulary, length: int) -> np.ndarray:
    """Titles as ids + <end>, cut to ``length`` and padded with 0: what the decoder reads."""
    out = np.zeros((len(captions), length), np.int32)
    for i, caption in enumerate(captions):
        ids = [*vocab.encode(caption)[: length - 1], vocab.end_id]
        out[i, : len(ids)] = ids
    return out
