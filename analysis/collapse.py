"""Posterior-collapse flags for beta_vae trials (shneider2023: beta=10 on CIFAR-10 sat at 10%).

A trial is flagged with every criterion that fires:
- `no_active_units`: no latent dimension is active (`vae/active_units` == 0, Burda et al.'s
  variance-of-the-mean test, threshold set per trial by `active_threshold`);
- `low_kl`: the posterior's KL per latent dimension, at the last epoch the VAE was whole, is below
  `kl_per_dim` nats: the encoder tells the decoder (almost) nothing;
- `chance_accuracy`: validation accuracy within `chance_margin` of chance (1 / classes).
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import pandas as pd

from analysis.results import StudyError, load_results

KL_PER_DIM = 0.01  # nats per latent dimension: below it a dimension carries ~no information
CHANCE_MARGIN = 0.02  # absolute accuracy above 1 / classes still counted as chance
NUM_CLASSES = 10  # every dataset here has 10 classes


def flag_collapse(df: pd.DataFrame, kl_per_dim: float = KL_PER_DIM,
                  chance_margin: float = CHANCE_MARGIN, num_classes: int = NUM_CLASSES) -> pd.DataFrame:
    """`df` with boolean columns `collapse/<criterion>`, `collapsed` (any fired) and `collapse`
    (the criteria that fired, comma-separated). Rows of other methods get False / ''."""
    out = df.copy()
    is_vae = (out.get("method") == "beta_vae") & (out.get("variant", "vae").fillna("vae") == "vae")

    def col(name: str) -> pd.Series:
        return pd.to_numeric(out[name], errors="coerce") if name in out else pd.Series(np.nan, out.index)

    latent = col("config/latent_dim")
    criteria = {
        "no_active_units": col("vae/active_units") == 0,
        "low_kl": (col("vae/kl") / latent) < kl_per_dim,
        "chance_accuracy": col("val_accuracy") <= 1.0 / num_classes + chance_margin,
    }
    for name, fired in criteria.items():
        out[f"collapse/{name}"] = fired.fillna(False).astype(bool) & is_vae
    fired_cols = [f"collapse/{n}" for n in criteria]
    out["collapsed"] = out[fired_cols].any(axis=1)
    out["collapse"] = out[fired_cols].apply(
        lambda r: ",".join(n for n, c in zip(criteria, r, strict=True) if c), axis=1)
    return out


def collapse_by_beta(df: pd.DataFrame) -> pd.DataFrame:
    """Trials and collapsed fraction per beta bin (log-spaced bins over the betas present)."""
    vae = df[df["status"].isin(["complete", "diverged"]) & (df.get("method") == "beta_vae")
             & (df.get("variant", "vae").fillna("vae") == "vae") & df["config/beta"].notna()]
    if vae.empty:
        return pd.DataFrame(columns=["beta", "trials", "collapsed", "fraction"])
    edges = [0, 0.5, 1, 2, 5, 10, 20, np.inf]
    bins = pd.cut(vae["config/beta"].astype(float), edges, right=False)
    table = vae.groupby(bins, observed=True)["collapsed"].agg(["count", "sum"])
    return pd.DataFrame({"beta": [str(i) for i in table.index], "trials": table["count"].values,
                         "collapsed": table["sum"].astype(int).values,
                         "fraction": (table["sum"] / table["count"]).values})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.collapse", description=__doc__.splitlines()[0])
    p.add_argument("studies", nargs="+", help="study folders")
    p.add_argument("--kl-per-dim", type=float, default=KL_PER_DIM)
    p.add_argument("--chance-margin", type=float, default=CHANCE_MARGIN)
    args = p.parse_args(argv)
    try:
        df = flag_collapse(load_results(args.studies), args.kl_per_dim, args.chance_margin)
    except StudyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cols = ["study", "trial_id", "status", "config/beta", "config/latent_dim", "val_accuracy",
            "vae/active_units", "vae/kl", "collapse"]
    vae = df[df["method"] == "beta_vae"]
    print(vae[[c for c in cols if c in vae]].to_string(index=False))
    print()
    print(collapse_by_beta(df).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
