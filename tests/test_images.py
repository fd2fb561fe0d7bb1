"""Any image Pillow reads becomes the same kind of pixels; anything else is a per-row failure."""

import io

import numpy as np
import pytest
from PIL import Image

from catalog_captioner import images
from catalog_captioner.images import ImageFailure, LoadOptions
from tests.conftest import draw_product

OPTS = LoadOptions()


def _bytes(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_common_formats_decode_to_rgb(fmt):
    data = _bytes(draw_product("red", "circle"), fmt)
    pixels = images.preprocess(images.decode(data, OPTS), 64)
    assert pixels.shape == (64, 64, 3) and pixels.dtype == np.uint8
    centre = pixels[32, 32].astype(int)
    assert centre[0] > 150 and centre[1] < 90  # still red


def test_exif_orientation_is_applied():
    tall = Image.new("RGB", (40, 80), (255, 255, 255))
    tall.paste((0, 0, 0), (0, 0, 40, 40))  # black top half
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    decoded = images.decode(_bytes(tall, "JPEG", exif=exif), OPTS)
    assert decoded.size == (80, 40)  # displayed landscape
    array = np.asarray(decoded).astype(int)
    assert array[:, 60:].mean() < 60 and array[:, :20].mean() > 200  # black moved to the right


def test_transparent_png_is_composited_on_white():
    rgba = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (8, 8, 24, 24))
    array = np.asarray(images.decode(_bytes(rgba, "PNG"), OPTS))
    assert tuple(array[0, 0]) == (255, 255, 255) and tuple(array[16, 16]) == (0, 0, 255)


def test_palette_with_transparency_and_grayscale_and_cmyk_and_16_bit():
    pal = draw_product("green", "square").convert("P", palette=Image.Palette.ADAPTIVE)
    pal.info["transparency"] = 0
    for image, fmt in [(pal, "PNG"), (draw_product("black", "circle").convert("L"), "PNG"),
                       (draw_product("blue", "square").convert("CMYK"), "JPEG")]:
        assert images.decode(_bytes(image, fmt), OPTS).mode == "RGB"
    deep = Image.fromarray((np.linspace(0, 65535, 32 * 32).reshape(32, 32)).astype(np.uint16))
    decoded = np.asarray(images.decode(_bytes(deep, "PNG"), OPTS))
    assert decoded.shape == (32, 32, 3) and decoded.max() > 240 and decoded.min() < 10


def test_animated_gif_uses_the_first_frame():
    frames = [Image.new("RGB", (16, 16), c) for c in [(255, 0, 0), (0, 0, 255)]]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100)
    array = np.asarray(images.decode(buffer.getvalue(), OPTS))
    assert array[8, 8, 0] > 200 and array[8, 8, 2] < 50


def test_thumbnails_are_padded_to_a_white_square_not_stretched():
    thumb = Image.new("RGB", (60, 80), (0, 0, 0))
    pixels = images.preprocess(thumb, 80)
    assert pixels.shape == (80, 80, 3)
    assert pixels[:, :5].min() == 255 and pixels[:, -5:].min() == 255  # white side bars
    assert pixels[:, 20:60].max() == 0


def test_decompression_bomb_is_refused():
    data = _bytes(Image.new("L", (5000, 5000)), "PNG")
    with pytest.raises(ImageFailure) as err:
        images.decode(data, LoadOptions(max_pixels=1_000_000))
    assert err.value.kind == "too_large"


@pytest.mark.parametrize("data", [b"", b"not an image at all", _bytes(draw_product("red", "square"), "JPEG")[:300]])
def test_garbage_and_truncated_files_are_unreadable(data):
    with pytest.raises(ImageFailure) as err:
        images.decode(data, OPTS)
    assert err.value.kind == "unreadable"


def test_cells_resolve_to_paths_urls_or_errors(tmp_path):
    assert images.resolve("a/b.jpg", tmp_path) == tmp_path / "a" / "b.jpg"
    assert images.resolve("/abs/x.png", tmp_path) == images.Path("/abs/x.png")
    assert images.resolve("file:///data/x%20y.png", None) == images.Path("/data/x y.png")
    assert images.resolve(" https://example.com/a.jpg ", None) == "https://example.com/a.jpg"
    for cell, kind in [("", "missing"), (None, "missing"), ("ftp://host/a.jpg", "bad_url"),
                       ("s3://bucket/a.jpg", "bad_url")]:
        with pytest.raises(ImageFailure) as err:
            images.resolve(cell, tmp_path)
        assert err.value.kind == kind


def test_missing_file_and_size_cap(tmp_path):
    with pytest.raises(ImageFailure) as err:
        images.fetch(tmp_path / "nope.jpg", OPTS)
    assert err.value.kind == "missing"
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\0" * 2048)
    with pytest.raises(ImageFailure) as err:
        images.fetch(big, LoadOptions(max_bytes=1024))
    assert err.value.kind == "too_large"
