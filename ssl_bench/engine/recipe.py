"""A pretraining recipe resolved (``precision: auto`` once the device is known), and the method it
names built from it."""

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


PRECISIONS = ("auto", "fp32", "bf16")


def resolve_precision(recipe: dict, device: torch.device) -> dict:
    """The recipe with ``precision: auto`` made ``bf16`` where ``device`` computes in bf16 natively,
    else ``fp32``, and ``precision_auto: true`` beside it, so a run's stored recipe says both what ran
    and that it was chosen. Any other precision passes unchanged."""
    if recipe["precision"] not in PRECISIONS:
        raise UserError(f"precision: {recipe['precision']!r} is not valid; use {', '.join(PRECISIONS)}")
    if recipe["precision"] != "auto":
        return recipe
    resolved = {}
    for key, value in recipe.items():
        resolved[key] = value
        if key == "precision":
            resolved.update(precision="bf16" if native_bf16(device) else "fp32", precision_auto=True)
    return resolved


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` has bf16 arithmetic in hardware (then bf16 autocast is faster than fp32)."""
    if device.type == "cuda":
        with torch.cuda.device(device):  # compute capability 8.0+; older GPUs only emulate it
            return torch.cuda.is_bf16_supported(including_emulation=False)
    # CPU: bf16 dot products (AVX512_BF16) or AMX tiles, read from the CPU's feature flags (cpuinfo).
    # Not torch.backends.cpu.get_cpu_capability(), which says "AVX512" with or without bf16, nor
    # torch.ops.mkldnn._is_mkldnn_bf16_supported(), true wherever oneDNN runs bf16 at all, by
    # converting to fp32 on a plain AVX-512 CPU. On an avx512_bf16 CPU bf16 autocast took 0.69-0.78x
    # the time of fp32 (issue 19, ssl-bench bench pretrain); other CPUs (ARM included) get fp32.
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def build_method(recipe: dict) -> Method:
    torch.manual_seed(recipe["seed"])  # the same initial weights on every rank
    return METHODS.get(recipe["method"])(recipe)
