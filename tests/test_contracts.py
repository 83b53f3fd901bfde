"""The contract every pruning method keeps with the trainable, one test per contract, parametrized
over `study.methods.METHODS` (as Optuna's sampler tests are over samplers).

Adding a method adds its rows to the four tables below: TINY (a trial of a few seconds), RESUMES
(where a stopped trial must continue exactly), BAD_SETTINGS (settings refused with one line) and
NO_EPOCHS (settings that leave no epoch). Those rows are its contract; a test fails until each
table has one. Its declaration (study.methods.register) is checked here on its tiny trial too.

  determinism   the same config and seed give the same metrics and states, bit for bit; another
                seed differs
  resume        a trial stopped after epoch k and resumed from the state it saved reports (and
                saves) what the uninterrupted trial does (stops at phase boundaries where a
                method has them)
  round trip    the state the trainable saves loads with torch.load(weights_only=True) and
                restores the method: the same state back, the same validation accuracy and size;
                resumed from its final state, a trial trains and reports nothing again
  bad settings  a one-line ConfigError naming the key
  no epochs     a schedule without an epoch never starts

  reports       each epoch of the method's schedule reports once, the objectives every time and
                the test accuracy at the end
  declaration   its diagnostics are under its metric_prefix; `architecture` names a setting;
                networks() holds the inference model; probe_model() changes no state and draws
                no random numbers; a malformed declaration fails registration, saying what to add

Tiny trials on `mnist_small` (500 validation images): none of these depends on sizes.
"""
from __future__ import annotations

import atexit
import copy
import random
import shutil
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pytest
import torch

import study.methods
from study.config import ConfigError, setting
from study.methods import METHODS, TRAINABLE_PREFIXES, register
from study.metrics import VOCABULARY, accuracy
from study.sparsity import DenseReference, size_metrics
from study.trainable import STATE_FILE, parse_config, train
from tests.conftest import assert_same_metrics


def _control_masks() -> str:
    """A keep-mask file for the control's resumes, as `prunestudy sanity` writes them: every other
    weight of mlp50_30 kept (in a folder removed at exit)."""
    folder = tempfile.mkdtemp(prefix="prunestudy-masks-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    shapes = {"head.0": (50, 784), "head.2": (30, 50), "head.4": (10, 30)}
    torch.save({k: torch.arange(s[0] * s[1]).view(s) % 2 == 0 for k, s in shapes.items()},
               Path(folder) / "masks.pt")
    return str(Path(folder) / "masks.pt")


# one tiny trial per method (degenerate_epochs=0: a tiny trial near chance still runs to its end)
TINY = {
    "beta_vae": {"method": "beta_vae", "dataset": "mnist", "train_subset": 128, "batch_size": 64,
                 "epochs": 2, "head_epochs": 1, "prune_epochs": 1, "layer_sparsity": 0.5},
    "reparam": {"method": "reparam", "dataset": "mnist", "model": "lenet300", "train_subset": 256,
                "batch_size": 64, "epochs": 2, "finetune_epochs": 1, "pruning_rate": 0.9},
    # 5 epochs: 1 warm-up epoch, 2 rounds (30% then 50%) of a removal epoch and a recovery epoch
    "importance": {"method": "importance", "dataset": "mnist", "train_subset": 128, "batch_size": 64,
                   "epochs": 5, "warmup_epochs": 1, "prune_fraction": 0.3, "target_fraction": 0.5},
    # gradual: 1 dense epoch (4 steps), a 2-epoch window (masks at steps 0, 3, 6, then s_f at its
    # end), 1 fine-tuning epoch
    "magnitude": {"method": "magnitude", "dataset": "mnist", "model": "lenet300", "train_subset": 256,
                  "batch_size": 64, "epochs": 4, "finetune_epochs": 1, "schedule": "gradual",
                  "prune_every": 3, "target_sparsity": 0.9},
    # no mask (it runs on every model); its masks and widths are in RESUMES
    "control": {"method": "control", "dataset": "mnist", "model": "mlp50_30", "train_subset": 128,
                "batch_size": 64, "epochs": 2},
}


def tiny(method: str, **overrides) -> dict:
    return {**TINY[method], "seed": 0, "degenerate_epochs": 0, **overrides}


def test_every_method_has_a_row_in_every_table():
    tables = {"TINY": TINY, "RESUMES": {c.values[0] for c in RESUMES},
              "BAD_SETTINGS": {c.values[0] for c in BAD_SETTINGS}, "NO_EPOCHS": NO_EPOCHS}
    for name, table in tables.items():
        assert set(table) == set(METHODS), name


# --- running a trial, keeping what it saved --------------------------------------------------------

class _Interrupt(Exception):
    pass


def record(config: dict, data, stop_after: int | None = None, resume: dict | None = None):
    """(reports, states) of a trial; each state as saved with its report, loaded with
    torch.load(weights_only=True): tensors and plain values only. Stops (as a killed trial would)
    right after epoch `stop_after`."""
    reports, states = [], []

    def report(metrics, folder):
        reports.append(metrics)
        states.append(torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)
                      if folder is not None else None)
        if metrics["epoch"] == stop_after:
            raise _Interrupt

    try:  # a copy: a restored optimizer may hold the very tensors it was given, and train them
        train(config, data, report, resume=copy.deepcopy(resume))
    except _Interrupt:
        pass
    return reports, states


