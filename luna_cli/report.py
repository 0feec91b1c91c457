"""`luna report [--open]`: the latest refinement report's headline table and where it is."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import textwrap

from luna_cli.output import print_table
from luna_core.errors import NotBuiltError
from luna_core.home.home import LunaHome
from luna_core.reports.ordering import ordering_lines, quality_of
from luna_core.reports.render import HEADLINE_COLUMNS, headline_rows


def print_report(folder, report: dict) -> None:
    test_set = report["test_set"]
    print(
        f"\nRefinement report {report['created']} (profile {report['profile']}, index "
        f"v{report['index_version']}, "
        f"{test_set['scored']} test images, series {test_set['series']})"
    )
    for text in (report["verdict"]["text"], report.get("warning"), test_set["described"]):
        if text:
            print(
                textwrap.fill(
                    text.replace("**", ""), width=110, initial_indent="  ", subsequent_indent="  "
                )
            )
    for reason, items in test_set.get("excluded", {}).items():
        print(f"  left out ({reason}): {len(items)}")
    print_table(
        headline_rows(report),
        list(HEADLINE_COLUMNS),
        {
            "source": 36,
            "token cos": 26,
            "pooled cos": 26,
            "MSE": 26,
            "R@1": 22,
            "R@5": 22,
            "CLIP-I": 32,
        },
    )
    benchmark = report.get("benchmark")
    if quality_of(report).get("clip_i"):
        print("  regeneration (CLIP-I, paired): " + "; ".join(ordering_lines(report)))
    print(
        f"  benchmark (regeneration, costs): {benchmark['created'] if benchmark else 'none yet'}"
        + ("" if benchmark else " (luna report --benchmark, or materialize refinement_benchmark)")
    )
    print(f"  report → {folder / 'report.html'} (and report.md beside it)")


def _open(path) -> None:
    """Open `path` with the system's opener; without a display (or an opener) say where it is
    instead."""

    opener = shutil.which("xdg-open") or shutil.which("open")
    if opener is None or (
        opener.endswith("xdg-open")
        and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    ):
        print(
            f"No browser can be opened here (no display or opener): open {path} on a machine "
            "with one, "
            f"e.g. after copying it; the file is standalone."
        )
        return
    subprocess.Popen([opener, str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(f"Opening {path}")


def cmd_report(args: argparse.Namespace) -> int:
    # pulls torch in (about a second to import): only the commands that need it pay for it
    from luna_core.reports.report import latest_report

    home = LunaHome.existing(args.home)
    if args.benchmark or args.new_test_set:
        _run(home, args)
    latest = latest_report(home)
    if latest is None:
        raise NotBuiltError(
            f"no report in {home.reports_dir} yet: materialize refinement_report (or run `luna "
            "demo`)"
        )
    folder, report = latest
    print_report(folder, report)
    if args.open:
        _open(folder / "report.html")
    return 0


def _run(home: LunaHome, args: argparse.Namespace) -> None:
    """On demand: the benchmark (regeneration, costs) and/or a new test series, then the report."""
    # pulls torch in (about a second to import): only the commands that need it pay for it
    from luna_core.reports.benchmark import run_benchmark
    from luna_core.reports.report import ReportSettings, build_report

    profile = home.profile()
    if args.benchmark:
        print(
            "Running the benchmark (regeneration sample, costs, batching): under a minute on the "
            "tiny profile, "
            "minutes with SDXL on a CPU…"
        )
        outcome = run_benchmark(home, profile, on_step=lambda message: print(f"  {message}"))
        print(f"  benchmark → {outcome.folder} ({outcome.result['seconds']} s)")
    outcome = build_report(home, profile, ReportSettings(new_test_set=args.new_test_set))
    print(f"  report: {outcome.reason}")


def add_parser(sub) -> None:
    cmd = sub.add_parser(
        "report", help="the latest refinement report: verdict, headline table and path"
    )
    cmd.add_argument(
        "--open",
        action="store_true",
        help="open the HTML report with the system's opener (without a display: print where it is)",
    )
    cmd.add_argument(
        "--benchmark",
        action="store_true",
        help="run the benchmark now (regeneration sample, costs, batching; it runs weekly by "
        "itself), "
        "then the report",
    )
    cmd.add_argument(
        "--new-test-set",
        action="store_true",
        help="freeze a new test set (a new report series) and build the report on it",
    )
    cmd.add_argument("--home", help="Luna home folder (default: $LUNA_HOME, else ./luna_home)")
    cmd.set_defaults(func=cmd_report)
