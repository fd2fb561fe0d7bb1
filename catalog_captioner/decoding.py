"""Caption search over the single-step ONNX decoder: greedy and beam, one interface.

Both decoders take a batch's per-image memory (the encoder's ``features`` and
``keys``, plus the retrieved ``neighbours`` and ``similarity`` for a
retrieval-augmented bundle) and initial state, and return one :class:`Hypothesis`
per image. Finished rows leave the batch at once, so a
batch costs as many decoder calls as its longest caption, each on fewer rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from catalog_captioner.session import OnnxModel


@dataclass(frozen=True)
class DecodingOptions:
    beam_size: int = 1  # 1 = greedy
    max_length: int | None = None  # None: the bundle's max_length
    length_penalty: float = 0.6  # GNMT alpha for beam search; 0 = raw log-probability
    keep_attention: bool = False
    block_repeats: bool = False  # never write the same word twice in a row ("Men Men")


@dataclass
class Hypothesis:
    tokens: list[int]
    logprob: float  # sum of chosen-token log-probabilities, <end> included
    attention: np.ndarray | None = field(default=None, repr=False)  # (steps, regions)

    @property
    def confidence(self) -> float:
        """Geometric-mean probability of the emitted tokens: in [0, 1], 1 = certain."""
        steps = max(1, len(self.tokens) + 1)
        return float(math.exp(self.logprob / steps))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


Memory = dict  # role -> (N, ...) array, one row per live hypothesis


def select(memory: Memory, rows: np.ndarray) -> Memory:
    return {role: value[rows] for role, value in memory.items()}


class StepFunction:
    """One decoder call: (token, memory, hidden) -> (logits, hidden, attention)."""

    def __init__(self, model: OnnxModel):
        names = model.bundle.decoder_names
        self._session = model.decoder
        self._inputs = dict(names.inputs)
        self._outputs = [names.outputs[k] for k in ("logits", "hidden", "attention")]
        types = {t.name: t.type for t in model.decoder.get_inputs()}
        self._int64 = {role for role, name in self._inputs.items() if "int64" in types.get(name, "")}

    def _cast(self, role: str, value: np.ndarray) -> np.ndarray:
        if role in ("token", "neighbours"):
            return value.astype(np.int64 if role in self._int64 else np.int32)
        return value

    def __call__(self, token, memory: Memory, hidden):
        feeds = {self._inputs[role]: self._cast(role, value)
                 for role, value in (("token", token), ("hidden", hidden), *memory.items())}
        logits, new_hidden, attention = self._session.run(self._outputs, feeds)
        return logits, new_hidden, attention


def step_logprobs(logits: np.ndarray, token: np.ndarray, block_repeats: bool) -> np.ndarray:
    """Log-probabilities of the next word; with ``block_repeats`` the word just written is ruled out."""
    logp = log_softmax(logits)
    if block_repeats:
        logp[np.arange(len(token)), token] = -np.inf
    return logp


class GreedyDecoder:
    def __init__(self, step: StepFunction, start: int, end: int, max_length: int, keep_attention: bool = False,
                 block_repeats: bool = False):
        self.step, self.start, self.end = step, start, end
        self.max_length, self.keep_attention, self.block_repeats = max_length, keep_attention, block_repeats

    def decode(self, memory: Memory, hidden: np.ndarray) -> list[Hypothesis]:
        n, regions = memory["features"].shape[0], memory["features"].shape[1]
        words = np.zeros((n, self.max_length), np.int64)
        lengths = np.full(n, self.max_length)
        logprob = np.zeros(n)
        attention = np.zeros((n, self.max_length, regions), np.float32) if self.keep_attention else None
        rows = np.arange(n)
        token = np.full(n, self.start, dtype=np.int64)
        for t in range(self.max_length):
            logits, hidden, att = self.step(token, memory, hidden)
            logp = step_logprobs(logits, token, self.block_repeats)
            token = logp.argmax(axis=-1)
            logprob[rows] += logp[np.arange(len(rows)), token]
            words[rows, t] = token
            if attention is not None:
                attention[rows, t] = att
            done = token == self.end
            if done.any():
                lengths[rows[done]] = t
                keep = ~done
                rows, token, hidden, memory = rows[keep], token[keep], hidden[keep], select(memory, keep)
                if not len(rows):
                    break
        return [Hypothesis(words[i, :lengths[i]].tolist(), float(logprob[i]),
                           attention[i, :lengths[i]] if attention is not None else None) for i in range(n)]


class BeamSearchDecoder:
    """Batched beam search with a GNMT length penalty ((5 + len) / 6) ** alpha."""

    def __init__(self, step: StepFunction, start: int, end: int, max_length: int, beam_size: int,
                 length_penalty: float = 0.6, keep_attention: bool = False, block_repeats: bool = False):
        self.step, self.start, self.end = step, start, end
        self.max_length, self.beam, self.alpha = max_length, beam_size, length_penalty
        self.keep_attention, self.block_repeats = keep_attention, block_repeats

    def _normalised(self, logprob: float, length: int) -> float:
        return logprob / (((5.0 + length + 1) / 6.0) ** self.alpha) if self.alpha else logprob

    def decode(self, memory: Memory, hidden: np.ndarray) -> list[Hypothesis]:
        n, k = memory["features"].shape[0], self.beam
        beams = np.repeat(np.arange(n), k)  # (n*k,) rows, beam-major per image
        memory, hidden = select(memory, beams), hidden[beams]
        token = np.full(n * k, self.start, dtype=np.int64)
        scores = np.tile(np.r_[0.0, np.full(k - 1, -np.inf)], n)  # only beam 0 is live at first
        seqs: list[list[int]] = [[] for _ in range(n * k)]
        atts: list[list[np.ndarray]] = [[] for _ in range(n * k)]
        finished: list[list[tuple[float, Hypothesis]]] = [[] for _ in range(n)]
        images = np.arange(n)
        for t in range(self.max_length):
            logits, hidden, att = self.step(token, memory, hidden)
            logp = step_logprobs(logits, token, self.block_repeats)
            m = len(images)
            total = (scores[:, None] + logp).reshape(m, k * logp.shape[-1])
            width = min(2 * k, total.shape[1])
            top = np.argpartition(-total, width - 1, axis=1)[:, :width]
            order = np.take_along_axis(top, np.argsort(-np.take_along_axis(total, top, 1), axis=1), 1)
            src_rows, new_tokens, new_scores, alive = [], [], [], []
            for j in range(m):
                image = images[j]
                picked = 0
                for flat in order[j]:
                    beam, word = divmod(int(flat), logp.shape[-1])
                    value = float(total[j, flat])
                    if not np.isfinite(value):
                        continue
                    row = j * k + beam
                    if word == self.end:
                        if len(finished[image]) < k:
                            hyp = Hypothesis(list(seqs[row]), value,
                                             np.array(atts[row]) if self.keep_attention else None)
                            finished[image].append((self._normalised(value, len(hyp.tokens)), hyp))
                        continue
                    src_rows.append(row)
                    new_tokens.append(word)
                    new_scores.append(value)
                    picked += 1
                    if picked == k:
                        break
                while picked < k:  # keep the (m*k) layout when too few live candidates remain
                    src_rows.append(j * k)
                    new_tokens.append(self.end)
                    new_scores.append(-np.inf)
                    picked += 1
                best_alive = new_scores[j * k]
                best_done = max((s for s, _ in finished[image]), default=-np.inf)
                bound = self._normalised(best_alive, self.max_length) if self.alpha else best_alive
                alive.append(not (len(finished[image]) >= k or (finished[image] and best_done >= bound)))
            src = np.array(src_rows)
            seqs = [seqs[r] + [w] for r, w in zip(src_rows, new_tokens)]
            if self.keep_attention:
                atts = [atts[r] + [att[r]] for r in src_rows]
            token, scores = np.array(new_tokens, dtype=np.int64), np.array(new_scores)
            memory, hidden = select(memory, src), hidden[src]
            if t == self.max_length - 1:
                break
            alive = np.array(alive)
            if not alive.all():
                rows = np.repeat(alive, k)
                images = images[alive]
                token, scores, hidden, memory = token[rows], scores[rows], hidden[rows], select(memory, rows)
                seqs = [s for s, r in zip(seqs, rows) if r]
                atts = [a for a, r in zip(atts, rows) if r] if self.keep_attention else atts
                if not len(images):
                    break
        # Images still searching at max_length keep their best live beams as candidates.
        for j, image in enumerate(images):
            for b in range(k):
                row = j * k + b
                if np.isfinite(scores[row]):
                    hyp = Hypothesis(list(seqs[row]), float(scores[row]),
                                     np.array(atts[row]) if self.keep_attention else None)
                    finished[image].append((self._normalised(float(scores[row]), len(hyp.tokens)), hyp))
        return [max(f, key=lambda pair: pair[0])[1] for f in finished]


def make_decoder(model: OnnxModel, options: DecodingOptions):
    bundle = model.bundle
    vocab = bundle.vocabulary
    max_length = options.max_length or bundle.max_length
    step = StepFunction(model)
    if options.beam_size <= 1:
        return GreedyDecoder(step, vocab.start_id, vocab.end_id, max_length, options.keep_attention,
                             options.block_repeats)
    return BeamSearchDecoder(step, vocab.start_id, vocab.end_id, max_length, options.beam_size,
                             options.length_penalty, options.keep_attention, options.block_repeats)
