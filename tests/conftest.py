from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from luna_core.samples import SampleLibrary, make_sample_library

# Every format appears at least twice; small pictures keep the suite fast on two cores.
SAMPLE_IMAGES = 48


@pytest.fixture(scope="session")
def sample_library_master(tmp_path_factory) -> SampleLibrary:
    return make_sample_library(tmp_path_factory.mktemp("master") / "library", SAMPLE_IMAGES, seed=7, size=(96, 96))


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
