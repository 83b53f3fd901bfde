"""beta_vae: Beta-VAE with a classifier head, then per-layer low-magnitude pruning (shneider2023).

Schedule (paper Section III): `epochs` with all three loss terms (Eq. 3); the decoder is removed
and `head_epochs` train the inference model (encoder -> mean -> head) on cross-entropy; then, if
`layer_sparsity > 0`, every conv and linear weight of the inference model is pruned to it by
magnitude *within its layer* (Keras' prune_low_magnitude with a constant schedule is per layer) and
`prune_epochs` fine-tune it with the masks held. Each phase starts a fresh Adam, as recompiling a
Keras model does. Variant `cnn` is the paper's CNN-Classif baseline: same encoder and head,
cross-entropy only, no decoder, no KL.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from study.config import setting
from study.data import batches
from study.methods.base import DataInfo, EpochEnd
from study.models import BetaVAEClassifier, beta_vae_hidden
from study.pruning import apply_masks, magnitude_masks, restore_mask_buffers

# `vae/recon` decodes this many validation images (fixed: the first ones): the decoder's pass over
# all 6,000 took 3.5-4.6 s of a default trial's 66 s of training (issue 11). A diagnostic only
# (collapse is read from the KL and the active units, over the whole split)
RECON_SAMPLES = 2000


@dataclass(frozen=True)
class BetaVAEConfig:
    model: str = setting("bvae_cnn", "architecture of the inference network: shneider2023's "
                         "encoder (2 convs, a dense layer) -> posterior mean -> head; the VAE "
                         "variant trains it with a decoder beside, the cnn variant without. "
                         "study.models' bvae_cnn, the same network for the other methods, is it at "
                         "the default latent_dim and encoder_hidden: other values change the network",
                         choices=("bvae_cnn",))
    variant: str = setting("vae", "vae: Beta-VAE-Classif; cnn: the CNN-Classif baseline",
                           choices=("vae", "cnn"))
    beta: float = setting(1.0, "weight of the KL term (Eq. 1); the paper tries 1, 3, 5, 10", low=0.0)
    latent_dim: int = setting(16, "size of the latent z; assumed: the paper does not give it. 16 keeps the "
                              "69k size (69,450 params) and reproduces Table I's CNN under 50% "
                              "per-layer pruning; Keras' example's 2 loses 17 points there "
                              "(docs/benchmarks.md)", low=1, high=1024)
    encoder_hidden: int = setting(0, "units of the encoder's dense layer; 0: paper-sized for the "
                                  "input, assumed from the paper's sizes (16 on grayscale: 69k "
                                  "params on 28x28; 700 on colour: 2.9M on 32x32x3, inferred "
                                  "from its CIFAR-10 size)", low=0)
    lr: float = setting(1e-3, "Adam learning rate", low=1e-7, high=1.0)
    epochs: int = setting(30, "epochs of the full loss (KL + reconstruction + cross-entropy)", low=0)
    head_epochs: int = setting(2, "epochs of cross-entropy after the decoder is removed", low=0)
    ce_weight: float = setting(32.0, "weight of the per-image mean cross-entropy (Eq. 2) against "
                               "the per-image VAE terms (Eq. 1) in Eq. 3; whatever the batch size. "
                               "32 reproduces the paper-reading default, the cross-entropy summed "
                               "over a Keras batch of 32; 1 is the old ce_reduction=mean (the "
                               "classifier barely trains while the VAE is whole, docs/benchmarks.md)",
                               low=1e-6)
    recon_reduction: str = setting("sum", "reconstruction over an image's pixels: sum "
                                   "(-log p(x|z) of Eq. 1, Bernoulli pixels) or mean (Keras' "
                                   "binary_crossentropy default: 1/pixels of it)",
                                   choices=("sum", "mean"))
    ce_input: str = setting("sample", "what the head classifies while the VAE is whole: the "
                            "sample z (Fig. 1) or the posterior mean (what inference uses)",
                            choices=("sample", "mean"))
    layer_sparsity: float = setting(0.5, "fraction of every conv/linear weight pruned, per layer "
                              "(0: no pruning)", low=0.0, high=0.999)
    prune_epochs: int = setting(2, "fine-tuning epochs with the masks held", low=0)
    active_threshold: float = setting(0.01, "a latent dim is active when Var_x(E[z|x]) exceeds this "
                                      "(Burda et al. 2016)", low=0.0)


def kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)) per sample and latent dimension (the KL term of Eq. 1)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


def active_units(mu: torch.Tensor, threshold: float) -> int:
    """Burda et al. (2016): dimension j is active when Var over the data of E[z_j|x] > threshold."""
    return int((mu.var(dim=0) > threshold).sum())


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def discrete_mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    """I(a; b) in nats of two integer-coded variables over the same samples (plug-in estimate)."""
    joint = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(joint, (a, b), 1)
    return _entropy(joint.sum(axis=1)) + _entropy(joint.sum(axis=0)) - _entropy(joint.ravel())


def mutual_information_gap(latents: np.ndarray, factors: np.ndarray, bins: int = 20) -> float:
    """MIG (Chen et al. 2018, Eq. 6): over the factors v_k, the mean of
    (I(z_j*; v_k) - I(z_j'; v_k)) / H(v_k), j* and j' the latents most and second most informative
    about v_k. Latents (n x d, the posterior means) are discretized into `bins` equal-width bins
    per dimension, as in disentanglement_lib; factors (n x K) are integer codes. Constant factors
    carry no information and are left out. In [0, 1]: 1 when each factor is read off one latent."""
    if latents.shape[1] < 2:
        raise ValueError("MIG needs at least 2 latent dimensions")
    codes = []
    for z in latents.T:
        edges = np.histogram_bin_edges(z, bins=bins)
        codes.append(np.digitize(z, edges[1:-1]))
    gaps = []
    for v in factors.T:
        v = np.unique(v, return_inverse=True)[1]
        h = _entropy(np.bincount(v))
        if h == 0:
            continue
        mi = np.sort([discrete_mutual_information(c, v) for c in codes])[::-1]
        gaps.append((mi[0] - mi[1]) / h)
    return float(np.mean(gaps)) if gaps else float("nan")


class BetaVAE:
    Config = BetaVAEConfig
    metric_prefix = "vae/"
    architecture = "model"
    variant_settings = ("variant",)  # Beta-VAE-Classif or the CNN-Classif baseline
    chance_rule_skips = ("train",)  # the VAE phase: at chance is a collapsed posterior, recorded

    def __init__(self, config: BetaVAEConfig, data: DataInfo, device: torch.device):
        self.cfg = config
        self.device = device
        hidden = config.encoder_hidden or beta_vae_hidden(data.input_shape)
        self.model = BetaVAEClassifier(data.input_shape, data.num_classes, config.latent_dim, hidden,
                                       data.mean, data.std,
                                       with_decoder=config.variant == "vae").to(device)
        self.pruned = False
        self.optimizer = self._new_optimizer()
        if config.variant == "cnn":  # no VAE: its train phase at chance is a degenerate trial
            self.chance_rule_skips = ()

    def schedule(self) -> list[tuple[str, int]]:
        prune_epochs = self.cfg.prune_epochs if self.cfg.layer_sparsity > 0 else 0
        return [("train", self.cfg.epochs), ("head", self.cfg.head_epochs), ("prune", prune_epochs)]

    def _new_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.model.parameters(), lr=self.cfg.lr)

    def _prune(self) -> None:
        """Every conv and linear layer of the classifier loses its `layer_sparsity` smallest
        weights, held through fine-tuning."""
        model = self.inference_model()
        apply_masks(model, magnitude_masks(model, self.cfg.layer_sparsity, "layer"))
        self.pruned = True

    def begin_epoch(self, phase: str, first: bool) -> bool:
        if first and phase == "head":
            self.model.remove_decoder()
        elif first and phase == "prune":
            self.model.remove_decoder()  # also when head_epochs = 0
            self._prune()
        if first:
            self.optimizer = self._new_optimizer()
        self.model.train()
        return True

    def loss_terms(self, phase: str, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        if phase == "train" and self.model.decoder is not None:
            return self.vae_loss(x, y)
        ce = F.cross_entropy(self.inference_model()(x), y)
        return {"loss": ce, "train/ce": ce}

    def vae_loss(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Eq. 3 on a batch: the Beta-VAE loss of Eq. 1 per image (averaged over the batch) plus
        `ce_weight` times the per-image mean cross-entropy of Eq. 2: the balance of the terms does
        not depend on the batch size. The cross-entropy is computed summed and scaled by
        ce_weight / len(x), a factor of exactly 1.0 at ce_weight == len(x) (the old
        `ce_reduction=sum` at a batch of 32, bit for bit)."""
        mu, logvar = self.model.encode(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()  # reparametrization trick
        ce_sum = F.cross_entropy(self.model.head(z if self.cfg.ce_input == "sample" else mu), y,
                                 reduction="sum")  # Eq. 2, over the batch
        recon = F.binary_cross_entropy_with_logits(  # -log p(x|z) of Eq. 1, Bernoulli pixels
            self.model.decoder(z), x, reduction="none").flatten(1)
        recon = (recon.sum(dim=1) if self.cfg.recon_reduction == "sum" else recon.mean(dim=1)).mean()
        kl = kl_per_dim(mu, logvar).sum(dim=1).mean()  # KL term of Eq. 1, per image
        ce = ce_sum * (self.cfg.ce_weight / len(x))
        # train/ce is always the per-sample mean, whatever ce_weight, so runs compare
        return {"loss": self.cfg.beta * kl + recon + ce, "train/ce": (ce_sum / len(x)).detach(),
                "train/recon": recon, "train/kl": kl}

    def end_pass(self, phase: str, last: bool, terms: dict[str, float]) -> dict[str, float]:
        if last and self.cfg.layer_sparsity > 0 and not self.pruned:  # prune_epochs = 0: prune,
            self.model.remove_decoder()  # no fine-tuning
            self._prune()
        return {}

    def inference_model(self) -> nn.Module:
        return self.model.inference_model()

    def networks(self) -> dict[str, nn.Module]:
        return {"model": self.model}  # encoder, decoder (while it exists) and head

    def probe_model(self) -> nn.Module | None:
        """MO-ASHA's rung probe (study.scheduler): a copy of the classifier pruned per layer to
        `layer_sparsity`, as the prune phase will prune it, without its fine-tuning; None once
        pruned (or never pruned): the network as it is is then its final state."""
        if self.pruned or self.cfg.layer_sparsity == 0:
            return None
        probe = copy.deepcopy(self.inference_model())
        apply_masks(probe, magnitude_masks(probe, self.cfg.layer_sparsity, "layer"))
        return probe

    @torch.no_grad()
    def end_epoch(self, end: EpochEnd) -> dict[str, float]:
        """While the VAE trains, every epoch: active units and the validation KL (in all and per
        dimension); at the end of its phase, also the reconstruction (the decoder's pass over the
        first RECON_SAMPLES validation images, the costliest diagnostic) and the state recorded
        under `vae/end/`. Later, active units at each phase's end only (an encoder pass over the
        validation split: mid-phase nobody reads it, and it cost as much as the evaluation)."""
        vae_end = end.phase == "train" and end.phase_end
        if end.phase != "train" and not end.phase_end:
            return {}
        self.model.eval()
        mus, logvars, recon, decoded = [], [], 0.0, 0
        for xb, _ in batches(end.x, end.y, end.eval_batch_size):
            mu, logvar = self.model.encode(xb)
            mus.append(mu.float())
            if logvar is not None:
                logvars.append(logvar.float())
                if vae_end and decoded < RECON_SAMPLES:
                    xb, mu_b = xb[:RECON_SAMPLES - decoded], mu[:RECON_SAMPLES - decoded]
                    recon += float(F.binary_cross_entropy_with_logits(
                        self.model.decoder(mu_b), xb, reduction="sum"))
                    decoded += len(xb)
        mu = torch.cat(mus)
        out = {"vae/active_units": active_units(mu, self.cfg.active_threshold)}
        if not logvars:  # the posterior's variance exists only while the VAE is whole
            return out
        kl = kl_per_dim(mu, torch.cat(logvars)).mean(dim=0)
        out["vae/kl"] = float(kl.sum())
        out.update({f"vae/kl_per_dim/{j}": float(v) for j, v in enumerate(kl)})
        if vae_end:
            # the VAE's own state, recorded once where it ends: the head phase retrains the
            # encoder on cross-entropy alone and can hide a collapse (analysis.collapse reads these)
            out.update({f"vae/end/{k[len('vae/'):]}": v for k, v in out.items()})
            out["vae/end/val_accuracy"] = end.val_accuracy
            out["vae/recon"] = recon / decoded
            if end.factors is not None:
                out["vae/mig"] = mutual_information_gap(mu.cpu().numpy(), end.factors.cpu().numpy())
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "decoder_removed": self.model.decoder is None and self.cfg.variant == "vae",
                "pruned": self.pruned}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["decoder_removed"]:
            self.model.remove_decoder()
        if state["pruned"]:  # recreate the mask buffers, then load their values
            restore_mask_buffers(self.inference_model())
            self.pruned = True
        self.model.load_state_dict(state["model"])
        self.optimizer = self._new_optimizer()
        self.optimizer.load_state_dict(state["optimizer"])
