"""Artifact store fixtures: the contract runs on every backend."""

from __future__ import annotations

from pathlib import Path

import pytest

from taskplatform.artifacts import ArtifactStore, LocalArtifactStore, MemoryArtifactStore


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """Where the local store keeps its files (not created: the store creates it)."""
    return tmp_path / "artifacts"


@pytest.fixture
def local(root: Path) -> LocalArtifactStore:
    return LocalArtifactStore(root)


@pytest.fixture(params=["local", "memory"])
def store(request: pytest.FixtureRequest, root: Path) -> ArtifactStore:
    if request.param == "local":
        return LocalArtifactStore(root)
    return MemoryArtifactStore()
