"""Studies survive a killed driver, crashing and diverging trials, a lost node and bad input
(real processes on loopback, bounded in time)."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from study import layout
from study.tracking import offline_runs
from tests.conftest import ROOT, ray_pids, ray_tmpdir, run_module

FAST = ["--set", "variant=cnn", "--set", "beta=0", "--set", "epochs=2", "--set", "head_epochs=1",
        "--set", "prune_epochs=1", "--set", "train_subset=400", "--set", "batch_size=100"]
TOTAL_EPOCHS = 4


def _trials(study_dir: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    """The study's Optuna trials; none while its storage or study is still being created."""
    if not (study_dir / layout.OPTUNA_DB).exists():
        return []
    try:
        return optuna.load_study(study_name=name, storage=layout.storage_url(study_dir)).get_trials()
    except KeyError:  # the database exists, the study record not yet
        return []


def _results(trial_dir: Path) -> list[dict]:
    return layout.trial_history(trial_dir)


def _trial_dirs(study_dir: Path) -> list[Path]:
    return [d for _, d in layout.trial_dirs(study_dir)]


def _epochs(trial_dir: Path) -> list[int]:
    return [r["epoch"] for r in _results(trial_dir)]


def _digest(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def _wait(predicate, timeout: float, what: str) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def _kill_group(proc: subprocess.Popen, ray_dir: Path, study_dir: Path) -> float:
    """SIGKILL the driver's whole process group, then any Ray process it started that outlived it.
    Returns the seconds of work lost: since the last checkpointed result of a running trial."""
    rows = [_results(d)[-1] for d in _trial_dirs(study_dir) if _results(d)]
    last = [r["timestamp"] for r in rows if r["epoch"] < TOTAL_EPOCHS]
    os.killpg(proc.pid, signal.SIGKILL)
    lost = time.time() - max(last) if last else 0.0
    proc.wait(timeout=30)
    for pid in ray_pids(ray_dir):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _wait(lambda: not ray_pids(ray_dir), 30, "Ray processes of the killed driver to end")
    return lost


def test_a_killed_driver_resumes_without_losing_or_repeating_trials(tmp_path, data_dir):
    """Two kill-and-resume cycles, each killing the driver with SIGKILL mid-study."""
    name, study_dir = "killed", tmp_path / "killed"
    args = ["study.search", "beta_vae", "--name", name, "--storage-dir", str(tmp_path), "--num-samples",
            "3", "--max-concurrent", "1", "--sampler", "random", "--data-dir", str(data_dir), *FAST]
    ray_dir = ray_tmpdir()
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT), "RAY_TMPDIR": str(ray_dir)}
    proc = subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def trial_done_and_next_checkpointed() -> bool:
        done = [t for t in _trials(study_dir, name) if t.state.name == "COMPLETE"]
        started = [d for d in _trial_dirs(study_dir) if 0 < len(_epochs(d)) < TOTAL_EPOCHS]
        return bool(done) and bool(started)

    _wait(trial_done_and_next_checkpointed, 300, "a finished trial and a running one")
    lost = [_kill_group(proc, ray_dir, study_dir)]
    finished_before = {d.name: _epochs(d) for d in _trial_dirs(study_dir)
                       if _epochs(d)[-1:] == [TOTAL_EPOCHS]}
    resume = ["study.search", "beta_vae", "--resume", name, "--storage-dir", str(tmp_path),
              "--data-dir", str(data_dir)]
    # second cycle: kill the resumed driver as soon as it has made progress, then resume again
    proc = subprocess.Popen([sys.executable, "-m", *resume], cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress = sum(len(_epochs(d)) for d in _trial_dirs(study_dir))
    _wait(lambda: sum(len(_epochs(d)) for d in _trial_dirs(study_dir)) > progress, 300,
          "the resumed study to make progress")
    lost.append(_kill_group(proc, ray_dir, study_dir))
    done = run_module(*resume, env={"RAY_TMPDIR": str(ray_dir)})
    assert done.returncode == 0, done.stderr[-3000:]
    print(f"kill-and-resume cycles: {len(lost)}; seconds of work lost (redone) per kill: "
          f"{[round(x, 1) for x in lost]}; checkpoints repaired on the last resume: "
          f"{done.stdout.count('deleted after the last snapshot')}")

    trials = _trials(study_dir, name)
    assert len(trials) >= 3
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == 3  # the number asked for, none lost
    assert not [t for t in trials if t.state.name == "RUNNING"]  # none left running forever
    assert len({t.user_attrs["ray_trial_id"] for t in complete}) == 3  # none told twice
    ray_done = {d.name for d in _trial_dirs(study_dir) if _epochs(d)[-1:] == [TOTAL_EPOCHS]}
    assert {layout.trial_dirname(t.user_attrs["ray_trial_id"]) for t in complete} <= ray_done
    for trial, epochs in finished_before.items():  # a finished trial was never run again
        assert _epochs(study_dir / trial) == epochs
    for trial in ray_done:  # no trial ran twice from the start
        assert _epochs(study_dir / trial).count(1) == 1, trial
    assert not ray_pids(ray_dir)


def test_a_trial_that_raises_once_is_retried_from_its_checkpoint(tmp_path, data_dir, monkeypatch):
    marker = tmp_path / "raised"
    monkeypatch.setenv("PRUNESTUDY_INJECT_FAULT", f"raise@3@{marker}")
    proc = run_module("study.search", "beta_vae", "--name", "retry", "--storage-dir", str(tmp_path),
                      "--num-samples", "1", "--data-dir", str(data_dir), *FAST)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert marker.exists()  # it did raise
    (trial_dir,) = _trial_dirs(tmp_path / "retry")
    assert _epochs(trial_dir) == [1, 2, 3, 4]  # epochs 1-2 kept, 3 redone after the crash
    (trial,) = _trials(tmp_path / "retry", "retry")
    assert trial.state.name == "COMPLETE"

    # a finished study grows: --resume with more samples runs only the new trials
    grown = run_module("study.search", "beta_vae", "--resume", "retry", "--num-samples", "2",
                       "--storage-dir", str(tmp_path), "--data-dir", str(data_dir))
    assert grown.returncode == 0, grown.stderr[-3000:]
    assert layout.read_info(tmp_path / "retry")["num_samples"] == 2
    assert [t.state.name for t in _trials(tmp_path / "retry", "retry")] == ["COMPLETE", "COMPLETE"]
    dirs = _trial_dirs(tmp_path / "retry")
    assert len(dirs) == 2 and trial_dir in dirs
    assert all(_epochs(d) == [1, 2, 3, 4] for d in dirs)  # the finished trial not run again


def test_resume_survives_a_snapshot_naming_a_deleted_checkpoint(tmp_path, data_dir, monkeypatch):
    """Ray deletes a trial's previous checkpoint when it registers the next one, before its next
    snapshot: a driver killed in between (as happened on CI) left a trial Ray could not restore.
    Built here without timing: a trial errors at epoch 3 (its snapshot names checkpoint_000001),
    then its folder is made to look like that window: the named checkpoint gone, a newer one in
    its place, and a newest one cut short. The resumed trial goes on from the newer one, and its
    finished attempt reaches Optuna beside the failed one."""
    from analysis.results import load_results

    marker = tmp_path / "raised"
    monkeypatch.setenv("PRUNESTUDY_INJECT_FAULT", f"raise@3@{marker}")
    storage = ["--storage-dir", str(tmp_path), "--data-dir", str(data_dir)]
    first = run_module("study.search", "beta_vae", "--name", "window", "--num-samples", "1",
                       "--max-failures", "0", *storage, *FAST)
    assert first.returncode == 0, first.stderr[-3000:]
    study_dir = tmp_path / "window"
    (trial_dir,) = _trial_dirs(study_dir)
    assert _epochs(trial_dir) == [1, 2] and [t.state.name for t in _trials(study_dir, "window")] == ["FAIL"]
    named = trial_dir / "checkpoint_000001"
    named.rename(trial_dir / "checkpoint_000002")  # registered after the snapshot, the named one deleted
    cut = trial_dir / "checkpoint_000003"
    cut.mkdir()
    (cut / "state.pt").write_bytes((trial_dir / "checkpoint_000002" / "state.pt").read_bytes()[:1000])

    snapshot_files = set(study_dir.iterdir())  # the errored trial's snapshot, kept for below
    resumed = run_module("study.search", "beta_vae", "--resume", "window", *storage)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "checkpoint_000001, deleted after the last snapshot; resuming from checkpoint_000002" \
        in resumed.stdout, resumed.stdout[-3000:]
    assert _epochs(trial_dir) == [1, 2, 3, 4]  # epochs 1-2 kept, nothing run twice
    # new checkpoints went past every existing folder (epochs 3, 4 -> 4, 5), the cut one untouched
    assert [p.name for p in layout.checkpoints(trial_dir)] == ["checkpoint_000003", "checkpoint_000005"]
    failed, complete = _trials(study_dir, "window")
    assert failed.state.name == "FAIL" and complete.state.name == "COMPLETE"
    assert layout.trial_dirname(complete.user_attrs["ray_trial_id"]) == trial_dir.name
    assert complete.user_attrs["resumed_after_failure_of"] == failed.number
    assert complete.params == failed.params
    assert complete.values == [_results(trial_dir)[-1][m] for m in ("val_accuracy", "sparsity")]
    (row,) = load_results([study_dir]).to_dict("records")
    assert row["status"] == "complete" and row["optuna_number"] == complete.number

    # a driver killed after the trial finished but before Ray's next snapshot: the last snapshot
    # is the errored one again, naming a checkpoint since deleted. Resumed, the finished trial
    # is neither trained nor reported again, and Optuna is not told twice.
    for path in set(study_dir.iterdir()) - snapshot_files:
        if path.name.startswith(("experiment_state-", "search_gen_state-", "searcher-state-")):
            path.unlink()
    rows = _results(trial_dir)
    again = run_module("study.search", "beta_vae", "--resume", "window", *storage)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from checkpoint_000005" in again.stdout, again.stdout[-3000:]
    assert _results(trial_dir) == rows
    assert [(t.number, t.state.name) for t in _trials(study_dir, "window")] == [(0, "FAIL"), (1, "COMPLETE")]
    (row,) = load_results([study_dir]).to_dict("records")
    assert row["status"] == "complete"


def test_a_nan_loss_ends_the_trial_as_diverged_and_the_search_goes_on(tmp_path, data_dir, monkeypatch):
    from analysis.results import load_results

    monkeypatch.setenv("PRUNESTUDY_INJECT_FAULT", "nan@2")
    proc = run_module("study.search", "beta_vae", "--name", "nan", "--storage-dir", str(tmp_path),
                      "--num-samples", "2", "--data-dir", str(data_dir), *FAST)
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = load_results([tmp_path / "nan"])
    assert list(df["status"]) == ["diverged", "diverged"]
    assert (df["epoch"] == 2).all() and df["val_accuracy"].notna().all()  # metrics so far kept
    assert [t.state.name for t in _trials(tmp_path / "nan", "nan")] == ["PRUNED", "PRUNED"]


@pytest.mark.slow
def test_a_two_node_cluster_runs_trials_on_both_and_survives_losing_the_worker(tmp_path, data_dir):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    worker = cluster.add_node(num_cpus=1)
    try:
        cluster.wait_for_nodes()
        env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "study.search", "beta_vae", "--name", "cluster", "--storage-dir",
             str(tmp_path), "--num-samples", "4", "--address", cluster.address, "--data-dir",
             str(data_dir), "--max-failures", "3", *FAST[:-4], "--set", "train_subset=3000",
             "--set", "batch_size=100"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        study_dir = tmp_path / "cluster"

        def nodes_seen() -> set[str]:
            seen = set()
            for d in _trial_dirs(study_dir):
                seen.update(row["node_id"] for row in layout.trial_history(d))
            return seen

        _wait(lambda: len(nodes_seen()) == 2, 300, "trials on both nodes")
        cluster.remove_node(worker)  # the worker dies mid-trial
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        trials = _trials(study_dir, "cluster")
        assert [t.state.name for t in trials].count("COMPLETE") == 4
    finally:
        cluster.shutdown()


def test_bad_input_never_touches_an_existing_study(tmp_path, data_dir, tiny_study):
    study_dir, _, _ = tiny_study
    before = _digest(study_dir)
    space = tmp_path / "space.yaml"
    cases = {
        "unknown method": (["gan"], "unknown method 'gan'"),
        "unknown dataset": (["beta_vae", "--dataset", "svhn"], "unknown dataset 'svhn'"),
        "low > high": (["beta_vae", "--space", str(space)], "low must be below high",
                       "search:\n  beta: {distribution: uniform, low: 2, high: 1}\n"),
        "unknown distribution": (["beta_vae", "--space", str(space)], "unknown distribution 'normal'",
                                 "search:\n  beta: {distribution: normal, low: 1, high: 2}\n"),
        "unknown key": (["beta_vae", "--space", str(space)], "unknown setting 'gamma'",
                        "fixed:\n  gamma: 1\n"),
        "bad --set": (["beta_vae", "--set", "lr=fast"], "'lr' must be float"),
        "missing data": (["beta_vae", "--data-dir", str(tmp_path / "nodata")], "not found under"),
        "not a study": (["beta_vae", "--resume", "nothing"], "is not a study folder"),
        "existing study": (["beta_vae", "--name", study_dir.name], "already holds a study"),
        "resume other method": (["reparam", "--resume", study_dir.name], "ran method 'beta_vae'"),
        "shrink on resume": (["beta_vae", "--resume", study_dir.name, "--num-samples", "1"],
                             "can only grow"),
    }
    for what, (args, message, *text) in cases.items():
        if text:
            space.write_text(text[0])
        extra = [] if "--data-dir" in args else ["--data-dir", str(data_dir)]
        proc = run_module("study.search", *args, "--storage-dir", str(study_dir.parent), *extra,
                          timeout=120)
        assert proc.returncode == 2, (what, proc.stderr[-2000:])
        assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, (what, proc.stderr)
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    proc = run_module("study.search", "beta_vae", "--storage-dir", str(blocked), "--data-dir",
                      str(data_dir), timeout=120)
    assert proc.returncode == 2 and "cannot write the study folder" in proc.stderr
    assert _digest(study_dir) == before


def test_a_planted_api_key_appears_nowhere(tmp_path, data_dir):
    key = "fakekey" + "0123456789abcdef" * 2 + "Zq"
    env_key = {"WANDB_API_KEY": key}
    env = {**os.environ, **env_key, "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "study.search", "beta_vae", "--name", "secret",
                           "--storage-dir", str(tmp_path), "--num-samples", "1", "--data-dir",
                           str(data_dir), *FAST], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert offline_runs(tmp_path / "secret")  # W&B did run
    assert key not in proc.stdout and key not in proc.stderr
    for path in (tmp_path / "secret").rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path
