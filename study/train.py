"""`python -m study.train CONFIG.yaml [--seeds N] [--set key=value]`: one config, no search.

Runs the trainable every search runs (study.trainable.train), outside Ray, once per seed (the
config's seed, then the next ones), prints each run's final metrics and their mean and standard
deviation, and writes them to a JSON result file with each run's final state beside it. CONFIG is
an export of analysis.export (`config:` + `provenance:`) or a plain mapping of settings. On CPU, an
export retrained with its seed and its trial's thread count gives the trial's metrics.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

from study.config import ConfigError, read_yaml_mapping
from study.data import DataError, default_data_dir, load_dataset
from study.metrics import FINAL
from study.outcome import outcome
from study.spaces import parse_assignment


def read_config(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(settings, provenance) from an export or a plain settings file."""
    doc = read_yaml_mapping(path, "config")
    if "config" in doc:
        return dict(doc["config"]), dict(doc.get("provenance") or {})
    return doc, {}


def _run_seed(config: dict[str, Any], data, out: Path) -> dict[str, Any]:
    """Train once; keep the final state beside the result file; return the final metrics."""
    from study.trainable import train

    state = out.with_name(f"{out.stem}-seed{config['seed']}.pt")

    def keep_last(metrics: dict[str, Any], folder: Path | None) -> None:
        if folder is not None:
            shutil.move(folder / "state.pt", state)  # the folder is temporary, maybe on another disk

    metrics = train(config, data, keep_last)
    if outcome(metrics) == "diverged":
        return {"seed": config["seed"], **metrics}
    return {"seed": config["seed"], "state": str(state), **{m: metrics[m] for m in FINAL if m in metrics}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m study.train", description=__doc__.splitlines()[0])
    p.add_argument("config", type=Path)
    p.add_argument("--seeds", type=int, default=1, help="runs, with seeds seed, seed+1, ...")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--data-dir", default=None, help="dataset root (default: the exported study's, "
                   "else $PRUNESTUDY_DATA_DIR or ./data)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: the exported trial's, else all)")
    p.add_argument("--out", type=Path, help="result file (default: CONFIG.result.json)")
    args = p.parse_args(argv)
    if args.seeds < 1:
        p.error(f"--seeds must be at least 1, got {args.seeds}")

    from study.trainable import parse_config

    try:
        config, provenance = read_config(args.config)
        config.update(parse_assignment(s) for s in args.set)
        trial, _ = parse_config(config)
        threads = args.threads or provenance.get("threads")
        if threads:
            os.environ["OMP_NUM_THREADS"] = str(threads)  # read by the trainable outside Ray
        # the data folder the exported trial's study used, unless told otherwise
        data = load_dataset(trial.dataset, args.data_dir or provenance.get("data_dir")
                            or default_data_dir())
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out or args.config.with_suffix(".result.json")
    runs = []
    for k in range(args.seeds):
        runs.append(_run_seed({**config, "seed": trial.seed + k}, data, out))
        print(json.dumps(runs[-1]), flush=True)
        if outcome(runs[-1]) == "diverged":
            print(f"error: seed {runs[-1]['seed']} diverged at epoch {runs[-1]['epoch']}",
                  file=sys.stderr)
            return 1
    summary = {m: {"mean": statistics.fmean(r[m] for r in runs),
                   "std": statistics.stdev(r[m] for r in runs) if len(runs) > 1 else 0.0}
               for m in FINAL if all(m in r for r in runs)}
    for m, s in summary.items():
        print(f"{m}: {s['mean']:.6g} +- {s['std']:.3g} over {len(runs)} seed(s)")
    expected = provenance.get("metrics", {})
    if expected and args.seeds >= 1 and not args.set:
        diffs = {m: runs[0][m] - expected[m] for m in FINAL if m in expected and m in runs[0]}
        print(f"against the exported trial (seed {trial.seed}): "
              + ", ".join(f"{m} {d:+.3g}" for m, d in diffs.items()))
    out.write_text(json.dumps({"config": config, "provenance": provenance, "runs": runs,
                               "summary": summary}, indent=2, default=str))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
