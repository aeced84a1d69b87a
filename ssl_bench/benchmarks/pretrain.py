"""Training speed of a pretraining method vs a bare timm encoder over the same tokens.

One run measures both: the method's full training step (``ssl_bench.engine.step.TrainStep``,
the engine's own; views already made, so data loading is excluded: loss, non-finite check,
backward, clipping, optimiser step, EMA update) and a bare forward +
backward of a fresh timm encoder of the same architecture over exactly the inputs the
method's online encoder saw in a step (same images, same kept tokens), with a mean loss.
The ratio is the method's overhead (teacher forward, heads, loss, optimiser, EMA).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..backbones import Backbone
from ..distributed import pick_device
from ..engine.data import to_device
from ..engine.recipe import build_method, resolve_recipe
from ..engine.step import Schedules, TrainStep, build_optimizer
from ..errors import UserError
from ..seeding import sample_seed, seeded

DESCRIPTION = "pretraining step images/s of a method and its ratio to a bare encoder fwd+bwd"

#: where the default recipe is looked for: the project's recipes, relative to the working folder
PROJECT_RECIPES = Path("pretrain")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", required=True, help="method name, e.g. msn or conmim")
    parser.add_argument("--recipe", type=Path,
                        help="recipe (default: pretrain/<method>_tiny.yaml under the working folder if present, "
                             "else the package defaults)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per side (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--batch-size", type=int, help="images per step (default: the recipe's)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")


def _batch(method, batch_size: int, size: int, device):
    transform = method.transform()
    rng = np.random.default_rng(0)
    samples = []
    for i in range(batch_size):
        pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        with seeded(sample_seed(0, 0, i)):
            samples.append(transform(Image.fromarray(pixels)))
    return to_device(torch.utils.data.default_collate(samples), device)


def _timed(fn, steps: int, warmup: int, device) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(args: argparse.Namespace) -> int:
    recipe_path = args.recipe
    if recipe_path is None:
        candidate = PROJECT_RECIPES / f"{args.method}_tiny.yaml"
        recipe_path = candidate if candidate.is_file() else None
    sets = [f"method={args.method}", *args.set]
    if args.batch_size:
        sets.append(f"data.batch_size={args.batch_size}")
    recipe = resolve_recipe(recipe_path, sets)
    if args.steps < 1:
        raise UserError(f"--steps {args.steps}: must be at least 1")
    device = pick_device(args.device)
    method = build_method(recipe).to(device).train()
    train_step = TrainStep(method, build_optimizer(method, recipe), Schedules(recipe, ipe=1000), recipe, device)
    batch_size = recipe["data"]["batch_size"]
    size = max(recipe["backbone"]["img_size"], recipe.get(recipe["method"], {}).get("rand_size", 0)) * 3 // 2
    batch = _batch(method, batch_size, size, device)
    bf16 = train_step.bf16

    # what the online encoder sees in one step: token calls (ViTs) or feature calls (ConvNets)
    calls = []
    original_tokens, original_features = method.backbone.tokens, method.backbone.features

    def spy_tokens(images, **kw):
        if torch.is_grad_enabled():
            calls.append((images, kw.get("keep"), kw.get("mask")))
        return original_tokens(images, **kw)

    def spy_features(images, kind="cls"):
        if torch.is_grad_enabled() and not method.backbone.is_vit:
            calls.append((images, None, None))
        return original_features(images, kind)

    def method_step():
        train_step(batch, 0)  # the engine's step; the schedules held at their first values

    method.backbone.tokens, method.backbone.features = spy_tokens, spy_features
    method_step()
    method.backbone.tokens, method.backbone.features = original_tokens, original_features
    seen = calls[:]
    if not seen:
        raise UserError(f"method {recipe['method']}: its online encoder was not called through "
                        "Backbone.tokens or Backbone.features; nothing to compare with")
    bare = Backbone(recipe["backbone"]["arch"], recipe["backbone"]["img_size"], recipe["backbone"]["patch_size"],
                    mask_token=method.backbone.mask_token is not None).to(device).train()

    def bare_step():
        bare.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            total = 0.0
            for images, keep, mask in seen:
                if keep is None and mask is None:
                    out = bare.model.forward_features(images)  # plain timm
                else:
                    out = bare.tokens(images, keep=keep, mask=mask).normed
                total = total + out.float().mean()
        total.backward()

    t_method = _timed(method_step, args.steps, args.warmup, device)
    t_bare = _timed(bare_step, args.steps, args.warmup, device)
    print(f"method\t{recipe['method']}")
    print(f"setting\t{recipe['backbone']['arch']}, batch {batch_size}, {recipe['precision']}, {device}")
    if bare.is_vit:
        tokens = sum(int(images.shape[0]) * (1 + (keep.shape[-1] if keep is not None
                                                  else (images.shape[-1] // bare.patch_size) ** 2))
                     for images, keep, _ in seen)
        print(f"online tokens/step\t{tokens}")
    else:
        print(f"online encoder images/step\t{sum(int(images.shape[0]) for images, _, _ in seen)}")
    print(f"method img/s\t{batch_size / t_method:.1f}\t(full training step, median of {args.steps})")
    print(f"bare encoder img/s\t{batch_size / t_bare:.1f}\t(timm fwd+bwd over the same tokens)")
    print(f"ratio\t{t_bare / t_method:.3f}\t(method / bare)")
    return 0
