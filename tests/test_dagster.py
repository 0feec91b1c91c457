"""The Dagster layer: Definitions load, the asset materializes with its checks, the sensor
reacts."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import duckdb

from luna_assets.definitions import BUILD_ALL_JOB, build_definitions
from luna_assets.defs.ingest.assets import (
    CHECK_CONTENT_HASH,
    CHECK_QUARANTINE_REASON,
    INGESTED_IMAGES,
    ingested_images,
)
from luna_assets.defs.ingest.sensors import library_files_changed
from luna_assets.resources import LunaHomeResource
from luna_core.home.home import LunaHome
from luna_core.samples import SampleLibrary


def test_definitions_load_like_the_ui_loads_them(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("LUNA_HOME", str(tmp_path / "home"))
    defs = build_definitions()
    dg.Definitions.validate_loadable(defs)
    assert defs.resolve_assets_def(INGESTED_IMAGES).group_names_by_key[INGESTED_IMAGES] == "ingest"
    assert {k.to_user_string() for k in defs.resolve_all_asset_keys()} == {
        "ingested_images",
        "vision_embeddings",
        "text_conditionings",
        "luna_catalog",
        "faiss_index",
        "projector",
        "refinement_benchmark",
        "refinement_report",
    }
    assert (
        defs.resolve_schedule_def("nightly_reindex").default_status
        == dg.DefaultScheduleStatus.RUNNING
    )
    # the expensive part, off the path of the data
    weekly = defs.resolve_schedule_def("weekly_benchmark")
    assert (
        weekly.default_status == dg.DefaultScheduleStatus.RUNNING
        and weekly.cron_schedule == "0 5 * * 0"
    )
    assert weekly.job_name == "run_refinement_benchmark"
    benchmark = defs.resolve_assets_def("refinement_benchmark")
    assert benchmark.automation_conditions_by_key.get(benchmark.key) is None, (
        "never on a library change"
    )
    assert defs.resolve_job_def("rebuild_faiss_index") and defs.resolve_job_def("refine_images")
    assert defs.resolve_job_def(BUILD_ALL_JOB)
    # both run without a click in the UI
    for sensor in (
        "library_files_changed",
        "luna_automation",
    ):
        assert defs.resolve_sensor_def(sensor).default_status == dg.DefaultSensorStatus.RUNNING


def test_workspace_yaml_loads_with_the_dagster_cli(tmp_path: Path):
    env = {
        "LUNA_HOME": str(tmp_path / "home"),
        "DAGSTER_HOME": str(tmp_path),
        "PATH": "/usr/bin:/bin",
    }
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "dagster"),
            "definitions",
            "validate",
            "-w",
            "workspace.yaml",
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "passed validation" in result.stderr + result.stdout


def test_materialize_ingested_images_reports_counts_and_passes_checks(
    sample_library: SampleLibrary, tmp_path: Path
):
    home = LunaHome.resolve(tmp_path / "home").ensure()
    home.add_roots([sample_library.root])
    luna = LunaHomeResource(home=str(home.root), workers=1)
    result = dg.materialize(
        [ingested_images], resources={"luna": luna}, instance=dg.DagsterInstance.ephemeral()
    )
    assert result.success
    metadata = result.asset_materializations_for_node("ingested_images")[0].metadata
    assert metadata["new"].value == len(sample_library.images)
    assert metadata["quarantined (total)"].value == len(sample_library.quarantined)
    assert (
        "ComfyUI" in metadata["by generator"].value
        and "too_many_pixels" in metadata["quarantine"].value
    )
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks == {CHECK_CONTENT_HASH: True, CHECK_QUARANTINE_REASON: True}

    again = dg.materialize(
        [ingested_images], resources={"luna": luna}, instance=dg.DagsterInstance.ephemeral()
    )
    metadata = again.asset_materializations_for_node("ingested_images")[0].metadata
    assert (metadata["new"].value, metadata["unchanged"].value) == (0, len(sample_library.images))


def test_check_fails_when_a_row_has_no_valid_hash(sample_library: SampleLibrary, tmp_path: Path):
    home = LunaHome.resolve(tmp_path / "home").ensure()
    home.add_roots([sample_library.root])
    luna = LunaHomeResource(home=str(home.root), workers=1)
    dg.materialize(
        [ingested_images], resources={"luna": luna}, instance=dg.DagsterInstance.ephemeral()
    )
    with duckdb.connect(str(home.catalog_path)) as con:
        # A row with no identity, written behind Luna's back: the check must catch it.
        con.execute(
            "INSERT INTO images SELECT 'ghost.png', '', root, 1, 1, 1, 1, 'png', 'missing', "
            "now(), now(), NULL, [] "
            "FROM images LIMIT 1"
        )
    result = dg.materialize(
        [ingested_images],
        resources={"luna": luna},
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    assert {c.check_name: c.passed for c in result.get_asset_check_evaluations()}[
        CHECK_CONTENT_HASH
    ] is False


def test_missing_roots_fail_with_an_actionable_message(tmp_path: Path):
    luna = LunaHomeResource(home=str(tmp_path / "empty_home"))
    result = dg.materialize(
        [ingested_images],
        resources={"luna": luna},
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "luna ingest ROOT" in failure.step_failure_data.error.message


def test_sensor_requests_a_run_only_when_files_change(
    sample_library: SampleLibrary, tmp_path: Path
):
    home = LunaHome.resolve(tmp_path / "home").ensure()
    home.add_roots([sample_library.root])
    luna = LunaHomeResource(home=str(home.root))
    instance = dg.DagsterInstance.ephemeral()

    def evaluate(cursor):
        context = dg.build_sensor_context(
            cursor=cursor, instance=instance, resources={"luna": luna}
        )
        return library_files_changed.evaluate_tick(context)

    opened: list[str] = []
    root = str(sample_library.root)
    sys.addaudithook(
        lambda event, args: (
            event == "open"
            and isinstance(args[0], str)
            and args[0].startswith(root)
            and opened.append(args[0])
        )
    )
    first = evaluate(None)
    assert len(first.run_requests) == 1
    assert opened == [], "the sensor stats files, it never opens them"
    second = evaluate(first.cursor)
    assert second.run_requests == [] and "no change" in second.skip_message
    shutil.copyfile(sample_library.images[0].path, sample_library.root / "new_render.png")
    third = evaluate(second.cursor or first.cursor)
    assert len(third.run_requests) == 1 and third.cursor != first.cursor


def test_a_built_home_s_first_sensor_tick_requests_nothing(
    sample_library: SampleLibrary, tmp_path: Path
):
    """After an ingest, a fresh sensor cursor (the first `luna ui` on a demo home) requests no run:
    the catalog already matches the files; a changed file still requests one."""
    home = LunaHome.resolve(tmp_path / "home").ensure()
    home.add_roots([sample_library.root])
    luna = LunaHomeResource(home=str(home.root), workers=1)
    instance = dg.DagsterInstance.ephemeral()
    assert dg.materialize([ingested_images], resources={"luna": luna}, instance=instance).success
    context = dg.build_sensor_context(cursor=None, instance=instance, resources={"luna": luna})
    first = library_files_changed.evaluate_tick(context)
    assert first.run_requests == [] and "already matches" in first.skip_message and first.cursor
    shutil.copyfile(sample_library.images[0].path, sample_library.root / "new_render.png")
    context = dg.build_sensor_context(
        cursor=first.cursor, instance=instance, resources={"luna": luna}
    )
    assert len(library_files_changed.evaluate_tick(context).run_requests) == 1


def test_embedding_assets_run_side_by_side_with_the_multiprocess_executor(
    tiny_home: LunaHome, tmp_path, monkeypatch
):
    """Both embedding assets in one run, each in its own process, sharing the one DuckDB catalog."""
    from dagster_project import definitions

    monkeypatch.setenv("LUNA_HOME", str(tiny_home.root))
    instance_dir = tmp_path / "instance"
    instance_dir.mkdir()
    (instance_dir / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with dg.DagsterInstance.from_config(str(instance_dir)) as instance:
        result = dg.execute_job(
            dg.reconstructable(definitions.luna_build_all_job), instance=instance
        )
        assert result.success
        events = instance.all_logs(result.run_id)
    steps = [e for e in events if e.dagster_event]
    starts = {
        e.step_key: e.timestamp for e in steps if e.dagster_event.event_type_value == "STEP_START"
    }
    ends = {
        e.step_key: e.timestamp for e in steps if e.dagster_event.event_type_value == "STEP_SUCCESS"
    }
    pids = {
        e.step_key: e.dagster_event.pid
        for e in steps
        if e.dagster_event.event_type_value == "STEP_START"
    }
    assert max(starts["vision_embeddings"], starts["text_conditionings"]) < min(
        ends["vision_embeddings"], ends["text_conditionings"]
    ), "they overlapped"
    assert pids["vision_embeddings"] != pids["text_conditionings"]
    with duckdb.connect(str(tiny_home.catalog_path), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM vision_rows").fetchone()[0] > 0
        assert con.execute("SELECT count(*) FROM text_rows").fetchone()[0] > 0


def test_embedding_assets_follow_ingest_by_themselves(tiny_home: LunaHome):
    instance = dg.DagsterInstance.ephemeral()
    luna = LunaHomeResource(home=str(tiny_home.root), workers=1)
    first = dg.evaluate_automation_conditions(
        defs=build_definitions(str(tiny_home.root)), instance=instance
    )
    assert not {r.key.to_user_string() for r in first.results if r.true_subset.size > 0}, (
        "nothing before ingest"
    )
    dg.materialize([ingested_images], resources={"luna": luna}, instance=instance)
    evaluation = dg.evaluate_automation_conditions(
        defs=build_definitions(str(tiny_home.root)), instance=instance, cursor=first.cursor
    )
    requested = {r.key.to_user_string() for r in evaluation.results if r.true_subset.size > 0}
    assert {"vision_embeddings", "text_conditionings"} <= requested


def test_embedding_assets_report_metadata_and_pass_checks(tiny_home: LunaHome):
    from luna_assets.defs.vault.assets import text_conditionings, vision_embeddings
    from luna_assets.resources import LunaModelsResource

    resources = {"luna": LunaHomeResource(home=str(tiny_home.root)), "models": LunaModelsResource()}
    result = dg.materialize(
        [vision_embeddings, text_conditionings],
        resources=resources,
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert result.success
    vision = result.asset_materializations_for_node("vision_embeddings")[0].metadata
    text = result.asset_materializations_for_node("text_conditionings")[0].metadata
    assert vision["rows added"].value > 0 and vision["device"].value == "cpu"
    assert text["prompts over one chunk of 77 tokens (kept whole, one row per chunk)"].value >= 1
    checks = [
        (c.asset_key.to_user_string(), c.check_name, c.passed)
        for c in result.get_asset_check_evaluations()
    ]
    assert len(checks) == 6 and all(passed for _, _, passed in checks), checks
    again = dg.materialize(
        [vision_embeddings, text_conditionings],
        resources=resources,
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert (
        again.asset_materializations_for_node("vision_embeddings")[0].metadata["rows added"].value
        == 0
    )


def test_reindex_schedule_cron_is_configurable(monkeypatch, tmp_path):
    LunaHome.resolve(tmp_path).set_setting("schedules", "reindex_cron", "15 2 * * *")
    assert (
        build_definitions(str(tmp_path)).resolve_schedule_def("nightly_reindex").cron_schedule
        == "15 2 * * *"
    )
    monkeypatch.setenv("LUNA_REINDEX_CRON", "30 1 * * 0")  # the environment beats luna.toml
    assert (
        build_definitions(str(tmp_path)).resolve_schedule_def("nightly_reindex").cron_schedule
        == "30 1 * * 0"
    )
    monkeypatch.setenv("LUNA_REINDEX_CRON", "nightly")  # a bad setting: the location still loads
    schedule = build_definitions(str(tmp_path)).resolve_schedule_def("nightly_reindex")
    assert (
        schedule.cron_schedule == "0 3 * * *"
        and "'nightly' is not a cron expression" in schedule.description
    )


def test_catalog_and_index_assets_add_then_rebuild(tiny_home: LunaHome):
    from luna_assets.defs.catalog.assets import luna_catalog
    from luna_assets.defs.index.assets import faiss_index
    from luna_assets.defs.vault.assets import text_conditionings, vision_embeddings
    from luna_assets.resources import LunaModelsResource

    resources = {
        "luna": LunaHomeResource(home=str(tiny_home.root), workers=1),
        "models": LunaModelsResource(),
    }
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        [ingested_images, vision_embeddings, text_conditionings, luna_catalog, faiss_index],
        resources=resources,
        instance=instance,
    )
    assert result.success
    index_meta = result.asset_materializations_for_node("faiss_index")[0].metadata
    assert (
        index_meta["action"].value == "built"
        and index_meta["recall@10 (held-out, vs exact)"].value == 1.0
    )
    catalog_meta = result.asset_materializations_for_node("luna_catalog")[0].metadata
    assert catalog_meta["images"].value == catalog_meta["with vision row"].value
    assert all(c.passed for c in result.get_asset_check_evaluations())
    audit = next(
        c
        for c in result.get_asset_check_evaluations()
        if c.check_name == "prompts_are_encoded_text"
    )
    assert audit.metadata["generations checked"].value > 0, (
        "every catalogued prompt was scanned for leaked text"
    )
    again = dg.materialize([luna_catalog, faiss_index], resources=resources, instance=instance)
    assert (
        again.asset_materializations_for_node("faiss_index")[0].metadata["action"].value
        == "unchanged"
    )
    rebuild = build_definitions(str(tiny_home.root)).resolve_job_def("rebuild_faiss_index")
    rebuilt = rebuild.execute_in_process(instance=instance)
    assert (
        rebuilt.asset_materializations_for_node("faiss_index")[0].metadata["action"].value
        == "built"
    )
