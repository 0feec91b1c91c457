"""Every conditioning source scored on the frozen test split against the true prompt's conditioning.

Sources: the true prompt (the ceiling: the stored float16 row itself), the vault's k-NN answer with the
image itself left out, every registered projector version, the mean conditioning of the training split,
and the empty prompt (the floor). Per image: token cosine (mean over the 77 tokens), pooled cosine and
MSE to the truth; per source: retrieval R@1 / R@5 of the true prompt among all test prompts by pooled
cosine, the share of images where the source beats the mean conditioning, and bootstrap 95 % intervals.
Conditionings are streamed a batch at a time (a row is 315 KB at SDXL widths).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field

import numpy as np

from luna_core.errors import NotBuiltError
from luna_core.models.profiles import ModelProfile
from luna_core.projector.train import Pairs, load_pairs
from luna_core.settings import LunaHome
from luna_core.vault.query import DEFAULT_TEMPERATURE, Vault

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
    projector_name: str = "luna-projector"
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
    test_images: int
    test_fingerprint: str
    sources: list[SourceResult]
    split_sizes: dict[str, int]
    pairs: Pairs  # the test pairs scored
    mean_conditioning: tuple[np.ndarray, np.ndarray]  # the train split's mean (tokens, pooled)

    def source(self, kind: str) -> SourceResult | None:
        return next((s for s in self.sources if s.kind == kind), None)


def test_pairs(home: LunaHome, settings: EvalSettings) -> Pairs:
    pairs = load_pairs(home, "test")
    if len(pairs.image_ids) == 0:
        raise NotBuiltError("the test split has no image with both an embedding and an encoded prompt yet")
    if len(pairs.image_ids) > settings.max_images:
        keep = np.sort(np.random.default_rng(settings.seed).choice(len(pairs.image_ids), settings.max_images,
                                                                    replace=False))
        pairs = Pairs(pairs.image_ids[keep], pairs.vision_rows[keep], pairs.prompt_rows[keep])
    return pairs


def split_fingerprint(pairs: Pairs) -> str:
    digest = hashlib.sha256(pairs.image_ids.tobytes())
    digest.update(pairs.prompt_rows.tobytes())
    return digest.hexdigest()[:16]


class _Truth:
    """The true conditionings of the test pairs, read a batch at a time."""

    def __init__(self, home: LunaHome, profile: ModelProfile, pairs: Pairs):
        self.text = home.open_text_store(profile)
        self.pairs = pairs
        self.pooled = self.text.read_rows("pooled_prompt_embeds", pairs.prompt_rows).astype(np.float32)

    def batches(self):
        for start in range(0, len(self.pairs.prompt_rows), BATCH):
            rows = self.pairs.prompt_rows[start : start + BATCH]
            yield start, self.text.read_rows("prompt_embeds", rows).astype(np.float32)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    num = (a * b).sum(-1)
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return np.where(den > 0, num / np.maximum(den, 1e-12), 0.0)


def score_source(name: str, kind: str, truth: _Truth, predict) -> SourceResult:
    """`predict(start, count) -> (tokens [n, 77, D], pooled [n, P])` for test items [start, start + count)."""
    n = len(truth.pairs.prompt_rows)
    token_cos, pooled_cos, mse = np.zeros(n), np.zeros(n), np.zeros(n)
    predicted_pooled = np.zeros_like(truth.pooled)
    for start, true_tokens in truth.batches():
        count = len(true_tokens)
        tokens, pooled = predict(start, count)
        tokens, pooled = np.asarray(tokens, np.float32), np.asarray(pooled, np.float32)
        true_pooled = truth.pooled[start : start + count]
        token_cos[start : start + count] = _cosine(tokens, true_tokens).mean(axis=1)
        pooled_cos[start : start + count] = _cosine(pooled, true_pooled)
        mse[start : start + count] = ((tokens - true_tokens) ** 2).mean(axis=(1, 2)) + ((pooled - true_pooled) ** 2).mean(1)
        predicted_pooled[start : start + count] = pooled
    ranks = _ranks(predicted_pooled, truth.pooled, truth.pairs.prompt_rows)
    per_image = {"token_cosine": token_cos, "pooled_cosine": pooled_cos, "mse": mse,
                 "hit_at_1": (ranks < 1).astype(float), "hit_at_5": (ranks < 5).astype(float)}
    return SourceResult(name, kind, per_image)


def _ranks(predicted: np.ndarray, truth: np.ndarray, prompt_rows: np.ndarray) -> np.ndarray:
    """Rank of the true prompt among all distinct test prompts by pooled cosine (0 = first)."""
    distinct, first = np.unique(prompt_rows, return_index=True)
    candidates = truth[first]
    candidates = candidates / np.maximum(np.linalg.norm(candidates, axis=1, keepdims=True), 1e-12)
    column = np.searchsorted(distinct, prompt_rows)
    ranks = np.zeros(len(predicted), dtype=np.int64)
    for start in range(0, len(predicted), 1024):  # [block, distinct] similarities, never N x N at once
        block = predicted[start : start + 1024]
        sims = (block / np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)) @ candidates.T
        own = sims[np.arange(len(block)), column[start : start + 1024]]
        ranks[start : start + 1024] = (sims > own[:, None]).sum(axis=1)
    return ranks


def summarize(result: SourceResult, mean_source: SourceResult | None, settings: EvalSettings) -> None:
    """Means, R@1/R@5, the share beating the mean conditioning, and bootstrap 95 % intervals."""
    rng = np.random.default_rng(settings.seed)
    n = len(result.per_image["token_cosine"])
    draws = rng.integers(0, n, size=(settings.bootstrap, n))
    for metric, values in result.per_image.items():
        name = {"hit_at_1": "R@1", "hit_at_5": "R@5"}.get(metric, metric)
        result.summary[name] = float(values.mean())
        if metric in MAIN_METRICS or metric.startswith("hit"):
            resampled = values[draws].mean(axis=1)
            result.intervals[name] = (float(np.percentile(resampled, 2.5)), float(np.percentile(resampled, 97.5)))
    if mean_source is not None:
        beats = result.per_image["token_cosine"] > mean_source.per_image["token_cosine"]
        result.summary["beats_mean"] = float(beats.mean())
        difference = result.per_image["token_cosine"] - mean_source.per_image["token_cosine"]
        resampled = difference[draws].mean(axis=1)
        result.summary["token_cosine_minus_mean"] = float(difference.mean())
        result.intervals["token_cosine_minus_mean"] = (float(np.percentile(resampled, 2.5)),
                                                      float(np.percentile(resampled, 97.5)))


def evaluate(home: LunaHome, profile: ModelProfile, vault: Vault, settings: EvalSettings = EvalSettings(),
             projectors: list[tuple[str, object]] | None = None, pairs: Pairs | None = None) -> Evaluation:
    """Score every source on the test split (`pairs`, default `test_pairs`). `projectors`: (label, model)
    pairs (default: every registered version of `settings.projector_name` that fits the encoders)."""
    pairs = pairs if pairs is not None else test_pairs(home, settings)
    truth = _Truth(home, profile, pairs)
    vision = home.open_vision_store(profile)
    embeddings = vision.read("embeds", pairs.vision_rows).astype(np.float32)
    sources: list[SourceResult] = []

    def rows_of(start: int, count: int):
        rows = pairs.prompt_rows[start : start + count]
        return truth.text.read_rows("prompt_embeds", rows), truth.text.read_rows("pooled_prompt_embeds", rows)

    sources.append(score_source("true prompt", "true", truth, rows_of))

    train = load_pairs(home, "train")
    mean_tokens, mean_pooled = _mean_conditioning(truth.text, train.prompt_rows)
    sources.append(score_source("mean of train", "mean", truth, lambda start, count: (
        np.broadcast_to(mean_tokens, (count, *mean_tokens.shape)), np.broadcast_to(mean_pooled, (count, *mean_pooled.shape)))))

    empty_tokens, empty_pooled = vault.encode_prompt("")
    sources.append(score_source("empty prompt", "empty", truth, lambda start, count: (
        np.broadcast_to(empty_tokens, (count, *empty_tokens.shape)),
        np.broadcast_to(empty_pooled, (count, *empty_pooled.shape)))))

    def vault_rows(start: int, count: int):
        answers = [vault.vault_answer(embeddings[i], settings.k, settings.temperature,
                                      exclude=frozenset({int(pairs.image_ids[i])}))
                   for i in range(start, start + count)]
        return np.stack([a[0] for a in answers]), np.stack([a[1] for a in answers])

    sources.append(score_source(f"vault k={settings.k}", "vault", truth, vault_rows))

    for label, model in projectors if projectors is not None else registered_projectors(home, vault, settings):
        sources.append(score_source(label, "projector", truth, lambda start, count, model=model:
                                    vault.projector_answers(model, embeddings[start : start + count])))
        sources[-1].info["label"] = label

    mean_source = next(s for s in sources if s.kind == "mean")
    for source in sources:
        summarize(source, None if source is mean_source else mean_source, settings)
    split_sizes = {"train": len(train.image_ids), "val": len(load_pairs(home, "val").image_ids),
                   "test": len(load_pairs(home, "test").image_ids), "test scored": len(pairs.image_ids)}
    return Evaluation(len(pairs.image_ids), split_fingerprint(pairs), sources, split_sizes, pairs,
                      (mean_tokens, mean_pooled))


def _mean_conditioning(text, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(rows) == 0:
        raise NotBuiltError("the train split has no encoded prompt: the mean conditioning needs one")
    tokens = np.zeros(text.fields["prompt_embeds"], np.float64)
    pooled = np.zeros(text.fields["pooled_prompt_embeds"], np.float64)
    for start in range(0, len(rows), BATCH):
        tokens += text.read_rows("prompt_embeds", rows[start : start + BATCH]).astype(np.float64).sum(0)
        pooled += text.read_rows("pooled_prompt_embeds", rows[start : start + BATCH]).astype(np.float64).sum(0)
    return (tokens / len(rows)).astype(np.float32), (pooled / len(rows)).astype(np.float32)


def registered_projectors(home: LunaHome, vault: Vault, settings: EvalSettings) -> list[tuple[str, object]]:
    """Every registered version that fits the configured encoders, labelled with its version and aliases."""
    from luna_core.errors import LunaError
    from luna_core.projector.registry import list_versions

    out = []
    for version in list_versions(home, settings.projector_name, uri=settings.tracking_uri):
        uri = f"models:/{settings.projector_name}/{version['version']}"
        try:
            model, _ = vault.load_projector(uri, settings.tracking_uri)
        except LunaError as exc:
            log.warning("projector %s left out of the report: %s", uri, exc)
            continue
        aliases = f" @{version['aliases']}" if version["aliases"] else ""
        out.append((f"projector v{version['version']}{aliases} ({version['arch']})", model))
    return out
