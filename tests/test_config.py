"""Settings: one table, one precedence (argument > environment > luna.toml > default), luna.toml
read again only when it changes, and `luna config` saying where each value came from."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import luna_core.home.settings as config
from luna_core.errors import LunaConfigError
from luna_core.home.home import LunaHome
from luna_core.home.settings import KEYS, KEYS_BY_NAME, Settings

ROOT = Path(__file__).resolve().parents[1]


def _sample(key) -> tuple[object, object, object]:
    """Three distinct values of the key's kind: for luna.toml, the environment and an argument."""
    if isinstance(key.default, float):
        return 0.5, "0.75", 0.9
    if isinstance(key.default, int):
        return 3, "5", 7
    return "from-toml", "from-env", "from-argument"


@pytest.mark.parametrize("key", KEYS, ids=lambda k: k.name)
def test_every_key_has_one_precedence(key):
    toml_value, env_value, argument = _sample(key)
    toml = {key.table: {key.field: toml_value}} if key.in_toml else {}
    env = {key.env: env_value}
    assert Settings({}, {}).setting(key.name).source == "default"
    if key.in_toml:
        assert Settings(toml, {}).get(key.name) == toml_value
        assert (
            Settings(toml, {}).setting(key.name).where() == f"luna.toml [{key.table}] {key.field}"
        )
    assert Settings(toml, env).get(key.name) == env_value
    assert Settings(toml, env).setting(key.name).source == f"${key.env}"
    assert Settings(toml, env, {key.name: argument}).get(key.name) == argument
    assert Settings(toml, env, {key.name: argument}).setting(key.name).source == "argument"


def test_the_model_profile_follows_the_same_precedence(tmp_path, monkeypatch):
    home = LunaHome.resolve(tmp_path / "home")
    home.set_model_profile("tiny")
    monkeypatch.delenv("LUNA_PROFILE", raising=False)
    assert home.model_profile() == "tiny" and home.recorded_model_profile() == "tiny"
    monkeypatch.setenv("LUNA_PROFILE", "sdxl")
    assert home.model_profile() == "sdxl"  # the environment beats luna.toml, as for every key
    assert home.model_profile("tiny") == "tiny"  # and an argument beats both
    assert home.recorded_model_profile() == "tiny"


def test_luna_toml_is_parsed_again_only_when_it_changes(tmp_path, monkeypatch):
    home = LunaHome.resolve(tmp_path / "home")
    home.set_setting("vault", "shards", 2)
    parses = []
    real = config.tomllib.loads
    monkeypatch.setattr(config.tomllib, "loads", lambda text: parses.append(text) or real(text))
    for _ in range(5):
        assert home.vault_shards() == 2
    assert len(parses) <= 1
    home.set_setting("vault", "shards", 16)
    assert home.vault_shards() == 16 and len(parses) <= 2
    copy = home.config()
    copy["vault"]["shards"] = 999  # a caller's copy: changing it changes nothing cached
    assert home.vault_shards() == 16


def test_a_bad_value_names_where_it_came_from(tmp_path, monkeypatch):
    monkeypatch.delenv("LUNA_VAULT_SHARDS", raising=False)
    home = LunaHome.resolve(tmp_path / "home")
    home.set_setting("vault", "shards", "many")
    with pytest.raises(LunaConfigError, match=r"luna.toml \[vault\] shards = 'many'.*1 to 1024"):
        home.vault_shards()
    monkeypatch.setenv("LUNA_VAULT_SHARDS", "0")
    with pytest.raises(LunaConfigError, match=r"\$LUNA_VAULT_SHARDS = '0'"):
        home.vault_shards()
    monkeypatch.setenv("LUNA_RETRAIN_GROWTH", "-1")
    from luna_core.projector.policy import growth_share

    with pytest.raises(
        LunaConfigError, match=r"\$LUNA_RETRAIN_GROWTH = '-1': need a number above 0"
    ):
        growth_share(home)


def test_every_luna_variable_is_named_in_the_one_table():
    """No module names a $LUNA_* variable of its own: each comes from config.KEYS."""
    names = {key.env for key in KEYS}
    found = {}
    for package in (
        "luna_core",
        "luna_assets",
        "luna_cli",
        "luna_service",
        "comfyui_luna",
        "dagster_project",
    ):
        for path in (ROOT / package).rglob("*.py"):
            if path == ROOT / "luna_core" / "home" / "settings.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    for name in re.findall(r"^(LUNA_[A-Z_]+)$", node.value):
                        found.setdefault(name, []).append(str(path.relative_to(ROOT)))
    assert found == {}, f"$LUNA_* names outside luna_core/home/settings.py: {found}"
    assert len(names) == len(KEYS)


def test_the_settings_page_lists_exactly_the_table():
    page = (ROOT / "docs" / "settings.md").read_text()
    rows = re.findall(r"^\| `([a-z_.]+)` \| `(LUNA_[A-Z_]+)` \|", page, re.MULTILINE)
    assert rows == [(key.name, key.env) for key in KEYS]


def test_luna_config_says_where_each_value_came_from(tmp_path):
    home = LunaHome.resolve(tmp_path / "home")
    home.set_setting("schedules", "reindex_cron", "0 1 * * *")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("LUNA_")}
    env["LUNA_VAULT_SHARDS"] = "4"
    env["LUNA_POSTGRES_URL"] = "postgresql://luna:secret@db/luna"
    out = subprocess.run(
        [str(Path(sys.executable).with_name("luna")), "config", "--home", str(home.root), "--json"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    rows = {row["setting"]: row for row in json.loads(out)}
    assert set(rows) == set(KEYS_BY_NAME)
    assert (rows["vault.shards"]["value"], rows["vault.shards"]["from"]) == (
        "4",
        "$LUNA_VAULT_SHARDS",
    )
    assert rows["schedules.reindex_cron"]["from"] == "luna.toml [schedules] reindex_cron"
    assert rows["schedules.retrain_cron"]["from"] == "default"
    assert rows["home"]["from"] == "argument"
    assert (
        "secret" not in out
        and rows["operations.postgres_url"]["value"] == "postgresql://luna:***@db/luna"
    )
