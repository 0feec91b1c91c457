"""ComfyUI node inputs made from a declaration (luna_core.declare): a widget per option with its
default, bounds and help as the tooltip. ComfyUI sends every widget's value, so a node's function
takes each option as a named parameter and builds the declaration from them."""

from __future__ import annotations

from typing import Any

from luna_core.declare import Declared, declared

NONE = "none"  # the combo entry of an optional choice left unset
HOME_INPUT = (
    "STRING",
    {"default": "", "tooltip": "Luna home folder (empty: $LUNA_HOME, else ./luna_home)"},
)
WIDGETS = {bool: "BOOLEAN", int: "INT", float: "FLOAT", str: "STRING"}


def _widget(one: Declared) -> tuple:
    spec = one.spec
    if one.repeated and spec.choices:
        tip = f"{spec.help}: some of {', '.join(spec.choices)}, comma-separated"
        return ("STRING", {"default": ",".join(one.default), "tooltip": tip})
    if spec.choices:
        choices = ([NONE] if one.optional else []) + list(spec.choices)
        default = NONE if one.default is None else one.default
        return (choices, {"default": default, "tooltip": spec.help})
    if one.repeated:
        raise TypeError(f"{one.name}: a repeated option needs its own input type in ComfyUI")
    extra: dict[str, Any] = {"tooltip": spec.help}
    if one.kind in (int, float):
        low = spec.low
        if low is not None and spec.low_open:
            low += spec.step or 1
        if low is not None:
            extra["min"] = low if one.kind is float else int(low)
        if spec.high is not None:
            extra["max"] = spec.high if one.kind is float else int(spec.high)
        if spec.step is not None:
            extra["step"] = spec.step
    default = "" if one.default is None else one.default
    return (WIDGETS[one.kind], {"default": default, **extra})


def option_inputs(options: type, omit: dict[str, str], types: dict[str, tuple]) -> dict:
    """name: ComfyUI input for every option `omit` does not name; `types` gives an option another
    input type (a connection from another node: its value then arrives as that node made it)."""
    return {
        one.name: types.get(one.name) or _widget(one)
        for one in declared(options)
        if one.name not in omit
    }


def read_inputs(options: type, values: dict[str, Any], omit: dict[str, str]):
    """The declaration's instance from a node's inputs: "" and "none" mean unset where None is a
    value, and an omitted option keeps its default."""
    given = {}
    for one in declared(options):
        if one.name in omit or one.name not in values:
            continue
        value = values[one.name]
        if one.optional and value in ("", NONE):
            value = None
        if one.repeated and isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        given[one.name] = tuple(value or ()) if one.repeated else value
    return options(**given)


def widget_defaults(node: type) -> dict[str, Any]:
    """The value of every required widget of a node as ComfyUI's page fills it in: its default,
    or a combo's first entry."""
    values = {}
    for name, spec in node.INPUT_TYPES()["required"].items():
        kind, extra = spec[0], (spec[1] if len(spec) > 1 else {})
        if isinstance(kind, list):
            values[name] = extra.get("default", kind[0])
        elif "default" in extra:
            values[name] = extra["default"]
    return values
