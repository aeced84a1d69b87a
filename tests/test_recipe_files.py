"""The recipes of pretrain/ and protocols/ state only what they change.

Every key a recipe sets must differ from the value the package defaults and its ``_base_`` chain
would give it: the defaults (``ssl_bench/defaults``) carry each value with its source, a full-scale
recipe the paper's values where they differ, a ``*_tiny.yaml`` what it shrinks. One exception: the
engine keys of a full-scale pretraining recipe (optimiser, schedule, batch, backbone), whose package
defaults are neutral placeholders, so the recipe states the paper's value with its source even
where a placeholder happens to equal it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ssl_bench.engine.recipe import method_name
from ssl_bench.recipes import load_defaults, merge, recipe_layers

REPO = Path(__file__).resolve().parents[1]
PROTOCOL_DEFAULTS = sorted((p.stem for p in (REPO / "ssl_bench/defaults/protocols").glob("*.yaml")),
                           key=len, reverse=True)
RECIPES = sorted(p for folder in ("pretrain", "protocols") for p in (REPO / folder).glob("*.yaml")
                 if p.name not in ("demo.yaml", "demo_reference.yaml"))  # the demo's indexes, not recipes


def defaults_of(path: Path) -> dict:
    if path.parent.name == "pretrain":
        return load_defaults("pretrain/_engine", f"pretrain/{method_name(path)}")
    protocol = next(p for p in PROTOCOL_DEFAULTS if path.stem == p or path.stem.startswith(p + "_"))
    return load_defaults(f"protocols/{protocol}")


def leaves(mapping: dict, prefix: str = ""):
    for key, value in mapping.items():
        if isinstance(value, dict) and value:
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def lookup(mapping: dict, dotted: str):
    """The value at ``dotted``; a key that does not exist there (an open mapping's) is its own marker."""
    for part in dotted.split("."):
        if not isinstance(mapping, dict) or part not in mapping:
            return KeyError
        mapping = mapping[part]
    return mapping


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_key_a_recipe_sets_changes_its_value(path):
    layers = recipe_layers(path)
    before = defaults_of(path)
    for source, layer in layers[:-1]:
        before = merge(before, layer, source)
    own = dict(layers[-1][1])
    after = merge(before, own, str(path))
    full_scale_pretrain = path.parent.name == "pretrain" and len(layers) == 1
    restated = []
    for key, _ in leaves(own):
        top = key.split(".")[0]
        if top == "method" or (full_scale_pretrain and top != own.get("method")):
            continue  # the method named explicitly; engine keys with neutral defaults (module docstring)
        if lookup(after, key) == lookup(before, key):
            restated.append(key)
    assert not restated, f"{path.name} restates what its defaults / _base_ give: {', '.join(restated)}"
