"""`luna inspect FILE...`: what Luna reads from each file, through the same code path as ingest."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from luna_core.containers.probe import ProbeLimits
from luna_core.ingest.filereader import IngestedFile, read_file
from luna_core.ingest.scan import FileEntry
from luna_core.prompts.parsers import parse
from luna_core.prompts.syntax import syntax_for

FIELDS = (
    "generator",
    "generator_version",
    "source",
    "prompt",
    "negative_prompt",
    "seed",
    "steps",
    "sampler",
    "scheduler",
    "cfg_scale",
    "width",
    "height",
    "model",
    "model_hash",
    "loras",
)


def inspect_file(path: str, limits: ProbeLimits = ProbeLimits()) -> dict:
    """One file as ingest would catalogue it: the record, the container, warnings; or why it is
    quarantined."""
    try:
        stat = os.stat(path)
        entry = FileEntry(
            str(Path(path).absolute()),
            str(Path(path).absolute().parent),
            stat.st_size,
            stat.st_mtime_ns,
        )
    except OSError as exc:
        return {"path": path, "quarantined": "unreadable", "detail": exc.strerror or str(exc)}
    result = read_file(entry, limits)
    if not isinstance(result, IngestedFile):
        return {"path": path, "quarantined": result.reason, "detail": result.detail}
    generation = result.generation
    out = {
        "path": path,
        "format": result.format,
        "size": f"{result.width}x{result.height}",
        **{name: generation.get(name) for name in FIELDS},
        "warnings": list(result.warnings) + list(generation.get("warnings") or []),
        "extra": generation.get("extra") or {},
    }
    out["raw"] = generation.get("raw") or {}
    # Which rule read each field: the record's own container and key, unless a field came from
    # elsewhere.
    special = out["extra"].get("read_by", {}) if isinstance(out["extra"], dict) else {}
    out["read_by"] = {
        name: special.get(name, generation.get("source"))
        for name in FIELDS[3:]
        if generation.get(name) not in (None, "", [])
    }
    syntax = syntax_for(generation.get("generator"))
    out["prompt_parse"] = {
        side: parse(generation.get(side), syntax).as_dict()
        for side in ("prompt", "negative_prompt")
        if generation.get(side)
    }
    return out


def _shorten(value, width: int = 400) -> str:
    text = str(value)
    return text if len(text) <= width else text[:width] + f"… ({len(text):,} characters)"


def _parse_line(parsed: dict) -> str:
    """The weighted pieces as one line: weighted ones as (text:w), chunk breaks as ' | '."""
    parts = []
    for index, (text, weight) in enumerate(parsed["pieces"]):
        if index in parsed["breaks"]:
            parts.append(" | ")
        parts.append(text if weight == 1.0 else f"({text.strip()}:{weight:.3g})")
    return _shorten("".join(parts))


def cmd_inspect(args: argparse.Namespace) -> int:
    results = [inspect_file(path) for path in args.files]
    if args.json:
        for result in results:
            if not args.raw:
                result.pop("raw", None)
        print(
            json.dumps(
                results if len(results) > 1 else results[0],
                indent=2,
                ensure_ascii=False,
                default=str,
            )
        )
        return 1 if any("quarantined" in r for r in results) else 0
    for result in results:
        print(result["path"])
        if "quarantined" in result:
            print(f"  quarantined: {result['quarantined']}: {result['detail']}")
            continue
        for name in ("format", "size", *FIELDS):
            value = result.get(name)
            if name == "loras":
                value = (
                    ", ".join(f"{lora['name']}:{lora['weight']:g}" for lora in value)
                    if value
                    else None
                )
            if value is not None and value != "":
                print(f"  {name + ':':<18} {_shorten(value)}")
        for side, parsed in result.get("prompt_parse", {}).items():
            print(f"  {side + ' read as:':<18} {parsed['rules']}: {_parse_line(parsed)}")
            for removed in parsed["removed"]:
                print(
                    f"    taken out: {removed['kind']} "
                    f"{removed['name']}{':' + removed['value'] if removed['value'] else ''}"
                )
            for note in parsed["notes"]:
                print(f"    note: {note}")
        by_rule: dict[str, list[str]] = {}
        for name, rule in result.get("read_by", {}).items():
            by_rule.setdefault(str(rule), []).append(name)
        for rule, names in by_rule.items():
            print(f"  {'read from:':<18} {rule}: {', '.join(names)}")
        extra = result["extra"] if isinstance(result["extra"], dict) else {}
        for key, label in (
            ("prompt_unknown", "encoded text"),
            ("typed_prompt", "typed prompt"),
            ("prompt_parser", "weighting rules"),
            ("text_encoder_family", "text encoder"),
        ):
            if extra.get(key):
                print(f"  {label + ':':<18} {_shorten(extra[key])}")
        samplers = extra.get("samplers")
        if samplers and len(samplers) > 1:
            print(
                f"  {'samplers:':<18} {len(samplers)} "
                f"({', '.join(str(s.get('class_type')) for s in samplers)})"
            )
        for warning in result["warnings"]:
            print(f"  warning: {warning}")
        if args.raw:
            for key, value in result["raw"].items():
                print(f"  raw {key}: {value}")
        print()
    return 1 if any("quarantined" in r for r in results) else 0
