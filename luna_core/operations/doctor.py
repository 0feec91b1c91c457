"""`luna doctor`: one pass over a home that finds what is missing, damaged or stale, and says which
command fixes each finding. Repairs are plain: a damaged store is removed (the catalog and the
library rebuild it), then a build brings every asset back; a damaged index version is replaced by
that build.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from luna_core.catalog import connection as catalog
from luna_core.errors import LunaError
from luna_core.home.home import LunaHome
from luna_core.index.build import LOOKUP_COLUMNS, _library_rows, lookup_digest
from luna_core.index.store import index_store, load_index
from luna_core.projector.registry import Registry
from luna_core.vault.checks import check_store
from luna_core.vault.store import TEXT_LAYOUT, RowStore

MIN_FREE_BYTES = 1 << 30  # below this a build may run out of space midway


@dataclass
class Finding:
    severity: str  # ok | warning | error
    what: str
    detail: str
    fix: str = ""  # the command that repairs it
    remove: Path | None = None  # what `--repair` deletes before rebuilding (a damaged store)
    # a store `--repair` rewrites with checksums (written before them)
    add_checksums: Path | None = None

    def line(self) -> str:
        fix = f"  → {self.fix}" if self.fix else ""
        return f"{self.severity.upper():7s} {self.what}: {self.detail}{fix}"


def diagnose(home: LunaHome) -> list[Finding]:
    build = f"luna build --home {home.root}"
    findings: list[Finding] = []
    if not home.catalog_path.exists():
        return [
            Finding(
                "error",
                "catalog",
                f"no catalog at {home.catalog_path}",
                f"luna ingest ROOT --home {home.root}",
            )
        ]
    try:
        with catalog.open_catalog(home.catalog_path, read_only=True) as con:
            version = catalog.stored_schema_version(con)
            stores = catalog.vault_stores(con)
        findings.append(
            Finding("ok", "catalog", f"schema version {version}, {len(stores)} vault store(s)")
        )
    except LunaError as exc:
        return [Finding("error", "catalog", str(exc))]
    try:
        profile = home.profile()
    except LunaError as exc:
        return findings + [Finding("error", "models", str(exc))]
    findings += _stores(home, profile, stores, build)
    findings += _index(home, profile, build)
    findings += _registry(home)
    free = shutil.disk_usage(home.root).free
    findings.append(
        Finding(
            "ok" if free >= MIN_FREE_BYTES else "warning",
            "disk",
            f"{free / 1e9:.1f} GB free under {home.root}",
            "" if free >= MIN_FREE_BYTES else "free some space before the next build",
        )
    )
    return findings


def _stores(home: LunaHome, profile, stores: list[dict], build: str) -> list[Finding]:
    out = []
    for kind, path in (("vision", home.vision_store(profile)), ("text", home.text_store(profile))):
        listed = next(
            (s for s in stores if s["kind"] == kind and f"{s['store_key']}.zarr" == path.name), None
        )
        if not path.exists():
            if listed and listed["rows"]:
                out.append(
                    Finding(
                        "error",
                        f"{kind} store",
                        f"{path} is missing but the catalog lists {listed['rows']} rows in it",
                        build,
                    )
                )
            else:
                out.append(Finding("warning", f"{kind} store", f"not built yet ({path})", build))
            continue
        try:
            outcomes = check_store(home, profile, kind)
        except LunaError as exc:
            out.append(
                Finding(
                    "error", f"{kind} store", str(exc), f"rm -rf {path} && {build}", remove=path
                )
            )
            continue
        failed = [o for o in outcomes if not o.passed]
        if failed:
            out.append(
                Finding(
                    "error",
                    f"{kind} store",
                    "; ".join(f"{o.name}: {o.description}" for o in failed),
                    f"rm -rf {path} && {build}",
                    remove=path,
                )
            )
        else:
            opened = RowStore.open_readonly(path, TEXT_LAYOUT)
            checksummed = opened.checksummed
            if kind == "text" and checksummed and opened.codec != home.text_codec():
                out.append(
                    Finding(
                        "ok",
                        "text store",
                        f"kept as {opened.codec}; new stores use {home.text_codec()}",
                        f"luna doctor --recode --home {home.root}  (rewrites it, crash-safe)",
                    )
                )
            out.append(
                Finding(
                    "ok" if checksummed else "warning",
                    f"{kind} store",
                    f"{outcomes[0].metadata.get('committed rows', 0)} rows; counts and norms "
                    "verified"
                    + (
                        "; checksums verified"
                        if checksummed
                        else "; written before Luna added checksums: damage can only show as bad "
                        "values"
                    ),
                    ""
                    if checksummed
                    else f"luna doctor --repair --home {home.root}  (adds them in place)",
                    add_checksums=None if checksummed else path,
                )
            )
    return out


def _index(home: LunaHome, profile, build: str) -> list[Finding]:
    store = index_store(home, profile)
    try:
        if store.current() is None:
            return [Finding("warning", "index", "not built yet", build)]
        loaded = load_index(store)
    except LunaError as exc:
        return [Finding("error", "index", str(exc), build)]
    try:
        fresh = lookup_digest(_library_rows(home).select(list(LOOKUP_COLUMNS)))
    except LunaError as exc:
        return [
            Finding(
                "warning",
                "index",
                f"v{loaded.version.number} verified; the library view: {exc}",
                build,
            )
        ]
    if loaded.meta.get("lookup_digest") != fresh:
        return [
            Finding(
                "warning",
                "index",
                f"v{loaded.version.number} is stale: the library changed since it was published",
                build,
            )
        ]
    if not loaded.meta.get("digests"):
        return [
            Finding(
                "warning",
                "index",
                f"v{loaded.version.number} was published before Luna recorded file "
                "digests: damage to it cannot be detected",
                build,
            )
        ]
    return [
        Finding(
            "ok",
            "index",
            f"v{loaded.version.number}: {int(loaded.index.ntotal):,} vectors, files verified, "
            "lookup current",
        )
    ]


def _registry(home: LunaHome) -> list[Finding]:
    registry = Registry(home)
    uri = registry.uri
    try:
        versions = registry.versions()
    except Exception as exc:  # noqa: BLE001 - a damaged registry database surfaces as anything
        return [
            Finding(
                "error",
                "registry",
                f"MLflow at {uri} cannot be read ({str(exc).splitlines()[0][:160]})",
                f"move {home.mlflow_dir / 'mlflow.db'} aside and rerun `luna build` (checkpoints "
                "stay under "
                f"{home.mlflow_dir / 'artifacts'})",
            )
        ]
    if not versions:
        return [
            Finding(
                "warning",
                "registry",
                f"no projector registered in {uri}",
                f"luna build --home {home.root}",
            )
        ]
    champion = next((v for v in versions if v.is_champion), None)
    if champion is None:
        return [
            Finding(
                "warning",
                "registry",
                f"{len(versions)} version(s) but no @champion",
                f"luna build --home {home.root}",
            )
        ]
    try:
        registry.load(champion.name, champion.version)
    except LunaError as exc:
        return [
            Finding(
                "error",
                "registry",
                f"@champion v{champion.version} cannot be loaded: {exc}",
                f"luna build --home {home.root}",
            )
        ]
    return [
        Finding(
            "ok", "registry", f"{len(versions)} version(s); @champion v{champion.version} loads"
        )
    ]
