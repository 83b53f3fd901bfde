"""`prunestudy COMMAND ...`: one console command for every action; each command takes the same
flags as its module (`prunestudy search beta_vae` is `python -m study.search beta_vae`).

The composition root: the one place in study/ that names analysis/ (the engine never imports it).
Modules are imported by name, and an engine command that shows analysis's work is handed the
analysis function here (`GIVEN`): `prunestudy search` prints analysis.summary's end-of-study
summary, `prunestudy bench samplers` compares analysis.hypervolume's curves of the studies it ran.
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {  # command -> (module with main(argv), what it does)
    "search": ("study.search", "run a study: Ray Tune trials, Optuna's sampler, W&B runs"),
    "pareto": ("analysis.pareto", "Pareto fronts of accuracy against sparsity (CSV, PNG, HTML, W&B)"),
    "compare": ("analysis.compare", "fronts of several methods on one dataset, model and budget, "
                "beside the baselines"),
    "hypervolume": ("analysis.hypervolume", "hypervolume as studies progress, by trials and by time"),
    "sanity": ("analysis.sanity", "each front trial against its controls: shuffled mask, re-initialized "
               "mask, smaller dense network (Frankle et al. 2021, Liu et al. 2019)"),
    "robust": ("analysis.robust", "the front with error bars: its trials re-run with new seeds"),
    "importance": ("analysis.hyperparameters", "which searched settings matter, per front (PED-ANOVA)"),
    "collapse": ("analysis.collapse", "posterior-collapse flags of beta_vae trials, by beta"),
    "report": ("analysis.report", "one self-contained HTML page of studies, to mail: fronts, "
               "hypervolume, importances, collapse, curves, settings"),
    "export": ("analysis.export", "best configs of a study as YAML, ready for `prunestudy train`"),
    "train": ("study.train", "retrain an exported config over seeds"),
    "bench": ("study.bench", "speed figures: epoch times, the harness's overhead, packing, samplers"),
    "reproduce": ("study.reproduce", "the papers' tables beside the papers' numbers: shneider2023, "
                  "dupont2021, reddy"),
}
# command -> {keyword of its main: "module:function" it is given}
GIVEN = {"search": {"summarize": "analysis.summary:summarize"},
         "bench": {"study_curves": "analysis.hypervolume:study_curves"}}  # bench samplers' curves


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items()]
    return ("usage: prunestudy COMMAND [ARGS...]   (prunestudy COMMAND --help for its flags)\n\n"
            "commands:\n" + "\n".join(lines))


def _function(path: str):
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; known: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    given = {k: _function(v) for k, v in GIVEN.get(command, {}).items()}
    sys.argv = [f"prunestudy {command}", *rest]  # as if run as its module (study.json records it)
    return module.main(rest, **given) or 0


if __name__ == "__main__":
    sys.exit(main())
