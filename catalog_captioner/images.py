"""Image loading: resolve a catalog cell, fetch its bytes, decode, and preprocess.

Every failure becomes an :class:`ImageFailure` with a short ``kind`` for the
``caption_status`` column and a sentence for ``caption_error``; nothing here
raises past the caller, so one bad row never stops a run.
"""

from __future__ import annotations

import io
import os
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

PREPROCESS_VERSION = "pad-white-square/bilinear/v1"


@dataclass(frozen=True)
class LoadOptions:
    """How cells become pixels; shared by ``catcap run`` and ``catcap train``."""

    image_root: Path | None = None
    timeout_s: float = 20.0
    retries: int = 2
    max_bytes: int = 30 * 1024 * 1024
    max_pixels: int = 60_000_000
    user_agent: str = "catcap/0.1 (+catalog captioner)"


class ImageFailure(Exception):
    """A per-row problem: ``kind`` goes to caption_status, the message to caption_error."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def resolve(cell, root: Path | None) -> str | Path:
    """Return an http(s) URL string or a local Path for one catalog cell."""
    text = "" if cell is None else str(cell).strip()
    if not text or text.lower() in {"nan", "none", "null"}:
        raise ImageFailure("missing", "the image cell is empty")
    parsed = urllib.parse.urlparse(text)
    scheme = parsed.scheme.lower()
    if scheme in {"http", "https"}:
        return text
    if scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    if len(scheme) > 1:  # one letter is a Windows drive, not a scheme
        raise ImageFailure("bad_url", f"unsupported URL scheme '{scheme}' in {text!r}")
    path = Path(text).expanduser()
    if not path.is_absolute() and root is not None:
        path = root / path
    return path


def fetch(source: str | Path, options: LoadOptions) -> bytes:
    """Bytes of a local file or an http(s) URL (timeout, retries, size cap)."""
    if isinstance(source, Path):
        try:
            size = source.stat().st_size
        except FileNotFoundError:
            raise ImageFailure("missing", f"no such file: {source}") from None
        except OSError as err:
            raise ImageFailure("unreadable", f"cannot read {source}: {err.strerror or err}") from None
        if not source.is_file():
            raise ImageFailure("missing", f"not a file: {source}")
        if size > options.max_bytes:
            raise ImageFailure("too_large", f"{source} is {size} bytes, over the {options.max_bytes}-byte cap")
        try:
            return source.read_bytes()
        except OSError as err:
            raise ImageFailure("unreadable", f"cannot read {source}: {err.strerror or err}") from None
    return _download(source, options)


def _download(url: str, options: LoadOptions) -> bytes:
    last = "no attempt"
    for attempt in range(options.retries + 1):
        if attempt:
            time.sleep(min(2.0, 0.25 * 2**attempt))
        try:
            request = urllib.request.Request(url, headers={"User-Agent": options.user_agent})
            with urllib.request.urlopen(request, timeout=options.timeout_s) as response:
                declared = response.headers.get("Content-Length")
                if declared and declared.isdigit() and int(declared) > options.max_bytes:
                    raise ImageFailure("too_large", f"{url} is {declared} bytes, over the {options.max_bytes}-byte cap")
                data = response.read(options.max_bytes + 1)
                if len(data) > options.max_bytes:
                    raise ImageFailure("too_large", f"{url} is over the {options.max_bytes}-byte cap")
                return data
        except urllib.error.HTTPError as err:
            last = f"HTTP {err.code} {err.reason}"
            if err.code < 500 and err.code not in (408, 429):
                break  # a 404 will not heal by retrying
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as err:
            reason = getattr(err, "reason", err)
            last = f"{type(reason).__name__}: {reason}" if not isinstance(reason, str) else reason
    raise ImageFailure("download_failed", f"download of {url} failed after {attempt + 1} attempt(s): {last}")


def decode(data: bytes, options: LoadOptions, draft_size: int | None = None) -> Image.Image:
    """Decode bytes into an RGB image: first frame, EXIF orientation, no alpha."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > options.max_pixels:
                raise ImageFailure("too_large", f"image is {width}x{height} pixels, over the {options.max_pixels}-pixel cap")
            if getattr(image, "n_frames", 1) > 1:
                image.seek(0)
            if draft_size and image.format == "JPEG":
                # Let libjpeg decode at reduced scale: far faster for large photos.
                image.draft("RGB", (draft_size, draft_size))
            image.load()
    except ImageFailure:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageFailure("too_large", f"refused as a decompression bomb: {err}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageFailure("unreadable", f"not a readable image: {err}") from None
    try:
        return to_rgb(ImageOps.exif_transpose(image))
    except (OSError, ValueError, SyntaxError) as err:
        raise ImageFailure("unreadable", f"image data is damaged: {err}") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB on a white background, whatever the mode (palette, alpha, CMYK, 16-bit, float)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
        image = Image.fromarray(np.clip(array * (255.0 / top), 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB") if image.mode != "RGB" else image


def preprocess(image: Image.Image, size: int) -> np.ndarray:
    """Pad to a white square (keeps the product's shape), resize, return HxWx3 uint8.

    Catalog photos come as 60x80 thumbnails and 225x300 portraits beside squares;
    padding instead of stretching keeps a shirt looking like a shirt.
    """
    width, height = image.size
    side = max(width, height)
    if width != height:
        square = Image.new("RGB", (side, side), (255, 255, 255))
        square.paste(image, ((side - width) // 2, (side - height) // 2))
        image = square
    if side != size:
        image = image.resize((size, size), Image.BILINEAR, reducing_gap=None if side < 2 * size else 2.0)
    return np.asarray(image, dtype=np.uint8)


def load(cell, size: int, options: LoadOptions) -> np.ndarray:
    """Catalog cell -> preprocessed pixels, or :class:`ImageFailure`."""
    source = resolve(cell, options.image_root)
    return preprocess(decode(fetch(source, options), options, draft_size=size), size)


def load_any(item, size: int, options: LoadOptions) -> np.ndarray:
    """Like :func:`load` but also takes a PIL image or a ready HxWx3 array (Python API)."""
    if isinstance(item, Image.Image):
        return preprocess(to_rgb(ImageOps.exif_transpose(item)), size)
    if isinstance(item, np.ndarray):
        return preprocess(to_rgb(Image.fromarray(item)), size)
    if isinstance(item, (bytes, bytearray)):
        return preprocess(decode(bytes(item), options, draft_size=size), size)
    return load(os.fspath(item) if isinstance(item, Path) else item, size, options)


