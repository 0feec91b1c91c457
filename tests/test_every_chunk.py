"""A prompt of more than one chunk (past 75 tokens, or with BREAK) teaches the projector and is
scored by the report on every chunk, not its first 77 tokens."""

from __future__ import annotations

import numpy as np

from luna_core.projector.pairs import Pairs, fingerprint, load_pairs
from luna_core.projector.train import _Stores
from luna_core.reports.evaluate import score_source


def test_each_chunk_of_a_long_prompt_is_a_training_target(library_home):
    home, profile = library_home
    pairs = load_pairs(home, "train")
    long = np.flatnonzero(pairs.chunk_counts() > 1)
    assert len(long), "the sample library has prompts of more than one chunk"
    every = pairs.every_chunk()
    assert len(every.prompt_rows) == int(pairs.chunk_counts().sum())
    first = int(long[0])
    rows = every.prompt_rows[every.image_ids == pairs.image_ids[first]]
    assert rows.tolist() == [
        pairs.prompt_rows[first] + i for i in range(pairs.chunk_counts()[first])
    ]
    # the second chunk's target is its own tokens, and the prompt's pooled output
    tokens, pooled = _Stores(home, profile).targets(rows[:2])
    assert not np.allclose(tokens[0].numpy(), tokens[1].numpy())
    np.testing.assert_array_equal(pooled[0].numpy(), pooled[1].numpy())
    # which pairs trained a model: one more chunk is other training data
    fewer = Pairs(
        pairs.image_ids,
        pairs.vision_rows,
        pairs.prompt_rows,
        pairs.chunk_counts() - (np.arange(len(pairs.prompt_rows)) == first),
    )
    assert fingerprint(pairs, profile) != fingerprint(fewer, profile)


class _TwoChunkTruth:
    """One test image whose true conditioning is two chunks."""

    def __init__(self, second: np.ndarray, first: np.ndarray):
        self.pairs = Pairs(np.array([1]), np.array([0]), np.array([0]), np.array([2]))
        self.pooled = np.ones((1, 4), np.float32)
        self._tokens = [np.concatenate([first, second])]

    def batches(self):
        yield 0, self._tokens


def test_the_report_scores_the_second_chunk_too():
    rng = np.random.default_rng(0)
    first = rng.normal(size=(77, 8)).astype(np.float32)
    answer = lambda start, count: ([first], np.ones((1, 4), np.float32))  # noqa: E731
    same = score_source("a", "vault", _TwoChunkTruth(first.copy(), first), answer)
    other = score_source("a", "vault", _TwoChunkTruth(-first, first), answer)
    # an answer of one chunk meets two by repetition: it matches the first and is scored on both
    assert same.per_image["token_cosine"][0] > 0.999
    assert other.per_image["token_cosine"][0] < 0.01
    assert other.per_image["mse"][0] > same.per_image["mse"][0]
