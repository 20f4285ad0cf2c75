"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import write_pair_folder


@pytest.fixture(autouse=True)
def isolated_latent_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch) -> Path:
    """Point the default latent cache at a temporary folder: tests never touch ~/.cache."""
    folder = tmp_path_factory.mktemp("latent-cache")
    monkeypatch.setenv("ALIGNKIT_CACHE_DIR", str(folder))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing in the suite may reach the network
    return folder


@pytest.fixture
def pair_folder(tmp_path: Path) -> Path:
    """12 rows in 2 parquet files, images 40x48 and 56x40, one tie (row 4), one swap (row 2)."""
    return write_pair_folder(tmp_path / "pairs")
