"""reddy Fig. 1 / Table 1 on MNIST (importance), the MLP 784-50-30-10: test accuracy against the
fraction of neurons removed, rank-based and random removal, several seeds; each run through the
trainable users run."""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from study.data import Dataset, load_dataset
from study.models import build_model
from study.outcome import is_final
from study.spaces import parse_assignment
from study.trainable import restore_method, train

# reddy Table 1, MNIST, MLP 784-50-30-10: 92.17% accuracy with 68% of the neurons removed (its Fig. 1
# and Table 1 report *training* accuracy; the curve below is test accuracy)
PAPER_IMPORTANCE_MNIST = {"fraction": 0.68, "accuracy": 92.17}
MODEL = "mlp50_30"


def hidden_neurons(data: Dataset) -> int:
    """Neurons in the hidden layers of the dense MLP (every Linear's outputs but the classes)."""
    head = build_model(MODEL, data.input_shape, data.num_classes, data.mean, data.std).head
    return sum(m.out_features for m in head if isinstance(m, torch.nn.Linear)) - data.num_classes


def curve_point(config: dict[str, Any], data: Dataset, original: int) -> dict[str, Any]:
    """One run of an importance `config`: its final test accuracy and size, the hidden widths of
    its final network (`Importance.widths` of the method restored from the final state: the
    layers' shapes, not the method's plan) as a fraction of the `original` neurons removed, and
    the validation accuracy just before and just after each removal."""
    widths: list[int] = []
    rounds: list[tuple[float, float]] = []  # val accuracy just before, just after removal

    def report(metrics: dict[str, Any], folder: Path) -> None:
        if metrics.get("importance/just_pruned"):
            rounds.append((metrics["importance/val_accuracy_before_pruning"], metrics["val_accuracy"]))
        if is_final(metrics):
            widths.extend(restore_method(config, folder, data).widths().values())

    t0 = time.time()
    final = train(config, data, report)
    return {"variant": config["variant"], "seed": config["seed"],
            "target_fraction": config["target_fraction"],
            "neurons_removed": 1 - sum(widths) / original, "widths": widths,
            "test_accuracy": final["test_accuracy"], "val_accuracy": final["val_accuracy"],
            "sparsity": final["sparsity"], "params": final["params"],
            "flops": final["flops"], "epochs": final["epoch"],
            "val_drop": statistics.mean(b - a for b, a in rounds) if rounds else 0.0,
            "val_before_after": rounds, "minutes": (time.time() - t0) / 60}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fractions", nargs="+", type=float, default=[0.2, 0.4, 0.6, 0.68, 0.8])
    p.add_argument("--variants", nargs="+", default=["rank", "random"], choices=["rank", "random"])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", help="also write the rows as JSON lines here")


def run(args: argparse.Namespace) -> None:
    """Each fraction, variant and seed, one JSON line per run, then the curve's table."""
    data = load_dataset("mnist", args.data_dir)
    original = hidden_neurons(data)
    out = []
    for fraction in args.fractions:
        for variant in args.variants:
            for seed in range(args.seeds):
                config = {"method": "importance", "dataset": "mnist", "model": MODEL,
                          "variant": variant, "target_fraction": fraction, "seed": seed,
                          "degenerate_epochs": 0,  # every seed stays in the mean +- std
                          **dict(map(parse_assignment, args.set))}
                result = curve_point(config, data, original)
                print(json.dumps(result), flush=True)
                out.append(result)
    print(f"\n| target | variant | neurons removed | test accuracy % (mean +- std, {args.seeds} seeds) "
          "| val accuracy drop per removal (pts) | params | epochs |\n"
          "| --- | --- | --- | --- | --- | --- | --- |")
    for fraction in args.fractions:
        for variant in args.variants:
            runs = [r for r in out if r["target_fraction"] == fraction and r["variant"] == variant]
            acc = [100 * r["test_accuracy"] for r in runs]
            std = statistics.stdev(acc) if len(acc) > 1 else 0.0
            print(f"| {fraction:.2f} | {variant} | {statistics.mean(r['neurons_removed'] for r in runs):.3f} "
                  f"| {statistics.mean(acc):.2f} +- {std:.2f} "
                  f"| {100 * statistics.mean(r['val_drop'] for r in runs):.2f} "
                  f"| {runs[0]['params']} | {runs[0]['epochs']} |")
    print(f"paper (reddy Table 1, training accuracy): {PAPER_IMPORTANCE_MNIST['accuracy']}% at "
          f"{PAPER_IMPORTANCE_MNIST['fraction']:.0%} of the neurons removed")
    if args.out:
        Path(args.out).write_text("\n".join(json.dumps(r) for r in out) + "\n")
