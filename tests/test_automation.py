"""The chain follows the library by itself: Dagster's automation evaluation, tick by tick, on a real
home. Each tick's requested assets are materialized as the daemon would, and the next tick must ask
for exactly what changed: nothing when nothing did."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from luna_assets.definitions import build_definitions
from luna_assets.defs.catalog.assets import LUNA_CATALOG
from luna_assets.defs.projector.assets import RETRAIN_SENSOR
from luna_assets.resources import LunaHomeResource, LunaModelsResource
from luna_core.home.home import LunaHome
from luna_core.samples import SampleLibrary, make_sample_library

CHAIN = {"vision_embeddings", "text_conditionings", "luna_catalog", "faiss_index"}
RUN_CONFIG = {
    "ops": {
        "projector": {
            "config": {
                "arch": "linear",
                "rank": 8,
                "epochs": 1,
                "batch_size": 8,
                "min_train_pairs": 8,
                "min_val_pairs": 2,
            }
        },
        "refinement_benchmark": {
            "config": {
                "sample_images": 1,
                "grid": 2,
                "steps": 2,
                "batching_repeat": 1,
                "latency_repeat": 2,
            }
        },
        "refinement_report": {"config": {"bootstrap": 100}},
    }
}


class Daemon:
    """Ticks the automation conditions and runs what they request, like the Dagster daemon does."""

    def __init__(self, home: LunaHome):
        self.defs = build_definitions(str(home.root))
        self.instance = dg.DagsterInstance.ephemeral()
        self.resources = {
            "luna": LunaHomeResource(home=str(home.root), workers=1),
            "models": LunaModelsResource(),
        }
        self.cursor = None

    def tick(self) -> set[str]:
        result = dg.evaluate_automation_conditions(
            defs=self.defs, instance=self.instance, cursor=self.cursor
        )
        self.cursor = result.cursor
        return {r.key.to_user_string() for r in result.results if r.true_subset.size > 0}

    def run(self, keys: set[str]) -> dg.ExecuteInProcessResult:
        assets = list(self.defs.assets)
        selection = [dg.AssetKey(k) for k in sorted(keys)]
        ops = {name: cfg for name, cfg in RUN_CONFIG["ops"].items() if name in keys}
        result = dg.materialize(
            assets,
            selection=selection,
            resources=self.resources,
            instance=self.instance,
            run_config={"ops": ops},
        )
        assert result.success
        return result

    def metadata(self, result: dg.ExecuteInProcessResult, key: str) -> dict:
        return {
            k: v.value for k, v in result.asset_materializations_for_node(key)[0].metadata.items()
        }


def _catalog(home: LunaHome, sql: str):
    with duckdb.connect(str(home.catalog_path), read_only=True) as con:
        return con.execute(sql).fetchall()


def _sole_copies(home: LunaHome, n: int) -> list[Path]:
    """PNG files whose content no other path holds (no copy, no symlink), in a stable order."""
    rows = _catalog(
        home,
        """SELECT path FROM images WHERE status = 'ok' AND path LIKE '%.png' AND content_hash IN
                             (SELECT content_hash FROM images GROUP BY 1 HAVING count(*) = 1) ORDER
                                 BY path""",
    )
    paths = [Path(p) for (p,) in rows if not Path(p).is_symlink()]
    assert len(paths) >= n
    return paths[:n]


def test_the_chain_follows_the_library_tick_by_tick(
    tiny_home: LunaHome, sample_library: SampleLibrary
):
    daemon = Daemon(tiny_home)
    assert daemon.tick() == set(), (
        "nothing before the first ingest (the sensor requests ingest, not automation)"
    )
    daemon.run({"ingested_images"})
    everything = CHAIN | {"projector", "refinement_report"}
    assert daemon.tick() == everything, (
        "the first ingest builds the whole chain in one run (the projector: missing)"
    )
    daemon.run(everything)
    assert daemon.tick() == set(), "nothing changed: nothing requested"

    # An ingest that finds nothing new reports the same data version: nothing downstream runs.
    unchanged = daemon.run({"ingested_images"})
    assert daemon.metadata(unchanged, "ingested_images")["new"] == 0
    assert daemon.tick() == set()

    # New files: the vault, catalog, index and report follow; the projector waits for its policy.
    make_sample_library(sample_library.root / "later", 6, seed=99, size=(96, 96))
    grown = daemon.run({"ingested_images"})
    assert daemon.metadata(grown, "ingested_images")["new"] > 0
    assert daemon.tick() == CHAIN | {"refinement_report"}
    result = daemon.run(CHAIN | {"refinement_report"})
    assert daemon.metadata(result, "faiss_index")["action"] == "added"
    assert daemon.tick() == set()

    # A deleted file: its content is retired everywhere and the index counts what the library holds.
    _sole_copies(tiny_home, 1)[0].unlink()
    daemon.run({"ingested_images"})
    assert daemon.tick() == CHAIN | {"refinement_report"}
    result = daemon.run(CHAIN | {"refinement_report"})
    catalog = daemon.metadata(result, "luna_catalog")
    index = daemon.metadata(result, "faiss_index")
    assert catalog["retired (left the library)"]["vision rows"] == 1
    assert (
        index["action"] == "removed"
        and index["removed"] == 1
        and index["vectors"] == catalog["images"]
    )
    assert all(c.passed for c in result.get_asset_check_evaluations()), [
        (c.asset_key.to_user_string(), c.check_name)
        for c in result.get_asset_check_evaluations()
        if not c.passed
    ]
    assert daemon.tick() == set()


def test_a_build_in_progress_is_not_doubled_by_the_automation(
    tiny_home: LunaHome, sample_library: SampleLibrary
):
    """`luna build` (or the UI's build-all) plans the projector; once the catalog is built, the
    projector is still missing, but the run that will train it is in progress: the automation
    must not train a second version beside it (seen: @champion became v2 when the sensor ticked
    between the catalog and the projector steps)."""
    daemon = Daemon(tiny_home)
    daemon.run({"ingested_images"})
    # every asset planned
    build = daemon.instance.create_run_for_job(
        job_def=daemon.defs.resolve_job_def("luna_build_all"), run_config=RUN_CONFIG
    )
    daemon.instance.report_dagster_event(
        dg.DagsterEvent(
            event_type_value=dg.DagsterEventType.RUN_START.value, job_name=build.job_name
        ),
        run_id=build.run_id,
    )
    daemon.run(CHAIN)  # its first steps are done; the projector's is still to come
    assert "projector" not in daemon.tick()
    # the build stopped: the projector is missing again, and asked for
    daemon.instance.report_run_canceled(build)
    assert "projector" in daemon.tick()


def test_an_edit_in_place_retires_the_old_content_and_a_restored_file_is_revived(library_home):
    """Edited in place: the old content's generation, vision row and prompt rows leave; the orphan
    check passes by itself. Edit undone: the retired rows come back without embedding anything."""
    from luna_core.catalog.library_view import build_library
    from luna_core.index.build import update_index
    from luna_core.ingest.run import IngestOptions, ingest
    from luna_core.vault.checks import check_store
    from luna_core.vault.embed import EmbedOptions, embed_images
    from luna_core.vault.embed_prompts import embed_prompts

    home, profile = library_home
    update_index(home, profile)

    def refresh():
        ingest(home.catalog_path, home.roots(), IngestOptions(workers=1, progress=False))
        vision = embed_images(home, profile, EmbedOptions(progress=False))
        embed_prompts(home, profile, EmbedOptions(progress=False))
        return vision, build_library(home, profile), update_index(home, profile)

    victim, replacement = _sole_copies(home, 2)
    original = victim.read_bytes()
    old_hash = _catalog(home, f"SELECT content_hash FROM images WHERE path = '{victim}'")[0][0]
    shutil.copyfile(replacement, victim)  # edited in place: other bytes, other prompt
    _, library, index = refresh()
    assert library.retired["generations"] == 1 and library.retired["vision rows"] == 1
    assert sum(library.orphans.values()) == 0, library.orphans
    assert _catalog(
        home, f"SELECT count(*) FROM generations WHERE content_hash = '{old_hash}'"
    ) == [(0,)]
    assert index.action == "removed" and index.vectors == library.images
    assert all(o.passed for kind in ("vision", "text") for o in check_store(home, profile, kind)), (
        "retired rows keep the store's rows contiguous"
    )

    victim.write_bytes(original)  # the edit undone
    vision, library, index = refresh()
    assert vision.added == 0, "the retired row came back instead of a new embedding"
    assert _catalog(
        home, f"SELECT count(*) FROM vision_rows WHERE content_hash = '{old_hash}'"
    ) == [(1,)]
    assert _catalog(home, "SELECT count(*) FROM retired_rows WHERE kind = 'vision'") == [(0,)]
    assert index.action == "added" and index.vectors == library.images
    assert all(o.passed for kind in ("vision", "text") for o in check_store(home, profile, kind))


def test_an_ivf_index_leaves_departed_vectors_unanswered_then_rebuilds_past_the_threshold(
    library_home,
):
    from luna_core.index.build import update_index
    from luna_core.index.faiss_index import IndexSettings

    home, profile = library_home
    ivf = IndexSettings(flat_max_vectors=8, held_out=8, max_retired_share=0.1)
    built = update_index(home, profile, ivf)
    assert built.action == "built" and built.meta["plan"]["kind"] != "flat"
    images = built.vectors
    doomed = _sole_copies(home, 6)

    doomed[0].unlink()
    _ingest_and_build(home, profile)
    few = update_index(home, profile, ivf)
    assert (
        few.action == "refreshed" and few.meta["retired_vectors"] == 1 and few.vectors == images - 1
    )

    for path in doomed[1:]:
        path.unlink()
    library = _ingest_and_build(home, profile)
    many = update_index(home, profile, ivf)
    assert many.action == "built" and "past 10%" in many.reason
    assert many.vectors == library.images == images - 6


def _ingest_and_build(home, profile):
    from luna_core.catalog.library_view import build_library
    from luna_core.ingest.run import IngestOptions, ingest

    ingest(home.catalog_path, home.roots(), IngestOptions(workers=1, progress=False))
    return build_library(home, profile)


def test_the_retrain_policy_sensor_requests_the_projector_once_the_pairs_grew(
    projector_home: LunaHome, monkeypatch
):
    from luna_core.catalog.library_view import build_library
    from luna_core.ingest.run import IngestOptions, ingest
    from luna_core.models.profiles import resolve_profile
    from luna_core.vault.embed import EmbedOptions, embed_images
    from luna_core.vault.embed_prompts import embed_prompts

    home = projector_home
    defs = build_definitions(str(home.root))
    sensor = defs.resolve_sensor_def(RETRAIN_SENSOR)
    instance = dg.DagsterInstance.ephemeral()
    resources = {"luna": LunaHomeResource(home=str(home.root))}

    def tick(cursor=None):
        context = dg.build_sensor_context(
            instance=instance, cursor=cursor, resources=resources, definitions=defs
        )
        return sensor(context), context.cursor

    result, _ = tick()
    assert isinstance(result, dg.SkipReason) and "not been materialized" in result.skip_message
    instance.report_runless_asset_event(dg.AssetMaterialization(LUNA_CATALOG))
    result, cursor = tick()
    assert isinstance(result, dg.SensorResult) and "+0%" in result.skip_reason.skip_message
    # shown beside the projector's "Unsynced" badge: why no retrain follows
    (observation,) = result.asset_events
    assert (
        observation.asset_key == dg.AssetKey("projector")
        and "retrains when the pairs grew by 25%" in observation.metadata["why Unsynced"].value
    )
    result, cursor = tick(cursor)
    assert "has not changed" in result.skip_message, (
        "no catalog change: the registry is not even asked"
    )

    profile = resolve_profile("tiny", home.models_dir)
    root = Path(home.roots()[0])
    make_sample_library(root / "later", 24, seed=5, size=(96, 96))
    ingest(home.catalog_path, [str(root)], IngestOptions(workers=1, progress=False))
    embed_images(home, profile, EmbedOptions(progress=False))
    embed_prompts(home, profile, EmbedOptions(progress=False))
    build_library(home, profile)
    instance.report_runless_asset_event(dg.AssetMaterialization(LUNA_CATALOG))
    monkeypatch.setenv("LUNA_RETRAIN_GROWTH", "5")  # 500%: not yet
    result, cursor = tick(cursor)
    assert "retrains at 500%" in result.skip_reason.skip_message
    monkeypatch.setenv("LUNA_RETRAIN_GROWTH", "0.25")
    instance.report_runless_asset_event(dg.AssetMaterialization(LUNA_CATALOG))
    result, cursor = tick(cursor)
    assert isinstance(result, dg.RunRequest) and result.asset_selection == [
        dg.AssetKey("projector")
    ]
    assert result.tags["luna/trigger"] == RETRAIN_SENSOR


@pytest.mark.parametrize("value", ["0", "-1", "lots", "nan", "inf"])
def test_a_bad_growth_share_is_refused_by_name(value, tmp_path, monkeypatch):
    from luna_core.errors import LunaConfigError
    from luna_core.projector.policy import growth_share

    home = LunaHome.resolve(tmp_path / "home")
    monkeypatch.setenv("LUNA_RETRAIN_GROWTH", value)
    with pytest.raises(LunaConfigError, match="LUNA_RETRAIN_GROWTH"):
        growth_share(home)
    monkeypatch.delenv("LUNA_RETRAIN_GROWTH")
    assert growth_share(home) == 0.25 and growth_share(home, "0.5") == 0.5
