"""Registry of pruning methods: name -> class implementing study.methods.base.Method."""
from __future__ import annotations

from study.methods.beta_vae import BetaVAE

METHODS = {"beta_vae": BetaVAE}
