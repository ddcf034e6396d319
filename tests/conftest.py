"""Shared test fixtures.

Tests that need the real CT in ``../shared/data`` take the ``shared_data`` fixture,
which skips them with a clear reason when that folder is absent (a fresh clone
outside the liverseg workplace), so ``make test`` still passes there.
"""

from __future__ import annotations

import os
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning (see liverseg.cli.main); set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest

SHARED_DATA = Path(os.environ.get("LIVERSEG_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


@pytest.fixture(scope="session", autouse=True)
def _few_threads():
    """Keep the suite polite on a 2-core machine."""
    import torch

    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real CT folder (../shared/data); skips the test when it is absent."""
    if not (SHARED_DATA / "README.md").is_file():
        pytest.skip(f"real CT data not found at {SHARED_DATA} (only present in the liverseg workplace)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_bundle_3d(tmp_path_factory) -> Path:
    """A tiny random-init 3D cascade bundle (localize 4 mm + segment 2 mm); see tests/tiny_bundles.py."""
    from tiny_bundles import make_tiny_bundle

    return make_tiny_bundle(tmp_path_factory.mktemp("bundles") / "tiny-3d", kind="3d")


@pytest.fixture(scope="session")
def tiny_bundle_2d(tmp_path_factory) -> Path:
    """A tiny random-init 2D bundle (one segment stage, native pixel grid); see tests/tiny_bundles.py."""
    from tiny_bundles import make_tiny_bundle

    return make_tiny_bundle(tmp_path_factory.mktemp("bundles") / "tiny-2d", kind="2d")
