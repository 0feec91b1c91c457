"""User-facing options declared once: a frozen dataclass whose fields carry their help text,
bounds and choices. The `luna` command line, the Dagster launchpad and the ComfyUI nodes are made
from the declaration (`luna_cli/declared.py`, `luna_assets/launchpad.py`,
`comfyui_luna/inputs.py`); none of them restates a default, and one check holds every value to
its bounds whichever surface it came from."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any

from luna_core.errors import LunaConfigError

KINDS = (bool, int, float, str)  # bool before int: a bool is an int to isinstance


@dataclass(frozen=True)
class OptionSpec:
    help: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # the low bound itself is refused: (low, high]
    choices: tuple[str, ...] | None = None
    flag: str | None = None  # the command line's name, when not --the-field-name
    metavar: str | None = None
    step: float | None = None  # a slider's step in ComfyUI


def option(default: Any, help: str, **spec: Any) -> Any:
    """A dataclass field declared as a user-facing option (see OptionSpec for `spec`)."""
    return dataclasses.field(default=default, metadata={"option": OptionSpec(help, **spec)})


@dataclass(frozen=True)
class Declared:
    """One option as every surface sees it."""

    name: str
    kind: type  # bool, int, float or str
    default: Any
    optional: bool  # None is a value (nothing given)
    repeated: bool  # a tuple of `kind`: the command line repeats the flag
    spec: OptionSpec

    @property
    def flag(self) -> str:
        return self.spec.flag or "--" + self.name.replace("_", "-")

    def check(self, value: Any) -> None:
        """Refuse a value outside this option's bounds or choices, naming the option."""
        values = value if self.repeated else (value,)
        for one in values:
            if one is None and (self.optional or self.repeated):
                continue
            if self.kind in (int, float) and not isinstance(one, bool):
                number = float(one)
                if not math.isfinite(number):
                    raise LunaConfigError(f"{self.name} must be a finite number (got {one})")
                low, high = self.spec.low, self.spec.high
                if low is not None and (number < low or (self.spec.low_open and number == low)):
                    side = "over" if self.spec.low_open else "at least"
                    raise LunaConfigError(f"{self.name} must be {side} {low:g} (got {one})")
                if high is not None and number > high:
                    raise LunaConfigError(f"{self.name} must be at most {high:g} (got {one})")
            if self.spec.choices is not None and one not in self.spec.choices:
                raise LunaConfigError(
                    f"{self.name} must be one of {', '.join(self.spec.choices)} (got {one!r})"
                )


def _kind_of(hint: Any) -> tuple[type, bool, bool]:
    """(kind, optional, repeated) of a field's type hint: int, float | None, tuple[str, ...]."""
    optional = False
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        parts = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(parts) < len(typing.get_args(hint))
        (hint,) = parts
    if typing.get_origin(hint) is tuple:
        return typing.get_args(hint)[0], optional, True
    if hint not in KINDS:
        raise TypeError(f"an option must be bool, int, float, str or a tuple of one: {hint}")
    return hint, optional, False


def declared(options: type) -> tuple[Declared, ...]:
    """Every option of a declaration, in the order it declares them."""
    hints = typing.get_type_hints(options)
    out = []
    for f in dataclasses.fields(options):
        spec = f.metadata.get("option")
        if spec is None:
            continue
        kind, optional, repeated = _kind_of(hints[f.name])
        out.append(Declared(f.name, kind, f.default, optional, repeated, spec))
    return tuple(out)


def check_declared(values: Any) -> None:
    """Every option of a declaration's instance within its bounds and choices."""
    for one in declared(type(values)):
        one.check(getattr(values, one.name))
