"""Layered recipe resolution: defaults -> recipe file (with _base_) -> --set."""

import pytest

from ssl_bench.errors import UserError
from ssl_bench.recipes import parse_assignment, resolve

DEFAULTS = {"optim": {"lr": 0.001, "epochs": 10, "betas": [0.9, 0.999], "name": "adamw"},
            "use_bf16": False, "feature": None, "extra": {}}


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_layers_apply_in_order(tmp_path):
    base = write(tmp_path, "base.yaml", "optim:\n  lr: 0.5\n  epochs: 100\n")
    child = write(tmp_path, "child.yaml", "_base_: base.yaml\noptim:\n  epochs: 3\n")
    out = resolve(DEFAULTS, child, ["optim.lr=1e-3", "use_bf16=true", "extra.anything=7"])
    assert out["optim"] == {"lr": 0.001, "epochs": 3, "betas": [0.9, 0.999], "name": "adamw"}
    assert out["use_bf16"] is True
    assert out["extra"] == {"anything": 7}
    assert DEFAULTS["optim"]["lr"] == 0.001  # defaults are not mutated


def test_yaml_exponent_without_dot_is_a_float(tmp_path):
    recipe = write(tmp_path, "r.yaml", "optim:\n  lr: 5e-4\n")  # PyYAML reads this as a string
    assert resolve(DEFAULTS, recipe)["optim"]["lr"] == 0.0005


def test_unknown_key_names_key_and_file(tmp_path):
    recipe = write(tmp_path, "bad.yaml", "optim:\n  lrr: 0.1\n")
    with pytest.raises(UserError) as err:
        resolve(DEFAULTS, recipe)
    message = str(err.value)
    assert str(recipe) in message and "'optim.lrr'" in message
    assert "betas, epochs, lr, name" in message


def test_unknown_key_in_base_names_the_base_file(tmp_path):
    write(tmp_path, "base.yaml", "nope: 1\n")
    child = write(tmp_path, "child.yaml", "_base_: base.yaml\n")
    with pytest.raises(UserError, match=r"base\.yaml: unknown key 'nope'"):
        resolve(DEFAULTS, child)


def test_wrong_type_from_set_names_the_argument():
    with pytest.raises(UserError, match=r"--set optim.epochs=many: key 'optim.epochs' must be an integer"):
        resolve(DEFAULTS, None, ["optim.epochs=many"])
    with pytest.raises(UserError, match="must be true or false"):
        resolve(DEFAULTS, None, ["use_bf16=3"])


def test_none_default_accepts_any_type():
    assert resolve(DEFAULTS, None, ["feature=cls_last4"])["feature"] == "cls_last4"


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(UserError, match="recipe file not found"):
        resolve(DEFAULTS, tmp_path / "none.yaml")
    broken = write(tmp_path, "broken.yaml", "optim:\n  lr: [1, 2\n")
    with pytest.raises(UserError, match=r"broken\.yaml:\d+:"):
        resolve(DEFAULTS, broken)


def test_parse_assignment():
    assert parse_assignment("a.b.c=[1, 2]") == {"a": {"b": {"c": [1, 2]}}}
    assert parse_assignment("name=vit_small") == {"name": "vit_small"}
    with pytest.raises(UserError, match="expected KEY.SUB=VALUE"):
        parse_assignment("novalue")


def test_set_adds_keys_to_a_mapping_the_defaults_leave_open(tmp_path):
    """An open mapping stays open after a recipe file filled it: --set adds a second key (robustness'
    `linear: {}` filled with {variant: mae} by robustness_tiny.yaml takes --set linear.epochs=10)."""
    recipe = write(tmp_path, "r.yaml", "extra: {variant: mae}\n")
    out = resolve(DEFAULTS, recipe, ["extra.epochs=10", "extra.optim.lrs=[0.1]", "extra.optim.name=sgd"])
    assert out["extra"] == {"variant": "mae", "epochs": 10, "optim": {"lrs": [0.1], "name": "sgd"}}
    with pytest.raises(UserError, match="'optim.nope'"):  # a closed mapping stays closed
        resolve(DEFAULTS, recipe, ["optim.nope=1"])


def test_the_robustness_tiny_recipe_takes_linear_overrides():
    from pathlib import Path

    from ssl_bench.evaluate import resolve_protocol_recipe

    recipe = Path(__file__).resolve().parents[1] / "protocols" / "robustness_tiny.yaml"
    out = resolve_protocol_recipe("robustness", recipe, ["linear.epochs=10"])
    assert out["linear"]["epochs"] == 10 and out["linear"]["variant"] == "mae"
