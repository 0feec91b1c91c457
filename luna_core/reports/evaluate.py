"""Every conditioning source scored on the frozen test split against the true prompt's conditioning.

Sources: the true prompt (the ceiling: the stored float16 row itself), the vault's k-NN answer
with the image itself and its near-duplicates left out, every registered projector version, the
mean conditioning of the training split, and the empty prompt (the floor). Per image: token
cosine (mean over the 77 tokens), pooled cosine and MSE to the truth; per source: retrieval R@1 /
R@5 of the true prompt among all test prompts by pooled cosine, the share of images where the
source beats the mean conditioning, and bootstrap 95 % intervals. Conditionings are streamed a
batch at a time (a row is 315 KB at SDXL widths).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from luna_core.ask.mixing import aligned
from luna_core.ask.vault_query import DEFAULT_TEMPERATURE, VaultQuery
from luna_core.catalog.connection import open_catalog
from luna_core.errors import LunaError, NotBuiltError
from luna_core.home.home import LunaHome
from luna_core.models.profiles import ModelProfile
from luna_core.projector.names import REGISTERED_NAME
from luna_core.projector.pairs import Pairs, load_pairs
from luna_core.projector.registry import Registry
from luna_core.reports.frozen_set import TestSet, load_test_set
from luna_core.vault.segments import open_text_store, open_vision_store

log = logging.getLogger(__name__)

BATCH = 64
MAIN_METRICS = ("token_cosine", "pooled_cosine", "mse")


@dataclass(frozen=True)
class EvalSettings:
    max_images: int = 2000  # test images scored (a deterministic sample past this)
    k: int = 5
    temperature: float = DEFAULT_TEMPERATURE
    bootstrap: int = 1000
    seed: int = 0
    projector_name: str = REGISTERED_NAME
    tracking_uri: str | None = None


@dataclass
class SourceResult:
    name: str
    kind: str  # true | vault | projector | mean | empty
    per_image: dict[str, np.ndarray]  # metric -> [N]
    summary: dict[str, float] = field(default_factory=dict)
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    info: dict = field(default_factory=dict)


@dataclass
class Evaluation:
    test_set: TestSet
    sources: list[SourceResult]
    train_pairs: int  # the mean conditioning's rows
    mean_conditioning: tuple[np.ndarray, np.ndarray]  # the train split's mean (tokens, pooled)

    @property
    def pairs(self) -> Pairs:
        return self.test_set.pairs

    def source(self, kind: str) -> SourceResult | None:
        return next((s for s in self.sources if s.kind == kind), None)


def paired_difference(
    a: SourceResult, b: SourceResult, settings: EvalSettings, metric: str = "token_cosine"
) -> tuple[float, float, float]:
    """Mean of a - b over the same test images, with its bootstrap 95 % interval (images
    resampled)."""
    difference = a.per_image[metric] - b.per_image[metric]
    draws = np.random.default_rng(settings.seed).integers(
        0, len(difference), size=(settings.bootstrap, len(difference))
    )
    resampled = difference[draws].mean(axis=1)
    return (
        float(difference.mean()),
        float(np.percentile(resampled, 2.5)),
        float(np.percentile(resampled, 97.5)),
    )


class _Truth:
    """The true conditionings of the test pairs, every chunk of each, read a batch at a time."""

    def __init__(self, home: LunaHome, profile: ModelProfile, pairs: Pairs):
        self.text = open_text_store(home, profile)
        self.pairs = pairs
        self.chunks = pairs.chunk_counts()
        self.pooled = self.text.read_rows("pooled_prompt_embeds", pairs.prompt_rows).astype(
            np.float32
        )

    def tokens(self, start: int, count: int) -> list[np.ndarray]:
        """Items [start, start + count): each one's conditioning [77·chunks, D]."""
        rows = self.pairs.prompt_rows[start : start + count]
        counts = self.chunks[start : start + count]
        picked = np.concatenate([np.arange(r, r + c) for r, c in zip(rows, counts)])
        read = self.text.read_rows("prompt_embeds", picked).astype(np.float32)
        ends = np.cumsum(counts)
        return [read[end - c : end].reshape(-1, read.shape[-1]) for end, c in zip(ends, counts)]

    def batches(self):
        for start in range(0, len(self.pairs.prompt_rows), BATCH):
            yield start, self.tokens(start, BATCH)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    num = (a * b).sum(-1)
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return np.where(den > 0, num / np.maximum(den, 1e-12), 0.0)


