"""The nearest-neighbour retrieval peer: copy the title of the most similar training image.

Similarity is the cosine of the ImageNet backbone's globally pooled features (no
training at all). It is the simple, strong baseline every model is reported beside.
The maps come from the same on-disk cache as training (EfficientNet-Lite0 bottom
cached before its last block), so scoring the peer costs little after a training run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from catalog_captioner import catalog as catalogs
from catalog_captioner import images
from catalog_captioner.text import tokenize


class RetrievalPeer:
    def __init__(self, backbone, cache, keys: np.ndarray, captions: list[str], source: str):
        self.backbone, self.cache = backbone, cache
        self.keys, self.captions, self.source = keys, captions, source

    @classmethod
    def fit(cls, reference: Path, caption_col: str, backbone_name: str = "efficientnet_lite0",
            cache_dir: Path | None = None, log=print) -> "RetrievalPeer":
        from train.backbones import build_backbone
        from train.features import FeatureCache, default_cache_root

        backbone = build_backbone(backbone_name, None, None, fine_tune_blocks=1)
        cache = FeatureCache(cache_dir or default_cache_root(), backbone)
        frame, image_col = catalogs.read_table(reference, None)
        frame = frame[frame[caption_col].map(lambda c: bool(tokenize(c)))].reset_index(drop=True)
        peer = cls(backbone, cache, np.zeros((0, 1)), [], f"{reference} ({backbone_name} ImageNet pooled features)")
        keys, ok = peer._embed(frame[image_col].tolist(), reference.resolve().parent, log)
        peer.keys = keys[ok]
        peer.captions = [c for c, good in zip(frame[caption_col].tolist(), ok) if good]
        log(f"retrieval peer: {len(peer.captions)} reference images")
        return peer

    def _embed(self, cells, root: Path, log=print) -> tuple[np.ndarray, np.ndarray]:
        cached = self.cache.compute(cells, images.LoadOptions(image_root=root), log=log)
        maps, ok = cached.maps, cached.ok
        pooled = []
        for start in range(0, len(maps), 256):
            fmap = self.backbone.top(maps[start:start + 256].astype(np.float32), training=False)
            pooled.append(np.asarray(fmap).mean(axis=(1, 2)))
        keys = np.concatenate(pooled) if pooled else np.zeros((0, 1))
        keys /= np.linalg.norm(keys, axis=1, keepdims=True) + 1e-12
        return keys, ok

    def predict(self, cells, root: Path) -> list[str]:
        queries, ok = self._embed(cells, root, log=lambda *_: None)
        out = []
        for start in range(0, len(queries), 1024):
            best = (queries[start:start + 1024] @ self.keys.T).argmax(axis=1)
            out.extend(self.captions[i] for i in best)
        return [c if good else "" for c, good in zip(out, ok)]

    def describe(self) -> str:
        return f"nearest neighbour by cosine similarity among {len(self.captions)} images of {self.source}"
