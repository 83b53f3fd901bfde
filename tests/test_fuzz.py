"""Property-based checks (hypothesis) of what `prunestudy search` accepts: every numeric and text
flag, random search-space documents and damaged data files.

The contract for any input: either every check passes (`study.search.check`: the point where
every flag, the space, its trials, the data and the sampler's settings have been checked, nothing
written, Ray not started), or the command exits with code 2 after one line on stderr, no
traceback, nothing written. No draw may hang: each runs under an alarm. In-process, so the suite's
run costs seconds; `pytest -m slow tests/test_fuzz.py` draws many more.
"""
from __future__ import annotations

import contextlib
import functools
import gzip
import io
import re
import signal
import struct
import warnings
from pathlib import Path
from typing import get_type_hints

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st

from study import config as cfgmod
from study import search
from study.config import TrialConfig
from study.data import DataError, load_dataset
from study.methods import METHODS
from tests.conftest import DATA_DIR

DRAW_SECONDS = 60  # a draw past this is a hang (cold imports and loads take a few seconds)
QUICK = {"max_examples": 25, "derandomize": True}  # in the suite: a few seconds each
LONG = {"max_examples": 3000}  # pytest -m slow
# datasets drawn: the quick ones to load (cifar10_jpeg decodes 60,000 JPEGs, dsprites renders)
DATASETS = ["mnist", "fashion_mnist", "cifar10", "svhn", "folder:/nonexistent", ""]
NAMES = ["..", ".", "a/b", "a\0b", "x" * 129, "x" * 300, "-", "--", "~", "~nouser/x", "\n",
         "a\nb", "folder:", "s3://b", "/dev/zero", "/dev/stdin", "\udcff", "\u2028", "ok-name"]


@contextlib.contextmanager
def time_limit(seconds: float):
    """SIGALRM after `seconds`: a hanging draw fails (TimeoutError) instead of hanging the suite."""
    def expire(signum, frame):
        raise TimeoutError(f"the draw ran past {seconds} s: a hang")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@functools.cache
def _load(name: str, root: str):
    """The data a check loads, loaded once per (name, root) and never downloaded (exceptions are
    not cached: a bad name or folder fails every time)."""
    return load_dataset(name, root, download=False)


@pytest.fixture(scope="module")
def _warm():
    """The libraries a check imports on first use (Ray Tune for --scheduler mo-asha, torchvision
    where MNIST's files are absent): imported once here, not within a draw's time."""
    import torchvision.datasets  # noqa: F401

    import study.scheduler  # noqa: F401


@pytest.fixture
def checked_only(monkeypatch, _warm):
    """`search.main` that stops where a study would start: run() is search.check()."""
    monkeypatch.setattr(search, "run", lambda args, summarize=None: (search.check(args), 0)[1])
    monkeypatch.setattr(search, "load_dataset", lambda name, root: _load(name, str(root)))


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def assert_accepted_or_one_line(argv: list[str], root: Path) -> bool:
    """`search.main(argv)`: accepted (every check passed), or exit code 2 with one line on stderr
    and no warning; either way nothing new under `root`. Returns whether it was accepted."""
    before = _tree(root)
    err = io.StringIO()
    with time_limit(DRAW_SECONDS), warnings.catch_warnings(record=True) as caught, \
            contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("always")
        try:
            code = search.main(argv)
        except SystemExit as e:  # argparse's errors
            code = e.code
    lines = err.getvalue().splitlines()
    assert _tree(root) == before, f"{argv}: wrote {_tree(root) - before}"
    assert code in (0, 2), (argv, code, err.getvalue())
    if code == 2:
        assert len(lines) == 1 and lines[0].startswith("error: "), (argv, err.getvalue())
        assert not caught, (argv, [str(w.message) for w in caught])
    if currently_in_test_context():  # --hypothesis-show-statistics: what the draws reached
        label = "accepted" if code == 0 else re.sub(r" \(searched: .*?\):", ":", lines[0].replace(
            str(root), "<tmp>"))[:70]
        event(label.encode("ascii", "backslashreplace").decode())  # lone surrogates: escaped
    return code == 0


# --- the command line ---------------------------------------------------------------------------
# Most draws are admissible values with one or two bad ones among them, so that a draw gets past
# argparse to the checks behind it; any value at all is drawn too.

JUNK_NUMBERS = st.sampled_from(["nan", "inf", "-inf", "1e-9", "0.00001", "1e400", "-0", "0x10", "",
                                " ", "1_000", "\u0661", "1" * 5000, "1.5", "-1"])
