"""Mean colour of each image region: raw RGB beside the CNN's features.

ImageNet features are trained to be partly colour-invariant (a red and a blue
car are both "car"), yet a catalog title names the colour. Averaging the
preprocessed pixels over the same h x w grid as the backbone's final map gives
each attention region its own mean colour, a 3-number hint that costs nothing.
Training computes it with NumPy from the pixels it caches features for; the
exported encoder computes the same average in its graph (two matrix products),
so the runtime needs nothing new.
"""

from __future__ import annotations

import numpy as np


def pooling_matrix(size: int, cells: int) -> np.ndarray:
    """(cells, size) rows that average pixel spans [floor(i*size/cells), ceil((i+1)*size/cells))."""
    out = np.zeros((cells, size), np.float32)
    for i in range(cells):
        start, stop = (i * size) // cells, -((-(i + 1) * size) // cells)
        out[i, start:stop] = 1.0 / (stop - start)
    return out


def region_colours(pixels: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Pixels 0..255 (N,S,S,3) -> mean colour per region (N,h,w,3), scaled to -1..1."""
    pixels = np.asarray(pixels, np.float32)
    rows, cols = pooling_matrix(pixels.shape[1], grid[0]), pooling_matrix(pixels.shape[2], grid[1])
    pooled = np.einsum("hy,nyxc,wx->nhwc", rows, pixels, cols)
    return pooled / 127.5 - 1.0


def region_colours_graph(pixels, grid: tuple[int, int]):
    """The same average as a TensorFlow graph (exported inside encoder.onnx): float pixels (N,S,S,3)."""
    import tensorflow as tf

    size_y, size_x = int(pixels.shape[1]), int(pixels.shape[2])
    rows = tf.constant(pooling_matrix(size_y, grid[0]))
    cols = tf.constant(pooling_matrix(size_x, grid[1]))
    pooled = tf.einsum("hy,nyxc->nhxc", rows, pixels)
    pooled = tf.einsum("wx,nhxc->nhwc", cols, pooled)
    return pooled / 127.5 - 1.0
