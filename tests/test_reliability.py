"""Studies survive a killed driver, crashing and diverging trials, a lost node and bad input
(real processes on loopback, bounded in time).

The two fault studies run in the background (tests/conftest.py) while the in-process tests run:
"killed" (two kill-and-resume cycles; its first trial raises once and is retried) and "window" (a
snapshot naming a deleted checkpoint, resumed twice; then, finished, it grows by two trials whose
loss turns NaN). Each driver gets its own fault through its environment (tests.faults.fault_env:
tests/faults/sitecustomize.py, on the PYTHONPATH of that driver and of the Ray workers it starts,
patches the trainable's training pass in those processes only)."""
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
from tests.conftest import ROOT, StudyContext, background_study, ray_pids, run_main
from tests.faults import FAULT_ENV, fault_env

# the CNN baseline, 4 epochs, never ended early at chance accuracy (every trial must finish), a
# checkpoint after each epoch (the scenarios below count on it)
SCHEDULE = ["--set", "variant=cnn", "--set", "beta=0", "--set", "epochs=2", "--set", "head_epochs=1",
            "--set", "prune_epochs=1", "--set", "degenerate_epochs=0", "--checkpoint-every", "0"]
FAST = [*SCHEDULE, "--set", "train_subset=400", "--set", "batch_size=100"]
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


def _kill_group(ctx: StudyContext, proc: subprocess.Popen, ray_dir: Path, study_dir: Path) -> float:
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
    ctx.wait(lambda: not ray_pids(ray_dir), 30, "Ray processes of the killed driver to end")
    return lost


# --- the faults: injected in real processes -----------------------------------------------------

def test_the_fault_environment_patches_the_training_pass_in_new_processes_only():
    """With a fault set, tests/faults/sitecustomize.py (on PYTHONPATH) wraps
    study.trainable.train_pass in every new Python process, as Ray starts its workers; without
    one, the trainable is left as it is."""
    probe = "import study.trainable as t; print(t.train_pass.__qualname__)"

    def train_pass_in_a_new_process(env: dict[str, str]) -> str:
        return subprocess.run([sys.executable, "-c", probe], env={**os.environ, **env}, cwd=ROOT,
                              capture_output=True, text=True, check=True).stdout.strip()

    assert train_pass_in_a_new_process(fault_env("nan@2")) == "patch.<locals>.faulty_train_pass"
    assert train_pass_in_a_new_process({**fault_env("nan@2"), FAULT_ENV: ""}) == "train_pass"


# --- a killed driver; a trial that raises once ---------------------------------------------------

@background_study("killed", cost=120)
def _killed_study(ctx: StudyContext) -> dict:
    """Two kill-and-resume cycles, each killing the driver with SIGKILL mid-study. In the first
    driver, the first trial raises at epoch 3, once, and is retried from its checkpoint."""
    name, study_dir, marker = "killed", ctx.folder / "killed", ctx.folder / "raised"
    ray_dir = ctx.ray_dir()
    env = {"RAY_TMPDIR": str(ray_dir)}
    proc = ctx.popen("study.search", "beta_vae", "--name", name, "--storage-dir", str(ctx.folder),
                     "--num-samples", "3", "--max-concurrent", "1", "--sampler", "random",
                     "--data-dir", str(ctx.data_dir), *FAST,
                     env={**env, **fault_env(f"raise@3@{marker}")}, output=False)

    def trial_done_and_next_checkpointed() -> bool:
        epochs = [_epochs(d) for d in _trial_dirs(study_dir)]
        if not any(e[-1:] == [TOTAL_EPOCHS] for e in epochs):  # Optuna is asked once it may know
            return False
        done = [t for t in _trials(study_dir, name) if t.state.name == "COMPLETE"]
        started = [e for e in epochs if 0 < len(e) < TOTAL_EPOCHS]
        return bool(done) and bool(started)

    ctx.wait(trial_done_and_next_checkpointed, 300, "a finished trial and a running one")
    lost = [_kill_group(ctx, proc, ray_dir, study_dir)]
    finished_before = {d.name: _epochs(d) for d in _trial_dirs(study_dir)
                       if _epochs(d)[-1:] == [TOTAL_EPOCHS]}
    resume = ["beta_vae", "--resume", name, "--storage-dir", str(ctx.folder), "--data-dir",
              str(ctx.data_dir)]
    # second cycle: kill the resumed driver as soon as it has made progress, then resume again
    proc = ctx.popen("study.search", *resume, env=env, output=False)
    progress = sum(len(_epochs(d)) for d in _trial_dirs(study_dir))
    ctx.wait(lambda: sum(len(_epochs(d)) for d in _trial_dirs(study_dir)) > progress, 300,
             "the resumed study to make progress")
    lost.append(_kill_group(ctx, proc, ray_dir, study_dir))
    done = ctx.run("study.search", *resume, env=env)
    return {"study_dir": study_dir, "name": name, "marker": marker, "ray_dir": ray_dir, "lost": lost,
            "finished_before": finished_before, "done": done}


