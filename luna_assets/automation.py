"""Automation rules shared by the domains: assets follow their parents' *data*, and cron settings
that can never take the code location down."""

from __future__ import annotations

import logging

import dagster as dg

from luna_core.home.home import LunaHome

AC = dg.AutomationCondition
GPU_POOL = "gpu"  # every step that runs a model takes a slot (limit: GPUs found, 1 on a CPU)


def on_upstream_change() -> dg.AutomationCondition:
    """Dagster's eager(), except that a parent counts as updated only when its data version changed:
    a rerun that changed nothing (an ingest that found no new file) requests nothing downstream."""
    changed = (AC.data_version_changed() & ~AC.executed_with_root_target()).with_label(
        "data version changed"
    ) | AC.will_be_requested()
    return (
        AC.in_latest_time_window()
        & (
            AC.newly_missing() | AC.any_deps_match(changed).with_label("any parent's data changed")
        ).since_last_handled()
        & ~AC.any_deps_missing()
        & ~AC.any_deps_in_progress()
        & ~AC.in_progress()
    ).with_label("on upstream data change")


def is_valid_cron(cron: str) -> bool:
    """Whether Dagster accepts `cron` as a schedule (asked through its public API: a
    ScheduleDefinition)."""
    try:
        dg.ScheduleDefinition(name="cron_check", cron_schedule=cron, job_name="cron_check")
    except dg.DagsterInvalidDefinitionError:
        return False
    return True


def cron_setting(home: LunaHome | None, name: str) -> tuple[str, str]:
    """The cron expression of the setting `name` (e.g. schedules.reindex_cron) and, when it is not
    one, the default with the problem in words: a bad setting is shown, never a code location
    that fails to load."""
    settings = (home or LunaHome.resolve()).settings()
    setting, default = settings.setting(name), str(settings.setting(name).key.default)
    cron = str(setting.value).strip() or default
    if is_valid_cron(cron):
        return cron, ""
    problem = (
        f"{setting.where()} = {cron!r} is not a cron expression; using the default {default!r}"
    )
    logging.getLogger(__name__).warning(problem)
    return default, problem