_WHOLE: dict[str, tuple[list, list]] = {}


def whole(config: dict, data) -> tuple[list, list]:
    """The uninterrupted trial of `config`, run once per session and shared by the contracts."""
    key = repr(sorted(config.items()))
    if key not in _WHOLE:
        _WHOLE[key] = record(config, data)
    return _WHOLE[key]


# --- reports ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", sorted(TINY))
def test_each_epoch_of_the_schedule_reports_once_and_only_the_last_the_test_accuracy(mnist_small, method):
    from study.methods.base import DataInfo

    config = tiny(method)
    reports, states = whole(config, mnist_small)
    info = DataInfo(mnist_small.input_shape, mnist_small.num_classes, mnist_small.mean, mnist_small.std)
    schedule = METHODS[method](parse_config(config)[1], info, torch.device("cpu")).schedule()
    assert [m["phase"] for m in reports] == [phase for phase, n in schedule for _ in range(n)]
    assert [m["epoch"] for m in reports] == list(range(1, len(reports) + 1))
    assert all(m["total_epochs"] == len(reports) for m in reports)
    assert all(0 <= m["val_accuracy"] <= 1 and 0 <= m["sparsity"] <= 1 for m in reports)  # the objectives
    assert ["test_accuracy" in m for m in reports] == [False] * (len(reports) - 1) + [True]
    assert all(state is not None for state in states)  # each epoch saved its state (in-process default)


# --- determinism -----------------------------------------------------------------------------------

@pytest.mark.parametrize("method", sorted(TINY))
def test_same_config_and_seed_give_the_same_metrics_and_another_seed_differs(mnist_small, method):
    config = tiny(method)
    a, a_states = whole(config, mnist_small)
    b, b_states = record(config, mnist_small)
    assert len(a) == len(b) > 1
    for x, y in zip(a, b, strict=True):
        assert_same_metrics(x, y)
    for x, y in zip(a_states, b_states, strict=True):  # the networks and optimizers too, bit for bit
        _same(x["method"], y["method"], f"epoch {x['epoch']}")
    c, _ = record({**config, "seed": 1}, mnist_small)
    assert c[-1]["val_accuracy"] != a[-1]["val_accuracy"] or c[-1]["loss"] != a[-1]["loss"]


# --- resume --------------------------------------------------------------------------------------