def score_source(name: str, kind: str, truth: _Truth, predict) -> SourceResult:
    """`predict(start, count) -> (tokens [n, 77, D], pooled [n, P])` for test items [start, start
    + count)."""
    n = len(truth.pairs.prompt_rows)
    token_cos, pooled_cos, mse = np.zeros(n), np.zeros(n), np.zeros(n)
    predicted_pooled = np.zeros_like(truth.pooled)
    for start, true_tokens in truth.batches():
        count = len(true_tokens)
        tokens, pooled = predict(start, count)
        pooled = np.asarray(pooled, np.float32)
        true_pooled = truth.pooled[start : start + count]
        for j, want in enumerate(true_tokens):
            # Every chunk is scored: an answer of other length meets the truth by repetition to
            # their common length, as every consumer of conditionings does (ask/mixing.py)
            got = np.asarray(tokens[j], np.float32).reshape(-1, want.shape[-1])
            got, want = aligned([got, want])
            token_cos[start + j] = _cosine(got, want).mean()
            mse[start + j] = ((got - want) ** 2).mean()
        pooled_cos[start : start + count] = _cosine(pooled, true_pooled)
        mse[start : start + count] += ((pooled - true_pooled) ** 2).mean(1)
        predicted_pooled[start : start + count] = pooled
    ranks = _ranks(predicted_pooled, truth.pooled, truth.pairs.prompt_rows)
    per_image = {
        "token_cosine": token_cos,
        "pooled_cosine": pooled_cos,
        "mse": mse,
        "hit_at_1": (ranks < 1).astype(float),
        "hit_at_5": (ranks < 5).astype(float),
    }
    return SourceResult(name, kind, per_image)


def _ranks(predicted: np.ndarray, truth: np.ndarray, prompt_rows: np.ndarray) -> np.ndarray:
    """Rank of the true prompt among all distinct test prompts by pooled cosine (0 = first)."""
    distinct, first = np.unique(prompt_rows, return_index=True)
    candidates = truth[first]
    candidates = candidates / np.maximum(np.linalg.norm(candidates, axis=1, keepdims=True), 1e-12)
    column = np.searchsorted(distinct, prompt_rows)
    ranks = np.zeros(len(predicted), dtype=np.int64)
    # [block, distinct] similarities, never N x N at once
    for start in range(0, len(predicted), 1024):
        block = predicted[start : start + 1024]
        sims = (
            block / np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)
        ) @ candidates.T
        own = sims[np.arange(len(block)), column[start : start + 1024]]
        ranks[start : start + 1024] = (sims > own[:, None]).sum(axis=1)
    return ranks


def summarize(
    result: SourceResult, mean_source: SourceResult | None, settings: EvalSettings
) -> None:
    """Means, R@1/R@5, the share beating the mean conditioning, and bootstrap 95 % intervals."""
    rng = np.random.default_rng(settings.seed)
    n = len(result.per_image["token_cosine"])
    draws = rng.integers(0, n, size=(settings.bootstrap, n))
    for metric, values in result.per_image.items():
        name = {"hit_at_1": "R@1", "hit_at_5": "R@5"}.get(metric, metric)
        result.summary[name] = float(values.mean())
        if metric in MAIN_METRICS or metric.startswith("hit"):
            resampled = values[draws].mean(axis=1)
            result.intervals[name] = (
                float(np.percentile(resampled, 2.5)),
                float(np.percentile(resampled, 97.5)),
            )
    if mean_source is not None:
        beats = result.per_image["token_cosine"] > mean_source.per_image["token_cosine"]
        result.summary["beats_mean"] = float(beats.mean())
        gain, low, high = paired_difference(result, mean_source, settings)
        result.summary["token_cosine_minus_mean"] = gain
        result.intervals["token_cosine_minus_mean"] = (low, high)