@pytest.mark.study("killed")
def test_a_killed_driver_resumes_without_losing_or_repeating_trials(studies):
    killed = studies.result("killed")
    study_dir, name, done = killed["study_dir"], killed["name"], killed["done"]
    assert done.returncode == 0, done.stderr[-3000:]
    print(f"kill-and-resume cycles: {len(killed['lost'])}; seconds of work lost (redone) per kill: "
          f"{[round(x, 1) for x in killed['lost']]}; checkpoints repaired on the last resume: "
          f"{done.stdout.count('deleted after the last snapshot')}")

    trials = _trials(study_dir, name)
    assert len(trials) >= 3
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == 3  # the number asked for, none lost
    assert not [t for t in trials if t.state.name == "RUNNING"]  # none left running forever
    assert len({t.user_attrs["ray_trial_id"] for t in complete}) == 3  # none told twice
    ray_done = {d.name for d in _trial_dirs(study_dir) if _epochs(d)[-1:] == [TOTAL_EPOCHS]}
    assert {layout.trial_dirname(t.user_attrs["ray_trial_id"]) for t in complete} <= ray_done
    for trial, epochs in killed["finished_before"].items():  # a finished trial was never run again
        assert _epochs(study_dir / trial) == epochs
    for trial in ray_done:  # no trial ran twice from the start
        assert _epochs(study_dir / trial).count(1) == 1, trial
    assert not ray_pids(killed["ray_dir"])


@pytest.mark.study("killed")
def test_a_trial_that_raises_once_is_retried_from_its_checkpoint(studies):
    killed = studies.result("killed")
    assert killed["marker"].exists()  # it did raise
    raised = _trials(killed["study_dir"], killed["name"])[0]  # the first trial reached epoch 3 first
    assert raised.state.name == "COMPLETE"
    trial_dir = layout.trial_dir(killed["study_dir"], raised.user_attrs["ray_trial_id"])
    assert _epochs(trial_dir) == [1, 2, 3, 4]  # epochs 1-2 kept, 3 redone after the crash
    assert killed["finished_before"][trial_dir.name] == [1, 2, 3, 4]  # within the first driver
    assert raised.values == [_results(trial_dir)[-1][m] for m in ("val_accuracy", "sparsity")]


# --- a snapshot naming a deleted checkpoint; a finished study grows; NaN losses --------------------

@background_study("window", cost=120)
def _window_study(ctx: StudyContext) -> dict:
    """Ray deletes a trial's previous checkpoint when it registers the next one, before its next
    snapshot: a driver killed in between (as happened on CI) left a trial Ray could not restore.
    Built here without timing: a trial errors at epoch 3 (its snapshot names checkpoint_000001),
    then its folder is made to look like that window: the named checkpoint gone, a newer one in
    its place, and a newest one cut short. Resumed, then resumed again from the errored snapshot,
    then (finished) grown by two trials under a NaN loss at epoch 2."""
    from analysis.results import load_results

    marker, ray_dir = ctx.folder / "raised", ctx.ray_dir()
    storage = ["--storage-dir", str(ctx.folder), "--data-dir", str(ctx.data_dir)]
    env = {"RAY_TMPDIR": str(ray_dir)}
    first = ctx.run("study.search", "beta_vae", "--name", "window", "--num-samples", "1",
                    "--max-failures", "0", *storage, *FAST, env={**env, **fault_env(f"raise@3@{marker}")})
    assert first.returncode == 0, first.stderr[-3000:]
    study_dir = ctx.folder / "window"
    (trial_dir,) = _trial_dirs(study_dir)
    assert _epochs(trial_dir) == [1, 2] and [t.state.name for t in _trials(study_dir, "window")] == ["FAIL"]
    named = trial_dir / "checkpoint_000001"
    named.rename(trial_dir / "checkpoint_000002")  # registered after the snapshot, the named one deleted
    cut = trial_dir / "checkpoint_000003"
    cut.mkdir()
    (cut / "state.pt").write_bytes((trial_dir / "checkpoint_000002" / "state.pt").read_bytes()[:1000])

    snapshot_files = set(study_dir.iterdir())  # the errored trial's snapshot, kept for below
    out: dict = {"study_dir": study_dir, "trial_dir": trial_dir, "ray_dir": ray_dir}
    out["resumed"] = ctx.run("study.search", "beta_vae", "--resume", "window", *storage, env=env)
    out["resumed_epochs"] = _epochs(trial_dir)
    out["resumed_checkpoints"] = [p.name for p in layout.checkpoints(trial_dir)]
    out["resumed_trials"] = _trials(study_dir, "window")
    out["resumed_rows"] = load_results([study_dir]).to_dict("records")
    out["resumed_results"] = _results(trial_dir)

    # a driver killed after the trial finished but before Ray's next snapshot: the last snapshot
    # is the errored one again, naming a checkpoint since deleted
    for path in set(study_dir.iterdir()) - snapshot_files:
        if path.name.startswith(("experiment_state-", "search_gen_state-", "searcher-state-")):
            path.unlink()
    out["again"] = ctx.run("study.search", "beta_vae", "--resume", "window", *storage, env=env)
    out["again_results"] = _results(trial_dir)
    out["again_trials"] = [(t.number, t.state.name) for t in _trials(study_dir, "window")]
    out["again_rows"] = load_results([study_dir]).to_dict("records")

    # finished, it grows by two trials; their loss turns NaN at epoch 2
    out["grown"] = ctx.run("study.search", "beta_vae", "--resume", "window", "--num-samples", "3",
                           *storage, env={**env, **fault_env("nan@2")})
    return out


