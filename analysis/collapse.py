"""Posterior-collapse flags for beta_vae trials (shneider2023: beta=10 on CIFAR-10 sat at 10%).

Every criterion reads the VAE's own state at the last epoch of its VAE phase (`vae/end/*`),
never the end of the trial: the head phase retrains the encoder on cross-entropy alone and can
bring a collapsed trial back to a good final accuracy. A trial is flagged with every criterion
that fires:
- `no_active_units`: no latent dimension is active (`vae/end/active_units` == 0, Burda et al.'s
  variance-of-the-mean test, threshold set per trial by `active_threshold`);
- `low_kl`: the posterior's KL per latent dimension (`vae/end/kl` over the dimensions of
  `vae/end/kl_per_dim/*`) is below `kl_per_dim` nats: the encoder tells the decoder almost nothing;
- `chance_accuracy`: validation accuracy at the end of the VAE phase within `chance_margin` of
  chance, 1 / the trial's `num_classes` (study.metrics.near_chance).
These three are full collapse (`collapsed`). Per latent dimension j, `vae/end/kl_per_dim/<j>`
below `kl_per_dim` nats is a collapsed dimension: per trial `collapsed_dims` counts them and
`active_units` the others (KL-active dimensions; `vae/end/active_units` is the variance test), and
- `partial_collapse` fires when some but not all dimensions collapsed and no criterion of full
  collapse fired: a mean KL per dimension can stay high while dimensions die, so `low_kl` alone
  never sees it. It is listed in `collapse` but is not full collapse (`collapsed` stays False).
The trainable never ends a trial for chance accuracy in its VAE phase (beta_vae's
`chance_rule_skips`): a collapsed trial runs to its end. A trial the trainable ended as degenerate
during its VAE phase (a dead network, or a study from before that rule) never reported
`vae/end/*`: its VAE phase ended at its last report, so its last `vae/active_units`,
`vae/kl`, `vae/kl_per_dim/*` and `val_accuracy` stand in for them (filled into `vae/end/*` of
the flagged table).
`python -m analysis.collapse STUDY...` prints the flags per trial, then per beta bin the collapsed
fraction, the mean collapsed dimensions, the MIG (dsprites trials) and the accuracies, at the
VAE's end and the trial's.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import pandas as pd

from analysis.results import CONFIG_PREFIX, StudyError, load_results
from study.metrics import CHANCE_MARGIN, near_chance

KL_PER_DIM = 0.01  # nats per latent dimension: below it a dimension carries ~no information


def _numeric(df: pd.DataFrame, name: str) -> pd.Series:
    return pd.to_numeric(df[name], errors="coerce") if name in df else pd.Series(np.nan, df.index)


def flag_collapse(df: pd.DataFrame, kl_per_dim: float = KL_PER_DIM,
                  chance_margin: float = CHANCE_MARGIN) -> pd.DataFrame:
    """`df` with boolean columns `collapse/<criterion>`, `collapsed` (a criterion of full
    collapse fired), `collapse` (every criterion that fired, partial_collapse among them,
    comma-separated) and the counts `collapsed_dims` and `active_units` (latent dimensions with
    `vae/end/kl_per_dim/<j>` below / at least `kl_per_dim`; NaN without them). Rows of other
    methods, of the CNN baseline and of trials that never ended a VAE phase get False / '' / NaN."""
    out = df.copy()
    is_vae = (out.get("method") == "beta_vae") & (out.get("variant", "vae").fillna("vae") == "vae")
    ended = out[[c for c in out if c.startswith("vae/end/")]].isna().all(axis=1)
    fallback = is_vae & (out.get("status") == "degenerate") & ended
    if fallback.any():  # ended as degenerate in its VAE phase: its last report is the VAE's end
        stand_in = {c: f"vae/end/{c[len('vae/'):]}" for c in out
                    if c in ("vae/active_units", "vae/kl") or c.startswith("vae/kl_per_dim/")}
        for src, dst in {**stand_in, "val_accuracy": "vae/end/val_accuracy"}.items():
            out[dst] = _numeric(out, dst).where(~fallback, _numeric(out, src))
    per_dim = out[[c for c in out if c.startswith("vae/end/kl_per_dim/")]].apply(
        pd.to_numeric, errors="coerce")
    dims = per_dim.notna().sum(axis=1)
    has_dims = is_vae & (dims > 0)
    out["collapsed_dims"] = (per_dim < kl_per_dim).sum(axis=1).where(has_dims)
    out["active_units"] = (per_dim >= kl_per_dim).sum(axis=1).where(has_dims)
    criteria = {
        "no_active_units": _numeric(out, "vae/end/active_units") == 0,
        "low_kl": (_numeric(out, "vae/end/kl") / dims.where(dims > 0)) < kl_per_dim,
        "chance_accuracy": near_chance(_numeric(out, "vae/end/val_accuracy"),
                                       _numeric(out, "num_classes"), chance_margin),
    }
    for name, fired in criteria.items():
        out[f"collapse/{name}"] = fired.fillna(False).astype(bool) & is_vae
    out["collapsed"] = out[[f"collapse/{n}" for n in criteria]].any(axis=1)
    # partial: some dimensions, not all, and no criterion of full collapse
    criteria["partial_collapse"] = (out["collapsed_dims"] > 0) & (out["collapsed_dims"] < dims)
    out["collapse/partial_collapse"] = (criteria["partial_collapse"].fillna(False).astype(bool)
                                        & is_vae & ~out["collapsed"])
    fired_cols = [f"collapse/{n}" for n in criteria]
    out["collapse"] = out[fired_cols].apply(
        lambda r: ",".join(n for n, c in zip(criteria, r, strict=True) if c), axis=1)
    return out


BY_BETA = {"collapsed_dims": "collapsed_dims", "vae/mig": "mig",
           "vae/end/val_accuracy": "vae_end_val_accuracy", "val_accuracy": "val_accuracy",
           "test_accuracy": "test_accuracy"}


def collapse_by_beta(df: pd.DataFrame) -> pd.DataFrame:
    """Per beta bin (log-spaced over the betas present) of a `flag_collapse` table: trials,
    collapsed count and fraction, and the mean collapsed latent dimensions, MIG (dsprites
    trials), accuracy at the end of the VAE phase and final accuracies."""
    columns = ["beta", "trials", "collapsed", "fraction", *BY_BETA.values()]
    beta = f"{CONFIG_PREFIX}beta"
    vae = df[df["status"].isin(["complete", "diverged", "degenerate"]) & (df.get("method") == "beta_vae")
             & (df.get("variant", "vae").fillna("vae") == "vae") & df[beta].notna()]
    if vae.empty:
        return pd.DataFrame(columns=columns)
    edges = [0, 0.5, 1, 2, 5, 10, 20, np.inf]
    groups = vae.assign(**{k: _numeric(vae, k) for k in BY_BETA}).groupby(
        pd.cut(vae[beta].astype(float), edges, right=False), observed=True)
    table = groups["collapsed"].agg(["count", "sum"])
    means = groups[list(BY_BETA)].mean().rename(columns=BY_BETA)
    return pd.DataFrame({"beta": [str(i) for i in table.index], "trials": table["count"].values,
                         "collapsed": table["sum"].astype(int).values,
                         "fraction": (table["sum"] / table["count"]).values,
                         **{c: means[c].values for c in BY_BETA.values()}}, columns=columns)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.collapse", description=__doc__.splitlines()[0])
    p.add_argument("studies", nargs="+", help="study folders")
    p.add_argument("--kl-per-dim", type=float, default=KL_PER_DIM,
                   help="nats: a latent dimension below it at the VAE's end is collapsed "
                   "(default %(default)s)")
    p.add_argument("--chance-margin", type=float, default=CHANCE_MARGIN)
    args = p.parse_args(argv)
    try:
        df = flag_collapse(load_results(args.studies), args.kl_per_dim, args.chance_margin)
    except StudyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cols = ["study", "trial_id", "status", f"{CONFIG_PREFIX}beta", f"{CONFIG_PREFIX}latent_dim",
            "vae/end/val_accuracy", "vae/end/active_units", "vae/end/kl", "collapsed_dims",
            "active_units", "vae/mig", "val_accuracy", "collapse"]
    vae = df[df["method"] == "beta_vae"]
    print(vae[[c for c in cols if c in vae]].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print()
    print(collapse_by_beta(df).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
