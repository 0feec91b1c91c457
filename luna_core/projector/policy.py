"""When to retrain the projector: not on every new image, but once the training pairs grew by a
share since the pairs that trained @champion (or on a weekly cron, which the asset's automation
condition holds)."""

from __future__ import annotations

from dataclasses import dataclass

from luna_core.catalog.connection import open_catalog
from luna_core.home.home import LunaHome
from luna_core.home.settings import KEYS_BY_NAME
from luna_core.projector.registry import Registry
from luna_core.projector.request import REGISTERED_NAME

GROWTH = KEYS_BY_NAME[
    "projector.retrain_growth"
]  # retrain once the training pairs grew by this share


@dataclass(frozen=True)
class RetrainDecision:
    due: bool
    reason: str
    train_pairs: int
    champion_pairs: int | None = None


def growth_share(home: LunaHome, value: str | None = None) -> float:
    """The configured growth share (`value`, else $LUNA_RETRAIN_GROWTH, else luna.toml [projector]
    retrain_growth, else 0.25): a share above 0, e.g. 0.25 for a quarter more pairs."""
    return home.settings({"projector.retrain_growth": value}).number(
        "projector.retrain_growth", 0.0
    )


def train_pairs_now(home: LunaHome) -> int:
    """Training pairs the library holds now (train split, with an image embedding and a prompt
    row)."""
    if not home.catalog_path.exists():
        return 0
    with open_catalog(home.catalog_path, read_only=True) as con:
        if not con.execute(
            "SELECT count(*) FROM duckdb_views() WHERE view_name = 'library'"
        ).fetchone()[0]:
            return 0
        return con.execute("""SELECT count(*) FROM library WHERE split = 'train'
                              AND vision_row IS NOT NULL AND prompt_row IS NOT NULL""").fetchone()[
            0
        ]


def retrain_decision(
    home: LunaHome, share: float, name: str = REGISTERED_NAME, uri: str | None = None
) -> RetrainDecision:
    """Whether the training pairs grew by `share` since @champion's; with no champion, never (the
    asset's own condition trains the first one)."""
    now = train_pairs_now(home)
    champion = Registry(home, uri).champion_training(name)
    if champion is None:
        return RetrainDecision(False, f"{name} has no @champion yet; {now:,} training pairs", now)
    before = champion["train_pairs"]
    grown = (now - before) / max(1, before)
    if grown >= share:
        return RetrainDecision(
            True,
            f"{now:,} training pairs, {grown:+.0%} since @champion v{champion['version']} "
            f"was trained on {before:,} (threshold {share:.0%})",
            now,
            before,
        )
    return RetrainDecision(
        False,
        f"{now:,} training pairs, {grown:+.0%} since @champion v{champion['version']}'s "
        f"{before:,} (retrains at {share:.0%})",
        now,
        before,
    )
