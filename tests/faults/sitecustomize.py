"""Test-only fault injection into the trainable's training pass, in every process of a study.

Python imports `sitecustomize` at start-up from its path: `tests.faults.fault_env` puts this folder
first on PYTHONPATH, and every process of the driver inherits it, Ray's workers included (Ray
starts them from its raylet, which inherits the driver's environment). In a process whose
environment sets FAULT_ENV, `study.trainable.train_pass` is patched as soon as `study.trainable` is
imported: "nan@E" makes epoch E's loss NaN; "raise@E@MARKER" raises at epoch E once (while the
file MARKER does not exist), so retries and resumes can be tested on real processes. Epochs are
1-based; the fault follows the method's `end_pass` and precedes the divergence check, as a fault
of the training pass itself would. Standard library only: it runs before anything else is set up.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

FAULT_ENV = "PRUNESTUDY_INJECT_FAULT"
TRAINABLE = "study.trainable"


def inject(epoch: int, terms: dict[str, float]) -> None:
    """The fault FAULT_ENV names, if it is for `epoch` (1-based), applied to its loss terms."""
    kind, _, rest = os.environ.get(FAULT_ENV, "").partition("@")
    at, _, marker = rest.partition("@")
    if not kind or int(at) != epoch:
        return
    if kind == "nan":
        terms["loss"] = float("nan")
    elif kind == "raise" and marker and not os.path.exists(marker):
        Path(marker).touch()
        raise RuntimeError(f"injected fault at epoch {epoch}")


def patch(trainable: ModuleType) -> None:
    """`trainable.train_pass` followed by `inject` (`train` looks the step up at each call)."""
    train_pass = trainable.train_pass

    def faulty_train_pass(run: Any, epoch: Any) -> tuple[dict[str, float], float]:
        terms, seconds = train_pass(run, epoch)
        inject(epoch.number, terms)
        return terms, seconds

    trainable.train_pass = faulty_train_pass


class PatchOnImport(importlib.abc.MetaPathFinder):
    """Finds `study.trainable` as the path finder does, and patches it once it has run."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name != TRAINABLE:
            return None
        sys.meta_path.remove(self)  # one module, imported once
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module: ModuleType) -> None:
            exec_module(module)
            patch(module)

        spec.loader.exec_module = exec_and_patch
        return spec


if __name__ == "sitecustomize" and os.environ.get(FAULT_ENV):  # at start-up, not when imported by tests
    sys.meta_path.insert(0, PatchOnImport())
