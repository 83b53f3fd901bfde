"""`python -m study.bench ...`: figures, printed (speed and paper comparisons are never timed tests).

    python -m study.bench epoch --method beta_vae --set variant=vae      # seconds per epoch
    python -m study.bench beta-vae-table --seeds 3 [--schedule paper]   # shneider2023 Table I
    python -m study.bench reparam-table --rates 0.9 0.99                # dupont2021 Tables 1-2
    python -m study.bench importance-curve --seeds 3                    # reddy Fig. 1 / Table 1
    python -m study.bench overhead beta_vae                             # harness vs bare training
    python -m study.bench throughput beta_vae --per-device 1 2 4 8      # packed trials per device
    python -m study.bench samplers reparam --samplers tpe nsga2 random --trials 64 --seeds 3

Every figure comes from the trainable users run (`study.trainable.train`), outside Ray.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from study.data import batches, default_data_dir, load_dataset
from study.methods import METHODS
from study.methods.base import DataInfo
from study.metrics import accuracy
from study.spaces import parse_assignment
from study.trainable import autocast_on, load_state, parse_config, phase_at, setup, train, train_epoch


def _settings(pairs: list[str]) -> dict[str, Any]:
    return dict(parse_assignment(p) for p in pairs)


def bench_epoch(args: argparse.Namespace) -> None:
    """Training seconds per epoch (evaluation excluded); the first epoch is warm-up."""
    config = {"method": args.method, "dataset": args.dataset, **_settings(args.set)}
    data = load_dataset(args.dataset, args.data_dir)
    seconds: list[float] = []
    train(config, data, lambda m, _: seconds.append(m["epoch_seconds"]))
    timed = seconds[1:] or seconds
    print(f"{args.method} {config} on {args.dataset} ({len(data.train_y)} training samples, "
          f"{torch.get_num_threads()} threads): {statistics.median(timed):.2f} s/epoch "
          f"(median of {len(timed)} after warm-up; all: {[round(s, 2) for s in seconds]})")


# shneider2023 Table I, MNIST, mean and std over 3 runs: accuracy % unpruned, at 50% sparsity; kB
PAPER_TABLE_I = {
    "cnn": {"unpruned": (98.19, 0.2), "pruned": (97.29, 0.4), "kb": (260.28, 84.25)},
    "vae-1": {"unpruned": (96.32, 0.5), "pruned": (90.02, 7.3), "kb": (260.89, 84.43)},
    "vae-3": {"unpruned": (95.34, 1.7), "pruned": (92.52, 2.5), "kb": (260.78, 84.81)},
    "vae-5": {"unpruned": (96.86, 1.0), "pruned": (96.15, 0.2), "kb": (261.37, 85.29)},
    "vae-10": {"unpruned": (95.67, 0.6), "pruned": (95.86, 0.8), "kb": (260.43, 85.67)},
}
# Section III: 30 epochs, 2 once the decoder is removed, 2 of pruning at 50%; Adam 1e-3; Keras'
# default batch of 32 (the paper gives none). On 12,000 training images: `cpu`, 6 + 2 + 2 epochs
# (about 3 minutes a run on one core here), and `short`, 3 + 1 + 1, the root-cause runs' schedule
# (docs/benchmarks.md).
SCHEDULES = {
    "paper": {"epochs": 30, "head_epochs": 2, "prune_epochs": 2, "train_subset": 0},
    "cpu": {"epochs": 6, "head_epochs": 2, "prune_epochs": 2, "train_subset": 12000},
    "short": {"epochs": 3, "head_epochs": 1, "prune_epochs": 1, "train_subset": 12000},
}


def _row_config(row: str, seed: int, schedule: str) -> dict[str, Any]:
    variant, _, beta = row.partition("-")
    config = {"method": "beta_vae", "dataset": "mnist", "variant": variant, "seed": seed,
              "layer_sparsity": 0.5, "lr": 1e-3, "batch_size": 32, **SCHEDULES[schedule]}
    if beta:
        config["beta"] = float(beta)
    return config


HISTORY = ("epoch", "phase", "epoch_seconds", "val_accuracy", "vae/active_units", "vae/kl", "train/ce",
           "train/recon", "train/kl")


def table_row(config: dict[str, Any], data) -> dict[str, Any]:
    """One run: test accuracy before pruning (the state after the last head epoch, evaluated on the
    test split) and at the end (after pruning and fine-tuning), gzip sizes, the VAE's state at the
    end of its phase (`vae/end/*`) and the per-epoch history of the diagnostics."""
    trial, method_cfg = parse_config(config)
    unpruned_epoch = method_cfg.epochs + method_cfg.head_epochs
    found: dict[str, Any] = {"history": []}

    def report(metrics: dict[str, Any], folder: Path) -> None:
        found["history"].append({k: metrics[k] for k in HISTORY if k in metrics})
        found.update({k: v for k, v in metrics.items() if k.startswith("vae/end/")
                      and "kl_per_dim" not in k})
        if metrics["epoch"] == unpruned_epoch:
            method = METHODS[trial.method](method_cfg, DataInfo(
                data.input_shape, data.num_classes, data.mean, data.std), torch.device("cpu"))
            method.load_state_dict(load_state(folder)["method"])
            found["test_unpruned"] = accuracy(method.inference_model(), data.test_x, data.test_y,
                                              trial.eval_batch_size)
            found["bytes_unpruned"] = metrics["compressed_bytes"]

    t0 = time.time()
    final = train(config, data, report)
    return {**found, "test_pruned": final.get("test_accuracy"), "sparsity": final.get("sparsity"),
            "bytes_pruned": final.get("compressed_bytes"), "minutes": (time.time() - t0) / 60}


_worker_data: dict[str, Any] = {}


def _init_worker(data_dir: str, threads: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)  # the trainable sets torch's threads from it
    _worker_data["mnist"] = load_dataset("mnist", data_dir)


def _run_table_row(job: tuple[str, int, dict[str, Any]]) -> dict[str, Any]:
    row, seed, config = job
    return {"row": row, "seed": seed, "config": config, **table_row(config, _worker_data["mnist"])}


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def table_i_markdown(results: list[dict[str, Any]]) -> str:
    """Per row: mean +- std over the seeds beside the paper's, and whether it is within the
    acceptance band: the paper's mean +- max(2 paper std, 1.5 points)."""
    lines = ["| row | seeds | test acc. % unpruned | paper | in band | pruned (50%) | paper | in band "
             "| gzip kB unpruned -> pruned | VAE end: active units | KL nats | val acc. % |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in dict.fromkeys(r["row"] for r in results):
        runs = [r for r in results if r["row"] == row and r.get("test_pruned") is not None]
        if not runs:
            lines.append(f"| {row} | 0 (diverged) | | | | | | | | | | |")
            continue
        paper = PAPER_TABLE_I.get(row)
        cells = [row, str(len(runs))]
        for key, pkey in (("test_unpruned", "unpruned"), ("test_pruned", "pruned")):
            m, sd = _mean_std([100 * r[key] for r in runs])
            cells.append(f"{m:.2f} +- {sd:.2f}")
            if paper:
                pm, psd = paper[pkey]
                cells += [f"{pm:.2f} +- {psd:.1f}", "yes" if abs(m - pm) <= max(2 * psd, 1.5) else "**no**"]
            else:
                cells += ["", ""]
        cells.append(f"{statistics.mean(r['bytes_unpruned'] for r in runs) / 1e3:.1f} -> "
                     f"{statistics.mean(r['bytes_pruned'] for r in runs) / 1e3:.1f}")
        for key, scale, fmt in (("vae/end/active_units", 1, "{:.1f}"), ("vae/end/kl", 1, "{:.2f}"),
                                ("vae/end/val_accuracy", 100, "{:.1f}")):
            values = [scale * r[key] for r in runs if key in r]
            cells.append(fmt.format(statistics.mean(values)) if values else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bench_beta_vae_table(args: argparse.Namespace) -> None:
    """shneider2023 Table I on MNIST: each row and seed through the trainable, `--jobs` at once,
    one JSON line per run (with its per-epoch history), then the table against the paper's."""
    jobs = [(row, seed, {**_row_config(row, seed, args.schedule), **_settings(args.set)})
            for row in args.rows for seed in range(args.seeds)]
    for _, _, config in jobs:
        parse_config(config)  # every bad --set fails before anything runs
    threads = int(os.environ.get("OMP_NUM_THREADS") or max(1, (os.cpu_count() or 1) // args.jobs))
    print(f"shneider2023 Table I, MNIST, schedule {args.schedule} ({SCHEDULES[args.schedule]}), "
          f"{len(jobs)} runs, {args.jobs} at a time, {threads} thread(s) each", flush=True)
    results = []
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(args.jobs, _init_worker, (str(args.data_dir), threads)) as pool:
        for result in pool.imap(_run_table_row, jobs):
            print(json.dumps(result), flush=True)
            results.append(result)
    if args.out:
        Path(args.out).write_text("\n".join(json.dumps(r) for r in results) + "\n")
    print()
    print(table_i_markdown(results))


# dupont2021 Table 1 (CIFAR-10 test accuracy, %) and Table 2 (surrogate remaining fraction), Conv4
PAPER_CONV4 = {"mag": {0.9: 54.94, 0.95: 22.91, 0.97: 13.1, 0.99: 13.07},
               "mag_ft": {0.9: 89.50, 0.95: 87.38, 0.97: 85.57, 0.99: 76.7},
               "reparam": {0.9: 85.57, 0.95: 84.59, 0.97: 82.6, 0.99: 16.54},
               "reparam_before": {0.9: 85.68, 0.95: 83.04, 0.97: 84.89, 0.99: 82.68},
               "surrogate_remaining": {0.9: 0.10, 0.95: 0.05, 0.97: 0.03, 0.99: 0.03}}


def bench_reparam_table(args: argparse.Namespace) -> None:
    """dupont2021 Table 1-2 on a CPU: reparam, mag, mag_ft at each rate (default: Fashion-MNIST,
    LeNet-300-100). Test accuracy before pruning comes from the weights the method keeps from just
    before its effective pruning (in the last checkpoint)."""
    from study.models import build_model

    data = load_dataset(args.dataset, args.data_dir)
    out = []
    for rate in args.rates:
        for variant in args.variants:
            config = {"method": "reparam", "dataset": args.dataset, "model": args.model,
                      "variant": variant, "pruning_rate": rate, "epochs": args.epochs,
                      "finetune_epochs": args.finetune_epochs, "seed": args.seed,
                      **_settings(args.set)}
            last: dict[str, Any] = {}

            def report(metrics: dict[str, Any], folder: Path, last=last) -> None:
                if "test_accuracy" in metrics:
                    last["before"] = load_state(folder)["method"]["before"]

            t0 = time.time()
            final = train(config, data, report)
            result = {"variant": variant, "rate": rate, "model": args.model, "dataset": args.dataset,
                      "epochs": args.epochs,
                      "finetune_epochs": args.finetune_epochs if variant == "mag_ft" else 0}
            if "test_accuracy" not in final:  # diverged: the trial ended without a final test
                print(json.dumps({**result, "diverged_at_epoch": final["epoch"]}), flush=True)
                continue
            model = build_model(args.model, data.input_shape, data.num_classes, data.mean, data.std)
            model.load_state_dict(last["before"])
            result.update({
                "test_accuracy": final["test_accuracy"],
                "test_accuracy_before_pruning": accuracy(model, data.test_x, data.test_y, 1024),
                "val_accuracy": final["val_accuracy"], "sparsity": final["sparsity"],
                "prunable_sparsity": final["prunable_sparsity"],
                "surrogate_remaining": final.get("reparam/surrogate_remaining"),
                "minutes": (time.time() - t0) / 60,
                "paper_conv4_cifar10": PAPER_CONV4[variant].get(rate)})
            print(json.dumps(result), flush=True)
            out.append(result)
    if args.out:
        Path(args.out).write_text("\n".join(json.dumps(r) for r in out) + "\n")


# reddy Table 1, MNIST, MLP 784-50-30-10: 92.17% accuracy with 68% of the neurons removed (its Fig. 1
# and Table 1 report *training* accuracy; the curve below is test accuracy)
PAPER_IMPORTANCE_MNIST = {"fraction": 0.68, "accuracy": 92.17}


def bench_importance_curve(args: argparse.Namespace) -> None:
    """reddy Fig. 1 on MNIST with the MLP 784-50-30-10: test accuracy against the fraction of
    neurons removed, rank-based and random removal, several seeds. The fraction is measured from
    the hidden weights' shapes in the last checkpoint, not from the method's bookkeeping."""
    from study.models import build_model

    data = load_dataset("mnist", args.data_dir)
    dense = build_model("mlp50_30", data.input_shape, data.num_classes, data.mean, data.std).head
    original = sum(m.out_features for m in dense if isinstance(m, torch.nn.Linear)) - data.num_classes
    out = []
    for fraction in args.fractions:
        for variant in args.variants:
            for seed in range(args.seeds):
                config = {"method": "importance", "dataset": "mnist", "model": "mlp50_30",
                          "variant": variant, "target_fraction": fraction, "seed": seed,
                          **_settings(args.set)}
                widths: list[int] = []
                rounds: list[tuple[float, float]] = []  # val accuracy just before, just after removal

                def report(metrics: dict[str, Any], folder: Path, widths=widths, rounds=rounds) -> None:
                    if metrics.get("importance/just_pruned"):
                        rounds.append((metrics["importance/val_accuracy_before_pruning"],
                                       metrics["val_accuracy"]))
                    if "test_accuracy" in metrics:
                        weights = load_state(folder)["method"]["model"]
                        rows = sorted((int(k.split(".")[1]), v.shape[0]) for k, v in weights.items()
                                      if k.startswith("head.") and k.endswith(".weight"))
                        widths.extend(n for _, n in rows[:-1])  # hidden layers (the last: classes)

                t0 = time.time()
                final = train(config, data, report)
                result = {"variant": variant, "seed": seed, "target_fraction": fraction,
                          "neurons_removed": 1 - sum(widths) / original, "widths": widths,
                          "test_accuracy": final["test_accuracy"], "val_accuracy": final["val_accuracy"],
                          "sparsity": final["sparsity"], "params": final["params"],
                          "flops": final["flops"], "epochs": final["epoch"],
                          "val_drop": statistics.mean(b - a for b, a in rounds) if rounds else 0.0,
                          "val_before_after": rounds, "minutes": (time.time() - t0) / 60}
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

# --- overhead: the same trials through study.search and as bare training loops -------------------

PARTS = {"epoch_seconds": "training", "eval_seconds": "evaluation (val, test)",
         "diagnostics_seconds": "method diagnostics", "size_seconds": "size metrics",
         "save_seconds": "checkpoint save", "report_seconds": "Ray report (+ checkpoint persist)"}


def bare_trial(config: dict[str, Any], data, epochs: int) -> tuple[float, float]:
    """The trial's first `epochs` training epochs and nothing else (no evaluation, diagnostics,
    size, checkpoint or report): (start, end) wall-clock times, after its set-up."""
    trial, data, method, schedule = setup(config, data)
    batch_rng = torch.Generator().manual_seed(trial.seed)
    total = sum(n for _, n in schedule)
    start = time.time()
    with autocast_on(data.train_x.device):
        for epoch in range(epochs):
            phase, first = phase_at(schedule, epoch)
            terms = train_epoch(method, phase, first, batches(data.train_x, data.train_y,
                                                              trial.batch_size, batch_rng))
            method.end_pass(phase, epoch == total - 1, terms)
    return start, time.time()


def _bare_job(job: tuple[dict[str, Any], int]) -> tuple[float, float]:
    config, epochs = job
    return bare_trial(config, _worker_data[config["dataset"]], epochs)


def _init_bare_worker(data_dir: str, threads: int, dataset: str) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    _worker_data[dataset] = load_dataset(dataset, data_dir)


def _timed_study(args: argparse.Namespace, name: str, storage: Path, trials: int, at_once: int,
                 flags: list[str]) -> tuple[float, float]:
    """Run one study through study.search (the bench's method, data, seed and --set); its start
    and end (wall-clock times)."""
    from study import search

    argv = [args.method, "--name", name, "--storage-dir", str(storage), "--data-dir",
            str(args.data_dir), "--num-samples", str(trials), "--max-concurrent", str(at_once),
            "--seed", str(args.seed), *flags]
    for kv in args.set:
        argv += ["--set", kv]
    t0 = time.time()
    if search.main(argv) != 0:
        raise SystemExit(f"the study failed: python -m study.search {' '.join(argv)}")
    return t0, time.time()


def bench_overhead(args: argparse.Namespace) -> None:
    """One study through `study.search` (the harness: Ray, Optuna, W&B, evaluation, diagnostics,
    checkpoints), then the same trials (their resolved configs, as many epochs as each ran) as bare
    training loops in as many processes as the study ran trials at once; wall times and where the
    harness's extra time went."""
    import tempfile

    from study import layout

    if args.study:  # a study run before (e.g. by an older version), timed from outside
        study_dir, harness, span = Path(args.study), args.harness_seconds, None
    else:
        storage = Path(args.storage_dir or tempfile.mkdtemp(prefix="prunestudy-overhead-"))
        name = f"overhead-{args.method}-{time.strftime('%Y%m%d-%H%M%S')}"
        span = _timed_study(args, name, storage, args.num_samples, args.max_concurrent,
                            shlex.split(args.search_flags))
        harness = span[1] - span[0]
        study_dir = storage / name
    trials = []
    for _, trial_dir in layout.trial_dirs(study_dir):
        history = layout.trial_history(trial_dir)
        trials.append((layout.trial_params(trial_dir), history))
    configs = [(config, history[-1]["epoch"]) for config, history in trials if history]
    dataset = configs[0][0]["dataset"]
    threads = max(1, int(layout.read_info(study_dir)["cpus_per_trial"]))
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(args.max_concurrent, initializer=_init_bare_worker,
                  initargs=(str(args.data_dir), threads, dataset)) as pool:
        spans = pool.map(_bare_job, configs, chunksize=1)
    bare = max(end for _, end in spans) - min(start for start, _ in spans)

    parts = {label: sum(r.get(key, 0.0) for _, h in trials for r in h) for key, label in PARTS.items()}
    in_trials = sum(h[-1].get("time_total_s", 0.0) for _, h in trials if h)
    print(f"\n{args.method}: {len(trials)} trials, {args.max_concurrent} at a time, "
          f"{threads} thread(s) each; study folder {study_dir}")
    print(f"{'seconds (summed over trials)':<44}{'':>10}")
    for label, seconds in parts.items():
        print(f"  {label:<42}{seconds:>10.1f}")
    print(f"  {'other, inside trials (start-up, data, W&B)':<42}{in_trials - sum(parts.values()):>10.1f}")
    print(f"  {'trials in all (Ray time_total_s)':<42}{in_trials:>10.1f}")
    wandb = layout.read_info(study_dir).get("wandb_seconds")
    if wandb is not None:
        print(f"  {'W&B, on the driver (beside the trials)':<42}{wandb:>10.1f}")
    print(f"wall: harness {harness:.1f} s (its {args.max_concurrent} slots x wall - trial time = "
          f"{harness * args.max_concurrent - in_trials:.1f} s of Ray start-up, scheduling and idle "
          f"slots); bare {bare:.1f} s")
    edges = {}
    if span is not None:  # Ray's timestamps are whole seconds
        edges = {"startup_seconds": min(h[0]["timestamp"] - h[0]["time_total_s"] for _, h in trials if h)
                 - span[0], "shutdown_seconds": span[1] - max(h[-1]["timestamp"] for _, h in trials if h)}
        print(f"  start-up to the first trial (imports, data, Ray, Tuner, the trial's actor): "
              f"{edges['startup_seconds']:.0f} s; after the last trial (summary, Ray shutdown): "
              f"{edges['shutdown_seconds']:.0f} s")
    print(json.dumps({"method": args.method, "trials": len(trials), "max_concurrent": args.max_concurrent,
                      "bare_seconds": round(bare, 2), "harness_seconds": round(harness, 2),
                      "ratio": round(harness / bare, 4), "training_seconds": round(parts["training"], 2),
                      **{k: round(v, 2) for k, v in parts.items() if k != "training"},
                      **({"wandb_seconds": wandb} if wandb is not None else {}),
                      **{k: round(v, 1) for k, v in edges.items()}}))


def bench_throughput(args: argparse.Namespace) -> None:
    """Studies of k trials packed on one device (a GPU shared by k, or the CPUs split k ways), one
    per k: trials per hour and training samples per second, from the study's wall time."""
    import tempfile

    from study import layout

    storage = Path(args.storage_dir or tempfile.mkdtemp(prefix="prunestudy-throughput-"))
    gpu = torch.cuda.is_available() and not args.cpu
    rows = []
    for k in args.per_device:
        name = f"throughput-{args.method}-{k}"
        share = ["--gpus-per-trial", f"{1 / k:g}", "--cpus-per-trial", f"{max(1, (os.cpu_count() or 1) // k)}"
                 ] if gpu else ["--cpus-per-trial", f"{(os.cpu_count() or 1) / k:g}"]
        start, end = _timed_study(args, name, storage, k, k, share)
        wall = end - start
        samples = 0
        for _, trial_dir in layout.trial_dirs(storage / name):
            config, history = layout.trial_params(trial_dir), layout.trial_history(trial_dir)
            subset = config.get("train_subset") or 0
            samples += (subset or 54000) * (history[-1]["epoch"] if history else 0)
        rows.append({"per_device": k, "device": "cuda" if gpu else f"cpu x{os.cpu_count()}",
                     "wall_seconds": round(wall, 1), "trials_per_hour": round(k / wall * 3600, 1),
                     "samples_per_second": round(samples / wall, 1)})
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]["trials_per_hour"]
    print("\n".join(f"{r['per_device']} per device: {r['trials_per_hour']:.1f} trials/h "
                     f"({r['trials_per_hour'] / base:.2f}x of {rows[0]['per_device']}), "
                     f"{r['samples_per_second']:.0f} samples/s" for r in rows))


def sampler_spec(spec: str) -> tuple[str, list[str]]:
    """`NAME[:KEY=VALUE,...]` (bench samplers' --samplers): the sampler's name and its
    --sampler-arg assignments; ConfigError for an unknown name."""
    from study.config import ConfigError
    from study.search import SAMPLERS

    name, _, settings = spec.partition(":")
    if name not in SAMPLERS:
        raise ConfigError(f"{name!r} is not a sampler ({', '.join(SAMPLERS)})")
    return name, [kv for kv in settings.split(",") if kv]


def bench_samplers(args: argparse.Namespace) -> None:
    """Studies of the same method, one per (sampler, scheduler, seed), through study.search; per
    (sampler, scheduler): the mean +- std hypervolume after 1..N trials, the trials its mean curve
    (and each seed) needs to reach random search's (fifo) N-trial mean hypervolume, and the hypervolume each
    reaches within the smallest total epochs any of them ran (schedulers compared at equal cost)."""
    import tempfile

    import numpy as np

    from analysis.hypervolume import at_budget, by_trials, hypervolume_curves, trials_to_reach
    from analysis.results import load_study
    from study.config import ConfigError
    from study.search import sampler_settings

    flags = {}  # each sampler spec's study.search flags, every one checked before a study runs
    for sampler in args.samplers:
        try:
            name_, assignments = sampler_spec(sampler)
            sampler_settings(name_, assignments)
        except ConfigError as e:
            raise SystemExit(f"--samplers {sampler}: {e}") from None
        flags[sampler] = ["--sampler", name_,
                          *(a for kv in assignments for a in ("--sampler-arg", kv))]
    storage = Path(args.storage_dir or tempfile.mkdtemp(prefix="prunestudy-samplers-"))
    curves: dict[tuple[str, str], list] = {}
    for scheduler in args.schedulers:
        for sampler in args.samplers:
            for k in range(args.seeds):
                name = f"samplers-{args.method}-{re.sub('[:,=]', '-', sampler)}-{scheduler}-{k}"
                if not (storage / name / "study.json").exists():  # a bench interrupted: kept
                    args.seed = k
                    _timed_study(args, name, storage, args.trials, args.max_concurrent,
                                 [*flags[sampler], "--scheduler", scheduler,
                                  *shlex.split(args.search_flags)])
                c = hypervolume_curves(load_study(storage / name))
                fronts = c["front"].unique()
                if len(fronts) != 1:
                    raise SystemExit(f"study {name} has {len(fronts)} fronts; the bench compares one")
                curves.setdefault((sampler, scheduler), []).append(c)
    budget = min(c["epochs"].max() for runs in curves.values() for c in runs)
    table = {}
    for (sampler, scheduler), runs in curves.items():
        hv = np.array([by_trials(c, args.trials) for c in runs])
        table[(sampler, scheduler)] = {
            "mean": hv.mean(axis=0), "std": hv.std(axis=0, ddof=1) if len(runs) > 1 else 0 * hv[0],
            "per_seed": hv,
            "at_budget": [at_budget(c, "epochs", budget) for c in runs],
            "seconds": [float(c["seconds"].max()) for c in runs],
            "epochs": [int(c["epochs"].max()) for c in runs]}
    reference = table.get(("random", "fifo"))
    target = float(reference["mean"][-1]) if reference else float("nan")
    print(f"\n{args.method}: {args.trials} trials x {args.seeds} seeds; hypervolume mean +- std "
          f"after n trials (val_accuracy x sparsity, reference (0, 0)); studies in {storage}")
    marks = sorted({1, *range(8, args.trials + 1, 8), args.trials})
    width = max(20, *(len(f"{a}/{b}") + 1 for a, b in table))
    print(f"{'sampler/scheduler':<{width}}" + "".join(f"{f'n={n}':>16}" for n in marks))
    for (sampler, scheduler), row in table.items():
        print(f"{sampler + '/' + scheduler:<{width}}" + "".join(
            f"{row['mean'][n - 1]:>9.4f} +- {row['std'][n - 1]:.3f}" for n in marks))
    rows = []
    for (sampler, scheduler), row in table.items():
        needed = trials_to_reach(row["mean"], target) if reference else None
        rows.append({"method": args.method, "sampler": sampler, "scheduler": scheduler,
                     "trials": args.trials, "seeds": args.seeds,
                     "hypervolume_mean": round(float(row["mean"][-1]), 5),
                     "hypervolume_std": round(float(row["std"][-1]), 5),
                     "trials_to_reach_random": needed,
                     "trials_to_reach_random_per_seed": [trials_to_reach(h, target) for h in
                                                         row["per_seed"]] if reference else None,
                     "epoch_budget": int(budget),
                     "hypervolume_at_budget_mean": round(statistics.fmean(row["at_budget"]), 5),
                     "epochs_mean": round(statistics.fmean(row["epochs"]), 1),
                     "seconds_mean": round(statistics.fmean(row["seconds"]), 1)})
        print(json.dumps(rows[-1]))
    if reference:
        print(f"random search (fifo) reaches {target:.4f} after {args.trials} trials (mean)")


def main(argv: list[str] | None = None) -> int:
    from study.search import SCHEDULERS

    p = argparse.ArgumentParser(prog="python -m study.bench", description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None)
    sub = p.add_subparsers(dest="bench", required=True)
    e = sub.add_parser("epoch", help="seconds per training epoch")
    e.add_argument("--method", default="beta_vae", choices=sorted(METHODS))
    e.add_argument("--dataset", default="mnist")
    e.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    t = sub.add_parser("beta-vae-table", help="shneider2023 Table I (MNIST) beside the paper's")
    t.add_argument("--rows", nargs="+", default=list(PAPER_TABLE_I), choices=list(PAPER_TABLE_I))
    t.add_argument("--seeds", type=int, default=3)
    t.add_argument("--schedule", choices=list(SCHEDULES), default="cpu",
                   help="paper: 30 + 2 + 2 epochs on all of MNIST; cpu: 6 + 2 + 2 and short: "
                   "3 + 1 + 1 on 12,000 images")
    t.add_argument("--jobs", type=int, default=1, help="runs at once, the CPUs shared among them")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    t.add_argument("--out", help="also write the rows as JSON lines here")
    r = sub.add_parser("reparam-table", help="dupont2021 Tables 1-2: reparam vs mag vs mag_ft")
    r.add_argument("--rates", nargs="+", type=float, default=[0.9, 0.95, 0.97, 0.99])
    r.add_argument("--variants", nargs="+", default=["reparam", "mag", "mag_ft"],
                   choices=["reparam", "mag", "mag_ft"])
    r.add_argument("--dataset", default="fashion_mnist")
    r.add_argument("--model", default="lenet300")
    r.add_argument("--epochs", type=int, default=15)
    r.add_argument("--finetune-epochs", type=int, default=5)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    r.add_argument("--out", help="also write the rows as JSON lines here")
    c = sub.add_parser("importance-curve", help="reddy Fig. 1: MNIST MLP accuracy vs neurons removed")
    c.add_argument("--fractions", nargs="+", type=float, default=[0.2, 0.4, 0.6, 0.68, 0.8])
    c.add_argument("--variants", nargs="+", default=["rank", "random"], choices=["rank", "random"])
    c.add_argument("--seeds", type=int, default=3)
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    c.add_argument("--out", help="also write the rows as JSON lines here")
    o = sub.add_parser("overhead", help="a study through study.search vs the same trials as bare "
                       "training loops: wall times, ratio, where the time went")
    o.add_argument("method", choices=sorted(METHODS))
    o.add_argument("--num-samples", type=int, default=8)
    o.add_argument("--max-concurrent", type=int, default=2)
    o.add_argument("--seed", type=int, default=0)
    o.add_argument("--storage-dir", help="where the study goes (default: a temporary folder)")
    o.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    o.add_argument("--study", help="measure the bare side of this finished study instead of running "
                   "one (with --harness-seconds, its wall time measured from outside)")
    o.add_argument("--harness-seconds", type=float, default=float("nan"))
    o.add_argument("--search-flags", default="", metavar="'FLAGS'",
                   help="more flags for study.search, quoted (e.g. '--checkpoint-every 60')")
    h = sub.add_parser("throughput", help="k trials packed per device (GPU fraction or CPU share): "
                       "trials per hour and samples per second for each k")
    h.add_argument("method", choices=sorted(METHODS))
    h.add_argument("--per-device", nargs="+", type=int, default=[1, 2, 4, 8])
    h.add_argument("--cpu", action="store_true", help="pack on the CPUs even when a GPU exists")
    h.add_argument("--seed", type=int, default=0)
    h.add_argument("--storage-dir", help="where the studies go (default: a temporary folder)")
    h.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    m = sub.add_parser("samplers", help="studies per sampler (and scheduler) and seed: hypervolume "
                       "curves, trials to reach random search's, hypervolume at equal epochs")
    m.add_argument("method", choices=sorted(METHODS))
    m.add_argument("--samplers", nargs="+", default=["tpe", "nsga2", "random"],
                   metavar="NAME[:KEY=VALUE,...]",
                   help="samplers (tpe, nsga2, random), each with --sampler-arg settings if given: "
                   "e.g. tpe:multivariate=true,n_startup_trials=5 nsga2:population_size=16")
    m.add_argument("--schedulers", nargs="+", default=["fifo"], choices=SCHEDULERS)
    m.add_argument("--trials", type=int, default=64, help="trials per study")
    m.add_argument("--seeds", type=int, default=3, help="studies per sampler (sampler seeds 0, 1, ...)")
    m.add_argument("--max-concurrent", type=int, default=2)
    m.add_argument("--storage-dir", help="where the studies go (default: a temporary folder); "
                   "studies already there are read, not run again")
    m.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    m.add_argument("--search-flags", default="", metavar="'FLAGS'",
                   help="more flags for study.search, quoted (e.g. '--grace-period 1')")
    args = p.parse_args(argv)
    args.data_dir = args.data_dir or default_data_dir()
    {"epoch": bench_epoch, "beta-vae-table": bench_beta_vae_table,
     "reparam-table": bench_reparam_table, "importance-curve": bench_importance_curve,
     "overhead": bench_overhead, "throughput": bench_throughput,
     "samplers": bench_samplers}[args.bench](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
