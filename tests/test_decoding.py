"""Caption search and the loader window: the properties the runtime's speed and memory rely on."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from catalog_captioner import Captioner, catalog, images
from catalog_captioner.decoding import BeamSearchDecoder, GreedyDecoder, StepFunction
from catalog_captioner.run import ImageLoader
from tests.conftest import draw_product


def _encoded(captioner: Captioner, n: int = 6):
    pixels = np.stack([images.preprocess(draw_product(c, s, seed=i), captioner.input_size)
                       for i, (c, s) in enumerate([("red", "square"), ("blue", "circle"), ("green", "triangle"),
                                                   ("black", "square"), ("red", "circle"), ("blue", "triangle")][:n])])
    return captioner.encode(pixels)


def test_beam_of_one_is_greedy_and_wider_beams_never_score_worse(tiny_bundle):
    captioner = Captioner.load(tiny_bundle, device="cpu", beam_size=1)
    step, vocab = StepFunction(captioner.model), captioner.bundle.vocabulary
    encoded = _encoded(captioner)
    greedy = GreedyDecoder(step, vocab.start_id, vocab.end_id, 8).decode(*encoded)
    beam1 = BeamSearchDecoder(step, vocab.start_id, vocab.end_id, 8, beam_size=1, length_penalty=0).decode(*encoded)
    beam4 = BeamSearchDecoder(step, vocab.start_id, vocab.end_id, 8, beam_size=4, length_penalty=0).decode(*encoded)
    assert [h.tokens for h in beam1] == [h.tokens for h in greedy]
    assert np.allclose([h.logprob for h in beam1], [h.logprob for h in greedy], atol=1e-4)
    assert all(b.logprob >= g.logprob - 1e-4 for b, g in zip(beam4, greedy))
    assert all(0 < h.confidence <= 1 for h in greedy + beam4)


def test_finished_rows_leave_the_decoder_batch():
    """A scripted step function: row i says <end> after i words (hidden[:, 0] counts steps)."""
    start, end, vocab = 1, 2, 8
    sizes = []

    def step(token, memory, hidden):
        sizes.append(len(token))
        logits = np.zeros((len(token), vocab), np.float32)
        finished = hidden[:, 0] >= memory["features"][:, 0, 0]
        logits[finished, end] = 5.0
        logits[~finished, 4 + (hidden[~finished, 0].astype(int) % 3)] = 5.0
        return logits, hidden + 1, np.full((len(token), 1), 1.0, np.float32)

    lengths = np.array([0, 3, 1, 5, 2], np.float32)
    features = np.zeros((5, 1, 1), np.float32)
    features[:, 0, 0] = lengths
    memory = {"features": features, "keys": features.copy()}
    hyps = GreedyDecoder(step, start, end, max_length=12).decode(memory, np.zeros((5, 1), np.float32))
    assert [len(h.tokens) for h in hyps] == [0, 3, 1, 5, 2]
    assert hyps[3].tokens == [4, 5, 6, 4, 5]
    assert sizes == [5, 4, 3, 2, 1, 1]  # each step runs only on the rows still writing; no step past the longest


def test_blocking_repeats_never_writes_a_word_twice_in_a_row():
    """A scripted model that always prefers word 4, then word 5, and ends after 4 words."""
    def step(token, memory, hidden):
        logits = np.tile(np.array([0, 0, -9, 0, 5.0, 4.0, 0, 0], np.float32), (len(token), 1))
        logits[hidden[:, 0] >= 4, 2] = 20.0  # <end>
        return logits, hidden + 1, np.ones((len(token), 1), np.float32)

    memory = {"features": np.zeros((2, 1, 1), np.float32), "keys": np.zeros((2, 1, 1), np.float32)}
    hidden = np.zeros((2, 1), np.float32)
    plain = GreedyDecoder(step, 1, 2, 10).decode(memory, hidden)
    assert plain[0].tokens == [4, 4, 4, 4]
    for decoder in (GreedyDecoder(step, 1, 2, 10, block_repeats=True),
                    BeamSearchDecoder(step, 1, 2, 10, beam_size=3, block_repeats=True)):
        tokens = decoder.decode(memory, hidden)[0].tokens
        assert tokens == [4, 5, 4, 5], type(decoder).__name__


def test_the_loader_keeps_a_bounded_window_across_chunks(tmp_path):
    active, lock = [0], threading.Lock()

    class CountingLoader(ImageLoader):
        def _load(self, cell):
            with lock:
                active[0] += 1
            time.sleep(0.001)
            return cell

    chunks = [catalog.Chunk(i, 50, [f"{i}-{r}" for r in range(50)], None, {}) for i in range(4)]
    seen = []
    with ThreadPoolExecutor(4) as pool:
        for chunk, row, job in CountingLoader(pool, 8, images.LoadOptions(), depth=10).stream(iter(chunks)):
            seen.append(job.result())
            with lock:
                outstanding = active[0]
                active[0] -= 1
            assert outstanding <= 11  # never more than the window (+ the row being consumed)
    assert seen == [f"{i}-{r}" for i in range(4) for r in range(50)]  # every row, in order
