from __future__ import annotations

import optuna.distributions as od
import pytest

from study.config import ConfigError
from study.spaces import load_space, parse_assignment


def _space(tmp_path, text):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def test_the_shipped_beta_vae_space_is_valid():
    space = load_space("beta_vae")
    assert set(space.search) == {"beta", "layer_sparsity", "latent_dim", "lr"}
    assert space.search["beta"] == od.FloatDistribution(1.0, 20.0, log=True)
    assert isinstance(space.search["latent_dim"], od.CategoricalDistribution)


def test_set_fixes_a_searched_setting_and_checks_it():
    space = load_space("beta_vae")
    space.set(*parse_assignment("beta=4"))
    assert space.fixed["beta"] == 4.0 and "beta" not in space.search
    space.set(*parse_assignment("variant=cnn"))
    assert space.fixed["variant"] == "cnn"
    with pytest.raises(ConfigError, match="'beta' must be in"):
        space.set(*parse_assignment("beta=-2"))
    with pytest.raises(ConfigError, match="unknown setting 'betta'"):
        space.set(*parse_assignment("betta=2"))
    with pytest.raises(ConfigError, match="--set expects key=value"):
        parse_assignment("beta")


@pytest.mark.parametrize("text, message", [
    ("search:\n  beta: {distribution: loguniform, low: 5, high: 1}\n", "low must be below high"),
    ("search:\n  beta: {distribution: gaussian, low: 0, high: 1}\n", "unknown distribution 'gaussian'"),
    ("search:\n  beta: {distribution: loguniform, low: 0, high: 1}\n", "needs low > 0"),
    ("search:\n  gamma: {distribution: uniform, low: 0, high: 1}\n", "unknown setting 'gamma'"),
    ("search:\n  beta: {distribution: uniform, low: 0, hi: 1}\n", "unknown field 'hi'"),
    ("search:\n  layer_sparsity: {distribution: uniform, low: 0, high: 2}\n", "'layer_sparsity' must be in"),
    ("search:\n  sparsity: {distribution: uniform, low: 0, high: 1}\n", "'sparsity' is now 'layer_sparsity'"),
    ("search:\n  latent_dim: {distribution: categorical, choices: []}\n", "non-empty list"),
    ("search:\n  latent_dim: {distribution: int, low: 2.5, high: 8}\n", "'latent_dim' must be int"),
    ("search:\n  variant: {distribution: uniform, low: 0, high: 1}\n", "'variant' must be str"),
    ("search:\n  beta: 3\n", "must be a mapping"),
    ("fixed:\n  beta: 1\nsearch:\n  beta: {distribution: uniform, low: 0, high: 1}\n",
     "both fixed and searched"),
    ("fixed: [1, 2]\n", "must be mappings"),
    ("samples: 3\n", "unknown top-level key 'samples'"),
    ("method: reparam\n", "is for method 'reparam'"),
    ("search: {beta: [\n", "not valid YAML"),
    ("- 1\n", "must be a mapping"),
    ("fixed:\n  method: reparam\n", "chosen on the command line"),
])
def test_malformed_spaces_are_one_line_errors(tmp_path, text, message):
    with pytest.raises(ConfigError) as e:
        load_space("beta_vae", _space(tmp_path, text))
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_method_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="unknown method 'gan'"):
        load_space("gan")
    with pytest.raises(ConfigError, match="cannot read search space"):
        load_space("beta_vae", tmp_path / "absent.yaml")


def test_yaml_is_read_safely(tmp_path):
    text = "fixed:\n  beta: !!python/object/apply:os.system ['echo pwned']\n"
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_space("beta_vae", _space(tmp_path, text))
