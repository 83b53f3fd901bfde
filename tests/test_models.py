"""Networks by name (study.models) and which method runs on which: every supported (method, model)
pair trains one tiny trial through the trainable, and README's table is the generated one."""
from __future__ import annotations

import math
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from study.data import Dataset, batches
from study.methods import METHODS, supported_models
from study.methods.base import DataInfo
from study.methods.beta_vae import BetaVAE, BetaVAEConfig
from study.models import MODELS, build_model
from study.pruning import hidden_layers
from study.trainable import setup, train, train_epoch
from tests.test_contracts import TINY

README = Path(__file__).resolve().parent.parent / "README.md"
TABLE_HEADING = "### Which method runs on which network"
GRAY, COLOUR = (1, 28, 28), (3, 32, 32)


def _info(shape: tuple[int, int, int]) -> DataInfo:
    return DataInfo(shape, 10, (0.5,) * shape[0], (0.25,) * shape[0])


def _runs_on(model: str, shape: tuple[int, int, int]) -> bool:
    """Whether the model's forward pass takes inputs of `shape` (on the meta device: no compute)."""
    with torch.device("meta"):
        net = build_model(model, shape, 10, (0.5,) * shape[0], (0.25,) * shape[0])
        try:
            net(torch.empty(2, *shape))
        except RuntimeError:  # a feature map pooled below 1x1
            return False
    return True


# --- bvae_cnn is beta_vae's inference network ------------------------------------------------

@pytest.mark.parametrize("shape, params", [(GRAY, 69_450), (COLOUR, 2_898_678)])
def test_bvae_cnn_is_beta_vaes_inference_network_at_its_defaults(shape, params):
    torch.manual_seed(0)
    ours = build_model("bvae_cnn", shape, 10, (0.5,) * shape[0], (0.25,) * shape[0])
    torch.manual_seed(0)
    theirs = BetaVAE(BetaVAEConfig(), _info(shape), torch.device("cpu")).inference_model()
    shapes = [p.shape for p in ours.parameters()]
    assert shapes == [p.shape for p in theirs.parameters()]
    assert sum(p.numel() for p in ours.parameters()) == params  # paper: 69k (MNIST), 2.9M (CIFAR)
    # the same layers in the same order: the same seed draws the same weights, the same function
    x = torch.rand(4, *shape)
    assert torch.equal(ours(x), theirs(x))
    # its hidden layers are the encoder's dense layer and the posterior mean
    assert [ours.head[i].out_features for _, i, _ in hidden_layers(ours.head)] == [
        16 if shape[0] == 1 else 700, 16]


# --- which method runs on which network --------------------------------------------------------

def test_supported_models_are_each_methods_model_choices():
    with_hidden = [m for m in MODELS if hidden_layers(build_model(m, COLOUR, 10, (0.5,) * 3,
                                                                  (0.25,) * 3).head)]
    assert with_hidden == ["lenet300", "mlp50_30", "conv4", "reddy_cnn", "bvae_cnn"]
    supported = supported_models()
    assert list(supported) == list(METHODS)
    assert supported["importance"] == with_hidden  # neurons to remove: hidden head layers
    assert supported["reparam"] == supported["magnitude"] == list(MODELS)  # any conv/linear weights
    assert supported["beta_vae"] == ["bvae_cnn"]  # it trains its own VAE around that network


def model_table() -> str:
    """README's method x model table, generated from supported_models()."""
    supported = supported_models()
    rows = ["| method | " + " | ".join(f"`{m}`" for m in MODELS) + " |",
            "| --- |" + " :---: |" * len(MODELS)]
    rows += [f"| `{method}` | " + " | ".join("yes" if m in models else "-" for m in MODELS) + " |"
             for method, models in supported.items()]
    return "\n".join(rows)


def test_the_readme_table_is_the_generated_one():
    text = README.read_text()
    assert TABLE_HEADING in text
    section = text.split(TABLE_HEADING, 1)[1]
    table = "\n".join(re.findall(r"^\|.*\|$", section.split("\n\n###", 1)[0].split("\n## ", 1)[0],
                                 flags=re.M))
    assert table == model_table(), f"README's table under {TABLE_HEADING!r} must be:\n{model_table()}"


# --- every supported pair trains ---------------------------------------------------------------

