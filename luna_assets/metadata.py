"""What every Luna asset shows a person: markdown tables, progress lines in the run log, check
results."""

from __future__ import annotations

from typing import Callable

import dagster as dg


def md_table(rows: list[dict], columns: list[str]) -> dg.MetadataValue:
    """A markdown table of `rows` (cells flattened to one line, pipes escaped)."""

    def cell(value) -> str:
        return str("" if value is None else value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return dg.MetadataValue.md("\n".join(lines))


def progress_logger(context: dg.AssetExecutionContext, what: str) -> Callable[[int, int], None]:
    """An on_progress(done, total) callback that logs `what: done/total` about every tenth of the
    work."""
    state = {"next": 0.0}

    def log_progress(done: int, total: int) -> None:
        if total and (done / total >= state["next"] or done == total):
            context.log.info(f"{what}: {done:,}/{total:,}")
            state["next"] = done / total + 0.1

    return log_progress


def check_results(outcomes) -> list[dg.AssetCheckResult]:
    """Asset check results from luna_core outcomes (objects with name, passed, description,
    metadata)."""
    return [
        dg.AssetCheckResult(
            check_name=o.name, passed=bool(o.passed), description=o.description, metadata=o.metadata
        )
        for o in outcomes
    ]


def seconds(value: float) -> dg.MetadataValue:
    return dg.MetadataValue.float(round(float(value), 2))
