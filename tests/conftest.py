"""Tests run on the real datasets in ../shared/data (read-only) or $PRUNESTUDY_DATA_DIR."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
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
              "epochs": 1, "head_epochs": 1, "prune_epochs": 1, "layer_sparsity": 0.5,
              "seed": 0}
    config.update(overrides)
    return config


def ray_tmpdir() -> Path:
    """A fresh, short RAY_TMPDIR (Ray's socket paths must stay short): every Ray process a test
    starts carries it in its command line, so the test can find (and check) exactly its own."""
    return Path(tempfile.mkdtemp(prefix=f"ray{os.getpid()}-", dir="/tmp"))


def pytest_sessionfinish(session, exitstatus) -> None:
    """Remove the Ray temp folders this session made (logs, spilled objects), kept until now
    for a failing test's post-mortem."""
    for folder in Path("/tmp").glob(f"ray{os.getpid()}-*"):
        shutil.rmtree(folder, ignore_errors=True)


def ray_pids(marker: str | Path = "raylet|gcs_server") -> set[int]:
    out = subprocess.run(["pgrep", "-f", str(marker)], capture_output=True, text=True,
                         check=False).stdout
    return {int(p) for p in out.split()} - {os.getpid()}


def run_module(module: str, *args: str, timeout: float = 600,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m module args...` from the repo root, W&B offline, no API key in sight."""
    extra = env or {}
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT), **extra}
    if "WANDB_API_KEY" not in extra:
        env.pop("WANDB_API_KEY", None)
    proc = subprocess.Popen([sys.executable, "-m", module, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:  # never leave a hung driver (or its Ray) behind
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run_main(module: str, *args: str) -> int:
    """`module.main(args)` in this process (its exit code; argparse's exits included): for
    commands that fail before they start anything, a subprocess only adds seconds."""
    import importlib

    try:
        return importlib.import_module(module).main(list(args))
    except SystemExit as e:
        return int(e.code or 0)


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory, data_dir):
    """A real 2-trial beta_vae study through the CLI, shared by the tests that read one."""
    storage = tmp_path_factory.mktemp("studies")
    ray_dir = ray_tmpdir()
    proc = run_module("study.search", "beta_vae", "--num-samples", "2", "--max-concurrent", "2",
                      "--name", "tiny", "--storage-dir", str(storage), "--sampler", "random",
                      "--seed", "3", "--data-dir", str(data_dir), "--set", "epochs=1",
                      "--set", "head_epochs=1", "--set", "prune_epochs=1", "--set", "train_subset=500",
                      "--set", "latent_dim=4", env={"RAY_TMPDIR": str(ray_dir)})
    return storage / "tiny", proc, ray_pids(ray_dir)


TIMINGS = {"epoch_seconds", "checkpoint_seconds"}  # wall-clock; checkpoint_seconds absent after resume


def assert_same_metrics(a: dict, b: dict) -> None:
    """Two reports of the same epoch agree exactly, timings aside (CPU runs are deterministic)."""
    assert a.keys() - TIMINGS == b.keys() - TIMINGS
    for k in a.keys() - TIMINGS:
        assert a[k] == b[k], (a.get("epoch"), k)


class _Interrupt(Exception):
    pass


def run_recorded(config: dict, data, stop_after: int | None = None, resume: dict | None = None):
    """Run the trainable, keeping every report and the state saved with it; stop (as a killed
    trial would) right after epoch `stop_after`. Returns (reports, states)."""
    from study.trainable import load_state, train

    reports, states = [], []

    def report(metrics, folder):
        reports.append(metrics)
        states.append(load_state(folder) if folder is not None else None)
        if metrics["epoch"] == stop_after:
            raise _Interrupt

    try:
        train(config, data, report, resume=resume)
    except _Interrupt:
        pass
    return reports, states


@pytest.fixture(scope="session")
def dsprites(data_dir):
    """dSprites, rendered once per session into the session's cache folder."""
    from study.data import load_dataset

    return load_dataset("dsprites", data_dir, download=False)
