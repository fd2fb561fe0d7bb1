"""Region colours: each attention region's mean RGB, the same in training, in the cache and in encoder.onnx."""

from __future__ import annotations

import numpy as np
import pytest

from catalog_captioner import images
from tests.conftest import make_catalog
from train.colours import pooling_matrix, region_colours


def test_every_pixel_row_is_averaged_into_a_region_even_when_the_size_does_not_divide():
    m = pooling_matrix(50, 7)
    assert np.allclose(m.sum(axis=1), 1.0)  # each region is a mean
    assert (m > 0).any(axis=0).all()  # no pixel is left out
    pixels = np.random.default_rng(0).integers(0, 256, (2, 50, 50, 3)).astype(np.uint8)
    out = region_colours(pixels, (7, 7))
    assert out.shape == (2, 7, 7, 3)
    span = lambda i: slice(i * 50 // 7, -((-(i + 1) * 50) // 7))  # noqa: E731
    expected = pixels[1, span(2), span(5)].reshape(-1, 3).mean(axis=0) / 127.5 - 1
    assert np.allclose(out[1, 2, 5], expected, atol=1e-5)


def test_white_is_one_and_black_is_minus_one():
    pixels = np.zeros((1, 64, 64, 3), np.uint8)
    pixels[:, :, 32:] = 255
    out = region_colours(pixels, (2, 2))
    assert np.allclose(out[0, :, 0], -1.0) and np.allclose(out[0, :, 1], 1.0)


def test_the_exported_graph_computes_the_same_colours_as_training():
    tf = pytest.importorskip("tensorflow", reason="the train extra is not installed")
    from train.colours import region_colours_graph

    pixels = np.random.default_rng(1).integers(0, 256, (3, 96, 96, 3)).astype(np.float32)
    graph = region_colours_graph(tf.constant(pixels), (3, 3)).numpy()
    assert np.allclose(graph, region_colours(pixels, (3, 3)), atol=1e-5)


def test_the_feature_cache_adds_colours_to_cached_maps_without_rerunning_the_backbone(tmp_path):
    pytest.importorskip("tensorflow", reason="the train extra is not installed")
    from train.backbones import build_backbone
    from train.features import FeatureCache

    catalog = make_catalog(tmp_path / "data", per_class=1)
    cells = sorted(str(p) for p in (catalog.parent / "img").glob("*.jpg"))[:4]
    cache = FeatureCache(tmp_path / "cache", build_backbone("efficientnet_lite0", "none", 64, 1))
    options = images.LoadOptions()
    first = cache.compute(cells, options, log=lambda *_: None)
    assert first.stats["computed"] == 4 and first.colours is None
    again = cache.compute(cells, options, log=lambda *_: None, colour_grid=(2, 2))
    assert again.stats == {"cached": 4, "computed": 0} and np.array_equal(again.maps, first.maps)
    pixels = np.stack([images.load(c, 64, options) for c in cells])
    assert np.allclose(again.colours, region_colours(pixels, (2, 2)), atol=1e-2)  # float16 entries
    third = cache.compute(cells, options, log=lambda *_: None, colour_grid=(2, 2))
    assert np.array_equal(third.colours, again.colours)
