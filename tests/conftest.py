"""Shared fixtures: the real annotation files in ../shared/data, skipped cleanly when absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("WTAL_SHARED_DATA", REPO.parent / "shared" / "data"))


def _shared(name: str) -> Path:
    path = SHARED_DATA / name
    if not (path / "classlist.npy").exists():
        pytest.skip(f"real annotation files not found at {path} (they live in ../shared/data beside the repo)")
    return path


@pytest.fixture(scope="session")
def thumos14_annotations() -> Path:
    """Folder with the real W-TALC Thumos14reduced annotation .npy files and Ambiguous_test.txt."""
    return _shared("thumos14")


@pytest.fixture(scope="session")
def activitynet12_annotations() -> Path:
    """Folder with the real W-TALC-format ActivityNet 1.2 annotation .npy files."""
    return _shared("activitynet12")


@pytest.fixture(autouse=True, scope="session")
def _single_torch_thread():
    """Tiny test tensors run 10-100x faster on one thread than with torch's default pool on a busy 2-core box."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
