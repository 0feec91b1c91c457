"""`luna ingest`, `luna build`, `luna status`, `luna ui`: the library and the Dagster chain over
it."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

from luna_cli.output import print_home_summary
from luna_core.catalog.connection import held_lock
from luna_core.containers.probe import ProbeLimits
from luna_core.errors import LunaConfigError, NotBuiltError
from luna_core.home.home import LunaHome
from luna_core.home.settings import KEYS_BY_NAME
from luna_core.ingest.run import IngestOptions, ingest
from luna_core.vault.segments import shard_keys


def run_build_all(
    home: LunaHome,
    log_level: str = "INFO",
    projector_config: dict | None = None,
    benchmark_config: dict | None = None,
    profile: str | None = None,
):
    """Materialize every asset through the same Definitions the UI loads, on the home's Dagster
    instance; the refinement benchmark (minutes) only when given a `benchmark_config` (its
    schedule runs it); `profile` overrides the model profile of the home's settings."""
    # Dagster takes about two seconds to import: only the commands that run the chain pay for it
    import dagster as dg

    # Dagster takes about two seconds to import: only the commands that run the chain pay for it
    from luna_assets.definitions import BUILD_ALL_JOB, build_definitions
    from luna_assets.resources import LunaModelsResource
    from luna_assets.runs import fail_dead_runs

    defs = build_definitions(
        str(home.root), LunaModelsResource(profile=profile) if profile else None
    )
    job = defs.resolve_job_def(BUILD_ALL_JOB)
    instance = dg.DagsterInstance.from_config(str(home.dagster_home))
    for message in fail_dead_runs(instance):
        print(message, file=sys.stderr)
    run_config = {"loggers": {"console": {"config": {"log_level": log_level}}}}
    ops = {
        name: {"config": config}
        for name, config in (
            ("projector", projector_config),
            ("refinement_benchmark", benchmark_config),
        )
        if config
    }
    if ops:
        run_config["ops"] = ops
    # One build of a home at a time: a second `luna build` waits for the first (and says so) instead
    # of failing on the stores' writer locks.
    from luna_assets.defs.reports.assets import REFINEMENT_BENCHMARK

    graph = job.asset_layer.asset_graph
    skipped = set() if benchmark_config is not None else {REFINEMENT_BENCHMARK}
    with held_lock(home.root / "build", "build"):
        shards = home.vault_shards()
        if shards == 1:
            return job.execute_in_process(
                run_config=run_config,
                instance=instance,
                raise_on_error=False,
                asset_selection=sorted(graph.get_all_asset_keys() - skipped),
            )
        return _build_by_shard(job, shards, run_config, instance, skipped)


def _build_by_shard(job, shards: int, run_config: dict, instance, skipped: set) -> list:
    """A sharded home's build on this machine: what feeds the vault, each shard's partition, then
    the rest (whose first step commits the shards' manifests). Stops at the first failed run."""
    # Dagster takes about two seconds to import: only the commands that run the chain pay for it
    from luna_assets.defs.vault.assets import TEXT_CONDITIONINGS, VISION_EMBEDDINGS

    graph = job.asset_layer.asset_graph
    vault = {VISION_EMBEDDINGS, TEXT_CONDITIONINGS}
    upstream = {key for store in vault for key in graph.get(store).parent_keys} - vault
    rest = sorted(graph.get_all_asset_keys() - vault - upstream - skipped)
    stages = (
        [(None, sorted(upstream))]
        + [(key, sorted(vault)) for key in shard_keys(shards)]
        + [(None, rest)]
    )
    results = []
    for partition, keys in stages:
        results.append(
            job.execute_in_process(
                run_config=run_config,
                instance=instance,
                raise_on_error=False,
                partition_key=partition,
                asset_selection=keys,
            )
        )
        if not results[-1].success:
            break
    return results


def report_run(results) -> bool:
    """Print step failures (their root cause, in one line each) and check results of a Dagster run
    (or of the runs of a sharded build); True when all succeeded and no error-level (or blocking)
    check failed."""
    # Dagster takes about two seconds to import: only the commands that run the chain pay for it
    import dagster as dg

    results = results if isinstance(results, list) else [results]
    for result in results:
        if not result.success:
            for event in result.all_events:
                if event.is_step_failure:
                    print(
                        f"FAILED in {event.step_key}: {_root_cause(event.step_failure_data.error)}",
                        file=sys.stderr,
                    )
            return False
    failed = []
    for check in (check for result in results for check in result.get_asset_check_evaluations()):
        name = f"{check.asset_key.to_user_string()}.{check.check_name}"
        warning = check.severity == dg.AssetCheckSeverity.WARN and not check.blocking
        print(f"  check {name}: {'passed' if check.passed else 'warning' if warning else 'FAILED'}")
        if not check.passed and not warning:
            failed.append(name)
    if failed:
        print(
            f"FAILED checks: {', '.join(failed)} (see the asset's checks in `luna ui`)",
            file=sys.stderr,
        )
    return not failed


def _root_cause(error) -> str:
    """The innermost error's class and message: what went wrong, not Dagster's wrapper around it."""
    while error.cause is not None:
        error = error.cause
    message = (error.message or "").strip().splitlines()
    return message[-1] if message else error.cls_name or "unknown error"


