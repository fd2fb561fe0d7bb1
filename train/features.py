"""On-disk cache of backbone maps, keyed by backbone + weights + input size + image bytes.

A second training run on the same catalog (or an overlapping one) loads maps
instead of recomputing them. Each entry is one float16 ``.npy`` written
atomically, so concurrent or interrupted runs never leave a corrupt entry.
Region colours (``train.colours``), when asked for, are cached beside the map
as ``<digest>.rgb<h>x<w>.npy``: a cache made without them only decodes the
images again, it does not rerun the backbone.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf

from catalog_captioner import images
from train.backbones import Backbone
from train.colours import region_colours


def default_cache_root() -> Path:
    return Path(os.environ.get("CATCAP_CACHE") or Path.home() / ".cache" / "catcap") / "features"


@dataclass
class CachedFeatures:
    maps: np.ndarray  # float16 (N, ...): the backbone bottom's output
    ok: np.ndarray  # bool (N,): the image could be read
    failures: Counter = field(default_factory=Counter)  # failure kind -> rows
    stats: dict = field(default_factory=dict)
    colours: np.ndarray | None = None  # float16 (N, h, w, 3) when asked for


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.{id(array)}.tmp")
    with open(tmp, "wb") as handle:
        np.save(handle, array)
    os.replace(tmp, path)


def _load(path: Path) -> np.ndarray | None:
    if path.is_file():
        try:
            return np.load(path)
        except (OSError, ValueError):
            pass  # a damaged entry is recomputed
    return None


class FeatureCache:
    def __init__(self, root: Path, backbone: Backbone):
        tag = hashlib.sha256(images.PREPROCESS_VERSION.encode()).hexdigest()[:8]
        self.dir = Path(root) / f"{backbone.name}-{backbone.input_size}-{backbone.weights_id}-{tag}"
        self.backbone = backbone
        self.shape = backbone.cache_shape
        self._bottom = tf.function(lambda x: backbone.bottom(x, training=False), reduce_retracing=True)

    def _path(self, digest: str) -> Path:
        return self.dir / digest[:2] / f"{digest}.npy"

    def _colour_path(self, digest: str, grid: tuple[int, int]) -> Path:
        return self.dir / digest[:2] / f"{digest}.rgb{grid[0]}x{grid[1]}.npy"

    def compute(self, cells: list, options: images.LoadOptions, batch_size: int = 64, log=print,
                colour_grid: tuple[int, int] | None = None) -> CachedFeatures:
        """Maps for every cell (and its region colours on ``colour_grid``), unreadable images marked."""
        n = len(cells)
        result = CachedFeatures(np.zeros((n, *self.shape), np.float16), np.zeros(n, bool), Counter(),
                                {"cached": 0, "computed": 0})
        if colour_grid:
            result.colours = np.zeros((n, *colour_grid, 3), np.float16)
        size = self.backbone.input_size

        def prepare(i):
            """(i, map or pixels or failure, colours, path to write the map to or None)."""
            try:
                data = images.fetch(images.resolve(cells[i], options.image_root), options)
            except images.ImageFailure as failure:
                return i, failure, None, None
            digest = hashlib.sha256(data).hexdigest()
            fmap = _load(self._path(digest))
            colours = _load(self._colour_path(digest, colour_grid)) if colour_grid else None
            if fmap is not None and (colours is not None or not colour_grid):
                return i, fmap, colours, None
            try:
                pixels = images.preprocess(images.decode(data, options, draft_size=size), size)
            except images.ImageFailure as failure:
                return i, failure, None, None
            if colour_grid:
                colours = region_colours(pixels[None], colour_grid)[0].astype(np.float16)
                _save(self._colour_path(digest, colour_grid), colours)
            return (i, fmap, colours, None) if fmap is not None else (i, pixels, colours, self._path(digest))

        pending_idx, pending_px, pending_paths = [], [], []
        started, last = time.monotonic(), time.monotonic()

        def flush():
            out = self._bottom(np.stack(pending_px).astype(np.float32)).numpy().astype(np.float16)
            for j, i in enumerate(pending_idx):
                result.maps[i], result.ok[i] = out[j], True
                _save(pending_paths[j], out[j])
            result.stats["computed"] += len(pending_idx)
            pending_idx.clear(), pending_px.clear(), pending_paths.clear()

        with ThreadPoolExecutor(max_workers=4) as pool:
            for done, (i, value, colours, path) in enumerate(pool.map(prepare, range(n)), start=1):
                if isinstance(value, images.ImageFailure):
                    result.failures[value.kind] += 1
                    continue
                if colours is not None:
                    result.colours[i] = colours
                if path is None:
                    result.maps[i], result.ok[i] = value, True
                    result.stats["cached"] += 1
                else:
                    pending_idx.append(i), pending_px.append(value), pending_paths.append(path)
                    if len(pending_idx) == batch_size:
                        flush()
                if time.monotonic() - last > 20:
                    last = time.monotonic()
                    rate = done / (last - started)
                    log(f"features: {done}/{n} images ({rate:.0f}/s, {result.stats['cached']} from cache)")
            if pending_idx:
                flush()
        log(f"features: {n} images, {result.stats['cached']} from cache, {result.stats['computed']} computed, "
            f"{sum(result.failures.values())} skipped {dict(result.failures)} in {time.monotonic() - started:.0f}s")
        return result
