from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "2")
torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def small_sites(tmp_path_factory):
    """The default embedded multi-site dataset on a small grid, generated once per test session."""
    from monai_continual.data import make_sites

    return make_sites(tmp_path_factory.mktemp("sites"), seed=0, shape=(24, 28, 24), progress=False)


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked ``cuda`` are skipped where no CUDA device is present."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