def evaluate(
    home: LunaHome,
    profile: ModelProfile,
    vault: VaultQuery,
    settings: EvalSettings = EvalSettings(),
    projectors: list[tuple[str, object]] | None = None,
    test_set: TestSet | None = None,
) -> Evaluation:
    """Score every source on the frozen test set (default `load_test_set`). `projectors`: (label,
    model) pairs (default: every registered version of `settings.projector_name` that fits the
    encoders)."""
    test_set = (
        test_set
        if test_set is not None
        else load_test_set(home, settings.max_images, settings.seed)
    )
    pairs = test_set.pairs
    truth = _Truth(home, profile, pairs)
    vision = open_vision_store(home, profile)
    embeddings = vision.read("embeds", pairs.vision_rows).astype(np.float32)
    sources: list[SourceResult] = []

    def rows_of(start: int, count: int):
        return truth.tokens(start, count), truth.pooled[start : start + count]

    sources.append(score_source("true prompt", "true", truth, rows_of))

    # The same prompts read literally, as Luna encoded them before prompt parsing (cut at 77 tokens,
    # weights as text): how far that reading is from what the generators computed is the error the
    # parsing fixed.
    with open_catalog(home.catalog_path, read_only=True) as con:
        texts = dict(
            con.execute(
                "SELECT image_id, prompt FROM library WHERE image_id IN (SELECT unnest($ids))",
                {"ids": [int(i) for i in pairs.image_ids]},
            ).fetchall()
        )
    literal = [vault.encode_prompt(texts.get(int(i)) or "", "literal") for i in pairs.image_ids]
    sources.append(
        score_source(
            "true prompt read literally (before prompt parsing)",
            "literal",
            truth,
            lambda start, count: (
                [t for t, _ in literal[start : start + count]],
                np.stack([p for _, p in literal[start : start + count]]),
            ),
        )
    )

    train = load_pairs(home, "train")
    mean_tokens, mean_pooled = _mean_conditioning(truth.text, train.every_chunk().prompt_rows)
    sources.append(
        score_source(
            "mean of train",
            "mean",
            truth,
            lambda start, count: (
                np.broadcast_to(mean_tokens, (count, *mean_tokens.shape)),
                np.broadcast_to(mean_pooled, (count, *mean_pooled.shape)),
            ),
        )
    )

    empty_tokens, empty_pooled = vault.encode_prompt("")
    sources.append(
        score_source(
            "empty prompt",
            "empty",
            truth,
            lambda start, count: (
                np.broadcast_to(empty_tokens, (count, *empty_tokens.shape)),
                np.broadcast_to(empty_pooled, (count, *empty_pooled.shape)),
            ),
        )
    )

    def vault_rows(start: int, count: int):
        answers = [
            vault.vault_answer(
                embeddings[i],
                settings.k,
                settings.temperature,
                exclude=leave_out(test_set, int(pairs.image_ids[i])),
            )
            for i in range(start, start + count)
        ]
        # every chunk of the answer: the scoring meets the truth's chunks by repetition
        return [a[0] for a in answers], np.stack([a[1] for a in answers])

    sources.append(score_source(f"vault k={settings.k}", "vault", truth, vault_rows))

    for label, model, _ in (
        projectors if projectors is not None else registered_projectors(home, vault, settings)
    ):
        sources.append(
            score_source(
                label,
                "projector",
                truth,
                lambda start, count, model=model: vault.projector_answers(
                    model, embeddings[start : start + count]
                ),
            )
        )
        sources[-1].info["label"] = label

    mean_source = next(s for s in sources if s.kind == "mean")
    for source in sources:
        summarize(source, None if source is mean_source else mean_source, settings)
    return Evaluation(test_set, sources, len(train.image_ids), (mean_tokens, mean_pooled))


def leave_out(test_set: TestSet, image_id: int) -> frozenset[int]:
    """What a vault answer for a test image must not see: the image and its near-duplicates."""
    return frozenset({image_id}) | test_set.leave_out.get(image_id, frozenset())


def _mean_conditioning(text, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(rows) == 0:
        raise NotBuiltError(
            "the train split has no encoded prompt: the mean conditioning needs one"
        )
    tokens = np.zeros(text.fields["prompt_embeds"], np.float64)
    pooled = np.zeros(text.fields["pooled_prompt_embeds"], np.float64)
    for start in range(0, len(rows), BATCH):
        tokens += (
            text.read_rows("prompt_embeds", rows[start : start + BATCH]).astype(np.float64).sum(0)
        )
        pooled += (
            text.read_rows("pooled_prompt_embeds", rows[start : start + BATCH])
            .astype(np.float64)
            .sum(0)
        )
    return (tokens / len(rows)).astype(np.float32), (pooled / len(rows)).astype(np.float32)


class LoadedProjector(NamedTuple):
    """A registered version loaded for scoring, labelled with its version and aliases."""

    label: str
    model: object
    champion: bool = False


def registered_projectors(
    home: LunaHome, vault: VaultQuery, settings: EvalSettings
) -> list[LoadedProjector]:
    """Every registered version that fits the configured encoders, labelled with its version and
    aliases."""
    out = []
    for version in Registry(home, settings.tracking_uri).versions(settings.projector_name):
        uri = version.uri
        try:
            model, _ = vault.load_projector(uri, settings.tracking_uri)
        except LunaError as exc:
            log.warning("projector %s left out of the report: %s", uri, exc)
            continue
        aliases = "".join(f" @{alias}" for alias in version.aliases)
        out.append(
            LoadedProjector(
                f"projector v{version.version}{aliases} ({version.arch})",
                model,
                version.is_champion,
            )
        )
    return out


def mean_of_train(home: LunaHome, profile: ModelProfile) -> tuple[np.ndarray, np.ndarray]:
    """The mean conditioning (tokens, pooled) of the train split's prompts."""
    train = load_pairs(home, "train").every_chunk()
    return _mean_conditioning(open_text_store(home, profile), train.prompt_rows)
