"""A pretraining recipe resolved, and the method it names built from it."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UserError
from ..methods import METHODS, Method
from ..recipes import load_defaults, parse_assignment, recipe_layers, resolve


def method_name(recipe_path: Path | None, sets=()) -> str:
    """The method a recipe names (its ``_base_`` chain, then ``--set method=``)."""
    name = load_defaults("pretrain/_engine")["method"]
    if recipe_path is not None:
        for _, layer in recipe_layers(Path(recipe_path)):
            name = layer.get("method", name)
    for text in sets:
        name = parse_assignment(text).get("method", name)
    return name


def resolve_recipe(recipe_path: Path | None, sets=()) -> dict:
    """Package defaults (``pretrain/_engine`` + ``pretrain/<method>``), the recipe file, then ``--set``."""
    name = method_name(recipe_path, sets)
    if not isinstance(name, str):
        raise UserError(f"{recipe_path}: 'method' must be a method name, got {name!r}")
    METHODS.get(name)  # unknown names fail here, listing the valid ones
    return resolve(load_defaults("pretrain/_engine", f"pretrain/{name}"), recipe_path, sets)


def build_method(recipe: dict) -> Method:
    torch.manual_seed(recipe["seed"])  # the same initial weights on every rank
    return METHODS.get(recipe["method"])(recipe)
