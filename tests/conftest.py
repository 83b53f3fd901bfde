"""Tests run on the real datasets in ../shared/data (read-only) or $PRUNESTUDY_DATA_DIR."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("PRUNESTUDY_TEST_DATA_DIR", ROOT.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session", autouse=True)
def _isolated_env(tmp_path_factory):
    """Unpacked datasets and W&B files go to temporary folders, never to ~ or the shared data."""
    cache = tmp_path_factory.mktemp("cache")
    old = {k: os.environ.get(k) for k in ("PRUNESTUDY_CACHE_DIR", "WANDB_MODE", "WANDB_DIR")}
    os.environ["PRUNESTUDY_CACHE_DIR"] = str(cache)
    os.environ["WANDB_MODE"] = "offline"
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "MNIST" / "raw").is_dir():
        pytest.fail(f"test data not found at {DATA_DIR} (set PRUNESTUDY_TEST_DATA_DIR)")
    return DATA_DIR


@pytest.fixture(scope="session")
def mnist(data_dir):
    from study.data import load_dataset

    return load_dataset("mnist", data_dir, download=False)


def tiny_config(**overrides):
    """A beta_vae trial small enough for a unit test (seconds on a CPU)."""
    config = {"method": "beta_vae", "dataset": "mnist", "train_subset": 512, "batch_size": 64,
              "epochs": 1, "head_epochs": 1, "prune_epochs": 1, "sparsity": 0.5, "seed": 0}
    config.update(overrides)
    return config
