"""Registry of pruning methods: name -> class implementing study.methods.base.Method."""
from __future__ import annotations

from study.methods.beta_vae import BetaVAE
from study.methods.importance import Importance
from study.methods.reparam import Reparam

METHODS = {"beta_vae": BetaVAE, "importance": Importance, "reparam": Reparam}