@pytest.mark.study("window")
def test_resume_survives_a_snapshot_naming_a_deleted_checkpoint(studies):
    """The resumed trial goes on from the newer checkpoint, and its finished attempt reaches Optuna
    beside the failed one; resumed again from the errored snapshot, the finished trial is neither
    trained nor reported again, and Optuna is not told twice."""
    window = studies.result("window")
    resumed, trial_dir = window["resumed"], window["trial_dir"]
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "checkpoint_000001, deleted after the last snapshot; resuming from checkpoint_000002" \
        in resumed.stdout, resumed.stdout[-3000:]
    assert window["resumed_epochs"] == [1, 2, 3, 4]  # epochs 1-2 kept, nothing run twice
    # new checkpoints went past every existing folder (epochs 3, 4 -> 4, 5), the cut one untouched
    assert window["resumed_checkpoints"] == ["checkpoint_000003", "checkpoint_000005"]
    failed, complete = window["resumed_trials"]
    assert failed.state.name == "FAIL" and complete.state.name == "COMPLETE"
    assert layout.trial_dirname(complete.user_attrs["ray_trial_id"]) == trial_dir.name
    assert complete.user_attrs["resumed_after_failure_of"] == failed.number
    assert complete.params == failed.params
    assert complete.values == [window["resumed_results"][-1][m] for m in ("val_accuracy", "sparsity")]
    (row,) = window["resumed_rows"]
    assert row["status"] == "complete" and row["optuna_number"] == complete.number

    again = window["again"]
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from checkpoint_000005" in again.stdout, again.stdout[-3000:]
    assert window["again_results"] == window["resumed_results"]
    assert window["again_trials"] == [(0, "FAIL"), (1, "COMPLETE")]
    (row,) = window["again_rows"]
    assert row["status"] == "complete"


@pytest.mark.study("window")
def test_a_finished_study_grows_and_a_nan_loss_ends_trials_as_diverged(studies):
    """--resume with more samples runs only the new trials; a NaN loss ends each as diverged, with
    its metrics so far, pruned in Optuna, and the search goes on."""
    from analysis.results import load_results

    window = studies.result("window")
    grown, study_dir, trial_dir = window["grown"], window["study_dir"], window["trial_dir"]
    assert grown.returncode == 0, grown.stderr[-3000:]
    assert layout.read_info(study_dir)["num_samples"] == 3
    trials = _trials(study_dir, "window")
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "PRUNED", "PRUNED"]
    assert all(t.user_attrs.get("diverged") for t in trials[2:])  # pruned as diverged
    dirs = _trial_dirs(study_dir)
    assert len(dirs) == 3 and trial_dir in dirs
    assert _results(trial_dir) == window["again_results"]  # the finished trial not run again
    new = [d for d in dirs if d != trial_dir]
    assert all(_epochs(d) == [1, 2] for d in new)  # ended at the NaN epoch
    df = load_results([study_dir]).set_index("trial_id")
    assert df.loc[trial_dir.name[len(layout.TRIAL_PREFIX):], "status"] == "complete"
    diverged = df.drop(index=trial_dir.name[len(layout.TRIAL_PREFIX):])
    assert list(diverged["status"]) == ["diverged", "diverged"]
    assert (diverged["epoch"] == 2).all() and diverged["val_accuracy"].notna().all()  # metrics so far kept
    assert not ray_pids(window["ray_dir"])  # none of the study's four drivers left Ray behind


