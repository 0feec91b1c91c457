"""`luna report [--open]`: the latest refinement report's headline table and where it is."""

from __future__ import annotations

import argparse
import shutil
import subprocess

from luna_core.errors import LunaConfigError, NotBuiltError
from luna_core.settings import LunaHome


def print_report(folder, report: dict) -> None:
    from luna_cli.output import print_table
    from luna_core.reports.render import HEADLINE_COLUMNS, headline_rows

    print(f"\nRefinement report {report['created']} (profile {report['profile']}, index v{report['index_version']}, "
          f"{report['split_sizes'].get('test scored', 0)} test images)")
    if report.get("warning"):
        print(f"  {report['warning']}")
    print_table(headline_rows(report), list(HEADLINE_COLUMNS), {"source": 36, "token cos": 26, "pooled cos": 26,
                                                                 "MSE": 26})
    if report.get("projector_verdict"):
        print(f"  projector vs mean: {report['projector_verdict']}")
    print(f"  report → {folder / 'report.html'} (and report.md beside it)")


def cmd_report(args: argparse.Namespace) -> int:
    from luna_core.reports.report import latest_report

    home = LunaHome.existing(args.home)
    latest = latest_report(home)
    if latest is None:
        raise NotBuiltError(f"no report in {home.reports_dir} yet: materialize refinement_report (or run `luna demo`)")
    folder, report = latest
    print_report(folder, report)
    if args.open:
        opener = shutil.which("xdg-open") or shutil.which("open")
        if opener is None:
            raise LunaConfigError(f"no program to open {folder / 'report.html'} with (xdg-open or open): open it by hand")
        subprocess.Popen([opener, str(folder / "report.html")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return 0


def add_parser(sub) -> None:
    cmd = sub.add_parser("report", help="the latest refinement report: headline table and path")
    cmd.add_argument("--open", action="store_true", help="open the HTML report with the system's opener")
    cmd.add_argument("--home", help="Luna home folder (default: $LUNA_HOME, else ./luna_home)")
    cmd.set_defaults(func=cmd_report)