# one short trial per method, over its contract trial's settings (test_contracts.TINY): a single
# epoch where the method allows it, which still prunes (sparsity > 0) but for UNPRUNED's
ONE_EPOCH = {
    "beta_vae": {"epochs": 1, "head_epochs": 0, "prune_epochs": 1, "layer_sparsity": 0.5},
    "importance": {"epochs": 1, "warmup_epochs": 0, "prune_fraction": 0.5, "target_fraction": 0.5},
    "reparam": {"epochs": 1, "variant": "reparam", "pruning_rate": 0.9},
    "magnitude": {"epochs": 1, "finetune_epochs": 0, "schedule": "oneshot", "target_sparsity": 0.9},
    # no mask: its masks file holds one network's shapes, so each model trains dense
    "control": {"epochs": 1, "masks": "", "shuffle": False},
}
UNPRUNED = {"control"}
# images per split, one batch each: the check is that a pair runs, not how well
SAMPLES = 16
# Above this many parameters a trial's fixed costs dominate whatever its data (gzip of the weights
# for `compressed_bytes`, a global sort of them to prune: ~8 s each for VGG19's 20M on a busy CPU
# core), so those networks (the CIFAR forms of VGG19 and ResNet18) take one training step instead
LARGE = 5_000_000


def _shape(model: str) -> tuple[int, int, int]:
    """MNIST's shape where the model takes it, else CIFAR's (vgg19: five poolings need 32x32)."""
    return GRAY if _runs_on(model, GRAY) else COLOUR


def _params(model: str) -> int:
    with torch.device("meta"):
        net = build_model(model, _shape(model), 10, (0.5,) * 3, (0.25,) * 3)
    return sum(p.numel() for p in net.parameters())


PAIRS = [(method, model) for method, models in supported_models().items() for model in models]
TRAINED = [pair for pair in PAIRS if _params(pair[1]) <= LARGE]
STEPPED = [pair for pair in PAIRS if _params(pair[1]) > LARGE]


def _ids(pairs: list[tuple[str, str]]) -> list[str]:
    return [f"{method}-{model}" for method, model in pairs]


@pytest.fixture(scope="module")
def colour_data() -> Dataset:
    """A CIFAR-shaped stand-in: random 32x32 colour images, 10 classes."""
    g = torch.Generator().manual_seed(0)
    images = lambda n: torch.randint(0, 256, (n, *COLOUR), dtype=torch.uint8, generator=g)  # noqa: E731
    labels = lambda n: torch.randint(0, 10, (n,), generator=g)  # noqa: E731
    return Dataset("synthetic32", *(f(SAMPLES) for _ in range(3) for f in (images, labels)),
                   (0.5,) * 3, (0.25,) * 3, 10)


def _data_and_config(method: str, model: str, mnist: Dataset, colour: Dataset) -> tuple[Dataset, dict]:
    data = colour if _shape(model) == COLOUR else replace(
        mnist, val_x=mnist.val_x[:SAMPLES], val_y=mnist.val_y[:SAMPLES],
        test_x=mnist.test_x[:SAMPLES], test_y=mnist.test_y[:SAMPLES])
    config = {**TINY[method], **ONE_EPOCH[method], "model": model, "train_subset": SAMPLES,
              "batch_size": SAMPLES, "eval_batch_size": SAMPLES, "seed": 0, "degenerate_epochs": 0}
    return data, config


def test_the_pairs_cover_every_supported_pair_and_each_method_has_a_one_epoch_trial():
    assert set(ONE_EPOCH) == set(METHODS) and UNPRUNED <= set(METHODS)
    assert sorted(TRAINED + STEPPED) == sorted(PAIRS) and TRAINED
    assert {model for _, model in STEPPED} <= {"vgg19", "resnet18"}  # the rest train whole trials


@pytest.mark.parametrize("method, model", TRAINED, ids=_ids(TRAINED))
def test_every_supported_method_and_model_pair_trains_a_trial(mnist, colour_data, method, model):
    data, config = _data_and_config(method, model, mnist, colour_data)
    reports = []
    final = train(config, data, lambda metrics, folder: reports.append(metrics))
    assert reports and final is reports[-1] and "test_accuracy" in final
    assert all(math.isfinite(m["val_accuracy"]) and 0 <= m["sparsity"] <= 1 for m in reports)
    if method not in UNPRUNED:
        assert final["sparsity"] > 0  # the method pruned this network


@pytest.mark.parametrize("method, model", STEPPED, ids=_ids(STEPPED))
def test_every_supported_method_builds_and_steps_the_large_networks(mnist, colour_data, method, model):
    data, config = _data_and_config(method, model, mnist, colour_data)
    _, data, built, schedule = setup(config, data)
    terms = train_epoch(built, schedule[0][0], True, batches(data.train_x, data.train_y, SAMPLES))
    assert math.isfinite(terms["loss"])
    x = next(batches(data.val_x, data.val_y, SAMPLES))[0]
    with torch.no_grad():
        out = built.inference_model().eval()(x)
    assert out.shape == (SAMPLES, 10) and torch.isfinite(out).all()
