from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from luna_core.samples import SampleLibrary, make_sample_library


@pytest.fixture(autouse=True)
def _mlflow_uri_stays_in_its_test():
    """mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI/MLFLOW_REGISTRY_URI, which the next
    test's subprocesses (Dagster's step workers) would inherit: pointing at another test's home."""
    yield
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        os.environ.pop(name, None)


# A test that uses the trained tiny world (through one of these fixtures, directly or through
# another) loads models and takes seconds: it is marked `slow`, as is a test that needs the world or
# a server some other way (marked where it is written). `scripts/test --fast` leaves them out.
TINY_WORLD_FIXTURES = {"tiny_models", "tiny_home", "library_home", "indexed_home", "projector_home"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if TINY_WORLD_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


# Every format appears at least twice; small pictures keep the suite fast on two cores.
SAMPLE_IMAGES = 48


@pytest.fixture(scope="session")
def sample_library_master(tmp_path_factory) -> SampleLibrary:
    return make_sample_library(
        tmp_path_factory.mktemp("master") / "library", SAMPLE_IMAGES, seed=7, size=(96, 96)
    )


@pytest.fixture
def sample_library(sample_library_master: SampleLibrary, tmp_path: Path) -> SampleLibrary:
    """A private copy of the sample library (tests may change files), symlinks kept as links."""
    dest = tmp_path / "library"
    shutil.copytree(sample_library_master.root, dest, symlinks=True)
    files = [
        type(f)(**{**f.__dict__, "path": dest / f.path.relative_to(sample_library_master.root)})
        for f in sample_library_master.files
    ]
    return SampleLibrary(dest, files)


@pytest.fixture(scope="session")
def tiny_models() -> Path:
    """The trained tiny world from this machine's cache (scripts/bootstrap trains it once per
    machine; every home and test shares it)."""
    from luna_core.models.tiny import ensure_tiny_models

    return ensure_tiny_models(progress=False)


@pytest.fixture
def tiny_home(tmp_path: Path, tiny_models: Path, sample_library: SampleLibrary):
    """A Luna home on the tiny profile with the sample library ingested."""
    from luna_core.home.home import LunaHome
    from luna_core.ingest.run import IngestOptions, ingest

    home = LunaHome.resolve(tmp_path / "home").ensure()
    home.add_roots([sample_library.root])
    home.set_model_profile("tiny")
    ingest(home.catalog_path, [str(sample_library.root)], IngestOptions(workers=1, progress=False))
    return home


@pytest.fixture
def library_home(tiny_home):
    """(home, profile): tiny_home with both vault stores and the library view."""
    from luna_core.catalog.library_view import build_library
    from luna_core.models.profiles import resolve_profile
    from luna_core.vault.embed import EmbedOptions, embed_images
    from luna_core.vault.embed_prompts import embed_prompts

    profile = resolve_profile("tiny", tiny_home.models_dir)
    options = EmbedOptions(progress=False)
    embed_images(tiny_home, profile, options)
    embed_prompts(tiny_home, profile, options)
    build_library(tiny_home, profile)
    return tiny_home, profile


@pytest.fixture
def indexed_home(library_home):
    """library_home with a published index."""
    from luna_core.index.build import update_index

    home, profile = library_home
    update_index(home, profile)
    return home


@pytest.fixture
def projector_home(indexed_home):
    """indexed_home with a small linear projector registered as luna-projector@champion."""
    from luna_core.models.profiles import resolve_profile
    from luna_core.projector.models import ProjectorConfig
    from luna_core.projector.promotion import register
    from luna_core.projector.registry import Registry
    from luna_core.projector.train import TrainSettings, train_projector, validation_scorer

    profile = resolve_profile("tiny", indexed_home.models_dir)
    settings = TrainSettings(
        epochs=1, min_train_pairs=8, min_val_pairs=2, batch_size=8, progress=False
    )
    result = train_projector(
        indexed_home, profile, ProjectorConfig(arch="linear", rank=8), settings
    )
    register(Registry(indexed_home), result, profile, validation_scorer(indexed_home, profile))
    return indexed_home