# (method, settings, stop after epoch, metrics the stopped trial reported last)
RESUMES = [
    pytest.param("beta_vae", {}, 1, {"phase": "train"}, id="beta_vae-mid-vae-phase"),
    pytest.param("beta_vae", {}, 2, {"phase": "train"}, id="beta_vae-phase-boundary"),
    # mid-training: parametrized state, optimizer, plateau record
    pytest.param("reparam", {"epochs": 3, "finetune_epochs": 0}, 1, {"phase": "train"},
                 id="reparam-mid-training"),
    # phase boundary: the masks are created after the resume
    pytest.param("reparam", {"variant": "mag_ft", "epochs": 2, "finetune_epochs": 2}, 2,
                 {"phase": "train"}, id="mag_ft-phase-boundary"),
    # mid-fine-tuning: masks and pre-pruning weights restored
    pytest.param("reparam", {"variant": "mag_ft", "epochs": 2, "finetune_epochs": 2}, 3,
                 {"phase": "finetune"}, id="mag_ft-mid-fine-tuning"),
    # epoch 2 is round1's removal epoch; epoch 3 its recovery, the last before round2 begins
    pytest.param("importance", {}, 2, {"importance/neurons/head.0": 35}, id="importance-rank-removal"),
    pytest.param("importance", {"variant": "random"}, 2, {"importance/neurons/head.0": 35},
                 id="importance-random-removal"),
    pytest.param("importance", {}, 3, {"importance/neurons/head.0": 35}, id="importance-rank-recovered"),
    # before the window: the steps per epoch counted, no masks yet
    pytest.param("magnitude", {}, 1, {"phase": "train"}, id="magnitude-gradual-before-window"),
    # mid-window: masks, step counter and schedule restored; random: its fixed order too
    pytest.param("magnitude", {}, 2, {"phase": "prune"}, id="magnitude-gradual-mid-window"),
    pytest.param("magnitude", {"criterion": "random"}, 2, {"phase": "prune"},
                 id="magnitude-gradual-random-mid-window"),
    # mid-fine-tuning: masks at the target, held
    pytest.param("magnitude", {"epochs": 5, "finetune_epochs": 2}, 4, {"phase": "finetune"},
                 id="magnitude-gradual-mid-fine-tuning"),
    # oneshot: pruned at the end of the train phase, fine-tuned after the resume
    pytest.param("magnitude", {"schedule": "oneshot", "criterion": "random", "scope": "layer"}, 3,
                 {"phase": "train", "magnitude/target_sparsity_now": 0.9}, id="magnitude-oneshot-pruned"),
    # mid-training: a mask held (Frankle et al. 2021's reinit), then shuffled with the seed (their
    # layerwise shuffle: drawn again from the seed on restore)
    pytest.param("control", {"masks": _control_masks()}, 1,
                 {"phase": "train", "control/kept_weights/head.2": 750}, id="control-mask"),
    pytest.param("control", {"masks": _control_masks(), "shuffle": True}, 1,
                 {"phase": "train", "control/kept_weights/head.2": 750}, id="control-shuffled-mask"),
    # the smaller dense network: its widths rebuilt before the state loads
    pytest.param("control", {"widths": "head.0=20"}, 1,
                 {"control/kept_weights/head.0": 20 * 784}, id="control-small-dense"),
]


@pytest.mark.parametrize("method, settings, stop_after, at_stop", RESUMES)
def test_a_resumed_trial_continues_from_its_checkpoint_as_if_never_stopped(
        mnist_small, method, settings, stop_after, at_stop):
    config = tiny(method, **settings)
    uninterrupted, uninterrupted_states = whole(config, mnist_small)
    first, states = record(config, mnist_small, stop_after=stop_after)
    assert len(first) == stop_after
    assert {k: first[-1][k] for k in at_stop} == at_stop
    rest, rest_states = record(config, mnist_small, resume=states[-1])
    assert [m["epoch"] for m in rest] == list(range(stop_after + 1, len(uninterrupted) + 1))  # none redone
    for x, y in zip(uninterrupted, first + rest, strict=True):
        assert_same_metrics(x, y)
    for x, y in zip(uninterrupted_states, states + rest_states, strict=True):  # the state, bit for bit
        _same(x["method"], y["method"], f"epoch {x['epoch']}")
        _same(x["rng"], y["rng"], f"epoch {x['epoch']} rng")


