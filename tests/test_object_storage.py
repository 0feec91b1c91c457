"""The vault, the index and MLflow's artifacts on S3-compatible object storage (moto's server,
started on 127.0.0.1 by the test): a partitioned embedding run per shard through Dagster, the
commit, an index build, a projector registered, and queries, all reading and writing there; the
catalog and the Dagster instance stay in the home. The answers equal those of a home on disk."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from luna_core.home.home import LunaHome
from tests.codec_tolerance import assert_coded_alike
from tests.services import Service, free_port, unavailable

BUCKET = "luna-test"
SMALL_PROJECTOR = {
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
        }
    }
}


@pytest.fixture
def s3(monkeypatch):
    """An S3-compatible server with one bucket; the environment points every S3 client at it."""
    server_bin = Path(sys.executable).with_name("moto_server")
    if not server_bin.exists():
        unavailable("moto's server is not installed (pip install 'moto[server]')")
    port = free_port()
    server = Service(
        "moto_server", [str(server_bin), "-H", "127.0.0.1", "-p", str(port)], ready="Running on"
    )
    try:
        server.wait_ready(120)
        server.wait_listening(port, 60)
        endpoint = f"http://127.0.0.1:{port}"
        for name, value in {
            "AWS_ACCESS_KEY_ID": "luna",
            "AWS_SECRET_ACCESS_KEY": "luna-secret",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
            "MLFLOW_S3_ENDPOINT_URL": endpoint,
        }.items():
            monkeypatch.setenv(name, value)
        import boto3

        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        yield client
    finally:
        server.stop()


def _keys(client, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def test_partitioned_vault_index_and_artifacts_live_on_object_storage(
    s3, tiny_home, tmp_path, sample_library
):
    from luna_assets.definitions import BUILD_ALL_JOB, build_definitions
    from luna_assets.defs.catalog.assets import LUNA_CATALOG
    from luna_assets.defs.index.assets import FAISS_INDEX
    from luna_assets.defs.projector.assets import PROJECTOR
    from luna_assets.defs.vault.assets import TEXT_CONDITIONINGS, VISION_EMBEDDINGS
    from luna_core.ask.vault_query import VaultQuery
    from luna_core.models.profiles import resolve_profile
    from luna_core.vault.checks import check_store
    from luna_core.vault.segments import shard_keys

    # A copy on disk, with one store, answers first: the reference.
    profile = resolve_profile("tiny", tiny_home.models_dir)
    local = LunaHome.resolve(tmp_path / "local")
    shutil.copytree(tiny_home.root, local.root, symlinks=True)

    home = tiny_home
    home.set_setting("storage", "root", f"s3://{BUCKET}/luna")
    home.set_vault_shards(2)
    job = build_definitions(str(home.root)).resolve_job_def(BUILD_ALL_JOB)
    for key in shard_keys(2):  # each shard's partition: its own segment store and manifests, on S3
        result = job.execute_in_process(
            partition_key=key, asset_selection=[VISION_EMBEDDINGS, TEXT_CONDITIONINGS]
        )
        assert result.success
    waiting = _keys(s3, "luna/vault/vision/")
    assert any("/manifests/" in k for k in waiting) and any(
        ".segments/0002-0001.zarr/" in k for k in waiting
    )
    result = job.execute_in_process(
        asset_selection=[LUNA_CATALOG, FAISS_INDEX, PROJECTOR], run_config=SMALL_PROJECTOR
    )
    assert result.success, [e.message for e in result.all_events if e.is_failure]

    keys = _keys(s3, "luna/")
    # all committed
    assert not any("/manifests/" in k for k in keys) and any("/committed/" in k for k in keys)
    assert any(k.endswith("/current.json") and k.startswith("luna/index/") for k in keys)
    assert any(k.startswith("luna/mlflow-artifacts/") and k.endswith(".safetensors") for k in keys)
    # nothing on local disk
    assert not (home.root / "vault").exists() and not (home.root / "index").exists()
    for kind in ("vision", "text"):
        assert all(outcome.passed for outcome in check_store(home, profile, kind)), kind

    # Queries read the index (a verified local copy) and the vault's rows from S3: the disk home's
    # answers.
    image = sample_library.files[0].path
    from luna_core.catalog.library_view import build_library
    from luna_core.index.build import update_index
    from luna_core.vault.embed import EmbedOptions, embed_images
    from luna_core.vault.embed_prompts import embed_prompts

    embed_images(local, profile, EmbedOptions(progress=False))
    embed_prompts(local, profile, EmbedOptions(progress=False))
    build_library(local, profile)
    update_index(local, profile)
    ours, theirs = VaultQuery(home, profile), VaultQuery(local, profile)
    assert [n.path for n in ours.search(image, k=5)] == [n.path for n in theirs.search(image, k=5)]
    a, b = ours.condition(image, k=3), theirs.condition(image, k=3)
    assert_coded_alike(a.prompt_embeds, b.prompt_embeds)  # stores fitted apart
    np.testing.assert_allclose(a.pooled_prompt_embeds, b.pooled_prompt_embeds, atol=1e-3)
    # The projector's checkpoint comes back from S3 through the registry.
    answer = ours.condition_with_projector(image, "models:/luna-projector@champion")
    assert answer.prompt_embeds.shape[-2:] == b.prompt_embeds.shape[-2:]
