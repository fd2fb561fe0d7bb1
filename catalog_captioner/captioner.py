"""The Python API: load a bundle once, caption images, paths or URLs."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from catalog_captioner import images
from catalog_captioner.bundle import ModelBundle
from catalog_captioner.decoding import DecodingOptions, Hypothesis, make_decoder
from catalog_captioner.session import DeviceOptions, OnnxModel, open_model
from catalog_captioner.text import render


@dataclass
class CaptionResult:
    caption: str
    score: float  # confidence in [0, 1]: geometric-mean probability of the caption's tokens
    status: str = "ok"  # "ok" or a short error kind (missing, unreadable, too_large, ...)
    error: str = ""
    words: list[str] = field(default_factory=list)
    attention: np.ndarray | None = field(default=None, repr=False)  # (words, regions) when asked for

    @classmethod
    def failed(cls, failure: images.ImageFailure) -> "CaptionResult":
        return cls("", 0.0, failure.kind, str(failure))


class Captioner:
    """Encoder + decoder sessions and the caption search, ready for many batches.

    >>> captioner = Captioner.load()                     # the embedded default model
    >>> [r.caption for r in captioner.caption(["shoe.jpg", "https://example.com/bag.png"])]
    """

    def __init__(self, model: OnnxModel, decoding: DecodingOptions = DecodingOptions(),
                 loading: images.LoadOptions = images.LoadOptions()):
        self.model = model
        self.bundle: ModelBundle = model.bundle
        self.decoding = decoding
        self.loading = loading
        self._decoder = make_decoder(model, decoding)
        enc = self.bundle.encoder_names
        self._image_input = enc.inputs["image"]
        self._roles = ["features", "keys", "hidden"] + (["embedding"] if self.bundle.neighbours is not None else [])
        self._encoder_outputs = [enc.outputs[k] for k in self._roles]

    @classmethod
    def load(cls, model_dir: str | Path | None = None, *, device: str = "auto", beam_size: int | None = None,
             max_length: int | None = None, threads: int = 0, image_root: str | Path | None = None,
             keep_attention: bool = False, spinning: bool = True) -> "Captioner":
        bundle = ModelBundle.load(model_dir)
        model = open_model(bundle, DeviceOptions(device=device, threads=threads, spinning=spinning))
        defaults = bundle.record.get("decoding", {})
        if beam_size is None:  # the decoding the bundle's metrics were measured with
            beam_size = int(defaults.get("default_beam_size", 1))
        decoding = DecodingOptions(beam_size=beam_size, max_length=max_length, keep_attention=keep_attention,
                                   length_penalty=float(defaults.get("length_penalty", 0.6)),
                                   block_repeats=bool(defaults.get("block_repeats", False)))
        loading = images.LoadOptions(image_root=Path(image_root) if image_root else None)
        return cls(model, decoding, loading)

    @property
    def input_size(self) -> int:
        return self.bundle.input_size

    def encode(self, pixels: np.ndarray) -> tuple[dict, np.ndarray]:
        """(N, S, S, 3) uint8 -> the decoder's per-image memory and initial GRU state.

        Memory: region ``features`` and attention ``keys``; for a retrieval-augmented
        bundle also the K nearest training images' titles (``neighbours``) and
        their cosine ``similarity``, looked up with the encoder's ``embedding``.
        """
        outputs = dict(zip(self._roles, self.model.encoder.run(self._encoder_outputs, {self._image_input: pixels})))
        memory = {"features": outputs["features"], "keys": outputs["keys"]}
        if "embedding" in outputs:
            memory["neighbours"], memory["similarity"] = self.bundle.neighbours.search(
                outputs["embedding"], self.bundle.neighbour_count)
        return memory, outputs["hidden"]

    def caption_pixels(self, pixels: np.ndarray) -> list[CaptionResult]:
        """Caption preprocessed images (see :func:`catalog_captioner.images.preprocess`)."""
        if len(pixels) == 0:
            return []
        memory, hidden = self.encode(np.ascontiguousarray(pixels, dtype=np.uint8))
        return [self._result(h) for h in self._decoder.decode(memory, hidden)]

    def _result(self, hyp: Hypothesis) -> CaptionResult:
        words = self.bundle.vocabulary.decode(hyp.tokens)
        return CaptionResult(render(words, self.bundle.caption_case), round(hyp.confidence, 4),
                             words=words, attention=hyp.attention)

    def caption(self, items, batch_size: int = 32, workers: int = 8) -> list[CaptionResult]:
        """Caption paths, URLs, bytes, PIL images or arrays; a bad item gets an error result."""
        items = list(items)
        results: list[CaptionResult | None] = [None] * len(items)

        def load(item):
            try:
                return images.load_any(item, self.input_size, self.loading)
            except images.ImageFailure as failure:
                return failure

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            loaded = list(pool.map(load, items))
        good = [i for i, x in enumerate(loaded) if not isinstance(x, images.ImageFailure)]
        for i, x in enumerate(loaded):
            if isinstance(x, images.ImageFailure):
                results[i] = CaptionResult.failed(x)
        for start in range(0, len(good), batch_size):
            index = good[start:start + batch_size]
            for i, result in zip(index, self.caption_pixels(np.stack([loaded[i] for i in index]))):
                results[i] = result
        return results  # type: ignore[return-value]
