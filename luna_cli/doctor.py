"""`luna doctor [--repair]`: check a home in one pass; print one line per finding with its fix."""

from __future__ import annotations

import argparse
import shutil

from luna_cli.build import report_run, run_build_all
from luna_core.home.home import LunaHome
from luna_core.vault.recode import recode_store
from luna_core.vault.store import TEXT_LAYOUT, VISION_LAYOUT, RowStore


def cmd_doctor(args: argparse.Namespace) -> int:
    # Dagster takes about two seconds to import: only the commands that run the chain pay for it
    import dagster as dg

    # Dagster takes about two seconds to import: only the commands that run the chain pay for it
    from luna_assets.runs import fail_dead_runs
    from luna_core.operations.doctor import Finding, diagnose

    home = LunaHome.existing(args.home)
    if args.recode:
        profile = home.profile()
        rewritten = recode_store(home.text_store(profile), TEXT_LAYOUT, home.text_codec())
        print(f"recode: {rewritten} text store(s) rewritten as {home.text_codec()}")
    findings = diagnose(home)
    if home.dagster_home.is_dir():
        dead = fail_dead_runs(dg.DagsterInstance.from_config(str(home.dagster_home)), mark=False)
        findings += [
            Finding("warning", "dagster run", line, f"luna doctor --repair --home {home.root}")
            for line in dead
        ]
    for finding in findings:
        print(finding.line())
    broken = [f for f in findings if f.severity == "error"]
    if not args.repair or not (broken or any(f.fix for f in findings)):
        return 1 if broken else 0

    for finding in findings:
        if finding.add_checksums is not None:
            layout = VISION_LAYOUT if finding.what.startswith("vision") else TEXT_LAYOUT
            store = RowStore.open_readonly(finding.add_checksums, layout)
            with store.writer():
                print(
                    f"repair: adding checksums to {finding.add_checksums}: "
                    f"{', '.join(store.add_checksums())}"
                )
    for finding in broken:
        if finding.remove is not None and finding.remove.is_relative_to(home.root):
            print(f"repair: removing the damaged {finding.what} {finding.remove}")
            shutil.rmtree(finding.remove)
    print(
        "repair: rebuilding every asset (luna build; runs left STARTED by a dead process are "
        "marked failed)…"
    )
    report_run(run_build_all(home.ensure()))
    findings = diagnose(home)
    print("after repair:")
    for finding in findings:
        print(finding.line())
    return 1 if any(f.severity == "error" for f in findings) else 0


def add_parser(sub) -> None:
    cmd = sub.add_parser(
        "doctor",
        help="check a home (schema, checksums, counts, index, registry, disk) and say "
        "how to fix each finding",
    )
    cmd.add_argument(
        "--repair", action="store_true", help="run the fixes: remove damaged stores, then rebuild"
    )
    cmd.add_argument(
        "--recode",
        action="store_true",
        help="first rewrite the text store in the codec new stores get (vault.text_codec), "
        "crash-safe",
    )
    cmd.add_argument("--home", help="Luna home folder (default: $LUNA_HOME, else ./luna_home)")
    cmd.set_defaults(func=cmd_doctor)