texts = st.one_of(st.text(max_size=12), st.sampled_from(NAMES))  # control characters included


def mostly(good, bad, odds: int = 8):
    """`good`, but one time in `odds` `bad`: a draw holds a bad value or two among good ones, and
    gets past the first check to those behind it."""
    return st.sampled_from([True] * (odds - 1) + [False]).flatmap(lambda ok: good if ok else bad)


def _number(typical, wild):
    """Mostly `typical`, else any number of that kind, or text that may not parse."""
    return mostly(typical, wild | JUNK_NUMBERS).map(str)


NUMERIC_FLAGS = {
    "num-samples": _number(st.integers(1, 20), st.integers()),
    "max-concurrent": _number(st.integers(0, 8), st.integers()),
    "cpus-per-trial": _number(st.floats(1e-4, 2), st.floats()),
    "gpus-per-trial": _number(st.just(0.0), st.floats()),
    "grace-period": _number(st.integers(1, 5), st.integers()),
    "reduction-factor": _number(st.floats(1.01, 5), st.floats()),
    "seed": _number(st.integers(0, 2**32 - 1), st.integers()),
    "max-failures": _number(st.integers(0, 3), st.integers()),
    "checkpoint-every": _number(st.floats(0, 100), st.floats()),
}
# each setting's declared admissible values (its first declaration: epochs' bounds differ by method)
FIELDS = {}
for _cls in (TrialConfig, *(m.Config for m in METHODS.values())):
    for _name, _field in cfgmod.fields(_cls).items():
        FIELDS.setdefault(_name, (_cls, _field))
SETTINGS = sorted(FIELDS)
STRINGS = {"dataset": DATASETS, "label_factor": ["", "shape", "x"], "rung_epochs": ["", "1,2", "0", "x"],
           "masks": ["", "/nonexistent.pt"], "widths": ["", "head.0=25", "head.9=3", "x"],
           "method": list(METHODS)}  # str settings without choices: values to draw


def admissible(key: str):
    """Values `key` declares admissible, mostly; at times just past its bounds."""
    cls, f = FIELDS[key]
    kind, meta = get_type_hints(cls)[key], f.metadata
    if meta.get("choices"):
        return st.sampled_from(list(meta["choices"]))
    if kind is str:
        return st.sampled_from(STRINGS.get(key, [f.default]))
    if kind is bool:
        return st.booleans()
    low = meta["low"] if meta.get("low") is not None else -10
    high = meta["high"] if meta.get("high") is not None else low + 100
    if kind is int:
        return st.integers(int(low), int(min(high, low + 60))) | st.sampled_from([low - 1, high + 1])
    return st.floats(low, high) | st.sampled_from([low - 1e-3, high + 1e-3])


def _yaml(value) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True)
    return text.strip().removesuffix("...").strip()  # a scalar document ends with "..."


yaml_values = st.one_of(
    st.integers(), st.floats(), st.booleans(),
    st.sampled_from(["", "~", "null", "[1, 2]", "{a: 1}", ".nan", "-.inf", "1e400", "1.0e400",
                     "'3'", "[" * 300, "1" * 5000, "!!python/object:os.system", "&a [*a]"]),
    texts)


def _set(keys=None):
    """A `--set KEY=VALUE`: an admissible value of a setting, mostly; anything, at times."""
    keys = keys or SETTINGS
    good = st.sampled_from(keys).flatmap(lambda k: admissible(k).map(lambda v: f"{k}={_yaml(v)}"))
    return mostly(good, st.builds(lambda k, v: f"{k}={v}", st.sampled_from(keys) | texts, yaml_values)
                  | texts)


SAMPLER_KEYS = ["n_startup_trials", "n_ei_candidates", "prior_weight", "multivariate",
                "population_size", "mutation_prob", "crossover_prob", "swapping_prob", "seed", "gamma"]
SAMPLER_ARGS = mostly(
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(SAMPLER_KEYS),
              st.integers(-2, 60).map(str) | st.floats(-1, 2).map(str) | st.sampled_from(["true", "false"])),
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(SAMPLER_KEYS) | texts, yaml_values) | texts, 3)
CONSTRAINTS = mostly(st.builds(
    lambda m, op, x: f"{m}{op}{x}", st.sampled_from(["val_accuracy", "sparsity", "vae/kl"]),
    st.sampled_from([">=", "<="]), _number(st.floats(0, 1), st.floats())), texts | st.builds(
    lambda m, op, x: f"{m}{op}{x}", st.sampled_from(["test_accuracy", "latency", ""]),
    st.sampled_from([">", "==", ">="]), st.floats().map(str)), 3)