def cmd_ingest(args: argparse.Namespace) -> int:
    missing = [r for r in args.roots if not Path(r).is_dir()]
    if missing:
        raise LunaConfigError(f"not a folder: {', '.join(missing)}")
    home = LunaHome.resolve(args.home).ensure()
    roots = (
        home.add_roots(args.roots)
        if not args.no_record
        else [str(Path(r).absolute()) for r in args.roots]
    )
    selected = [str(Path(r).absolute()) for r in args.roots]
    options = IngestOptions(
        limits=ProbeLimits(max_pixels=args.max_pixels),
        workers=args.workers,
        writer_syntax=home.writer_syntax(),
    )
    report = ingest(home.catalog_path, selected, options)
    print(f"Ingested {', '.join(selected)} into {home.catalog_path} in {report.seconds:.1f}s")
    counts = report.counts()
    print(
        "  "
        + ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in counts.items() if k != "bytes_read")
    )
    if report.by_reason:
        print(
            "  quarantine by reason: "
            + ", ".join(f"{k} {v}" for k, v in report.by_reason.items())
            + "  (see `luna status`)"
        )
    if len(roots) > len(selected):
        print(f"  ({len(roots)} roots recorded in {home.config_path})")
    return 0


def record_models(home: LunaHome, args: argparse.Namespace) -> None:
    """--sdxl-model / --vision-model into luna.toml, checked first (a wrong file is refused before
    anything is recorded)."""
    given = {"sdxl_model": args.sdxl_model, "vision_model": args.vision_model}
    given = {field: value for field, value in given.items() if value is not None}
    if not given:
        return
    absolute = {
        field: str(Path(value).expanduser().resolve())
        if value and Path(value).expanduser().exists()
        else value
        for field, value in given.items()
    }
    home.profile(**{field: value or None for field, value in absolute.items()})
    for field, value in absolute.items():
        home.set_setting("models", field, value)


def describe_models(home: LunaHome) -> str:
    """'profile tiny' and the models named instead of the profile's, as a person reads them."""
    settings = home.settings()
    words = [f"profile '{home.model_profile()}'"]
    for field, label in (("sdxl_model", "SDXL model"), ("vision_model", "vision model")):
        value = settings.text(f"models.{field}")
        if value:
            words.append(f"{label} {value}")
    return ", ".join(words)


def cmd_build(args: argparse.Namespace) -> int:
    home = LunaHome.existing(args.home)
    if not home.roots():
        raise NotBuiltError(
            f"no library roots recorded in {home.config_path}; run `luna ingest ROOT` first"
        )
    if args.profile:
        home.set_model_profile(args.profile)
    record_models(home, args)
    home.profile()  # a wrong model file is refused here, in one line, before the run starts
    print(f"Materializing every Luna asset for {home.root} ({describe_models(home)})…")
    if not report_run(run_build_all(home.ensure(), profile=args.profile)):
        return 1
    print_home_summary(home)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    home = LunaHome.existing(args.home)
    if not home.catalog_path.exists():
        raise NotBuiltError(
            f"no catalog at {home.catalog_path} yet: run `luna ingest ROOT` or `luna demo`"
        )
    print(f"Luna home {home.root}; roots: {', '.join(home.roots()) or '(none)'}")
    print_home_summary(home)
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    # Dagster takes about two seconds to import: only the commands that run the chain pay for it
    import dagster as dg

    # Dagster takes about two seconds to import: only the commands that run the chain pay for it
    from luna_assets.runs import fail_dead_runs

    home = LunaHome.existing(args.home).ensure()
    for message in fail_dead_runs(dg.DagsterInstance.from_config(str(home.dagster_home))):
        print(message)
    env = dict(
        os.environ,
        **{KEYS_BY_NAME["home"].env: str(home.root)},
        DAGSTER_HOME=str(home.dagster_home),
    )
    print(
        f"Starting the Dagster UI for {home.root} on http://{args.host}:{args.port} (Ctrl-C "
        "stops it)"
    )
    # The same code location name as the repository's workspace.yaml, wherever Luna is installed.
    workspace = home.dagster_home / "workspace.yaml"
    workspace.write_text(
        "load_from:\n  - python_module:\n      module_name: dagster_project.definitions\n"
        "      attribute: defs\n      location_name: luna\n"
    )
    bin_dir = Path(sys.executable).parent
    executable = str(bin_dir / "dagster") if (bin_dir / "dagster").exists() else "dagster"
    command = [executable, "dev", "-w", str(workspace), "-h", args.host, "-p", str(args.port)]
    return supervise(command, env)


# after Ctrl-C or SIGTERM: time for a clean shutdown before the processes are killed
UI_STOP_GRACE_S = 5.0


def _stop_request(signum, frame):
    raise KeyboardInterrupt


def supervise(command: list[str], env: dict) -> int:
    """Run `dagster dev` in a process group of its own and stop that whole group within seconds on
    Ctrl-C or SIGTERM: dagster dev alone waits minutes for its webserver, daemon and code servers,
    and a code server started while it shut down could outlive it."""

    process = subprocess.Popen(command, env=env, start_new_session=True)
    previous = signal.signal(signal.SIGTERM, _stop_request)
    try:
        return process.wait()
    except KeyboardInterrupt:
        print(f"\nStopping the Dagster UI (at most {UI_STOP_GRACE_S:.0f}s)…", flush=True)
        _signal_group(process.pid, signal.SIGINT)  # dagster dev's own clean shutdown first
        try:
            process.wait(UI_STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            print("  it did not stop in time: killing its processes", flush=True)
        return 130
    finally:
        _signal_group(process.pid, signal.SIGKILL)  # whatever the group still holds
        process.wait()
        signal.signal(signal.SIGTERM, previous)


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass
