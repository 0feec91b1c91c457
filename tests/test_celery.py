"""Scale-out for real: a Redis server (Debian's redis-server) brokers Dagster's Celery executor, two
`luna worker` processes take the steps of a backfill of every vault partition launched through the
UI's GraphQL API, and the daemon runs it. One worker dies in the middle of a shard (it hangs after
its first manifest and is SIGKILLed); its step is reaped, the failed partitions run again, and the
vault ends exactly as one machine embedding everything would leave it."""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from luna_core.home.home import LunaHome
from luna_core.vault.segments import open_vision_store
from tests.services import Service, free_port, unavailable

LUNA = str(Path(sys.executable).with_name("luna"))
SHARDS = 4
STORES = ("vision_embeddings", "text_conditionings")
BACKFILL = """mutation Backfill($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
  __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }"""
BACKFILL_STATUS = """query Status($id: String!) { partitionBackfillOrError(backfillId: $id) {
  __typename ... on PartitionBackfill { status } ... on PythonError { message } } }"""
FINISHED = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}


def _post(url: str, query: str, variables: dict) -> dict:
    import json
    import urllib.request

    request = urllib.request.Request(
        url,
        data=json.dumps({"query": query, "variables": variables}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def _until(condition, timeout: float, what: str, every: float = 0.5, explain=None):
    """A bounded poll of `condition` (a state held by other processes: the run storage, the
    broker)."""
    deadline, pause = time.monotonic() + timeout, threading.Event()
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{what}: not within {timeout:.0f}s" + (f"\n{explain()}" if explain else "")
            )
        pause.wait(every)


def _state(instance, services: list[Service]) -> str:
    """What the runs and the services were doing, for a failure message."""
    runs = [
        f"{r.run_id[:8]} {r.status.value} {r.tags.get('dagster/partition')}"
        for r in instance.get_runs()
    ]
    tails = [f"--- {s.name}:\n" + "\n".join(s.lines[-25:]) for s in services]
    return "runs: " + "; ".join(runs) + "\n" + "\n".join(tails)


@pytest.fixture
def redis_url():
    server_bin = shutil.which("redis-server")
    if server_bin is None:
        unavailable("redis-server is not installed (Debian package redis-server)")
    port = free_port()
    server = Service(
        "redis-server",
        [
            server_bin,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        ready="Ready to accept connections",
    )
    try:
        server.wait_ready(60)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.stop()


@pytest.fixture
def sharded_home(tmp_path, tiny_models, sample_library, redis_url):
    """An ingested tiny home with 4 vault shards, its steps on Celery, two gpu slots (one per
    worker)."""
    from luna_core.ingest.run import IngestOptions, ingest
    from luna_core.ingest.scan import fingerprint_roots

    home = LunaHome.resolve(tmp_path / "home")
    home.root.mkdir()
    home.set_vault_shards(SHARDS)
    home.set_setting("scale", "celery_broker", redis_url)
    home.set_operations_setting("gpu_slots", 2)
    home.ensure()
    home.add_roots([sample_library.root])
    home.set_model_profile("tiny")
    roots = home.roots()
    _, fingerprint = fingerprint_roots(roots)
    ingest(home.catalog_path, roots, IngestOptions(workers=1, progress=False))
    home.record_library_fingerprint(roots, fingerprint)  # the file sensor has nothing to start
    return home


def _worker(home: LunaHome, name: str, hang_fifo: Path | None = None) -> Service:
    env = dict(os.environ, LUNA_HOME=str(home.root))
    if hang_fifo:
        env["LUNA_TEST_HANG_FIFO"] = str(hang_fifo)
    root = Path(__file__).resolve().parents[1]
    worker = Service(
        f"worker {name}",
        [
            sys.executable,
            "-m",
            "tests.celery_worker",
            "--home",
            str(home.root),
            "--name",
            f"{name}@luna-test",
        ],
        ready=r"ready\.",
        env=env,
        cwd=str(root),
    )
    worker.wait_ready(120)
    return worker


def _backfill(ui: str, partitions: list[str]) -> str:
    params = {"partitionNames": partitions, "assetSelection": [{"path": [key]} for key in STORES]}
    answer = _post(ui + "/graphql", BACKFILL, {"params": params})["data"]["launchPartitionBackfill"]
    assert answer["__typename"] == "LaunchBackfillSuccess", answer
    return answer["backfillId"]


def _settled(ui: str, backfill_id: str, instance) -> bool:
    import dagster as dg

    answer = _post(ui + "/graphql", BACKFILL_STATUS, {"id": backfill_id})["data"][
        "partitionBackfillOrError"
    ]
    assert answer["__typename"] == "PartitionBackfill", answer
    busy = instance.get_runs(
        filters=dg.RunsFilter(
            statuses=[
                dg.DagsterRunStatus.QUEUED,
                dg.DagsterRunStatus.STARTING,
                dg.DagsterRunStatus.STARTED,
            ]
        )
    )
    # run retries may still be re-running a failed run
    return answer["status"] in FINISHED and not busy


def _materialized(instance) -> dict[str, set[str]]:
    import dagster as dg

    return {key: set(instance.get_materialized_partitions(dg.AssetKey(key))) for key in STORES}


def _vault_rows(home: LunaHome) -> dict[str, int]:
    """Rows each store's segments hold so far (committed or waiting in manifests)."""
    from luna_core.vault.segments import read_manifests

    counts = {}
    for store in (home.vault_dir / "vision", home.vault_dir / "text"):
        for folder in store.glob("*.zarr.segments"):
            table = read_manifests(sorted(folder.glob("*/*.parquet")))
            counts[folder.name] = (
                0 if table is None else sum(r is not None for r in table.column("row").to_pylist())
            )
    assert len(counts) == 2  # both stores were written
    return counts


def _celery_workers(instance) -> set[str]:
    """The workers that executed steps, from the engine events they wrote."""
    import dagster as dg

    names = set()
    for run in instance.get_runs():
        for entry in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
            metadata = entry.dagster_event.engine_event_data.metadata or {}
            if "Celery worker" in metadata:
                names.add(metadata["Celery worker"].value)
    return names


def test_a_backfill_of_every_shard_on_two_celery_workers_survives_losing_one(
    sharded_home, tmp_path, tiny_models, sample_library
):
    import dagster as dg

    from luna_assets.defs.catalog.assets import luna_catalog
    from luna_assets.executor import celery_app, celery_broker, reap_lost_steps
    from luna_core.catalog.connection import open_catalog
    from luna_core.models.profiles import resolve_profile
    from luna_core.vault.checks import check_store
    from luna_core.vault.segments import Shard, shard_keys

    home = sharded_home
    partitions = shard_keys(SHARDS)
    fifo = tmp_path / "hang.fifo"
    os.mkfifo(fifo)
    signal_fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # open before the worker writes to it
    instance = dg.DagsterInstance.from_config(str(home.dagster_home))
    services = []
    try:
        services.append(hanging := _worker(home, "w1", hang_fifo=fifo))
        services.append(_worker(home, "w2"))
        ui_port = free_port()
        services.append(
            ui := Service(
                "luna ui",
                [LUNA, "ui", "--home", str(home.root), "--port", str(ui_port)],
                ready="Serving dagster-webserver on",
            )
        )
        ui.wait_ready(300)
        ui.wait_listening(ui_port, 60)
        url = f"http://127.0.0.1:{ui_port}"

        first = _backfill(url, partitions)
        # w1 writes its first manifest, says so, and hangs: it dies there, as a lost machine would.
        readable, _, _ = select.select([signal_fd], [], [], 300)
        assert readable, "worker w1 never reached its first manifest:\n" + "\n".join(
            hanging.lines[-40:]
        )
        said = os.read(signal_fd, 4096).decode()
        assert "hanging in" in said
        os.killpg(hanging.process.pid, 9)
        hanging.process.wait()

        app = celery_app(celery_broker(home))
        reaped = _until(lambda: reap_lost_steps(app), 60, "the dead worker's step to be reaped")
        assert len(reaped) == 1 and "w1@luna-test" in reaped[0]
        _until(
            lambda: _settled(url, first, instance),
            300,
            "the first backfill to settle",
            explain=lambda: _state(instance, services),
        )

        # w1's partition failed, naming the lost worker; Luna's instance retries such a run (run
        # retries).
        held = Shard.parse("/".join(reversed(said.split("hanging in ")[1].split("-")[:2]))).key
        failed = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]))
        assert [r.tags.get("dagster/partition") for r in failed] == [held], [
            (r.job_name, r.tags, [str(e) for e in instance.all_logs(r.run_id)][-3:]) for r in failed
        ]
        assert any(
            "w1@luna-test stopped answering" in str(entry)
            for entry in instance.all_logs(failed[0].run_id)
        )
        assert _materialized(instance) == {key: set(partitions) for key in STORES}, "\n".join(
            ui.lines[-60:]
        )
        # Re-running the failed partition, as a person would from the UI, completes and adds
        # nothing.
        rows_before = _vault_rows(home)
        again = _backfill(url, [held])
        _until(
            lambda: _settled(url, again, instance),
            300,
            "the re-run of the failed partition",
            explain=lambda: _state(instance, services),
        )
        assert _vault_rows(home) == rows_before
        assert _materialized(instance) == {key: set(partitions) for key in STORES}, "\n".join(
            ui.lines[-60:]
        )
        assert _celery_workers(instance) == {"w1@luna-test", "w2@luna-test"}  # both took partitions
    finally:
        for service in reversed(services):
            service.stop()
        os.close(signal_fd)

    # The one committing step, then: one row per image and per prompt, and the values one machine
    # gives.
    profile = resolve_profile("tiny", home.models_dir)
    from luna_assets.resources import LunaHomeResource, LunaModelsResource

    result = dg.materialize(
        [luna_catalog],
        resources={"luna": LunaHomeResource(home=str(home.root)), "models": LunaModelsResource()},
    )
    assert result.success
    for kind in ("vision", "text"):
        assert all(outcome.passed for outcome in check_store(home, profile, kind)), kind
    with open_catalog(home.catalog_path, read_only=True) as con:
        images = con.execute(
            "SELECT count(DISTINCT content_hash) FROM images WHERE status = 'ok'"
        ).fetchone()[0]
        vision = con.execute("SELECT content_hash, count(*) FROM vision_rows GROUP BY 1").fetchall()
        prompts = con.execute("SELECT count(*) FROM prompts").fetchone()[0]
        # A conditioning's first row (chunks > 0), then its chunk rows KEY#1... (chunks = 0).
        text = con.execute(
            "SELECT prompt_hash, count(*) FROM text_rows WHERE chunks > 0 GROUP BY 1"
        ).fetchall()
        continued, expected = con.execute(
            "SELECT count(*) FILTER (WHERE chunks = 0), "
            "coalesce(sum(chunks - 1) FILTER (WHERE chunks > 0), 0) FROM text_rows"
        ).fetchone()
    assert len(vision) == images and {n for _, n in vision} == {1}
    assert len(text) == prompts and {n for _, n in text} == {1} and continued == expected
    _assert_same_vectors_as_one_store(home, profile, tmp_path, tiny_models, sample_library)


