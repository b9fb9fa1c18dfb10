"""Shared fixtures.

Every test runs offline with an empty, private data cache (``ROBUSTDYN_OFFLINE=1``,
``ROBUSTDYN_CACHE`` = a fresh tmp folder) and a private default results store (``ROBUSTDYN_STORE``),
so nothing tries to download, nothing is written into the checkout, and no test sees another test's
cache or results. ``ROBUSTDYN_DATA`` is left as the caller set it (CI points it at the unpacked CIFAR-10);
tests that need "no data anywhere" remove it themselves (``no_data_env``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
#: The shared JPEG copy of CIFAR-10 beside the checkout (absent on a machine without ../shared).
SHARED_CIFAR10 = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"
#: ROBUSTDYN_DATA as given to the pytest process (read before any test can change the environment).
ENV_DATA = os.environ.get("ROBUSTDYN_DATA")


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path_factory):
    """Offline, with an empty private cache and store: no test downloads or reads shared state."""
    monkeypatch.setenv("ROBUSTDYN_OFFLINE", "1")
    private = tmp_path_factory.mktemp("robustdyn-env")
    monkeypatch.setenv("ROBUSTDYN_CACHE", str(private / "cache"))
    monkeypatch.setenv("ROBUSTDYN_STORE", str(private / "results.sqlite"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(private / "xdg"))  # e.g. results-store packs unpacked for reading


@pytest.fixture
def no_data_env(monkeypatch):
    """No CIFAR-10 source at all: ROBUSTDYN_DATA unset (cache empty and offline via the autouse fixture)."""
    monkeypatch.delenv("ROBUSTDYN_DATA", raising=False)


@pytest.fixture
def tmp_models_dir(tmp_path) -> Path:
    """An empty checkpoint folder (pass it as ``models_dir``); the repo's models/ is never written."""
    d = tmp_path / "models"
    d.mkdir()
    return d


def real_cifar10_dirs() -> list[Path]:
    """Folders holding the real (JPEG copy of) CIFAR-10: ROBUSTDYN_DATA and ../shared/data/cifar10."""
    dirs = []
    if ENV_DATA and Path(ENV_DATA).is_dir():
        dirs.append(Path(ENV_DATA))
    if SHARED_CIFAR10.is_dir() and any(SHARED_CIFAR10.glob("cifar10-test-jpeg.npz")):
        dirs.append(SHARED_CIFAR10)
    return dirs


@pytest.fixture
def cifar10_dirs() -> list[Path]:
    """Every folder with the real CIFAR-10 test split, or skip (tests using it are marked ``data``)."""
    dirs = real_cifar10_dirs()
    if not dirs:
        pytest.skip(f"real CIFAR-10 not available: ROBUSTDYN_DATA unset and {SHARED_CIFAR10} absent")
    return dirs


@pytest.fixture
def cifar10_dir(cifar10_dirs) -> Path:
    """A folder with the real CIFAR-10 test split (ROBUSTDYN_DATA first), or skip."""
    return cifar10_dirs[0]


@pytest.fixture
def rng() -> torch.Generator:
    return torch.Generator().manual_seed(0)
