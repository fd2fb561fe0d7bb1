"""Caption text: the one tokenizer shared by training, decoding and evaluation."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_WORD = re.compile(r"[a-z0-9]+(?:['&+.-][a-z0-9]+)*")

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS = (PAD, START, END, UNK)


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens; punctuation between words is dropped."""
    return _WORD.findall(str(text).lower())


@dataclass(frozen=True)
class Vocabulary:
    """Index <-> word mapping; ids 0..3 are always <pad>, <start>, <end>, <unk>."""

    words: tuple[str, ...]
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if tuple(self.words[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"vocabulary must start with {SPECIALS}")
        object.__setattr__(self, "_index", {w: i for i, w in enumerate(self.words)})

    @classmethod
    def build(cls, captions, min_count: int = 2, max_size: int | None = None) -> "Vocabulary":
        counts: dict[str, int] = {}
        for caption in captions:
            for word in tokenize(caption):
                counts[word] = counts.get(word, 0) + 1
        kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        if max_size is not None:
            kept = kept[: max(0, max_size - len(SPECIALS))]
        return cls(SPECIALS + tuple(kept))

    def __len__(self) -> int:
        return len(self.words)

    pad_id = property(lambda self: 0)
    start_id = property(lambda self: 1)
    end_id = property(lambda self: 2)
    unk_id = property(lambda self: 3)

    def encode(self, text: str) -> list[int]:
        """Word ids of ``text`` without <start>/<end>."""
        return [self._index.get(w, self.unk_id) for w in tokenize(text)]

    def decode(self, ids) -> list[str]:
        """Words up to the first <end>, specials dropped."""
        out = []
        for i in ids:
            i = int(i)
            if i == self.end_id:
                break
            if i >= len(SPECIALS) and i < len(self.words):
                out.append(self.words[i])
        return out


def render(words: list[str], case: str = "title") -> str:
    """Turn decoded words into the caption a catalog shows ("Nike Men Black Shoes")."""
    if case == "lower":
        return " ".join(words)
    return " ".join(w[:1].upper() + w[1:] for w in words)
