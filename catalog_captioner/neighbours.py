"""The bundle's retrieval index: unit keys of the training images and their titles.

A retrieval-augmented bundle's encoder also returns an ``embedding`` per image;
:meth:`NeighbourIndex.search` finds the K training images with the highest
cosine similarity and hands their tokenised titles to the decoder. Brute force
over the keys: for ~40k training images a batch of 32 costs ~10 ms on one core,
small beside the encoder, and the result is exact (no approximate-search library).

Keys are stored as int8 codes with one scale per dimension (half the bytes of
float16; on the fashion catalog the nearest title's brand is right as often as
with float32 keys). Training builds the same quantised index, so the titles a
model learned to read are found the same way at run time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from catalog_captioner.errors import BundleError


class NeighbourIndex:
    def __init__(self, codes: np.ndarray, scale: np.ndarray, tokens: np.ndarray):
        if codes.ndim != 2 or tokens.ndim != 2 or len(codes) != len(tokens) or scale.shape != codes.shape[1:]:
            raise BundleError(f"neighbour index: keys {codes.shape}, scale {scale.shape} and titles "
                              f"{tokens.shape} do not match")
        self.codes, self.scale = codes.astype(np.int8), scale.astype(np.float32)
        self.keys = self.codes.astype(np.float32) * self.scale
        self.tokens = tokens.astype(np.int32)

    @classmethod
    def from_keys(cls, keys: np.ndarray, tokens: np.ndarray) -> "NeighbourIndex":
        """Quantise float keys (N,D) to int8 codes with a per-dimension scale."""
        scale = np.maximum(np.abs(keys).max(axis=0), 1e-12) / 127.0
        return cls(np.clip(np.round(keys / scale), -127, 127), scale, tokens)

    @property
    def size(self) -> int:
        return len(self.keys)

    @property
    def title_length(self) -> int:
        return self.tokens.shape[1]

    def search(self, queries: np.ndarray, k: int, exclude: np.ndarray | None = None,
               chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """Queries (N,D) unit vectors -> titles (N,k,T) int32 and cosine similarity (N,k) float32, best first."""
        n = len(queries)
        k = min(k, self.size - (exclude is not None))
        tokens = np.zeros((n, k, self.title_length), np.int32)
        sims = np.zeros((n, k), np.float32)
        for start in range(0, n, chunk):
            q = np.asarray(queries[start:start + chunk], np.float32)
            scores = q @ self.keys.T
            if exclude is not None:
                own = exclude[start:start + chunk]
                rows = np.flatnonzero(own >= 0)
                scores[rows, own[rows]] = -np.inf
            top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            order = np.argsort(-np.take_along_axis(scores, top, 1), axis=1, kind="stable")
            best = np.take_along_axis(top, order, 1)
            tokens[start:start + len(q)] = self.tokens[best]
            sims[start:start + len(q)] = np.take_along_axis(scores, best, 1)
        return tokens, sims

    def save(self, path: Path) -> None:
        np.savez_compressed(path, codes=self.codes, scale=self.scale, tokens=self.tokens.astype(np.int16))

    @classmethod
    def load(cls, path: Path) -> "NeighbourIndex":
        try:
            with np.load(path, allow_pickle=False) as data:
                return cls(data["codes"], data["scale"], data["tokens"])
        except (OSError, ValueError, KeyError) as err:
            raise BundleError(f"{path} is not a readable neighbour index: {err}") from None
