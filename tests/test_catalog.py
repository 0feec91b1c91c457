"""The catalog's schema version: created once, migrated forward, a newer one refused;
transactions roll back."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from luna_core.catalog import connection as catalog
from luna_core.catalog.connection import open_catalog
from luna_core.errors import LunaConfigError


def _version(path: Path) -> str:
    with duckdb.connect(str(path), read_only=True) as con:
        return con.execute("SELECT value FROM schema_info WHERE key = 'schema_version'").fetchone()[
            0
        ]


def test_a_newer_catalog_is_refused_naming_both_versions(tmp_path: Path):
    db = tmp_path / "c.duckdb"
    with open_catalog(db):
        pass
    with duckdb.connect(str(db)) as con:
        con.execute("UPDATE schema_info SET value = '99' WHERE key = 'schema_version'")
    for read_only in (False, True):
        with pytest.raises(
            LunaConfigError, match=f"schema version 99.*up to {catalog.SCHEMA_VERSION}"
        ):
            with open_catalog(db, read_only=read_only):
                pass
    assert _version(db) == "99", "nothing written to a catalog Luna does not understand"


def test_current_catalog_runs_no_ddl_and_an_older_one_migrates_forward(tmp_path: Path, monkeypatch):
    db = tmp_path / "c.duckdb"
    with open_catalog(db):
        pass
    monkeypatch.setattr(
        catalog, "SCHEMA", ["SELECT error('DDL must not run on a current catalog')"]
    )
    with open_catalog(db) as con:
        assert con.execute("SELECT count(*) FROM images").fetchone() == (0,)

    # Version 1 → 2 through a migration.
    monkeypatch.setattr(catalog, "SCHEMA_VERSION", catalog.SCHEMA_VERSION + 1)
    monkeypatch.setattr(
        catalog,
        "MIGRATIONS",
        {catalog.SCHEMA_VERSION - 1: ["ALTER TABLE images ADD COLUMN note VARCHAR"]},
    )
    with open_catalog(db) as con:
        assert "note" in [row[0] for row in con.execute("DESCRIBE images").fetchall()]
    assert _version(db) == str(catalog.SCHEMA_VERSION)


def test_a_missing_migration_is_a_clear_error_and_changes_nothing(tmp_path: Path, monkeypatch):
    db = tmp_path / "c.duckdb"
    with open_catalog(db):
        pass
    monkeypatch.setattr(catalog, "SCHEMA_VERSION", catalog.SCHEMA_VERSION + 2)
    monkeypatch.setattr(
        catalog,
        "MIGRATIONS",
        {catalog.SCHEMA_VERSION - 2: ["ALTER TABLE images ADD COLUMN note VARCHAR"]},
    )
    with pytest.raises(LunaConfigError, match="no migration"):
        with open_catalog(db):
            pass
    with duckdb.connect(str(db), read_only=True) as con:
        assert "note" not in [row[0] for row in con.execute("DESCRIBE images").fetchall()], (
            "rolled back"
        )


def test_a_failed_library_build_leaves_no_half_assigned_ids(library_home, monkeypatch):
    from luna_core.catalog import library_view as library

    home, profile = library_home
    with duckdb.connect(str(home.catalog_path)) as con:
        con.execute("DELETE FROM splits")
        before = con.execute("SELECT count(*) FROM image_ids").fetchone()[0]
        con.execute("DELETE FROM image_ids")
    # the view's SQL now fails
    monkeypatch.setattr(library, "_quote", lambda text: "no_such_column")
    with pytest.raises(duckdb.Error):
        library.build_library(home, profile)
    with duckdb.connect(str(home.catalog_path), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM image_ids").fetchone()[0] == 0
        assert con.execute("SELECT count(*) FROM splits").fetchone()[0] == 0
    monkeypatch.undo()
    assert library.build_library(home, profile).new_ids == before


def test_a_version_4_catalog_keeps_its_conditionings_and_learns_each_writers_syntax(library_home):
    """Schema 4 → 5: rows encoded literally before stay (under the text's own hash); each
    generation gets its writer's syntax; the prompts it reads by rules get new keys, encoded by
    the next build, nothing lost."""
    home, profile = library_home
    with duckdb.connect(str(home.catalog_path)) as con:
        before = con.execute("SELECT count(*) FROM text_rows").fetchone()[0]
        # Back to how a version-4 catalog looked: no syntax, no chunks, the prompts view of one hash
        # per text.
        con.execute("DROP VIEW IF EXISTS library")
        con.execute("DROP VIEW prompts")
        con.execute("ALTER TABLE generations DROP COLUMN prompt_syntax")
        con.execute("ALTER TABLE text_rows DROP COLUMN chunks")
        con.execute("ALTER TABLE retired_rows DROP COLUMN chunks")
        con.execute("""CREATE VIEW prompts AS
                       SELECT sha256(text) AS prompt_hash, text AS prompt, length(text) AS chars
                       FROM (SELECT prompt AS text FROM generations UNION SELECT negative_prompt
                           FROM generations)
                       WHERE text IS NOT NULL""")
        con.execute("UPDATE schema_info SET value = '4' WHERE key = 'schema_version'")
    with open_catalog(home.catalog_path) as con:
        assert (
            con.execute("SELECT value FROM schema_info WHERE key = 'schema_version'").fetchone()[0]
            == "5"
        )
        syntaxes = dict(
            con.execute(
                "SELECT generator, any_value(prompt_syntax) FROM generations GROUP BY 1"
            ).fetchall()
        )
        assert syntaxes["AUTOMATIC1111"] == "a1111" and syntaxes["ComfyUI"] == "comfy"
        assert con.execute("SELECT count(*), min(chunks) FROM text_rows").fetchone() == (before, 1)
        keys = {
            k
            for (k,) in con.execute(
                "SELECT prompt_hash FROM prompts WHERE syntax <> 'literal'"
            ).fetchall()
        }
        plain = {
            k
            for (k,) in con.execute(
                "SELECT sha256(prompt) FROM prompts WHERE syntax <> 'literal'"
            ).fetchall()
        }
        assert keys and not keys & plain, "the same text read by rules is another conditioning"
