"""Command-line options made from a declaration (luna_core.declare): a flag per option with its
type, default and help; values are checked by the declaration's own check, so `luna refine` says
what the launchpad and the ComfyUI node say."""

from __future__ import annotations

import argparse
from typing import Any

from luna_core.declare import Declared, declared


def _parse(one: Declared):
    """An argparse type for one value; a repeated option with choices takes a comma list too."""

    def parse(text: str) -> Any:
        try:
            return one.kind(text)
        except ValueError:
            kind = "a whole number" if one.kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {kind}") from None

    def parse_list(text: str) -> list:
        return [parse(part.strip()) for part in text.split(",") if part.strip()]

    return parse_list if one.repeated and one.spec.choices else parse


def add_declared(parser: argparse.ArgumentParser, options: type, omit: dict[str, str]) -> None:
    """A flag for every option of `options` but those `omit` names (each with its reason)."""
    for one in declared(options):
        if one.name in omit:
            continue
        shown = ",".join(one.default) if one.repeated else one.default
        hidden = shown is None or shown is False or shown == ""
        help = one.spec.help + ("" if hidden else f" (default {shown})")
        if one.spec.choices and one.repeated:
            help += f"; some of {', '.join(one.spec.choices)}, comma-separated or repeated"
        help = help.replace("%", "%%")
        if one.kind is bool:
            if one.default:
                raise TypeError(f"{one.name}: a flag turns an option on; declare it False")
            parser.add_argument(one.flag, dest=one.name, action="store_true", help=help)
        elif one.repeated:
            parser.add_argument(
                one.flag,
                dest=one.name,
                action="append",
                type=_parse(one),
                metavar=one.spec.metavar,
                help=help,
            )
        else:
            parser.add_argument(
                one.flag,
                dest=one.name,
                type=_parse(one),
                default=one.default,
                choices=one.spec.choices,
                metavar=one.spec.metavar,
                help=help,
            )


def read_declared(options: type, args: argparse.Namespace, omit: dict[str, str]):
    """The declaration's instance from parsed arguments; omitted options keep their defaults."""
    values = {}
    for one in declared(options):
        if one.name in omit:
            continue
        value = getattr(args, one.name)
        if one.repeated:
            # append: None when never given; a comma list arrives as a list per flag
            given = value or []
            flat = [v for item in given for v in (item if isinstance(item, list) else [item])]
            value = tuple(flat) if given else one.default
        values[one.name] = value
    return options(**values)
