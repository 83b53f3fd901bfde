"""Tests run on the real datasets in ../shared/data (read-only) or $PRUNESTUDY_DATA_DIR.

The suite's real Ray studies (Ray Tune + OptunaSearch + W&B offline, real training) are background
studies: functions registered with `@background_study(NAME)`, started in worker threads when the
session starts and run, STUDY_LANES at a time, while the in-process tests run (torch in this
process on one thread, beside them). A test that reads one is marked
`@pytest.mark.study(NAME)` (or uses the `tiny_study` fixture); such tests run last, and
`studies.result(NAME)` waits for the study. Only the studies of selected tests are started.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

# torch in this process runs one thread: the machine's other core runs the background studies,
# and two OpenMP threads on a busy core spin at each barrier (measured: a 17x slower reparam trial)
os.environ.setdefault("OMP_NUM_THREADS", "1")

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


@pytest.fixture(scope="session")
def mnist_small(mnist):
    """MNIST with 500 validation and 500 test images: for checks that hold whatever the
    evaluation's size (determinism, resume, round trips, reported keys), evaluated in a twelfth of
    the time (beta_vae's diagnostics decode the validation split)."""
    return replace(mnist, val_x=mnist.val_x[:500], val_y=mnist.val_y[:500],
                   test_x=mnist.test_x[:500], test_y=mnist.test_y[:500])


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


def ray_env_pids(ray_dir: Path) -> set[int]:
    """Every process started with RAY_TMPDIR=ray_dir, Ray's workers too (their titles, such as
    `ray::ImplicitFunc.train`, do not name the folder)."""
    entry, pids = f"RAY_TMPDIR={ray_dir}".encode(), set()
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and entry in (proc / "environ").read_bytes().split(b"\0"):
                pids.add(int(proc.name))
        except OSError:  # gone, or not ours to read
            pass
    return pids - {os.getpid()}


def end_stragglers(ray_dir: Path, grace: float = 15) -> list[str]:
    """Waits up to `grace` seconds for the processes of a finished study's RAY_TMPDIR to end, then
    kills the rest; returns what each of those was (pid and title)."""
    end = time.time() + grace
    while ray_env_pids(ray_dir) and time.time() < end:
        time.sleep(0.5)
    left = []
    for pid in ray_env_pids(ray_dir):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
            left.append(f"{pid} {title}")
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return left


def _module_env(base: dict[str, str], extra: dict[str, str] | None) -> dict[str, str]:
    """`base` with W&B offline, the repo importable and no API key unless `extra` plants one."""
    extra = extra or {}
    env = {**base, "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT), **extra}
    if "WANDB_API_KEY" not in extra:
        env.pop("WANDB_API_KEY", None)
    return env


def _communicate(proc: subprocess.Popen, timeout: float) -> subprocess.CompletedProcess:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:  # never leave a hung driver (or its Ray) behind
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run_module(module: str, *args: str, timeout: float = 600,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m module args...` from the repo root, W&B offline, no API key in sight."""
    proc = subprocess.Popen([sys.executable, "-m", module, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_module_env(dict(os.environ), env),
                            cwd=ROOT, start_new_session=True)
    return _communicate(proc, timeout)


def run_main(module: str, *args: str) -> int:
    """`module.main(args)` in this process (its exit code; argparse's exits included): for
    commands that fail before they start anything, a subprocess only adds seconds."""
    import importlib

    try:
        return importlib.import_module(module).main(list(args))
    except SystemExit as e:
        return int(e.code or 0)


def _timeless(metrics: dict) -> set:
    """Its keys but the wall-clock ones (`*_seconds`; the previous epoch's are absent after a resume)."""
    return {k for k in metrics if not k.endswith("_seconds")}


def assert_same_metrics(a: dict, b: dict) -> None:
    """Two reports of the same epoch agree exactly, timings aside (CPU runs are deterministic)."""
    assert _timeless(a) == _timeless(b)
    for k in _timeless(a):
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


# --- background studies --------------------------------------------------------------------------

STUDY_LANES = 3  # background studies at once (each a Ray driver and its trials), beside the tests
_STUDIES: dict[str, tuple[float, Callable[[StudyContext], Any]]] = {}  # name -> (cost, job)


def background_study(name: str, cost: float):
    """Register `job(ctx) -> result` as the background study NAME; `cost` (seconds, roughly)
    orders the start: longest first, so the studies end together."""
    def register(job):
        _STUDIES[name] = (cost, job)
        return job
    return register


def _registry() -> dict[str, tuple[float, Callable[[StudyContext], Any]]]:
    """The studies registered by the test modules, which import this file as `tests.conftest`
    (pytest itself loads it as `conftest`: another module, with its own `_STUDIES`)."""
    import tests.conftest as shared

    return shared._STUDIES


class StudyContext:
    """What a background study runs with: its own folder, the data, a copy of the session's
    environment (taken before any test changes it), and its processes, ended if it is abandoned."""

    def __init__(self, name: str, folder: Path, data_dir: Path, env: dict[str, str]):
        self.name, self.folder, self.data_dir, self._env = name, folder, data_dir, env
        self.procs: list[subprocess.Popen] = []
        self.ray_dirs: list[Path] = []
        self.cancelled = threading.Event()

    def ray_dir(self) -> Path:
        folder = ray_tmpdir()
        self.ray_dirs.append(folder)
        return folder

    def popen(self, module: str, *args: str, env: dict[str, str] | None = None,
              output: bool = True) -> subprocess.Popen:
        """`python -m module args...` in its own process group (output: piped, else discarded)."""
        if self.cancelled.is_set():
            raise RuntimeError(f"background study {self.name} was abandoned")
        pipe = subprocess.PIPE if output else subprocess.DEVNULL
        proc = subprocess.Popen([sys.executable, "-m", module, *args], stdout=pipe, stderr=pipe,
                                text=True, env=_module_env(self._env, env), cwd=ROOT,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def run(self, module: str, *args: str, env: dict[str, str] | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess:
        return _communicate(self.popen(module, *args, env=env), timeout)

    def wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        end = time.time() + timeout
        while time.time() < end and not self.cancelled.is_set():
            if predicate():
                return
            time.sleep(1)
        raise AssertionError(f"timed out waiting for {what}")

    def abandon(self) -> None:
        """End every process it started and every Ray process of its RAY_TMPDIRs."""
        self.cancelled.set()
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for folder in self.ray_dirs:
            for pid in ray_pids(folder) | ray_env_pids(folder):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


class Studies:
    """The session's background studies: started once, read by any number of tests."""

    def __init__(self, names: list[str], tmp_path_factory, data_dir: Path):
        registry = _registry()
        unknown = [n for n in names if n not in registry]
        if unknown:
            raise KeyError(f"no background study named {unknown}")
        env = dict(os.environ)
        self.contexts = {n: StudyContext(n, tmp_path_factory.mktemp(n), data_dir, env) for n in names}
        self._pool = ThreadPoolExecutor(max_workers=STUDY_LANES, thread_name_prefix="study")
        self.futures: dict[str, Future] = {}
        self.times: dict[str, tuple[float, float]] = {}  # name -> (start, end), since the session's
        self.stragglers: list[str] = []  # Ray processes that outlived their study's drivers (killed)
        self._t0 = time.time()
        for name in sorted(names, key=lambda n: -registry[n][0]):
            self.futures[name] = self._pool.submit(self._timed, name, registry[name][1])

    def _timed(self, name: str, job: Callable[[StudyContext], Any]) -> Any:
        start = time.time() - self._t0
        try:
            return job(self.contexts[name])
        finally:
            self.times[name] = (start, time.time() - self._t0)
            for folder in self.contexts[name].ray_dirs:  # nothing of the study outlives it
                self.stragglers += [f"{name}: {p}" for p in end_stragglers(folder)]

    def result(self, name: str, timeout: float = 1200) -> Any:
        if name not in self.futures:
            raise KeyError(f"background study {name!r} was not started: mark the test "
                           f"@pytest.mark.study({name!r})")
        return self.futures[name].result(timeout=timeout)

    def close(self) -> None:
        for name, future in self.futures.items():
            if not future.cancel() and not future.done():  # running: abandoned by the session
                self.contexts[name].abandon()
        self._pool.shutdown(wait=True)


def _needed_studies(item) -> list[str]:
    names = [m.args[0] for m in item.iter_markers("study")]
    if "tiny_study" in getattr(item, "fixturenames", ()):
        names.append("cli-beta_vae")
    return names


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items) -> None:
    """Tests that read a background study run last (they wait for it), in their order."""
    items.sort(key=lambda item: bool(_needed_studies(item)))  # stable: the order otherwise kept


_SESSION_STUDIES: list[Studies] = []


@pytest.fixture(scope="session")
def studies(request, tmp_path_factory, data_dir, mnist, _isolated_env):
    """Starts, at the first test, the background studies the selected tests read."""
    names = sorted({n for item in request.session.items for n in _needed_studies(item)})
    running = Studies(names, tmp_path_factory, data_dir)
    _SESSION_STUDIES.append(running)
    yield running
    running.close()


def pytest_terminal_summary(terminalreporter) -> None:
    """When each background study ran (with --durations), and any Ray process that outlived its
    study's drivers (killed at the study's end: a leak of study.search, not of the tests)."""
    if not _SESSION_STUDIES:
        return
    running = _SESSION_STUDIES[-1]
    if terminalreporter.config.getoption("durations", None) is not None:
        terminalreporter.write_line("background studies (seconds from the first test): " + ", ".join(
            f"{name} {start:.0f}-{end:.0f}"
            for name, (start, end) in sorted(running.times.items(), key=lambda x: x[1])))
    if running.stragglers:
        terminalreporter.write_line("Ray processes that outlived their study's drivers (killed): "
                                    + "; ".join(running.stragglers), yellow=True)


@pytest.fixture(scope="session", autouse=True)
def _start_studies(request):
    if any(_needed_studies(item) for item in request.session.items):
        request.getfixturevalue("studies")


# --- the CLI studies, one per method (test_search_cli; beta_vae's is read by other tests too) ---

PLANTED_KEY = "fakekey" + "0123456789abcdef" * 2 + "Zq"  # a W&B API key that must appear nowhere
CLI_STUDIES = {  # method -> (study name, arguments of `python -m study.search METHOD` but the folders)
    "beta_vae": ("tiny", ["--sampler", "random", "--seed", "3", "--set", "epochs=1", "--set",
                          "head_epochs=1", "--set", "prune_epochs=1", "--set", "train_subset=500",
                          "--set", "latent_dim=4"]),
    "reparam": ("tiny", ["--sampler", "random", "--seed", "3", "--dataset", "mnist", "--set",
                         "epochs=2", "--set", "train_subset=500"]),
    "importance": ("imp", ["--sampler", "random", "--seed", "1", "--set", "train_subset=500", "--set",
                           "warmup_epochs=1", "--set", "epochs=2", "--set",
                           "prune_fraction=0.5", "--set", "target_fraction=0.5"]),
    "magnitude": ("mag", ["--sampler", "random", "--seed", "3", "--dataset", "mnist", "--set",
                          "train_subset=500", "--set", "schedule=gradual", "--set", "prune_every=1"]),
    "control": ("ctl", ["--sampler", "random", "--seed", "3", "--dataset", "mnist", "--set",
                        "train_subset=500", "--set", "epochs=2"]),
}


def _cli_study(method: str):
    name, args = CLI_STUDIES[method]

    def job(ctx: StudyContext):
        """A real 2-trial study through the CLI, W&B offline with an API key planted in its
        environment; returns (study folder, finished process, Ray processes left behind)."""
        ray_dir = ctx.ray_dir()
        proc = ctx.run("study.search", method, "--num-samples", "2", "--max-concurrent", "2",
                       "--name", name, "--storage-dir", str(ctx.folder), "--data-dir",
                       str(ctx.data_dir), *args,
                       env={"RAY_TMPDIR": str(ray_dir), "WANDB_API_KEY": PLANTED_KEY})
        return ctx.folder / name, proc, ray_pids(ray_dir)
    return job


for _method, _cost in (("beta_vae", 40), ("reparam", 30), ("importance", 30), ("magnitude", 30),
                      ("control", 20)):
    background_study(f"cli-{_method}", _cost)(_cli_study(_method))


@pytest.fixture
def tiny_study(studies):
    """The real 2-trial beta_vae study through the CLI (study folder, process, Ray processes
    left), shared by the tests that read one."""
    return studies.result("cli-beta_vae")
