"""Training-batch augmentation (TrialConfig.augment): random crop with 4-pixel zero padding and
horizontal flip, per image, vectorized, drawn from the trial's own seeded generator, saved and
restored with its checkpoint; `auto` is crop_flip on CIFAR-10 only."""
from __future__ import annotations

import pytest
import torch

from study import data as datamod
from study.config import ConfigError
from study.data import CROP_PADDING, DATASETS, Dataset, batches, crop_flip, resolve_augment
from study.trainable import parse_config, start
from tests.conftest import assert_same_metrics
from tests.test_contracts import _same, record


def _images(n=16, c=3, side=32, seed=0):
    return torch.randint(0, 256, (n, c, side, side), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def cifar_like() -> Dataset:
    """CIFAR-shaped synthetic data (3x32x32, 10 classes): a bright square whose corner is the
    class, so a tiny network learns something in an epoch."""
    g = torch.Generator().manual_seed(0)

    def split(n):
        y = torch.randint(0, 10, (n,), generator=g)
        x = torch.randint(0, 64, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
        for i, label in enumerate(y.tolist()):
            r, c = 4 + 4 * (label // 5), 4 + 4 * (label % 5)
            x[i, :, r:r + 8, c:c + 8] = 255
        return x, y

    (x, y), (vx, vy), (tx, ty) = split(192), split(100), split(60)
    return Dataset("cifar10", x, y, vx, vy, tx, ty, mean=(0.3,) * 3, std=(0.3,) * 3, num_classes=10)


def _config(**overrides):
    return {"method": "magnitude", "model": "lenet300", "dataset": "cifar10", "batch_size": 64,
            "epochs": 3, "finetune_epochs": 0, "seed": 0, "degenerate_epochs": 0, **overrides}


# --- the transform ----------------------------------------------------------------------------------

def test_each_crop_is_a_shifted_window_of_the_zero_padded_image_mirrored_when_flipped():
    x = _images()
    g = torch.Generator().manual_seed(5)
    replay = torch.Generator().set_state(g.get_state())
    out = crop_flip(x, g)
    assert out.shape == x.shape and out.dtype == x.dtype
    # the same draws, replayed, cut one image at a time
    p = CROP_PADDING
    shifts = torch.randint(0, 2 * p + 1, (len(x), 2), generator=replay)
    flips = torch.randint(0, 2, (len(x),), generator=replay).bool()
    padded = torch.nn.functional.pad(x, (p, p, p, p))
    assert padded[:, :, :p].eq(0).all() and padded[:, :, :, -p:].eq(0).all()  # zero padding
    for i in range(len(x)):
        dy, dx = shifts[i].tolist()
        assert 0 <= dy <= 2 * p and 0 <= dx <= 2 * p  # shifted by at most 4 pixels either way
        window = padded[i, :, dy:dy + 32, dx:dx + 32]
        assert torch.equal(out[i], window.flip(-1) if flips[i] else window), i
    assert len(set(map(tuple, shifts.tolist()))) > 1 and 0 < int(flips.sum()) < len(x)  # per image


def test_a_flip_without_shift_mirrors_and_a_shift_moves_the_image():
    x = _images(n=64)
    flipped = crop_flip(x, torch.Generator().manual_seed(1), padding=0)  # no room to shift
    mirrored = [torch.equal(f, i.flip(-1)) for f, i in zip(flipped, x, strict=True)]
    assert all(m or torch.equal(f, i) for m, f, i in zip(mirrored, flipped, x, strict=True))
    assert 0 < sum(mirrored) < len(x)  # mirrored left-right, about half of them
    out = crop_flip(x, torch.Generator().manual_seed(1))
    # every output is one of the 81 x 2 candidates, and no image comes back unchanged every time
    p = CROP_PADDING
    padded = torch.nn.functional.pad(x, (p, p, p, p))
    for i in range(len(x)):
        cands = [padded[i, :, dy:dy + 32, dx:dx + 32] for dy in range(2 * p + 1) for dx in range(2 * p + 1)]
        assert any(torch.equal(out[i], c) or torch.equal(out[i], c.flip(-1)) for c in cands)
    assert not torch.equal(out, x)


def test_crop_flip_is_deterministic_under_a_seed_and_a_seed_apart_differs():
    x = _images()
    a = crop_flip(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, crop_flip(x, torch.Generator().manual_seed(3)))
    assert not torch.equal(a, crop_flip(x, torch.Generator().manual_seed(4)))
    seeded = [xb for xb, _ in batches(x, torch.arange(16), 4, torch.Generator().manual_seed(0),
                                      augment=torch.Generator().manual_seed(9))]
    again = [xb for xb, _ in batches(x, torch.arange(16), 4, torch.Generator().manual_seed(0),
                                     augment=torch.Generator().manual_seed(9))]
    assert all(torch.equal(s, t) for s, t in zip(seeded, again, strict=True))
    plain = [xb for xb, _ in batches(x, torch.arange(16), 4, torch.Generator().manual_seed(0))]
    assert all(s.dtype == torch.float32 for s in seeded) and not all(
        torch.equal(s, t) for s, t in zip(seeded, plain, strict=True))


# --- which datasets, which batches -------------------------------------------------------------------

def test_auto_is_crop_flip_on_cifar_only_and_the_choice_is_checked():
    assert {d: resolve_augment("auto", d) for d in DATASETS} == {
        "mnist": "none", "fashion_mnist": "none", "cifar10": "crop_flip",
        "cifar10_jpeg": "crop_flip", "dsprites": "none"}
    assert resolve_augment("auto", "folder:/some/images") == "none"  # unknown images: opt in
    assert resolve_augment("crop_flip", "mnist") == "crop_flip"
    assert resolve_augment("none", "cifar10") == "none"
    assert parse_config(_config())[0].augment == "auto"
    with pytest.raises(ConfigError, match="'augment' must be one of"):
        parse_config(_config(augment="mixup"))


def test_a_trial_has_its_own_augmentation_generator_only_when_it_augments(cifar_like, mnist_small):
    assert start(_config(), cifar_like).augment_rng is not None
    assert start(_config(augment="none"), cifar_like).augment_rng is None
    assert start(_config(dataset="mnist"), mnist_small).augment_rng is None
    run = start(_config(dataset="mnist", augment="crop_flip"), mnist_small)
    assert run.augment_rng is not None
    # a stream apart from the batch order's, though seeded from the same trial seed
    assert not torch.equal(run.augment_rng.get_state(), run.batch_rng.get_state())


def test_only_training_batches_are_augmented(cifar_like, monkeypatch):
    seen = []

    def spy(x, generator, padding=CROP_PADDING):
        seen.append(len(x))
        return real(x, generator, padding)

    real = datamod.crop_flip
    monkeypatch.setattr(datamod, "crop_flip", spy)
    reports, _ = record(_config(epochs=2), cifar_like)
    assert len(reports) == 2 and "test_accuracy" in reports[-1]
    # every training sample once per epoch; no validation (100) or test (60) image
    assert seen == [64, 64, 64] * 2
    seen.clear()
    record(_config(epochs=1, augment="none"), cifar_like)
    assert seen == []


def test_augmentation_changes_the_training_and_is_deterministic(cifar_like):
    a, a_states = record(_config(), cifar_like)
    b, b_states = record(_config(), cifar_like)
    for x, y in zip(a, b, strict=True):
        assert_same_metrics(x, y)
    for x, y in zip(a_states, b_states, strict=True):
        _same(x["method"], y["method"])
        _same(x["rng"], y["rng"])
        assert "augment" in x["rng"]
    plain, plain_states = record(_config(augment="none"), cifar_like)
    assert "augment" not in plain_states[0]["rng"]
    assert [m["loss"] for m in plain] != [m["loss"] for m in a]


@pytest.mark.parametrize("stop_after", [1, 2])
def test_a_resumed_augmented_trial_continues_as_if_never_stopped(cifar_like, stop_after):
    config = _config()
    whole, whole_states = record(config, cifar_like)
    first, states = record(config, cifar_like, stop_after=stop_after)
    rest, rest_states = record(config, cifar_like, resume=states[-1])
    assert [m["epoch"] for m in rest] == list(range(stop_after + 1, len(whole) + 1))
    for x, y in zip(whole, first + rest, strict=True):
        assert_same_metrics(x, y)
    for x, y in zip(whole_states, states + rest_states, strict=True):
        _same(x["method"], y["method"], f"epoch {x['epoch']}")
        _same(x["rng"], y["rng"], f"epoch {x['epoch']} rng")  # the augmentation's state included


def test_resuming_an_unaugmented_checkpoint_with_augmentation_is_refused(cifar_like):
    _, states = record(_config(augment="none"), cifar_like, stop_after=1)
    with pytest.raises(ValueError, match="no augmentation state"):
        record(_config(), cifar_like, resume=states[-1])
