"""Launchpad config classes made from a declaration (luna_core.declare): a field per option, with
its default and its help as the description the launchpad shows. Values are checked by the
declaration's own check when the run starts, with the words `luna refine` uses."""

from __future__ import annotations

from typing import Any

import dagster as dg
from pydantic import Field, create_model

from luna_core.declare import Declared, declared


def _annotation(one: Declared) -> Any:
    kind = list[one.kind] if one.repeated else one.kind
    return kind | None if one.optional else kind


def launchpad_config(
    name: str,
    options: type,
    description: str,
    omit: dict[str, str],
    fields: dict[str, tuple[Any, Any, str]],
) -> type[dg.Config]:
    """A dg.Config subclass: the surface's own `fields` (name: (type, default, description))
    first, then every option of `options` that `omit` does not name."""
    made = {
        key: (kind, Field(default, description=text))
        for key, (kind, default, text) in fields.items()
    }
    for one in declared(options):
        if one.name in omit:
            continue
        default = list(one.default) if one.repeated else one.default
        made[one.name] = (_annotation(one), Field(default, description=one.spec.help))
    config = create_model(name, __base__=dg.Config, **made)
    config.__doc__ = description
    return config


def read_config(options: type, config: dg.Config, omit: dict[str, str]):
    """The declaration's instance from a run's config; omitted options keep their defaults."""
    values = {}
    for one in declared(options):
        if one.name not in omit:
            value = getattr(config, one.name)
            values[one.name] = tuple(value) if one.repeated else value
    return options(**values)
