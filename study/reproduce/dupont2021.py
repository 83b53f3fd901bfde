"""dupont2021 Tables 1-2 (reparam): test accuracy after and before effective pruning, and the
surrogate's remaining fraction, of reparam, mag and mag_ft at each pruning rate, beside the paper's
Conv4 CIFAR-10 figures; each run through the trainable users run."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from study.data import Dataset, load_dataset
from study.methods.reparam import Reparam
from study.metrics import accuracy
from study.outcome import is_final
from study.spaces import parse_assignment
from study.trainable import restore_method, train

# dupont2021 Table 1 (CIFAR-10 test accuracy, %) and Table 2 (surrogate remaining fraction), Conv4
PAPER_CONV4 = {"mag": {0.9: 54.94, 0.95: 22.91, 0.97: 13.1, 0.99: 13.07},
               "mag_ft": {0.9: 89.50, 0.95: 87.38, 0.97: 85.57, 0.99: 76.7},
               "reparam": {0.9: 85.57, 0.95: 84.59, 0.97: 82.6, 0.99: 16.54},
               "reparam_before": {0.9: 85.68, 0.95: 83.04, 0.97: 84.89, 0.99: 82.68},
               "surrogate_remaining": {0.9: 0.10, 0.95: 0.05, 0.97: 0.03, 0.99: 0.03}}
VARIANTS = ["reparam", "mag", "mag_ft"]


def table_row(config: dict[str, Any], data: Dataset) -> dict[str, Any]:
    """One run of a reparam `config`: its final test accuracy and size, and the test accuracy of
    the weights the method kept from just before its effective pruning
    (`Reparam.model_before_pruning` of the method restored from the final state). A diverged run
    (no final test) gives `diverged_at_epoch` instead."""
    variant = config["variant"]
    restored: list[Reparam] = []  # the method at the end of the run

    def report(metrics: dict[str, Any], folder: Path) -> None:
        if is_final(metrics):
            restored.append(restore_method(config, folder, data))

    t0 = time.time()
    final = train(config, data, report)
    result = {"variant": variant, "rate": config["pruning_rate"], "model": config["model"],
              "dataset": config["dataset"], "epochs": config["epochs"],
              "finetune_epochs": config["finetune_epochs"] if variant == "mag_ft" else 0}
    if not is_final(final):  # diverged: the trial ended without a final test
        return {**result, "diverged_at_epoch": final["epoch"]}
    (method,) = restored
    result.update({
        "test_accuracy": final["test_accuracy"],
        "test_accuracy_before_pruning": accuracy(method.model_before_pruning(), data.test_x,
                                                 data.test_y, 1024),
        "val_accuracy": final["val_accuracy"], "sparsity": final["sparsity"],
        "prunable_sparsity": final["prunable_sparsity"],
        "surrogate_remaining": final.get("reparam/surrogate_remaining"),
        "minutes": (time.time() - t0) / 60,
        "paper_conv4_cifar10": PAPER_CONV4[variant].get(config["pruning_rate"])})
    return result


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rates", nargs="+", type=float, default=[0.9, 0.95, 0.97, 0.99])
    p.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--model", default="lenet300")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--finetune-epochs", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", help="also write the rows as JSON lines here")


def run(args: argparse.Namespace) -> None:
    """On a CPU (default: Fashion-MNIST, LeNet-300-100): each rate and variant, one JSON line per
    run; diverged runs are printed and left out of `--out`."""
    data = load_dataset(args.dataset, args.data_dir)
    out = []
    for rate in args.rates:
        for variant in args.variants:
            config = {"method": "reparam", "dataset": args.dataset, "model": args.model,
                      "variant": variant, "pruning_rate": rate, "epochs": args.epochs,
                      "finetune_epochs": args.finetune_epochs, "seed": args.seed,
                      "degenerate_epochs": 0,  # a run at chance (mag at 99%) is a number of the table
                      **dict(map(parse_assignment, args.set))}
            result = table_row(config, data)
            print(json.dumps(result), flush=True)
            if "diverged_at_epoch" not in result:
                out.append(result)
    if args.out:
        Path(args.out).write_text("\n".join(json.dumps(r) for r in out) + "\n")