@st.composite
def command_lines(draw, root: Path) -> list[str]:
    """A `prunestudy search` command line: each flag present or not, at any value; folders always
    under `root` (a drawn text is a name inside it)."""
    argv = [draw(st.sampled_from([*METHODS, *METHODS, "gan", ""]))]

    def flag(name: str, values, odds: int = 4) -> list[str]:  # present one time in `odds`
        return [f"--{name}={draw(values)}"] if draw(mostly(st.just(False), st.just(True), odds)) else []

    for name, values in NUMERIC_FLAGS.items():
        argv += flag(name, values)
    mo_asha = any(a.startswith(("--grace-period", "--reduction-factor")) for a in argv)
    schedulers = st.sampled_from(["fifo", "mo-asha"])
    argv += flag("scheduler", mostly(st.just("mo-asha") if mo_asha else schedulers, st.just("hyperband")),
                 1 if mo_asha else 4)
    argv += flag("sampler", mostly(st.sampled_from(list(search.SAMPLERS)), st.just("cmaes")))
    argv += flag("dataset", mostly(st.sampled_from(DATASETS[:2]), st.sampled_from(DATASETS) | texts))
    argv += flag("name", mostly(st.sampled_from(["a", "study-1.x", "A" * 128]), texts))
    argv += flag("resume", texts, 10)
    argv += flag("space", st.sampled_from(["/dev/zero", "/dev/stdin", "/dev/null", str(root),
                                           "search_spaces/beta_vae.yaml"])
                 | texts.map(lambda t: f"{root}/{t}"), 10)
    argv += flag("address", st.sampled_from(["auto", "127.0.0.1:6379"]) | texts, 10)
    for _ in range(draw(st.integers(0, 2))):
        argv += [f"--set={draw(_set())}"]
    for _ in range(draw(st.integers(0, 1))):
        argv += [f"--sampler-arg={draw(SAMPLER_ARGS)}"]
    for _ in range(draw(st.integers(0, 1))):
        argv += [f"--constraint={draw(CONSTRAINTS)}"]
    storage = draw(mostly(st.just("runs"), st.sampled_from(["", "a/../b"]) | texts))
    argv += [f"--storage-dir={root}/{storage}"]
    data = draw(mostly(st.just(str(DATA_DIR)), st.sampled_from([f"{root}/nodata", "/dev/null", ""])
                       | texts.map(lambda t: f"{root}/{t}")))
    argv += [f"--data-dir={data}"]
    if draw(st.integers(0, 19)) == 0:
        argv += [draw(st.sampled_from(["--settings", "--verbose"]))]
    return argv


def _fuzz_flags(tmp_path, data):
    argv = data.draw(command_lines(tmp_path), label="argv")
    assert_accepted_or_one_line(argv, tmp_path)


COMMON = {"deadline": None, "database": None,
          "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]}


@settings(**COMMON, **QUICK)
@given(data=st.data())
def test_every_flag_at_any_value_is_accepted_or_one_line(checked_only, tmp_path, data):
    _fuzz_flags(tmp_path, data)


@pytest.mark.slow
@settings(**COMMON, **LONG)
@given(data=st.data())
def test_every_flag_at_any_value_is_accepted_or_one_line_long(checked_only, tmp_path, data):
    _fuzz_flags(tmp_path, data)


# --- search-space documents ---------------------------------------------------------------------

scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 100), st.integers(),
                    st.floats(-10, 100), st.floats(), st.text(max_size=8),
                    st.sampled_from(["vae", "cnn", "mnist", "auto", "cuda", "sgd", "shape", "2,4"]))


def _entry(key: str):
    """A search entry for `key`: its distribution, bounds and choices mostly admissible (log
    bounds may be 0, low may pass high, a float setting may get int), else anything."""
    values = admissible(key)
    bounded = st.fixed_dictionaries(
        {"distribution": st.sampled_from(["uniform", "loguniform", "int", "logint"]),
         "low": values, "high": values},
        optional={"step": st.sampled_from([1, 2, 0.1, 0.25, 0, -1, 1.5])})
    categorical = st.fixed_dictionaries(
        {"distribution": st.just("categorical"), "choices": st.lists(values, max_size=4)})
    junk = st.dictionaries(st.sampled_from(["distribution", "low", "high", "step", "choices", "hi"])
                           | scalars, scalars | st.lists(scalars), max_size=4)
    return mostly(bounded | categorical, junk | scalars, 6)


