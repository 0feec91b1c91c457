"""The report's first paragraph: which conditioning source to use, on which evidence, or that the
evidence is too weak to say.

The evidence is the token cosine to the true prompt's conditioning, compared *paired* (the same test
images) with bootstrap 95 % intervals: a candidate (the vault, each projector version) counts only
when it beats the train split's mean conditioning beyond its interval, and one candidate is
preferred to another only when their difference's interval excludes 0.
"""

from __future__ import annotations

from dataclasses import dataclass

from luna_core.reports.evaluate import EvalSettings, Evaluation, paired_difference

MIN_IMAGES = 10  # below this many scored test images no source is recommended


@dataclass
class Verdict:
    choice: str | None  # the source to use; None: neither, or too little evidence
    text: str  # one short paragraph
    evidence: dict  # name -> (difference, low, high) against the mean, and the head-to-head


def _fmt(diff: tuple[float, float, float]) -> str:
    gain, low, high = diff
    return f"{gain:+.4f} [{low:+.4f}, {high:+.4f}]"


def verdict(evaluation: Evaluation, settings: EvalSettings, caveat: str | None = None) -> Verdict:
    n = len(evaluation.pairs.image_ids)
    mean = evaluation.source("mean")
    candidates = [s for s in evaluation.sources if s.kind in ("vault", "projector")]
    evidence = {s.name: paired_difference(s, mean, settings) for s in candidates}
    tail = f" {caveat}" if caveat else ""
    if n < MIN_IMAGES:
        return Verdict(
            None,
            f"**Too little evidence to say which source to trust**: {n} test images were scored "
            f"(at least {MIN_IMAGES} are needed). The figures below carry their intervals.{tail}",
            evidence,
        )
    if not candidates:
        return Verdict(
            None,
            f"**Use the typed prompt**: no vault or projector could be scored.{tail}",
            evidence,
        )
    winners = sorted(
        (s for s in candidates if evidence[s.name][1] > 0), key=lambda s: -evidence[s.name][0]
    )
    against_mean = "; ".join(f"{s.name} {_fmt(evidence[s.name])}" for s in candidates)
    basis = (
        f"Token cosine to the true conditioning over {n} test images, minus the train mean's "
        f"(paired, 95 % interval): {against_mean}."
    )
    if not winners:
        return Verdict(
            None,
            f"**Use neither**: no source beats the mean conditioning of the train split beyond its "
            f"interval, so a typed prompt (or the mean) serves as well. {basis}{tail}",
            evidence,
        )
    best = winners[0]
    if len(winners) == 1:
        return Verdict(
            best.name,
            f"**Use {best.name}**: it is the only source that beats the mean conditioning "
            f"beyond its interval. {basis}{tail}",
            evidence,
        )
    runner = winners[1]
    head = paired_difference(best, runner, settings)
    evidence[f"{best.name} minus {runner.name}"] = head
    if head[1] > 0:
        return Verdict(
            best.name,
            f"**Use {best.name}**: it beats the mean conditioning and {runner.name} beyond their "
            f"intervals (difference {_fmt(head)}). {basis}{tail}",
            evidence,
        )
    return Verdict(
        best.name,
        f"**Use {best.name} or {runner.name}**: both beat the mean conditioning beyond their "
        f"intervals, and their difference ({_fmt(head)}) includes 0; {best.name} scores a little "
        f"higher. {basis}{tail}",
        evidence,
    )
