"""How an image or a crop is asked about: the neighbours, their weighting and how a typed prompt
meets the answer. The one declaration `luna search`, `luna condition` and the ComfyUI
conditioning nodes are made from (luna_core.declare); the mix modes themselves are mixing.py's."""

from __future__ import annotations

from dataclasses import dataclass

from luna_core.ask.mixing import (
    DEFAULT_ALPHA,
    DEFAULT_K,
    DEFAULT_TEMPERATURE,
    MAX_K,
    MODES,
    check_inputs,
)
from luna_core.declare import check_declared, option


def k_option(help: str):
    """The neighbour count, bounded alike wherever it is declared (asking, refining)."""
    return option(DEFAULT_K, help, low=1, high=MAX_K)


def temperature_option():
    return option(
        DEFAULT_TEMPERATURE,
        "softmax temperature of the neighbour weights",
        low=0.0,
        low_open=True,
        step=0.005,
    )


def alpha_option(help: str):
    return option(DEFAULT_ALPHA, help, low=0.0, high=1.0, step=0.05)


@dataclass(frozen=True)
class AskOptions:
    k: int = k_option("neighbours to use")
    temperature: float = temperature_option()
    prompt: str | None = option(None, "a typed prompt to mix the answer into")
    negative_prompt: str | None = option(
        None, "the typed prompt's negative (blend, concat; default: SDXL's zeros)"
    )
    mode: str = option(
        MODES[0],
        "replace: the answer alone; blend: (1-alpha)*typed + alpha*answer, negatives too; "
        "concat: typed tokens then the answer's, pooled from the typed (docs/usage.md)",
        choices=MODES,
    )
    alpha: float = alpha_option("the answer's share in blend mode")

    def check(self, neighbours: bool = True) -> None:
        """Every value within its bounds, and the mix usable as asked; `neighbours`: the vault
        answers (k and temperature matter), not a projector."""
        check_declared(self)
        check_inputs(
            self.mode,
            self.alpha,
            self.prompt,
            self.k if neighbours else None,
            self.temperature if neighbours else None,
        )