@st.composite
def space_documents(draw, method: str) -> bytes:
    """A search space for `method`: settings of the trial or the method (or not), fixed at values
    of any type, searched by any distribution with any bounds; sometimes not YAML at all."""
    own = sorted((set(cfgmod.fields(TrialConfig)) | set(cfgmod.fields(METHODS[method].Config))) - {"method"})
    foreign = st.sampled_from(["sparsity", "recovery_epochs", "method", "gamma", *SETTINGS]) | scalars.filter(
        lambda k: k is None or isinstance(k, (str, int, float)))
    keys = mostly(st.sampled_from(own), foreign)
    fixed, search = {}, {}
    for _ in range(draw(st.integers(0, 4))):
        key = draw(keys)
        fixed[key] = draw(mostly(admissible(key), scalars | st.lists(scalars, max_size=2))
                          if key in FIELDS else scalars)
    for _ in range(draw(st.integers(0, 4))):
        key = draw(keys)
        search[key] = draw(_entry(key) if key in FIELDS else scalars)
    doc = {"method": method, "fixed": fixed, "search": search}
    if not draw(mostly(st.just(True), st.just(False))):  # one part replaced by anything
        doc[draw(st.sampled_from(["method", "fixed", "search", "samples"]))] = draw(
            scalars | st.sampled_from(list(METHODS)))
    text = yaml.safe_dump(doc, allow_unicode=True).encode("utf-8", "surrogatepass")
    return draw(mostly(st.just(text), st.binary(max_size=64) | st.text(max_size=64).map(
        lambda t: t.encode("utf-8", "surrogatepass"))))  # or not YAML at all


def _fuzz_spaces(tmp_path, data):
    method = data.draw(st.sampled_from(list(METHODS)), label="method")
    space = tmp_path / "space.yaml"
    space.write_bytes(data.draw(space_documents(method), label="space"))
    argv = [method, "--space", str(space), "--storage-dir", str(tmp_path / "runs"),
            "--data-dir", str(DATA_DIR)]
    argv += data.draw(st.lists(_set().map(lambda a: f"--set={a}"), max_size=2), label="sets")
    assert_accepted_or_one_line(argv, tmp_path)


@settings(**COMMON, **QUICK)
@given(data=st.data())
def test_any_search_space_document_is_accepted_or_one_line(checked_only, tmp_path, data):
    _fuzz_spaces(tmp_path, data)


@pytest.mark.slow
@settings(**COMMON, **LONG)
@given(data=st.data())
def test_any_search_space_document_is_accepted_or_one_line_long(checked_only, tmp_path, data):
    _fuzz_spaces(tmp_path, data)


