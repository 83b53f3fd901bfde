"""`prunestudy report` (analysis.report): one self-contained page, read back as a browser would."""
from __future__ import annotations

import base64
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from analysis.pareto import at_chance, group_names
from analysis.results import load_results
from study import layout
from study.cli import COMMANDS
from tests.conftest import run_main
from tests.wandb_reader import _records, offline_runs, read_offline_run

HOSTILE = "<script>alert(1)</script> & 'quotes'"  # a reason that must come out as text


class Page(HTMLParser):
    """Every tag's attributes, the title, and per group section its figures and left-out rows."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.title, self._in_title = "", False
        self.sections: dict[str, dict] = {}
        self._section: str | None = None
        self._figure: str | None = None
        self.left_out: dict[str, dict[str, int]] = {}  # study -> reason -> count
        self._table: str | None = None
        self._reason: str | None = None
        self._count = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "title":
            self._in_title = True
        elif tag == "section" and "data-group" in a:
            self._section = a["data-group"]
            self.sections[self._section] = {"figures": {}}
        elif tag == "figure":
            self._figure = a.get("data-figure")
        elif tag == "img" and self._section and self._figure:
            self.sections[self._section]["figures"][self._figure] = a["src"]
        elif tag == "table" and "left-out" in a.get("class", "") and "data-study" in a:
            self._table = a["data-study"]
            self.left_out[self._table] = {}
        elif tag == "tr" and self._table:
            self._reason = a.get("data-reason")
        elif tag == "td" and self._table and self._reason and a.get("class") == "count":
            self._count = True

    def handle_endtag(self, tag):
        if tag == "title":
            self._in_title = False
        elif tag == "section":
            self._section = None
        elif tag == "figure":
            self._figure = None
        elif tag == "table":
            self._table = None
        elif tag == "td":
            self._count = False

    def handle_data(self, data):
        if self._in_title:
            self.title += data
        if self._count:
            self.left_out[self._table][self._reason] = int(data)


def _copy_study(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoint_*", "wandb", "*.pkl", "search.log"))
    return dst


def _plant(study: Path, source_id: str, new_id: str, rows: int | None = None, error: bool = False,
           **last) -> None:
    """A trial copied from `source_id`, its history cut to `rows` reports and its last one
    changed by `last` (a key set to None is removed)."""
    src, dst = layout.trial_dir(study, source_id), layout.trial_dir(study, new_id)
    dst.mkdir()
    shutil.copy(src / layout.PARAMS, dst / layout.PARAMS)
    history = [{**r, "trial_id": new_id} for r in layout.trial_history(src)[:rows]]
    history[-1].update(last)
    history[-1] = {k: v for k, v in history[-1].items() if v is not None}
    (dst / layout.RESULT).write_text("".join(json.dumps(r) + "\n" for r in history))
    if error:
        (dst / layout.ERROR).write_text("RuntimeError: planted")


@pytest.fixture
def studies_with_every_outcome(tiny_study, tmp_path) -> tuple[Path, Path]:
    """The tiny beta_vae study with planted trials of every outcome (a front point, complete at
    chance, degenerate, diverged, failed), a robust.csv for its front point, and a magnitude
    baseline study of the same dataset, network and budget beside."""
    study = _copy_study(tiny_study[0], tmp_path / "tiny")
    first = layout.trial_dirs(study)[0][0]
    _plant(study, first, "00000ace", val_accuracy=0.93, sparsity=0.7)
    _plant(study, first, "00000c4a", val_accuracy=0.1)
    _plant(study, first, "0000de9e", rows=1, degenerate=1, degenerate_reason=HOSTILE)
    _plant(study, first, "0000d1fe", rows=1, diverged=1, val_accuracy=None, sparsity=None)
    _plant(study, first, "0000fa11", rows=1, error=True)
    (study / layout.ANALYSIS).mkdir()
    pd.DataFrame([{"front": "f", "trial_id": "00000ace", "seeds": 2, "runs_complete": 2,
                   "val_accuracy": 0.93, "sparsity": 0.7, "val_accuracy_mean": 0.91,
                   "val_accuracy_std": 0.01, "sparsity_mean": 0.7, "sparsity_std": 0.0,
                   "test_accuracy_mean": 0.9, "test_accuracy_std": 0.02, "survives": True}]
                 ).to_csv(study / layout.ANALYSIS / "robust.csv", index=False)
    base = _copy_study(tiny_study[0], tmp_path / "base")
    (base / layout.OPTUNA_DB).unlink()
    info = layout.read_info(base)
    layout.write_info(base, {**info, "name": "base", "method": "magnitude"})
    for _, trial in layout.trial_dirs(base):
        params = json.loads((trial / layout.PARAMS).read_text())
        params.update(method="magnitude", criterion="magnitude", scope="global", schedule="oneshot")
        (trial / layout.PARAMS).write_text(json.dumps(params))
    return study, base


def _run_record(run_dir: Path) -> tuple[str, dict]:
    """(job type, summary with its keys flat: 'report/page/_type') of an offline run."""
    from wandb.proto import wandb_internal_pb2 as pb

    job_type, summary = "", {}
    for raw in _records(next(Path(run_dir).glob("*.wandb"))):
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            job_type = rec.run.job_type
        elif kind == "summary":
            summary.update({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                            for i in rec.summary.update})
    return job_type, summary


@pytest.mark.study("cli-beta_vae")
def test_report_is_one_self_contained_page_with_a_section_per_group(studies_with_every_outcome, tmp_path,
                                                                    monkeypatch, capsys):
    import wandb

    for key in ("WANDB_DIR", "WANDB_SILENT", "WANDB_MODE"):  # tracking.configure sets them
        monkeypatch.setenv(key, "offline" if key == "WANDB_MODE" else "")
    study, base = studies_with_every_outcome
    out = tmp_path / "report.html"
    code = run_main("analysis.report", str(study), str(base), "--out", str(out))
    printed, err = capsys.readouterr()
    assert code == 0, err
    wandb.teardown()  # the command's exit would wait for wandb-core to write the run
    text = out.read_text()
    page = Page(text)

    # self-contained: no address outside the file, no script at all, every image inline
    addresses = [a[k] for _, a in page.tags for k in ("src", "href", "action", "data") if k in a]
    assert addresses and not [u for u in addresses if "http://" in u or "https://" in u or "//" in u[:2]]
    assert all(a["src"].startswith("data:image/png;base64,") for t, a in page.tags if t == "img")
    assert all(a["href"].startswith("#") for t, a in page.tags if t == "a")
    assert not [t for t, _ in page.tags if t in ("script", "link", "iframe")]

    # titled with study, method, dataset, model and budget
    for word in ("tiny", "base", "beta_vae", "magnitude", "mnist", "bvae_cnn", "3 epochs"):
        assert word in page.title, word

    # a section per group, each with its front, hypervolume and validation curves as PNGs
    df = load_results([study, base])
    reported = df[df["epoch"].notna()]
    assert set(page.sections) == set(group_names(reported)) == {"mnist/bvae_cnn/3ep"}
    for group, section in page.sections.items():
        assert {"front", "hypervolume", "curves"} <= set(section["figures"]), group
        for src in section["figures"].values():
            assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"

    # the left-out counts are analysis.results' statuses (and at chance as the fronts count it)
    for name in ("tiny", "base"):
        trials, counts = df[df["study"] == name], page.left_out[name]
        chance = int(at_chance(trials).sum())
        assert counts["at_chance"] == chance
        assert counts["counted"] + counts["at_chance"] + counts["infeasible"] == int(
            (trials["status"] == "complete").sum())
        for status in ("degenerate", "diverged", "stopped", "failed", "running"):
            assert counts[status] == int((trials["status"] == status).sum()), (name, status)
    planted = page.left_out["tiny"]
    assert (planted["degenerate"], planted["diverged"], planted["failed"]) == (1, 1, 1)
    assert planted["at_chance"] >= 1 and planted["counted"] >= 1

    # the baseline, the robust re-runs, the collapse flags and the settings are on the page,
    # and every text is escaped
    assert "magnitude[magnitude,global,oneshot] (baseline)" in text
    assert "0.9100 ± 0.0100" in text  # the planted robust mean +- std of the front point
    assert "Posterior collapse" in text and "collapsed_dims" in text
    assert "prunestudy search beta_vae" in text and "FloatDistribution" in text
    assert HOSTILE not in text and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &#x27;quotes&#x27;" in text

    # the W&B view: the first study's analysis run in its group holds each group's figures (the
    # page's own PNGs), the page, the front and the importances, under keys that say so
    assert "W&B (offline): report's" in printed and f"group 'tiny' under {layout.wandb_dir(study)}" in printed
    (run,) = offline_runs(study)
    assert not offline_runs(base)
    meta, (job_type, summary) = read_offline_run(run), _run_record(run)
    assert (job_type, meta["group"]) == ("analysis", "tiny") and "report" in meta["tags"]
    for group, section in page.sections.items():
        logged = {k.removeprefix(f"report/{group}/").removesuffix("/_type") for k in summary
                  if k.startswith(f"report/{group}/") and k.endswith("/_type")}
        assert logged == set(section["figures"]) >= {"front", "hypervolume", "curves"}, group
        for kind, src in section["figures"].items():  # the page's own PNGs, as images
            key = f"report/{group}/{kind}"
            assert summary[f"{key}/_type"] == "image-file", key
            assert (run / "files" / summary[f"{key}/path"]).read_bytes() == base64.b64decode(
                src.split(",", 1)[1]), key
    assert summary["report/page"]["_type"] == "html-file"
    assert (run / "files" / summary["report/page"]["path"]).read_text() == text
    assert summary["pareto/front/_type"] == "table-file"
    assert summary["pareto/beta_vae[vae]/mnist/bvae_cnn/3ep/front_size"] >= 1  # one key per front
    assert summary["importance/table/_type"] == "table-file"


def test_report_is_a_command_and_refuses_a_folder_that_is_not_a_study(tmp_path, capsys):
    assert COMMANDS["report"][0] == "analysis.report"
    code = run_main("analysis.report", str(tmp_path / "nope"), "--out", str(tmp_path / "r.html"))
    err = capsys.readouterr().err
    assert code == 2 and "does not exist" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r.html").exists()