def _assert_same_vectors_as_one_store(home, profile, tmp_path, tiny_models, sample_library):
    from luna_core.catalog.connection import open_catalog
    from luna_core.ingest.run import IngestOptions, ingest
    from luna_core.vault.embed import EmbedOptions, embed_images

    single = LunaHome.resolve(tmp_path / "single").ensure()
    single.set_model_profile("tiny")
    ingest(
        single.catalog_path, [str(sample_library.root)], IngestOptions(workers=1, progress=False)
    )
    embed_images(single, profile, EmbedOptions(progress=False))

    def vectors(h: LunaHome) -> dict[str, np.ndarray]:
        with open_catalog(h.catalog_path, read_only=True) as con:
            rows = con.execute('SELECT content_hash, "row" FROM vision_rows ORDER BY 1').fetchall()
        values = open_vision_store(h, profile).read("embeds", np.array([r for _, r in rows]))
        return {key: values[i] for i, (key, _) in enumerate(rows)}

    ours, reference = vectors(home), vectors(single)
    assert ours.keys() == reference.keys()
    np.testing.assert_allclose(
        np.stack([ours[k] for k in reference]).astype(np.float32),
        np.stack(list(reference.values())).astype(np.float32),
        atol=2e-3,
    )


def test_a_bad_broker_setting_is_named(tmp_path):
    from luna_assets.executor import celery_broker
    from luna_core.errors import LunaConfigError

    home = LunaHome.resolve(tmp_path / "home").ensure()
    assert celery_broker(home) is None
    home.set_setting("scale", "celery_broker", "amqp://guest@localhost//")
    with pytest.raises(LunaConfigError, match="celery_broker.*Redis URL"):
        celery_broker(home)


def test_luna_worker_without_a_broker_says_what_to_set(tmp_path):
    home = LunaHome.resolve(tmp_path / "home").ensure()
    done = subprocess.run(
        [LUNA, "worker", "--home", str(home.root)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and "[scale] celery_broker" in done.stderr