# --- what the fuzzer found, kept as examples -----------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--cpus-per-trial", "0.00001"], "--cpus-per-trial must be at least 0.0001"),  # Ray, mid-study
    (["--cpus-per-trial", "nan"], "--cpus-per-trial must be a finite number"),
    (["--gpus-per-trial", "nan"], "--gpus-per-trial must be a finite number"),
    (["--gpus-per-trial", "0.00001"], "--gpus-per-trial must be 0 or at least 0.0001"),
    (["--seed", "-1"], "--seed must not be negative"),
    (["--seed", str(2**32)], "--seed must be at most"),
    (["--num-samples", str(10**30)], "--num-samples must be at most"),
    (["--scheduler", "mo-asha", "--reduction-factor", "1.0000000001"], "must be above 1 (at least 1.01)"),
    (["--scheduler", "mo-asha", "--reduction-factor", "inf"], "must be a finite number"),
    (["--scheduler", "mo-asha", "--grace-period", str(10**400)], "--grace-period must be at most"),
    (["--checkpoint-every", "nan"], "--checkpoint-every must be a finite number"),
    (["--sampler-arg", "n_ei_candidates=1000000000000"], "n_ei_candidates must be at most"),
    (["--sampler-arg", "prior_weight=-1"], "prior_weight must be at least"),
    (["--name", "x" * 300], "a study name has at most 128"),
    (["--storage-dir", "runs\0x"], "cannot be a path here: it holds a NUL"),
    (["--data-dir", "a" * 300], "more than the 255 of a file name"),
    (["--space", "/dev/stdin"], "not a regular file"),  # waited for stdin forever
    (["--space", "/dev/zero"], "not a regular file"),  # read forever
    (["extra\nline"], "unrecognized arguments: extra\\nline"),
    (["--resume=--"], "argument --resume: expected one value, got '--'"),  # argparse: [], a TypeError
    (["--seed=--"], "argument --seed: expected one value"),
    (["--set", "epochs=0", "--set", "head_epochs=0", "--set", "prune_epochs=0"],
     "method beta_vae has no epoch to train"),
    (["--set", "device=cuda"], "'device' = 'cuda' needs --gpus-per-trial above 0"),
    (["--set", "epochs=" + "1" * 5000], "setting 'epochs' must be int"),
    (["--set", "epochs=" + "9" * 20], "within +-2**53"),
    (["--set", "seed=4294967296"], "'seed' must be in [0, 4294967295]"),
    (["--dataset", "folder:~nouser-here/x"], "no such user's home folder"),
])
def test_inputs_the_fuzzer_found_are_one_line_errors(checked_only, tmp_path, argv, message, capsys):
    argv = ["beta_vae", *argv]
    for flag, value in (("--storage-dir", str(tmp_path / "runs")), ("--data-dir", str(DATA_DIR))):
        if flag not in argv:
            argv += [flag, value]
    assert not assert_accepted_or_one_line(argv, tmp_path)
    with contextlib.suppress(SystemExit):
        search.main(argv)
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("space, message", [
    ("search:\n  latent_dim: {distribution: uniform, low: 2, high: 8}\n", "use int or logint"),
    ("search:\n  beta: {distribution: int, low: 1, high: 8}\n", "use uniform or loguniform"),
    ("search:\n  beta: {distribution: uniform, low: 0, high: 1, step: 0.3}\n", "must divide"),
    ("search:\n  beta: {distribution: uniform, low: 0, high: 1.0e+300, step: 1.0e-300}\n",
     "must divide"),  # Optuna's decimal arithmetic raised InvalidOperation
    ("search:\n  latent_dim: {distribution: int, low: 2, high: 8, step: 1.5}\n", "positive integer"),
    ("search:\n  beta: {distribution: uniform, low: 0, high: 1, step: true}\n", "positive number"),
    ("search:\n  latent_dim: {distribution: categorical, choices: [4, 4]}\n", "listed twice"),
    ("search:\n  beta: {distribution: [uniform], low: 0, high: 1}\n", "unknown distribution"),
    ("search:\n  beta: {1: 2, x: 3}\n", "unknown field"),  # sorting 1 and 'x' raised TypeError
    ("1: 2\nx: 3\n", "unknown top-level key"),
    ("fixed:\n  beta: 1.0e+400\n", "must be finite"),
    ("fixed:\n  beta: " + "1" * 400 + "\n", "'beta' must be float"),  # OverflowError
    ("fixed:\n  epochs: " + "1" * 5000 + "\n", "not valid YAML"),  # ValueError: 4300 digits
    ("a: " + "[" * 100_000 + "\n", "not valid YAML"),  # minutes, before a RecursionError
    ("fixed: {epochs: 0, head_epochs: 0, prune_epochs: 0}\n", "no epoch to train"),
])
def test_spaces_the_fuzzer_found_are_one_line_errors(checked_only, tmp_path, space, message, capsys):
    path = tmp_path / "space.yaml"
    path.write_text(space)
    argv = ["beta_vae", "--space", str(path), "--storage-dir", str(tmp_path / "runs"),
            "--data-dir", str(DATA_DIR)]
    assert not assert_accepted_or_one_line(argv, tmp_path)
    assert search.main(argv) == 2
    assert message in capsys.readouterr().err
    path.write_bytes(b"fixed: {beta: \xff\xfe}\n")  # not UTF-8: UnicodeDecodeError before
    assert not assert_accepted_or_one_line(argv, tmp_path)


def test_the_shipped_spaces_pass_every_check(checked_only, tmp_path):
    for method in METHODS:
        assert assert_accepted_or_one_line([method, "--storage-dir", str(tmp_path / "runs"),
                                            "--data-dir", str(DATA_DIR)], tmp_path), method


# --- damaged data files ----------------------------------------------------------------------