# --- a two-node cluster (on demand) --------------------------------------------------------------

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
             str(data_dir), "--max-failures", "3", *SCHEDULE, "--set", "train_subset=3000",
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


# --- bad input ---------------------------------------------------------------------------------------

def test_bad_input_never_touches_an_existing_study(tmp_path, data_dir, tiny_study, capsys):
    """Each command fails before it starts anything: checked in-process (`main(argv)`, as
    `python -m study.search` runs it; test_search_cli keeps one real process for the exit code)."""
    study_dir, _, _ = tiny_study
    before = _digest(study_dir)
    space = tmp_path / "space.yaml"
    blocked = tmp_path / "a-file"
    blocked.write_text("")  # no folder can be made under it: no download is even tried
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
        "missing data": (["beta_vae", "--data-dir", str(blocked / "nodata")], "not found under"),
        "not a study": (["beta_vae", "--resume", "nothing"], "is not a study folder"),
        "existing study": (["beta_vae", "--name", study_dir.name], "already holds a study"),
        "resume other method": (["reparam", "--resume", study_dir.name], "ran method 'beta_vae'"),
        "shrink on resume": (["beta_vae", "--resume", study_dir.name, "--num-samples", "1"],
                             "can only grow"),
    }
    capsys.readouterr()
    for what, (args, message, *text) in cases.items():
        if text:
            space.write_text(text[0])
        extra = [] if "--data-dir" in args else ["--data-dir", str(data_dir)]
        code = run_main("study.search", *args, "--storage-dir", str(study_dir.parent), *extra)
        err = capsys.readouterr().err
        assert code == 2, (what, err[-2000:])
        assert message in err and len(err.strip().splitlines()) == 1, (what, err)
    code = run_main("study.search", "beta_vae", "--storage-dir", str(blocked), "--data-dir", str(data_dir))
    assert code == 2 and "cannot write the study folder" in capsys.readouterr().err
    assert _digest(study_dir) == before


def test_a_damaged_study_json_is_one_line_on_resume_and_in_analysis(tmp_path, data_dir, tiny_study, capsys):
    """A study.json cut short, not JSON, not an object, missing a key or holding the wrong type:
    --resume refuses it in one line (exit 2) before anything starts; pareto names it in one line."""
    import json
    import shutil

    study_dir, _, _ = tiny_study
    text = (study_dir / layout.STUDY_JSON).read_text()
    info = json.loads(text)
    cases = {
        "cut short": (text[:100], "cannot be read: "),  # and json's reason, at line and column
        "not text": (b"\xc6\x00\xff", "cannot be read: 'utf-8' codec"),
        "a list": ("[1, 2]", "is not a JSON object (a list)"),
        "no method": (json.dumps({k: v for k, v in info.items() if k != "method"}),
                      "'method' is missing, not str"),
        "num_samples a word": (json.dumps({**info, "num_samples": "many"}),
                               "'num_samples' is str 'many', not int"),
        "num_samples true": (json.dumps({**info, "num_samples": True}), "'num_samples' is bool True"),
        "a distribution not optunas": (json.dumps({**info, "search": {"beta": "__import__('os')"}}),
                                       "cannot read the search distribution"),
    }
    capsys.readouterr()
    for what, (content, message) in cases.items():
        damaged = tmp_path / what.replace(" ", "-")
        shutil.copytree(study_dir, damaged, ignore=shutil.ignore_patterns("wandb", "trial_*", "analysis"))
        path = damaged / layout.STUDY_JSON
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        before = _digest(damaged)
        code = run_main("study.search", "beta_vae", "--resume", damaged.name, "--storage-dir",
                        str(tmp_path), "--data-dir", str(data_dir))
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1, (what, err[-2000:])
        assert str(path) in err and message in err and "cannot be resumed" in err, (what, err)
        assert _digest(damaged) == before, what
        if what in ("cut short", "not text", "a list"):  # analysis reads study.json as a whole
            code = run_main("analysis.pareto", str(damaged), "--no-wandb")
            err = capsys.readouterr().err
            assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (what, err)


def test_wandb_tags_are_the_values_present_cut_to_64_characters():
    from study.tracking import run_tags

    long = "folder:/" + "x" * 100
    assert run_tags("beta_vae", long, "", None, "pareto") == ["beta_vae", long[:64], "pareto"]
