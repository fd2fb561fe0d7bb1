"""``catcap explain``: where the model looked while writing each word.

One panel per word: the (padded, resized) image under that step's attention
weights over the L = h x w regions, upsampled to the image as a heat map.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from catalog_captioner import images
from catalog_captioner.captioner import Captioner
from catalog_captioner.errors import UsageError


def attention_figure(image_cell: str, out: Path, model: Path | None = None, beam_size: int | None = None,
                     device: str = "auto") -> str:
    """Caption ``image_cell`` and draw its attention panels to ``out``; returns the caption."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    captioner = Captioner.load(model, device=device, beam_size=beam_size, keep_attention=True)
    try:
        pixels = images.load(str(image_cell), captioner.input_size, captioner.loading)
    except images.ImageFailure as failure:
        raise UsageError(f"cannot read {image_cell}: {failure}") from None
    result = captioner.caption_pixels(pixels[None])[0]
    attention = result.attention if result.attention is not None else np.zeros((0, captioner.bundle.regions))
    side = int(round(np.sqrt(captioner.bundle.regions)))
    if side * side != captioner.bundle.regions:
        raise UsageError(f"the model's {captioner.bundle.regions} regions do not form a square grid")
    words = result.words
    cols = min(5, len(words) + 1)
    rows = int(np.ceil((len(words) + 1) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.6, rows * 2.9), squeeze=False)
    axes.flat[0].imshow(pixels)
    axes.flat[0].set_title("input", fontsize=10)
    size = captioner.input_size
    for ax, word, weights in zip(axes.flat[1:], words, attention):
        heat = Image.fromarray((weights.reshape(side, side) / max(weights.max(), 1e-9) * 255).astype(np.uint8))
        heat = np.asarray(heat.resize((size, size), Image.BICUBIC), dtype=np.float32) / 255.0
        ax.imshow(pixels)
        ax.imshow(heat, cmap="jet", alpha=0.45, vmin=0, vmax=1)
        ax.set_title(f"{word}  (max {weights.max():.2f})", fontsize=10)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(f"{result.caption}   (confidence {result.score:.2f})", fontsize=12)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return result.caption