@pytest.mark.parametrize("method", sorted(TINY))
def test_a_trial_resumed_from_its_final_state_trains_and_reports_nothing_again(mnist_small, method):
    """As after a driver killed between a trial's last report and Ray's next snapshot."""
    config = tiny(method)
    reports, states = whole(config, mnist_small)
    again = []
    final = train(config, mnist_small, lambda m, d: again.append(m), resume=copy.deepcopy(states[-1]))
    assert again == []
    assert final == reports[-1]


# --- checkpoint round trip -------------------------------------------------------------------------

def _same(a, b, where="state") -> None:
    """Nested states equal: tensors bit for bit, everything else by value."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{where}[{i}]")
    else:
        assert a == b or (a != a and b != b), (where, a, b)  # NaN (nothing recorded yet) too


@pytest.mark.parametrize("method", sorted(TINY))
def test_the_saved_state_loads_weights_only_and_restores_the_method(mnist_small, method):
    from study.methods.base import DataInfo

    config = tiny(method)
    reports, states = whole(config, mnist_small)
    data = mnist_small
    info = DataInfo(data.input_shape, data.num_classes, data.mean, data.std)
    trial, method_config = parse_config(config)
    for metrics, state in zip(reports, states, strict=True):  # after every epoch, every phase
        assert state["epoch"] == metrics["epoch"]
        assert state["config"] == config  # what it ran with
        _same(state["metrics"], metrics, "metrics")  # what it reported (a final state's, on resume)
        restored = METHODS[method](method_config, info, torch.device("cpu"))
        restored.load_state_dict(copy.deepcopy(state["method"]))
        _same(state["method"], restored.state_dict(), f"epoch {state['epoch']}")
        model = restored.inference_model()
        assert accuracy(model, data.val_x, data.val_y, trial.eval_batch_size) == metrics["val_accuracy"]
        size = size_metrics(model, DenseReference(**state["dense"]), data.input_shape)
        assert size == {k: metrics[k] for k in size}, state["epoch"]  # the same network, counted


# --- bad settings and empty schedules ----------------------------------------------------------------

# (method, key, value, what the one-line error says); every method names an unknown key
_BAD = [(method, "bogus", 1, "unknown setting 'bogus'") for method in sorted(TINY)] + [
    ("beta_vae", "beta", -1.0, "'beta' must be in [0.0, None], got -1.0"),
    ("beta_vae", "layer_sparsity", 1.5, "'layer_sparsity' must be in"),
    ("beta_vae", "sparsity", 0.5, "setting 'sparsity' is now 'layer_sparsity'"),
    ("beta_vae", "latent_dim", 2.5, "'latent_dim' must be int"),
    ("beta_vae", "variant", "gan", "'variant' must be one of"),
    ("beta_vae", "lr", float("nan"), "'lr' must be finite"),
    ("beta_vae", "device", "tpu", "'device' must be one of"),
    ("beta_vae", "ce_weight", 0.0, "'ce_weight' must be in"),
    ("beta_vae", "ce_reduction", "sum", "setting 'ce_reduction' is gone: "),
    ("beta_vae", "recon_reduction", "max", "'recon_reduction' must be one of"),
    ("reparam", "n", 3, "'n' must be one of"),
    ("reparam", "variant", "l1", "'variant' must be one of"),
    ("reparam", "pruning_rate", 1.0, "'pruning_rate' must be in"),
    ("reparam", "t_init", 0.0, "'t_init' must be in"),
    ("reparam", "model", "alexnet", "'model' must be one of"),
    ("importance", "lambda1", 1.5, "'lambda1' must be"),
    ("importance", "lambda2", -0.1, "'lambda2' must be"),
    ("importance", "target_fraction", 1.0, "'target_fraction' must be"),
    ("importance", "prune_fraction", 0.0, "'prune_fraction' must be"),
    ("importance", "variant", "magnitude", "'variant' must be"),
    ("importance", "model", "gpt", "'model' must be"),
    ("importance", "recovery_epochs", 1, "setting 'recovery_epochs' is gone: importance's 'epochs' is "
     "now the trial's total budget"),  # an older study's config says what to set
    ("magnitude", "criterion", "snip", "'criterion' must be one of"),
    ("magnitude", "scope", "net", "'scope' must be one of"),
    ("magnitude", "schedule", "cyclic", "'schedule' must be one of"),
    ("magnitude", "target_sparsity", 1.0, "'target_sparsity' must be in"),
    ("magnitude", "prune_every", 0, "'prune_every' must be in"),
    ("magnitude", "model", "alexnet", "'model' must be one of"),
    ("magnitude", "optimizer", "rmsprop", "'optimizer' must be one of"),
    ("magnitude", "finetune_epochs", 4, "'finetune_epochs' = 4 must be < 'epochs' = 4"),
    ("magnitude", "prune_start_epoch", 0, "'prune_start_epoch' = 0 must be in [1, epochs - "
     "finetune_epochs = 3)"),
    ("magnitude", "prune_start_epoch", 3, "'prune_start_epoch' = 3 must be in"),
    ("magnitude", "initial_sparsity", 0.95, "'initial_sparsity' = 0.95 must be <= 'target_sparsity'"),
    ("control", "shuffle", "yes", "'shuffle' must be bool"),
    ("control", "shuffle", True, "'shuffle' = True needs 'masks'"),
    ("control", "widths", "head.0=x", "setting 'widths' must be comma-separated LAYER=WIDTH"),
    ("control", "model", "alexnet", "'model' must be one of"),
    ("control", "optimizer", "rmsprop", "'optimizer' must be one of"),
]
BAD_SETTINGS = [pytest.param(m, {k: v}, message, id=f"{m}-{k}") for m, k, v, message in _BAD]


@pytest.mark.parametrize("method, settings, message", BAD_SETTINGS)
def test_bad_settings_are_one_line_errors_naming_the_key(method, settings, message):
    with pytest.raises(ConfigError) as e:
        parse_config({**tiny(method), **settings})
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_an_unknown_method_is_a_one_line_error():
    with pytest.raises(ConfigError) as e:
        parse_config({"method": "nope"})
    assert "unknown method 'nope'" in str(e.value) and "\n" not in str(e.value)


# settings that leave no epoch: refused before anything runs (reparam needs at least one epoch)
NO_EPOCHS = {"beta_vae": ({"epochs": 0, "head_epochs": 0, "prune_epochs": 0}, "no epoch to run"),
             "reparam": ({"epochs": 0}, "'epochs' must be in"),
             "importance": ({"epochs": 0}, "'epochs' must be in"),
             "magnitude": ({"epochs": 0}, "'epochs' must be in"),
             "control": ({"epochs": 0}, "'epochs' must be in")}


@pytest.mark.parametrize("method", sorted(NO_EPOCHS))
def test_a_schedule_without_epochs_is_refused(mnist_small, method):
    settings, message = NO_EPOCHS[method]
    reports = []
    with pytest.raises(ConfigError, match=message):
        train(tiny(method, **settings), mnist_small, lambda m, d: reports.append(m))
    assert reports == []


@pytest.mark.parametrize("method", list(METHODS))
def test_a_checkpoint_interval_keeps_the_state_only_when_due_and_always_at_the_end(mnist_small, method):
    config = tiny(method)
    kept = []
    train(config, mnist_small, lambda m, d: kept.append(d is not None), checkpoint_every=3600.0)
    assert kept[:-1] == [False] * (len(kept) - 1) and kept[-1]  # none due in an hour; the end always
    every = []
    train(config, mnist_small, lambda m, d: every.append(d is not None), checkpoint_every=0.0)
    assert every == [True] * len(kept)


# --- the CUDA layout, exercised on the CPU -------------------------------------------------------

@pytest.mark.parametrize("method", sorted(METHODS))
def test_channels_last_keeps_the_optimizers_parameters_and_the_outputs(method, mnist_small):
    """On CUDA the trainable puts every method's networks in channels_last; the conversion must
    leave the optimizer holding the very parameters it steps, and the network's function unchanged
    (conv models: a beta_vae encoder, and Conv4 for the methods whose tiny trial is an MLP)."""
    from study.data import batches
    from study.trainable import setup, to_channels_last

    overrides = {"model": "conv4"} if method in ("reparam", "magnitude", "control") else {}
    _, data, m, _ = setup(tiny(method, **overrides), mnist_small)
    held = [id(p) for group in m.optimizer.param_groups for p in group["params"]]
    x = next(batches(data.val_x, data.val_y, 16))[0]
    model = m.inference_model().eval()
    with torch.no_grad():
        before = model(x)
        to_channels_last(m)
        after = m.inference_model().eval()(x.contiguous(memory_format=torch.channels_last))
    assert [id(p) for group in m.optimizer.param_groups for p in group["params"]] == held
    convs = [mod for mod in m.inference_model().modules() if isinstance(mod, torch.nn.Conv2d)]
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    assert (len(convs) > 0) == (method != "importance")
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)


# --- the declaration ---------------------------------------------------------------------------

def _restored(method: str, config: dict, data, state: dict):
    """A fresh method of `config` with a saved state loaded into it."""
    from study.methods.base import DataInfo

    info = DataInfo(data.input_shape, data.num_classes, data.mean, data.std)
    restored = METHODS[method](parse_config(config)[1], info, torch.device("cpu"))
    restored.load_state_dict(copy.deepcopy(state))
    return restored


@pytest.mark.parametrize("method", sorted(TINY))
def test_a_methods_own_metrics_are_under_its_metric_prefix(mnist_small, method):
    reports, _ = whole(tiny(method), mnist_small)
    own = {k for m in reports for k in m if k not in VOCABULARY and not k.startswith(TRAINABLE_PREFIXES)}
    assert own  # its diagnostics
    assert {k for k in own if not k.startswith(METHODS[method].metric_prefix)} == set()


@pytest.mark.parametrize("method", sorted(TINY))
def test_a_methods_architecture_names_a_setting_of_its_config(method):
    cls = METHODS[method]
    assert cls.architecture in {f.name for f in fields(cls.Config)}
    assert cls.architecture in parse_config(tiny(method))[1].__dataclass_fields__


@pytest.mark.parametrize("method", sorted(TINY))
def test_a_methods_networks_hold_its_inference_model_after_every_epoch(mnist_small, method):
    config = tiny(method)
    _, states = whole(config, mnist_small)
    for state in states:  # every stage: before and after pruning, removal, decoder removal
        restored = _restored(method, config, mnist_small, state["method"])
        networks = restored.networks()
        assert networks and all(isinstance(n, torch.nn.Module) for n in networks.values())
        held = {id(p) for n in networks.values() for p in n.parameters()}
        assert {id(p) for p in restored.inference_model().parameters()} <= held, state["epoch"]


@pytest.mark.parametrize("method", sorted(TINY))
def test_a_methods_probe_changes_no_state_and_draws_no_random_numbers(mnist_small, method):
    config = tiny(method)
    _, states = whole(config, mnist_small)
    for state in states:
        restored = _restored(method, config, mnist_small, state["method"])
        before = copy.deepcopy(restored.state_dict())
        rng = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
        probe = restored.probe_model()
        assert torch.equal(torch.get_rng_state(), rng[0]), state["epoch"]
        assert np.array_equal(np.random.get_state()[1], rng[1]) and random.getstate() == rng[2]
        _same(before, restored.state_dict(), f"epoch {state['epoch']}")
        if probe is not None:  # a copy: training the network later leaves it as it was
            held = {id(p) for n in restored.networks().values() for p in n.parameters()}
            assert held.isdisjoint(id(p) for p in probe.parameters())


@dataclass(frozen=True)
class _MinimalConfig:
    model: str = setting("mlp", "its network")


class _Minimal:
    """The smallest class that registers (never run: registration reads the declaration only)."""
    Config = _MinimalConfig
    metric_prefix = "minimal/"
    architecture = "model"
    variant_settings = ()
    chance_rule_skips = ()

    def schedule(self): ...
    def begin_epoch(self, phase, first): ...
    def loss_terms(self, phase, x, y): ...
    def end_pass(self, phase, last, terms): ...
    def inference_model(self): ...
    def networks(self): ...
    def probe_model(self): ...
    def end_epoch(self, end): ...
    def state_dict(self): ...
    def load_state_dict(self, state): ...


@dataclass
class _Mutable:
    model: str = setting("mlp", "its network")


@dataclass(frozen=True)
class _Plain:
    model: str = "mlp"


@dataclass(frozen=True)
class _Seeded:
    model: str = setting("mlp", "its network")
    seed: int = setting(0, "clashes with the trial's seed")


def _without(member: str) -> type:
    return type("Lacking", (), {k: v for k, v in vars(_Minimal).items() if k != member})


MALFORMED = [
    pytest.param(type("M", (_Minimal,), {"Config": _Mutable}),
                 "Config must be a frozen dataclass of study.config.setting fields", id="mutable"),
    pytest.param(type("M", (_Minimal,), {"Config": _Plain}), "'model' is not a study.config.setting",
                 id="not-a-setting"),
    pytest.param(type("M", (_Minimal,), {"Config": _Seeded}), "setting 'seed' shares its name",
                 id="trial-setting"),
    pytest.param(type("M", (_Minimal,), {"architecture": "width"}),
                 "`architecture` = 'width' names no setting of its Config; add", id="architecture"),
    pytest.param(_without("architecture"), "`architecture` = None names no setting", id="no-architecture"),
    pytest.param(type("M", (_Minimal,), {"variant_settings": ("criterion",)}),
                 "`variant_settings` = ('criterion',) must be a tuple of settings", id="variant"),
    pytest.param(type("M", (_Minimal,), {"variant_settings": ("model",)}),
                 "other than its architecture", id="variant-is-the-architecture"),
    pytest.param(type("M", (_Minimal,), {"chance_rule_skips": ["train"]}),
                 "`chance_rule_skips` = ['train'] must be a tuple of phase names", id="skips-not-a-tuple"),
    pytest.param(type("M", (_Minimal,), {"chance_rule_skips": "train"}),
                 "`chance_rule_skips` = 'train' must be a tuple of phase names", id="skips-a-string"),
    pytest.param(type("M", (_Minimal,), {"chance_rule_skips": (1,)}),
                 "`chance_rule_skips` = (1,) must be a tuple of phase names", id="skips-not-names"),
    pytest.param(_without("chance_rule_skips"), "`chance_rule_skips` = None must be a tuple",
                 id="no-skips"),
    pytest.param(type("M", (_Minimal,), {"metric_prefix": "minimal"}),
                 "metric_prefix must end with '/' and be unique", id="prefix-without-slash"),
    pytest.param(type("M", (_Minimal,), {"metric_prefix": "vae/"}),
                 "metric_prefix must end with '/' and be unique", id="prefix-taken"),
    pytest.param(type("M", (_Minimal,), {"metric_prefix": "vae/end/"}),
                 "metric_prefix must end with '/' and be unique", id="prefix-inside-another"),
    pytest.param(type("M", (_Minimal,), {"metric_prefix": "rung/"}),
                 "metric_prefix must end with '/' and be unique", id="prefix-the-trainables"),
    pytest.param(_without("probe_model"), "missing `probe_model()` (return None when the network as "
                 "it is is its final state)", id="no-probe"),
    pytest.param(_without("networks"), "missing `networks()`", id="no-networks"),
]


@pytest.mark.parametrize("cls, message", MALFORMED)
def test_a_malformed_method_fails_registration_saying_what_to_add(monkeypatch, cls, message):
    monkeypatch.setattr(study.methods, "METHODS", dict(METHODS))
    with pytest.raises(TypeError) as e:
        register(cls, "minimal")
    assert message in str(e.value) and "method 'minimal'" in str(e.value)
    assert "minimal" not in study.methods.METHODS


def test_a_well_formed_method_registers_and_its_prefix_is_known(monkeypatch):
    monkeypatch.setattr(study.methods, "METHODS", dict(METHODS))
    assert register(_Minimal, "minimal") is _Minimal
    assert study.methods.METHODS["minimal"] is _Minimal
    assert study.methods.metric_prefixes() == (*(c.metric_prefix for c in METHODS.values()), "minimal/")
    with pytest.raises(TypeError, match="the name is taken"):
        register(type("Other", (_Minimal,), {"metric_prefix": "other/"}), "minimal")
