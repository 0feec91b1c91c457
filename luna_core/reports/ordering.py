"""The regeneration ordering the method predicts (true prompt above vault above mean above empty),
each claim with its paired interval, in words."""

from __future__ import annotations

import numpy as np

# What the method predicts for regeneration: the true prompt is the ceiling; the vault and the
# projector come close to it and beat the mean of train, which beats the empty prompt.
ORDERING = (
    ("true prompt", ">=", "vault"),
    ("true prompt", ">=", "projector"),
    ("vault", ">", "mean"),
    ("projector", ">", "mean"),
    ("mean", ">", "empty"),
)


def ordering(clip_i: dict[str, list[float]], draws: int = 2000, seed: int = 0) -> list[dict]:
    """Each predicted ordering checked on paired CLIP-I differences (the same images and seeds) with
    a bootstrap 95 % interval: `>` holds when the interval lies above 0, `>=` unless it lies
    below 0."""
    out = []
    rng = np.random.default_rng(seed)
    for left, relation, right in ORDERING:
        a, b = clip_i.get(left) or [], clip_i.get(right) or []
        if not a or len(a) != len(b):
            continue
        diff = np.asarray(a, float) - np.asarray(b, float)
        means = diff[rng.integers(0, len(diff), (draws, len(diff)))].mean(axis=1)
        low, high = float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))
        holds = low > 0 if relation == ">" else high >= 0
        out.append(
            {
                "claim": f"{left} {relation} {right}",
                "difference": float(diff.mean()),
                "interval": [low, high],
                "n": len(diff),
                "holds": bool(holds),
            }
        )
    return out


def clip_t_said(quality: dict) -> str:
    clip_t = quality.get("clip_t")
    if not isinstance(clip_t, dict):
        return f"CLIP-T: {clip_t}."
    cells = ", ".join(f"{name} {clip_i_cell(values)}" for name, values in clip_t.items())
    return (
        "CLIP-T (cosine of the result's image embedding and the true prompt's pooled "
        f"embedding): {cells}."
    )


def ordering_lines(report: dict) -> list[str]:
    """The regeneration ordering the method predicts, each claim with its paired interval, in
    words."""
    clip_i = quality_of(report).get("clip_i", {})
    checks = ordering(clip_i)
    if not checks:
        return ["No regeneration sample to order the sources by."]
    lines = []
    for check in checks:
        low, high = check["interval"]
        said = (
            "holds"
            if check["holds"]
            else (
                "does NOT hold: the interval includes 0"
                if low <= 0 <= high
                else "does NOT hold: the reverse is true"
            )
        )
        lines.append(
            f"{check['claim']}: {said} (CLIP-I difference {check['difference']:+.4f} "
            f"[{low:+.4f}, {high:+.4f}], n={check['n']})"
        )
    return lines


def quality_of(report: dict) -> dict:
    """The latest benchmark's regeneration sample ({} when no benchmark ran yet)."""
    return (report.get("benchmark") or {}).get("quality") or {}


def clip_i_cell(values) -> str:
    """CLIP-I over a few regenerated images: always with its interval and n (it rests on a
    handful)."""
    if not values:
        return "—"
    mean, low, high = bootstrap_interval(values)
    return f"{mean:.4f} [{low:.4f}, {high:.4f}] n={len(values)}"


def bootstrap_interval(values, draws: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean and bootstrap 95 % interval of a small sample (the regeneration sample's CLIP-I)."""
    values = np.asarray(values, dtype=float)
    resampled = values[
        np.random.default_rng(seed).integers(0, len(values), (draws, len(values)))
    ].mean(axis=1)
    return (
        float(values.mean()),
        float(np.percentile(resampled, 2.5)),
        float(np.percentile(resampled, 97.5)),
    )
