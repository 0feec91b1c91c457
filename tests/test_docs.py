"""The README and docs/ stay true: every asset is in the README's table with a code path that exists,
every path named in the table exists, and every `luna` command shown parses with today's CLI."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _commands() -> list[tuple[str, str]]:
    """(page, command line) for each `.venv/bin/luna …` line of a code block (continuations joined)."""
    found = []
    for page in PAGES:
        in_code, pending = False, ""
        for line in page.read_text().splitlines():
            if line.startswith("```"):
                in_code = not in_code
                continue
            if not in_code:
                continue
            line = pending + line
            pending = ""
            if line.rstrip().endswith("\\"):
                pending = line.rstrip()[:-1] + " "
                continue
            if line.lstrip().startswith(".venv/bin/luna "):
                found.append((page.name, line.strip()))
    return found


def test_the_readme_is_short_and_links_pages_that_exist():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    for target in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / target).is_file(), target
    for page in PAGES[1:]:
        assert "[← README](../README.md)" in page.read_text(), page.name


def test_every_asset_is_in_the_readme_table_with_code_that_exists(tmp_path, monkeypatch):
    from luna_assets.definitions import build_definitions

    monkeypatch.setenv("LUNA_HOME", str(tmp_path / "home"))
    keys = {k.to_user_string() for k in build_definitions().resolve_all_asset_keys()}
    rows = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| `")]
    in_table = {re.match(r"\| `([a-z_]+)`", row).group(1): row for row in rows}
    assert keys <= set(in_table), keys - set(in_table)
    for key in keys:
        for path in re.findall(r"`((?:luna_assets|luna_core)/[^`]+)`", in_table[key]):
            assert (ROOT / path).exists(), f"{key}: {path}"


@pytest.mark.parametrize("page, command", _commands())
def test_every_command_shown_parses(page, command):
    from luna_cli.parser import build_parser, normalize_argv

    argv = shlex.split(command, comments=True)[1:]
    try:
        build_parser().parse_args(normalize_argv(argv))
    except SystemExit as exc:
        pytest.fail(f"{page}: `{command}` does not parse with today's CLI (exit {exc.code})")
