"""Luna as it runs all day, for real: a PostgreSQL server (Debian's package) holds the Dagster
instance and the MLflow registry; `luna mlflow-server` and `luna ui` run as a person starts them;
the chain is launched through Dagster's GraphQL API; the sensor and the schedule tick in the
daemon; the pages are rendered by headless Chromium, and their screenshots kept under
test-artifacts/ (or $LUNA_TEST_ARTIFACTS)."""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from luna_core.home.home import LunaHome
from tests.services import Chromium, PostgresServer, Service, free_port

LUNA = str(Path(sys.executable).with_name("luna"))
ARTIFACTS = Path(
    os.environ.get("LUNA_TEST_ARTIFACTS") or Path(__file__).resolve().parents[1] / "test-artifacts"
)
SMALL_RUN = {
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
LAUNCH = """mutation Launch($params: ExecutionParams!) { launchRun(executionParams: $params) {
  __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message }
  ... on RunConfigValidationInvalid { errors { message } }
  ... on PipelineNotFoundError { message } } }"""


@pytest.fixture(scope="module")
def postgres():
    server = PostgresServer()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def running(tmp_path_factory, tiny_models, sample_library_master, postgres):
    """A home whose instance lives in PostgreSQL, with its MLflow server and `luna ui` running; the
    library is ingested and its fingerprint recorded, as `luna ingest` leaves it."""
    from luna_core.ingest.run import IngestOptions, ingest
    from luna_core.ingest.scan import fingerprint_roots

    base = tmp_path_factory.mktemp("operations")
    library = base / "library"
    shutil.copytree(sample_library_master.root, library, symlinks=True)
    home = LunaHome.resolve(base / "home")
    home.root.mkdir()
    home.set_operations_setting("postgres_url", postgres.create_database("luna"))
    home.ensure()
    home.add_roots([library])
    home.set_model_profile("tiny")
    roots = home.roots()
    _, fingerprint = fingerprint_roots(roots)
    ingest(home.catalog_path, roots, IngestOptions(workers=1, progress=False))
    home.record_library_fingerprint(roots, fingerprint)

    services = []
    try:
        mlflow_port, ui_port = free_port(), free_port()
        mlflow = Service(
            "luna mlflow-server",
            [
                LUNA,
                "mlflow-server",
                "--home",
                str(home.root),
                "--port",
                str(mlflow_port),
                "--record",
            ],
            ready="Application startup complete",
        )
        services.append(mlflow)
        mlflow.wait_ready(180)
        mlflow.wait_listening(mlflow_port, 60)
        # The reindex schedule every minute, so that one tick happens while the test runs.
        ui = Service(
            "luna ui",
            [LUNA, "ui", "--home", str(home.root), "--port", str(ui_port)],
            ready="Serving dagster-webserver on",
            env=dict(os.environ, LUNA_REINDEX_CRON="* * * * *"),
        )
        services.append(ui)
        ui.wait_ready(300)
        ui.wait_listening(ui_port, 60)
        yield {
            "home": home,
            "ui": f"http://127.0.0.1:{ui_port}",
            "mlflow": f"http://127.0.0.1:{mlflow_port}",
            "ui_service": ui,
        }
    finally:
        for service in reversed(services):
            service.stop()


def _post(url: str, query: str, variables: dict) -> dict:
    request = urllib.request.Request(
        url,
        data=json.dumps({"query": query, "variables": variables}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def _wait_for(postgres: PostgresServer, sql: str, done, timeout: float):
    """The first row of `sql` for which `done(row)` holds, asked again each time dagster-postgres
    NOTIFYs a stored event; None at the deadline."""
    import psycopg2

    con = psycopg2.connect(postgres.url("luna"))
    con.autocommit = True
    deadline = time.monotonic() + timeout
    try:
        with con.cursor() as cur:
            cur.execute("LISTEN run_events")
            while True:
                cur.execute(sql)
                row = cur.fetchone()
                remaining = deadline - time.monotonic()
                if done(row) or remaining <= 0:
                    return row if done(row) else None
                select.select([con], [], [], remaining)
                con.poll()
                con.notifies.clear()
    finally:
        con.close()


def _wait_for_run(postgres: PostgresServer, run_id: str, timeout: float = 600) -> str:
    row = _wait_for(
        postgres,
        f"SELECT status FROM runs WHERE run_id = '{run_id}'",
        lambda r: r is not None and r[0] in ("SUCCESS", "FAILURE", "CANCELED"),
        timeout,
    )
    assert row, f"run {run_id} did not finish within {timeout:.0f}s"
    return row[0]


@pytest.fixture(scope="module")
def built(running, postgres):
    """The chain, launched through the UI's GraphQL API and run by the daemon; its run id."""
    params = {
        "selector": {
            "repositoryLocationName": "luna",
            "repositoryName": "__repository__",
            "jobName": "luna_build_all",
        },
        "runConfigData": SMALL_RUN,
    }
    try:
        answer = _post(running["ui"] + "/graphql", LAUNCH, {"params": params})["data"]["launchRun"]
    except OSError as exc:
        raise AssertionError(
            f"the UI refused the launch ({exc}); it said:\n"
            + "\n".join(running["ui_service"].lines[-60:])
        ) from None
    assert answer["__typename"] == "LaunchRunSuccess", answer
    run_id = answer["run"]["runId"]
    status = _wait_for_run(postgres, run_id)
    assert status == "SUCCESS", "\n".join(running["ui_service"].lines[-60:])
    return run_id


def test_the_chain_runs_on_postgres_and_the_daemon_ticks_there(running, postgres, built):
    assert postgres.query("luna", f"SELECT status FROM runs WHERE run_id = '{built}'") == [
        ("SUCCESS",)
    ]
    materialized = {
        key
        for (key,) in postgres.query(
            "luna",
            f"""
        SELECT DISTINCT asset_key FROM event_logs WHERE run_id = '{built}' AND dagster_event_type =
            'ASSET_MATERIALIZATION'""",
        )
    }
    assert {json.loads(k)[0] for k in materialized} == {
        "ingested_images",
        "vision_embeddings",
        "text_conditionings",
        "luna_catalog",
        "faiss_index",
        "projector",
        "refinement_benchmark",
        "refinement_report",
    }
    # The file sensor ticked in the daemon (and, on a built home, requested nothing); the schedule
    # ticked and launched its rebuild: both recorded in PostgreSQL, not in a file under the home.
    sensor_ticks = postgres.query(
        "luna", "SELECT status FROM job_ticks WHERE tick_body LIKE '%\"library_files_changed\"%'"
    )
    assert sensor_ticks and {s for (s,) in sensor_ticks} <= {"SKIPPED", "SUCCESS"}
    schedule_run = _schedule_run(postgres)
    assert schedule_run, "the every-minute reindex schedule launched no run"
    assert not list(running["home"].dagster_home.rglob("*.db")), (
        "no sqlite run, event or schedule storage"
    )


def _schedule_run(postgres: PostgresServer, timeout: float = 150) -> str | None:
    """The run id the reindex schedule launched, waiting for the next minute's tick."""
    row = _wait_for(
        postgres,
        """SELECT r.run_id FROM runs r JOIN run_tags t ON t.run_id = r.run_id
                                 WHERE t.key = 'dagster/schedule_name' AND t.value =
                                     'nightly_reindex' LIMIT 1""",
        lambda r: r is not None,
        timeout,
    )
    return row[0] if row else None


def test_the_projector_is_registered_on_the_mlflow_server_and_found_by_alias(
    running, postgres, built
):
    url = (
        running["mlflow"]
        + "/api/2.0/mlflow/registered-models/alias?"
        + urllib.parse.urlencode({"name": "luna-projector", "alias": "champion"})
    )
    with urllib.request.urlopen(url, timeout=60) as response:
        version = json.loads(response.read())["model_version"]
    # promoted: the first version is the champion
    assert version["version"] == "1" and version["tags"]
    assert {t["key"] for t in version["tags"]} >= {"data_fingerprint", "arch"}
    # The registry lives in PostgreSQL (its own database beside Dagster's), the checkpoint under the
    # home.
    assert postgres.query("luna_mlflow", "SELECT name, alias FROM registered_model_aliases") == [
        ("luna-projector", "champion")
    ]
    assert list((running["home"].mlflow_dir / "artifacts").rglob("weights.safetensors"))
    done = subprocess.run(
        [
            LUNA,
            "projector",
            "list",
            "--home",
            str(running["home"].root),
            "--tracking-uri",
            running["mlflow"],
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0 and "champion" in done.stdout, done.stdout + done.stderr


def test_the_pages_render_in_chromium(running, built):
    browser = Chromium()
    try:
        # the lineage graph: one node per group
        graph = browser.open(running["ui"] + "/asset-groups")
        browser.wait_for_text(
            graph,
            [
                "Global asset lineage",
                "ingest",
                "embeddings",
                "catalog",
                "index",
                "projector",
                "reports",
            ],
        )
        browser.screenshot(graph, ARTIFACTS / "dagster-asset-graph.png")
        catalog = browser.open(running["ui"] + "/assets")
        browser.wait_for_text(
            catalog,
            [
                "ingested_images",
                "vision_embeddings",
                "text_conditionings",
                "luna_catalog",
                "faiss_index",
                "projector",
                "refinement_report",
            ],
        )
        browser.screenshot(catalog, ARTIFACTS / "dagster-asset-catalog.png")
        page = browser.open(running["ui"] + "/assets/ingested_images")
        text = browser.wait_for_text(
            page, ["ingested_images", "images in catalog", "files/s", "by generator"]
        )
        assert "every_image_has_content_hash" in text or "Checks" in text
        browser.screenshot(page, ARTIFACTS / "dagster-ingested-images.png")
        model = browser.open(running["mlflow"] + "/#/models/luna-projector")
        browser.wait_for_text(model, ["luna-projector", "champion"])
        browser.screenshot(model, ARTIFACTS / "mlflow-registered-model.png")
    finally:
        browser.close()
    assert all(
        (ARTIFACTS / name).stat().st_size > 10_000
        for name in (
            "dagster-asset-graph.png",
            "dagster-asset-catalog.png",
            "dagster-ingested-images.png",
            "mlflow-registered-model.png",
        )
    )


def test_a_new_home_gets_the_documented_instance(tmp_path):
    import dagster as dg

    home = LunaHome.resolve(tmp_path / "home").ensure()
    instance = dg.DagsterInstance.from_config(str(home.dagster_home))
    config = instance.get_concurrency_config()
    assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
    assert config.run_queue_config.max_concurrent_runs == 4
    assert config.pool_config.default_pool_limit == 1, (
        "the gpu pool: one slot on a machine without a GPU"
    )
    assert (
        instance.run_monitoring_enabled
        and instance.run_retries_enabled
        and instance.run_retries_max_retries == 2
    )
    assert not instance.run_retries_retry_on_asset_or_op_failure, (
        "a step's own error is not retried"
    )
    assert type(instance.run_storage).__name__ == "SqliteRunStorage"


def test_the_instance_follows_the_postgres_setting_but_never_a_person_s_own_file(
    tmp_path, monkeypatch
):
    POSTGRES_ENV = "LUNA_POSTGRES_URL"

    home = LunaHome.resolve(tmp_path / "home").ensure()
    yaml = home.dagster_home / "dagster.yaml"
    assert "postgres" not in yaml.read_text()
    monkeypatch.setenv(POSTGRES_ENV, "postgresql://luna:secret@db.local:5433/luna")
    home.ensure()
    assert (
        'postgres_url: "postgresql+psycopg2://luna:secret@db.local:5433/luna"' in yaml.read_text()
    )
    monkeypatch.delenv(POSTGRES_ENV)
    home.set_operations_setting("postgres_url", "postgresql://studio@db.local/luna")
    home.ensure()
    assert "postgresql+psycopg2://studio@db.local/luna" in yaml.read_text()

    own = "".join(
        line for line in yaml.read_text().splitlines(keepends=True) if "managed-by-luna" not in line
    )
    yaml.write_text(own.replace("max_concurrent_runs: 4", "max_concurrent_runs: 1"))
    home.set_operations_setting("postgres_url", "postgresql://other@db.local/luna")
    home.ensure()
    assert "max_concurrent_runs: 1" in yaml.read_text() and "other@" not in yaml.read_text(), (
        "left as the person wrote it"
    )


def test_an_unreachable_postgres_is_one_clear_line(tmp_path, capsys):
    from luna_cli.main import main

    home = LunaHome.resolve(tmp_path / "home").ensure()
    home.set_operations_setting("postgres_url", f"postgresql://luna@127.0.0.1:{free_port()}/luna")
    assert main(["mlflow-server", "--home", str(home.root)]) == 2
    err = capsys.readouterr().err
    assert "cannot reach PostgreSQL at 127.0.0.1" in err and "Traceback" not in err


def test_a_bad_postgres_url_names_itself(tmp_path):
    from luna_core.errors import LunaConfigError
    from luna_core.operations.mlflow_server import database_beside

    assert (
        database_beside("postgresql://luna@h:5/luna")
        == "postgresql+psycopg2://luna@h:5/luna_mlflow"
    )
    with pytest.raises(LunaConfigError, match="not a PostgreSQL URL"):
        database_beside("mysql://luna@h/luna")


def test_with_a_celery_broker_the_gpu_pool_queues_at_the_workers(tmp_path):
    """One machine: the pool is its GPUs (or `gpu_slots`). With Celery, every model step goes to
    the broker at once and each worker takes one at a time: a pool of the workers' size would hold
    steps back until their runs ask again (Dagster backs off up to 15 s), leaving workers idle."""
    from luna_core.home.settings import Settings
    from luna_core.operations.dagster_instance import CELERY_POOL_SLOTS, ensure_instance

    def limit(toml: dict, name: str) -> str:
        text = ensure_instance(tmp_path / name, Settings(toml, {})).read_text()
        return next(line for line in text.splitlines() if "default_limit" in line).split()[-1]

    (tmp_path / "here").mkdir()
    (tmp_path / "slots").mkdir()
    (tmp_path / "celery").mkdir()
    assert limit({}, "here") == "1"  # no GPU on this machine
    assert limit({"operations": {"gpu_slots": 3}}, "slots") == "3"
    celery = {"operations": {"gpu_slots": 3}, "scale": {"celery_broker": "redis://h:6379/0"}}
    assert limit(celery, "celery") == str(CELERY_POOL_SLOTS)
    import dagster as dg

    with dg.DagsterInstance.from_config(str(tmp_path / "celery")) as instance:
        assert instance.get_runs(limit=1) == []  # Dagster accepts the file as written
