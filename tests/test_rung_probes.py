"""The rung objectives (study.scheduler.rung_objectives) every method reports at `rung_epochs`:
measured on a probe that leaves training untouched, at the final target where the method has one.
Tiny trials of tests/test_contracts.py on `mnist_small`."""
from __future__ import annotations

import pytest

from study.metrics import RUNG_OBJECTIVES
from tests.test_contracts import TINY, tiny, whole

# methods whose probe prunes to the final target: their rung sparsity is their final sparsity
AT_TARGET = {"beta_vae", "magnitude", "reparam"}


def _without_rungs(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not k.startswith("rung/") and not k.endswith("_seconds")}


@pytest.mark.parametrize("method", sorted(TINY))
def test_rung_probes_leave_training_untouched_and_measure_the_final_target(mnist_small, method):
    plain, _ = whole(tiny(method), mnist_small)
    probed, _ = whole(tiny(method, rung_epochs="1,2,99"), mnist_small)
    # bit-identical otherwise: the probe is a copy and draws no random numbers
    assert [_without_rungs(m) for m in probed] == [_without_rungs(m) for m in plain]
    rungs = [m["epoch"] for m in probed if RUNG_OBJECTIVES[0] in m]
    # 99 is past the end; never at the last epoch (reparam's 2nd), which reports its final state
    assert rungs == [e for e in (1, 2) if e < len(probed)] and rungs
    first = probed[0]
    assert 0 <= first[RUNG_OBJECTIVES[0]] <= 1
    if method in AT_TARGET:
        assert first[RUNG_OBJECTIVES[1]] == pytest.approx(probed[-1]["sparsity"], abs=2e-3)
        assert first[RUNG_OBJECTIVES[1]] > first["sparsity"] + 0.1  # not yet pruned, but probed
    else:  # no probe: its network as it is
        assert (first[RUNG_OBJECTIVES[0]], first[RUNG_OBJECTIVES[1]]) == (
            first["val_accuracy"], first["sparsity"])
