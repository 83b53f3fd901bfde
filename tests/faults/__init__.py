"""Faults injected into real study processes (tests/test_reliability.py): see sitecustomize.py."""
from __future__ import annotations

import os
from pathlib import Path

from tests.faults.sitecustomize import FAULT_ENV

FOLDER = Path(__file__).resolve().parent
ROOT = FOLDER.parents[1]


def fault_env(spec: str) -> dict[str, str]:
    """Environment entries that make a driver, and every process it starts, inject the fault
    `spec` ("nan@E" or "raise@E@MARKER"): this folder first on PYTHONPATH, before the repository
    (tests.conftest runs modules with the repository on it)."""
    return {FAULT_ENV: spec, "PYTHONPATH": os.pathsep.join([str(FOLDER), str(ROOT)])}
