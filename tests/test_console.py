"""The `prunestudy` console command and what the search refuses before writing anything."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from study import search
from study.cli import COMMANDS, usage
from study.config import TrialConfig, fields
from study.methods import METHODS
from tests.conftest import run_main


def test_prunestudy_lists_its_commands_and_runs_each_modules_main(capsys):
    script = Path(sys.executable).parent / "prunestudy"  # installed by pip install -e .
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    for command in ("search", "pareto", "collapse", "export", "train", "bench"):
        assert f"  {command}" in proc.stdout and command in COMMANDS
    assert run_main("study.cli", "bogus") == 2
    assert "unknown command 'bogus'" in capsys.readouterr().err
    # a command is its module: the same flags, the same one-line errors and exit codes
    assert run_main("study.cli", "search", "gan") == 2
    assert "unknown method 'gan'" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--cpus-per-trial", "64"], "--cpus-per-trial 64 cannot run: this machine has"),
    (["--gpus-per-trial", "99"], "--gpus-per-trial 99 cannot run: this machine has"),
    (["--name", "../../escape"], "--name '../../escape' is not a plain folder name"),
    (["--name", "a/b"], "--name 'a/b' is not a plain folder name"),
    (["--resume", ".."], "--resume '..' is not a plain folder name"),
    (["--storage-dir", "s3://bucket/runs"], "URI storage is not supported"),
    (["--checkpoint-every", "-1"], "must not be negative"),
])
def test_what_cannot_run_is_refused_before_anything_is_written(tmp_path, data_dir, capsys, args, message):
    storage = tmp_path / "runs"
    argv = ["beta_vae", "--data-dir", str(data_dir), *args]
    if "--storage-dir" not in args:
        argv += ["--storage-dir", str(storage)]
    assert run_main("study.search", *argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not storage.exists() and not (tmp_path.parent / "escape").exists()
    assert not Path("s3:").exists()


def test_an_empty_search_space_runs_one_configuration_with_a_seed_per_trial(tmp_path):
    fixed = ["--set", "budget_lambda=5", "--set", "n=4", "--set", "t_init=100", "--set",
             "pruning_rate=0.9", "--set", "lr=0.1"]
    space = search.build_space(search.parse_args(["reparam", *fixed]))
    assert list(space.search) == ["seed"] and "seed" not in space.fixed
    searcher = search.make_searcher(space, tmp_path, "a", "tpe", 0)
    seeds = [searcher.suggest(f"t{i}")["seed"] for i in range(4)]
    assert len(set(seeds)) == 4  # each trial its own seed
    space = search.build_space(search.parse_args(["reparam", *fixed, "--set", "seed=7"]))
    searcher = search.make_searcher(space, tmp_path, "b", "tpe", 0)
    assert [searcher.suggest(f"t{i}")["seed"] for i in range(3)] == [7, 7, 7]  # unless it is fixed


@pytest.mark.parametrize("method", sorted(METHODS))
def test_settings_prints_every_setting_of_a_trial_and_starts_nothing(tmp_path, capsys, method):
    storage = tmp_path / "runs"
    assert run_main("study.cli", "search", method, "--settings", "--storage-dir", str(storage)) == 0
    out = capsys.readouterr().out
    for cls in (TrialConfig, METHODS[method].Config):
        for name, field in fields(cls).items():
            line = next((row for row in out.splitlines() if row.startswith(f"  {name}: ")), "")
            assert f" = {field.default!r}" in line and field.metadata["help"] in line, name
    # the default, then the admissible values: a range, a lower bound, choices
    assert "  chance_margin: float = 0.02, in [0.0, 1.0]: " in out
    assert "  batch_size: int = 128, >= 1: " in out and "  device: str = 'auto', one of 'auto', 'cpu'" in out
    assert "  seed: int = 0, in [0, 4294967295]: " in out  # NumPy's seeds end there
    assert f"searched by search_spaces/{method}.yaml" in out
    assert not storage.exists()
    assert run_main("study.search", "gan", "--settings") == 2
    assert "unknown method 'gan'" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["hypervolume", "robust"])
def test_the_analysis_modules_are_prunestudy_commands(command, capsys):
    assert f"  {command}" in usage() and command in COMMANDS
    assert run_main("study.cli", command, "--help") == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ") and "STUDY" in out and "--out" in out


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_takes_what_the_composition_root_gives_it(command, capsys):
    """study.cli hands some engine commands analysis functions (GIVEN): each main takes them."""
    assert run_main("study.cli", command, "--help") == 0
    assert capsys.readouterr().out.startswith("usage: ")


def test_the_live_front_prints_as_many_digits_as_tell_its_points_apart():
    from study.console import decimals_apart

    # the README study's front: 97.55 / 97.53 / 97.47 % read "97.5% | 97.5% | 97.5%" at one decimal
    assert decimals_apart([97.55, 97.53, 97.47], 1) == 2
    assert decimals_apart([97.2, 96.1], 1) == 1
    assert decimals_apart([0.31, 0.58, 0.64], 2) == 2
    assert decimals_apart([0.5, 0.5], 2) == 2  # equal values stay equal: no digits hunted for
    assert decimals_apart([0.1234567, 0.1234568], 2) == 6  # capped


def test_the_live_view_prints_one_front_per_dense_network():
    from study.console import front_lines

    # the README study: latent_dim 8 and 16 are two dense networks, two fronts
    points = {"a8": (0.9755, 0.31, 69_234), "b8": (0.9515, 0.76, 69_234), "c8": (0.95, 0.30, 69_234),
              "a16": (0.9753, 0.58, 69_450), "b16": (0.9747, 0.64, 69_450)}
    assert front_lines(points) == {
        69_234: "front (69,234 dense parameters): 97.5% at 0.31 (a8) | 95.2% at 0.76 (b8)",
        69_450: "front (69,450 dense parameters): 97.53% at 0.58 (a16) | 97.47% at 0.64 (b16)"}
    one = {k: v for k, v in points.items() if k.endswith("8")}
    assert front_lines(one) == {69_234: "front: 97.5% at 0.31 (a8) | 95.2% at 0.76 (b8)"}
