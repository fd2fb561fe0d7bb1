"""On-disk cache of backbone maps, keyed by backbone + weights + input size + image bytes.

A second training run on the same catalog (or an overlapping one) loads maps
instead of recomputing them. Each entry is one float16 ``.npy`` written
atomically, so concurrent or interrupted runs never leave a corrupt entry.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tensorflow as tf

from catalog_captioner import images
from train.backbones import Backbone


def default_cache_root() -> Path:
    return Path(os.environ.get("CATCAP_CACHE") or Path.home() / ".cache" / "catcap") / "features"


class FeatureCache:
    def __init__(self, root: Path, backbone: Backbone):
        tag = hashlib.sha256(images.PREPROCESS_VERSION.encode()).hexdigest()[:8]
        self.dir = Path(root) / f"{backbone.name}-{backbone.input_size}-{backbone.weights_id}-{tag}"
        self.backbone = backbone
        self.shape = backbone.cache_shape
        self._bottom = tf.function(lambda x: backbone.bottom(x, training=False), reduce_retracing=True)

    def _path(self, digest: str) -> Path:
        return self.dir / digest[:2] / f"{digest}.npy"

    def compute(self, cells: list, options: images.LoadOptions, batch_size: int = 64,
                log=print) -> tuple[np.ndarray, np.ndarray, Counter, dict]:
        """Maps for every cell: (maps float16 (N, ...), ok mask, failure kinds, stats)."""
        n = len(cells)
        maps = np.zeros((n, *self.shape), np.float16)
        ok = np.zeros(n, bool)
        failures: Counter = Counter()
        stats = {"cached": 0, "computed": 0}
        size = self.backbone.input_size

        def prepare(i):
            try:
                data = images.fetch(images.resolve(cells[i], options.image_root), options)
            except images.ImageFailure as failure:
                return i, failure, None
            digest = hashlib.sha256(data).hexdigest()
            path = self._path(digest)
            if path.is_file():
                try:
                    return i, np.load(path), None
                except (OSError, ValueError):
                    pass  # a damaged entry is recomputed
            try:
                return i, images.preprocess(images.decode(data, options, draft_size=size), size), path
            except images.ImageFailure as failure:
                return i, failure, None

        pending_idx, pending_px, pending_paths = [], [], []
        started, last = time.monotonic(), time.monotonic()

        def flush():
            out = self._bottom(np.stack(pending_px).astype(np.float32)).numpy().astype(np.float16)
            for j, i in enumerate(pending_idx):
                maps[i], ok[i] = out[j], True
                path = pending_paths[j]
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".{os.getpid()}.tmp")
                with open(tmp, "wb") as handle:
                    np.save(handle, out[j])
                os.replace(tmp, path)
            stats["computed"] += len(pending_idx)
            pending_idx.clear(), pending_px.clear(), pending_paths.clear()

        with ThreadPoolExecutor(max_workers=4) as pool:
            for done, (i, value, path) in enumerate(pool.map(prepare, range(n)), start=1):
                if isinstance(value, images.ImageFailure):
                    failures[value.kind] += 1
                elif path is None:
                    maps[i], ok[i] = value, True
                    stats["cached"] += 1
                else:
                    pending_idx.append(i), pending_px.append(value), pending_paths.append(path)
                    if len(pending_idx) == batch_size:
                        flush()
                if time.monotonic() - last > 20:
                    last = time.monotonic()
                    rate = done / (last - started)
                    log(f"features: {done}/{n} images ({rate:.0f}/s, {stats['cached']} from cache)")
            if pending_idx:
                flush()
        log(f"features: {n} images, {stats['cached']} from cache, {stats['computed']} computed, "
            f"{sum(failures.values())} skipped {dict(failures)} in {time.monotonic() - started:.0f}s")
        return maps, ok, failures, stats