def _idx(array: np.ndarray) -> bytes:
    return b"\0\0\x08" + bytes([array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape) + \
        array.astype(np.uint8).tobytes()


def _mnist_files(n_train: int = 50, n_test: int = 10) -> dict[str, bytes]:
    """A small, intact MNIST in IDX files (the names torchvision's raw folder holds)."""
    rng = np.random.default_rng(0)
    return {"train-images-idx3-ubyte": _idx(rng.integers(0, 256, (n_train, 28, 28))),
            "train-labels-idx1-ubyte": _idx(rng.integers(0, 10, n_train)),
            "t10k-images-idx3-ubyte": _idx(rng.integers(0, 256, (n_test, 28, 28))),
            "t10k-labels-idx1-ubyte": _idx(rng.integers(0, 10, n_test))}


def _write_mnist(root: Path, files: dict[str, bytes], gz: bool = False) -> Path:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (raw / (f"{name}.gz" if gz else name)).write_bytes(gzip.compress(data) if gz else data)
    return raw


def _refused_naming(root: Path, path: Path) -> str:
    with time_limit(DRAW_SECONDS), pytest.raises(DataError) as e:
        load_dataset("mnist", root, download=False)
    message = str(e.value)
    assert str(path) in message and len(message.splitlines()) == 1, message
    return message


def test_a_small_intact_mnist_loads(tmp_path):
    _write_mnist(tmp_path, _mnist_files())
    data = load_dataset("mnist", tmp_path, download=False)
    assert data.train_x.shape == (45, 1, 28, 28) and data.test_x.shape == (10, 1, 28, 28)


def _damaged(name: str, how: str) -> tuple[dict[str, bytes], str]:
    """MNIST's files with `name` damaged `how`; and the file the refusal must name."""
    files = _mnist_files()
    n = len(np.frombuffer(files[name], np.uint8, offset=8 if "labels" in name else 16)) // (
        1 if "labels" in name else 28 * 28)
    labels = name.replace("images-idx3", "labels-idx1")
    rng = np.random.default_rng(1)
    if how == "labels":  # a label past MNIST's 10 classes: the labels file is named
        files[labels] = _idx(np.full(n, 10))
        return files, labels
    files[name] = {
        "magic": b"\0\0\x0d" + files[name][3:],  # floats, not unsigned bytes
        "ndim": files[name][:3] + bytes([2 if "images" in name else 3]) + files[name][4:],
        "not idx": b"PK\x03\x04" + files[name][4:],
        "empty": b"",
        "trailing bytes": files[name] + b"\0" * 7,
        "sizes": _idx(rng.integers(0, 256, (n, 27, 28))) if "images" in name else _idx(
            rng.integers(0, 10, n + 1)),  # 27 x 28 images; one label too many
    }[how]
    return files, name


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("how", ["magic", "ndim", "not idx", "empty", "trailing bytes", "sizes",
                                 "labels"])
@pytest.mark.parametrize("name", list(_mnist_files()))
def test_damaged_mnist_files_are_refused_naming_the_file(tmp_path, name, how, gz):
    files, named = _damaged(name, how)
    raw = _write_mnist(tmp_path, files, gz)
    _refused_naming(tmp_path, raw / (f"{named}.gz" if gz else named))


@settings(max_examples=60, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.integers(0, 3), cut=st.floats(0, 1, exclude_max=True), gz=st.booleans())
def test_a_truncated_mnist_file_is_refused_naming_it(tmp_path_factory, which, cut, gz):
    root = tmp_path_factory.mktemp("mnist")
    files = _mnist_files()
    name = list(files)[which]
    files[name] = files[name][:int(cut * len(files[name]))]
    raw = _write_mnist(root, files)
    if gz:  # a download cut short: the archive itself truncated
        intact = _mnist_files()
        for f in raw.iterdir():
            f.unlink()
        for n, data in intact.items():
            packed = gzip.compress(data)
            (raw / f"{n}.gz").write_bytes(packed[:int(cut * len(packed))] if n == name else packed)
    _refused_naming(root, raw / (f"{name}.gz" if gz else name))


def test_a_damaged_data_file_through_the_cli_is_one_line_naming_it(tmp_path, capsys):
    files = _mnist_files()
    files["t10k-labels-idx1-ubyte"] = files["t10k-labels-idx1-ubyte"][:-3]
    raw = _write_mnist(tmp_path / "data", files)
    storage = tmp_path / "runs"
    code = search.main(["beta_vae", "--data-dir", str(tmp_path / "data"), "--storage-dir", str(storage)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and str(raw / "t10k-labels-idx1-ubyte") in err and len(err.splitlines()) == 1, err
    assert not storage.exists()
