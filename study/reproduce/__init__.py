"""`python -m study.reproduce PAPER ...`: a paper's table or figure beside the paper's numbers.

    python -m study.reproduce shneider2023 --seeds 3 [--schedule paper]   # Table I (beta_vae)
    python -m study.reproduce dupont2021 --rates 0.9 0.99                  # Tables 1-2 (reparam)
    python -m study.reproduce reddy --seeds 3                              # Fig. 1 / Table 1 (importance)

Every run is the trainable users run (`study.trainable.train`), outside Ray; what a method kept
(weights before pruning, widths) is read through the method's own API on the method restored from
a saved state (`study.trainable.restore_method`), with the degenerate rule off
(`degenerate_epochs` 0): no seed leaves a row's mean +- std for ending early. One module per
paper, its constants with it.
"""
from __future__ import annotations

import argparse

from study.data import default_data_dir
from study.reproduce import dupont2021, reddy, shneider2023

PAPERS = {  # subcommand -> (module with add_arguments(parser) and run(args), what it reproduces)
    "shneider2023": (shneider2023, "Table I (beta_vae, MNIST) beside the paper's"),
    "dupont2021": (dupont2021, "Tables 1-2: reparam vs mag vs mag_ft"),
    "reddy": (reddy, "Fig. 1 / Table 1: MNIST MLP accuracy vs neurons removed (importance)"),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m study.reproduce", description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None)
    sub = p.add_subparsers(dest="paper", required=True)
    for name, (module, what) in PAPERS.items():
        module.add_arguments(sub.add_parser(name, help=what, description=module.__doc__))
    args = p.parse_args(argv)
    args.data_dir = args.data_dir or default_data_dir()
    PAPERS[args.paper][0].run(args)
    return 0
