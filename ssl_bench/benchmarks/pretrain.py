"""Training speed of a pretraining method against its ideal: the encoder work it cannot avoid.

One run measures both, taking turns in short runs of consecutive steps (``--consecutive``; the
first step of each run untimed; median of each), so a change in machine load hits both alike
while every timed step follows a step of its own, as in training:

- **method**: its full training step (``ssl_bench.engine.step.TrainStep``, the engine's own;
  views already made, so data loading is excluded): forward of online encoder, teacher, heads
  and decoder, loss, non-finite check, backward, clipping, optimiser step, EMA update;
- **ideal**: fresh timm encoders of the same architecture doing exactly the encoder work of
  that step: forward + backward of the online encoder over the inputs it saw (same images,
  same kept or masked tokens, the CLS token alone through the last block where the method reads
  nothing else) with a mean loss, plus a no-grad forward of the teacher encoder
  over the inputs the teacher saw (EMA methods), plus copies of the heads the method is defined
  with (``Method.essential_heads``: ConMIM's projector, SiameseIM's decoder) run on the inputs they
  saw, with gradients where the method had them. It leaves out the other heads, the loss, the
  optimiser, the EMA and the glue between modules: their share is ``method / ideal`` - 1, and
  their FLOPs (``torch.utils.flop_counter``) are shown as the step's against the ideal's. The
  time above the ideal is split into the optimiser step, the clipping and the EMA update, each
  timed alone after the interleaved steps, and the rest.

``--against lightly`` (MSN only) times the method's step against lightly's MSN instead, built
from the same recipe (``ssl_bench.benchmarks._lightly_msn``), and prints ours/lightly images/s.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..backbones import Backbone
from ..distributed import pick_device
from ..engine.data import to_device
from ..engine.recipe import build_method, resolve_precision, resolve_recipe
from ..engine.step import Schedules, TrainStep, build_optimizer, ema_update
from ..errors import UserError
from ..seeding import sample_seed, seeded
from ._lightly_msn import LIGHTLY, build_lightly_step, import_lightly

DESCRIPTION = ("pretraining step images/s of a method and its ratio to a bare encoder fwd+bwd "
               "(or, for msn, to lightly's MSN)")

#: where the default recipe is looked for: the project's recipes, relative to the working folder
PROJECT_RECIPES = Path("pretrain")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", required=True, help="method name, e.g. msn or conmim")
    parser.add_argument("--recipe", type=Path,
                        help="recipe (default: pretrain/<method>_tiny.yaml under the working folder if present, "
                             "else the package defaults)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override")
    parser.add_argument("--steps", type=int, default=20,
                        help="timed steps per side (median reported; default 20: single 10-step runs of the "
                             "same code moved by up to 0.17 on this project's 2-core machines)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--consecutive", type=int, default=3,
                        help="steps each side runs in a row before the other's turn, the first of them untimed "
                             "(default 3; 1: the two alternate step by step, every step timed)")
    parser.add_argument("--batch-size", type=int, help="images per step (default: the recipe's)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--against", choices=("ideal", "lightly"), default="ideal",
                        help="time the method's step against its ideal encoder work (default), or against "
                             f"lightly's MSN built with the same recipe (msn only; {LIGHTLY}, not a dependency)")


def _batch(method, batch_size: int, size: int, device):
    transform = method.transform()
    rng = np.random.default_rng(0)
    samples = []
    for i in range(batch_size):
        pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        with seeded(sample_seed(0, 0, i)):
            samples.append(transform(Image.fromarray(pixels)))
    return to_device(torch.utils.data.default_collate(samples), device)


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
    if args.consecutive < 1:
        raise UserError(f"--consecutive {args.consecutive}: must be at least 1")
    lightly = None
    if args.against == "lightly":
        if recipe["method"] != "msn":
            raise UserError(f"--against lightly: only msn has a lightly counterpart here, not {recipe['method']}")
        lightly = import_lightly()  # before any model is built: a missing lightly fails at once
    device = pick_device(args.device)
    recipe = resolve_precision(recipe, device)
    method = build_method(recipe).to(device).train()
    train_step = TrainStep(method, build_optimizer(method, recipe), Schedules(recipe, ipe=1000), recipe, device)
    size = max(recipe["backbone"]["img_size"], recipe.get(recipe["method"], {}).get("rand_size", 0)) * 3 // 2
    batch = _batch(method, recipe["data"]["batch_size"], size, device)
    if lightly is not None:
        return _against_lightly(args, recipe, train_step, batch, lightly)
    return _against_ideal(args, recipe, train_step, batch)


def _setting(recipe: dict, train_step: TrainStep) -> str:
    return (f"{recipe['backbone']['arch']}, batch {recipe['data']['batch_size']}, {recipe['precision']}, "
            f"{train_step.device}, {torch.get_num_threads()} threads, attention kernel {train_step.attention}, "
            f"conv input {train_step.conv_layout}, "
            + ("torch.compile (compiled in the warm-up steps)" if recipe["compile"] else "eager"))


def _against_lightly(args, recipe: dict, train_step: TrainStep, batch: dict, lightly) -> int:
    """Our MSN step against lightly's, built from the same recipe, interleaved."""
    device, batch_size = train_step.device, recipe["data"]["batch_size"]
    lightly_step, lightly_model = build_lightly_step(lightly, recipe, batch, device)

    def ours():
        train_step(batch, 0)

    t_ours, t_lightly = _interleaved(ours, lightly_step, args.steps, args.warmup, device, args.consecutive)
    flops_ours, flops_lightly = _flops(ours, train_step), _flops(lightly_step)
    c = recipe["msn"]
    views = (f"1 target view and {c['rand_views']} anchor view(s) of {c['rand_size']} px "
             f"({c['patch_drop']:g} of the patches dropped), {c['focal_views']} focal views of {c['focal_size']} px")
    print("method\tmsn")
    print(f"setting\t{_setting(recipe, train_step)}; {views}; {c['num_proto']} prototypes")
    print("ours includes\tthe engine's TrainStep: online encoder + head on anchors and focal views, target "
          "encoder + head (no grad), our MSN loss (fp32), non-finite check, backward, clipping, "
          f"{recipe['optim']['name']} step (torch's fused kernel), EMA update")
    print(f"lightly includes\tlightly {lightly.version}: MaskedVisionTransformerTIMM + MSNProjectionHead on the "
          "same views, target copies (no grad), MSNLoss (under the same autocast, torch's choice of attention "
          f"kernel), backward, the same clipping and {recipe['optim']['name']} (our parameter groups, torch's "
          "default implementation as in lightly's example), update_momentum of backbone and head")
    for name, model in (("ours", train_step.method), ("lightly", lightly_model)):
        print(f"{name} trained parameters\t{sum(p.numel() for p in model.parameters() if p.requires_grad)}")
    print(f"ours img/s\t{batch_size / t_ours:.4g}\t({_turns(args)})")
    print(f"lightly img/s\t{batch_size / t_lightly:.4g}\t({_turns(args)})")
    print(f"GFLOPs/step\t{flops_ours / 1e9:.2f}\t(ours; lightly {flops_lightly / 1e9:.2f})")
    print(f"ratio ours/lightly\t{t_lightly / t_ours:.3f}\t(images/s; above 1: ours is faster)")
    return 0


def _against_ideal(args, recipe: dict, train_step: TrainStep, batch: dict) -> int:
    """The method's step against its ideal encoder work (module docstring), interleaved."""
    method, device = train_step.method, train_step.device
    batch_size = recipe["data"]["batch_size"]

    # what the encoders see in one step: token calls (ViTs) or feature calls (ConvNets), with
    # gradients (online encoder) or without (the teacher)
    online, teacher = [], []
    backbones = [m for m in method.modules() if isinstance(m, Backbone)]
    for backbone in backbones:
        def spy_tokens(images, _original=backbone.tokens, **kw):
            (online if torch.is_grad_enabled() else teacher).append((images, kw))
            return _original(images, **kw)

        def spy_features(images, kind="cls", _original=backbone.features, _vit=backbone.is_vit):
            if not _vit:
                (online if torch.is_grad_enabled() else teacher).append((images, None))
            return _original(images, kind)

        backbone.tokens, backbone.features = spy_tokens, spy_features

    # what the heads the method is defined with see: (module, inputs, with gradients) per call
    head_calls = []

    def spy_head(module, inputs, _output):
        grad = torch.is_grad_enabled()
        head_calls.append((module, tuple(x.detach().requires_grad_(grad and x.is_floating_point())
                                         for x in inputs), grad))

    hooks = [part.register_forward_hook(spy_head) for name in method.essential_heads
             for part in _callable_parts(getattr(method, name))]

    def method_step():
        train_step(batch, 0)  # the engine's step; the schedules held at their first values

    method_step()
    for backbone in backbones:
        del backbone.tokens, backbone.features  # the instance attributes: the methods again
    for hook in hooks:
        hook.remove()
    head_copies = {id(module): copy.deepcopy(module).train() for module, _, _ in head_calls}
    if not online:
        raise UserError(f"method {recipe['method']}: its online encoder was not called through "
                        "Backbone.tokens or Backbone.features; nothing to compare with")
    arch = recipe["backbone"]

    def fresh():
        return Backbone(arch["arch"], arch["img_size"], arch["patch_size"],
                        mask_token=method.backbone.mask_token is not None).to(device).train()

    bare, bare_teacher = fresh(), fresh()

    def encode(encoder, calls):
        total = 0.0
        for images, kw in calls:
            if not kw:  # a ConvNet's features, or a ViT's tokens without options
                out = encoder.model.forward_features(encoder.conv_input(images))  # plain timm
            else:
                out = encoder.tokens(images, **kw).normed
            total = total + out.float().mean()
        return total

    def heads():
        total = 0.0
        for module, inputs, grad in head_calls:
            with torch.set_grad_enabled(grad):
                out = head_copies[id(module)](*inputs)
            if grad:
                total = total + out.float().mean()
        return total

    def ideal_step():
        bare.zero_grad(set_to_none=True)
        for module in head_copies.values():
            module.zero_grad(set_to_none=True)
        with train_step.kernels():  # the method step's autocast, attention kernel and conv layout
            if teacher:
                with torch.no_grad():
                    encode(bare_teacher, teacher)
            total = encode(bare, online) + heads()
        total.backward()

    t_method, t_ideal = _interleaved(method_step, ideal_step, args.steps, args.warmup, device, args.consecutive)
    parts = _update_parts(train_step, args.steps, device)
    flops_method, flops_ideal = _flops(method_step, train_step), _flops(ideal_step)
    print(f"method\t{recipe['method']}")
    print(f"setting\t{_setting(recipe, train_step)}")
    names = ", ".join(method.essential_heads)
    print(f"ideal includes\tonline encoder fwd+bwd over the tokens it saw"
          + (" + teacher encoder forward (no grad)" if teacher else " (no teacher)")
          + (f" + the method's own heads ({names}; fwd+bwd where the method had gradients)" if names else "")
          + "; not " + ("the other heads, " if not names else "") + "loss, optimiser, EMA, glue")
    for name, calls in (("online", online), ("teacher", teacher)):
        if not calls:
            continue
        if bare.is_vit:
            tokens = sum(int(images.shape[0]) * (1 + (kw["keep"].shape[-1] if kw.get("keep") is not None
                                                      else (images.shape[-1] // bare.patch_size) ** 2))
                         for images, kw in calls)
            last = sum(int(images.shape[0]) for images, kw in calls if kw.get("prefix_only"))
            print(f"{name} tokens/step\t{tokens}" + (f"\t(the CLS token alone through the last block for {last} "
                                                      "images)" if last else ""))
        else:
            print(f"{name} encoder images/step\t{sum(int(images.shape[0]) for images, _ in calls)}")
    if head_calls:
        with_grad = sum(grad for _, _, grad in head_calls)
        print(f"head calls/step\t{with_grad}\t(with gradients; {len(head_calls) - with_grad} without)")
    print(f"method img/s\t{batch_size / t_method:.4g}\t(full training step, {_turns(args)})")
    print(f"ideal img/s\t{batch_size / t_ideal:.4g}\t(the ideal step above, interleaved with the method)")
    print(f"GFLOPs/step\t{flops_method / 1e9:.2f}\t(method; ideal {flops_ideal / 1e9:.2f}: what the ideal "
          f"leaves out adds {100 * (flops_method / flops_ideal - 1):.0f}%)")
    print(f"ratio\t{t_method / t_ideal:.3f}\t(method time / ideal time)")
    above = t_method - t_ideal
    print(f"above the ideal\t{above * 1e3:.1f} ms/step\t("
          + ", ".join(f"{name} {seconds * 1e3:.1f} ms" for name, seconds in parts.items())
          + f"; the rest, loss, heads outside the ideal and glue, {(above - sum(parts.values())) * 1e3:.1f} ms)")
    return 0


def _update_parts(train_step: TrainStep, steps: int, device) -> dict[str, float]:
    """Median seconds of the parts of the method's step after its backward, each run alone on the
    gradients and states the last step left: the optimiser step, gradient clipping (where the
    recipe clips) and the EMA update (where the method has teachers)."""
    parts = {"optimiser step": train_step.optimizer.step}
    if train_step.clip_grad > 0:
        parts["clipping"] = train_step.clip_gradients
    if train_step.pairs:
        parts["EMA"] = lambda: ema_update(train_step.pairs, train_step.schedules.momentum(0))
    times = {name: [] for name in parts}
    for _ in range(steps):
        for name, part in parts.items():
            times[name].append(_seconds(part, device))
    return {name: statistics.median(values) for name, values in times.items()}


def _callable_parts(module: nn.Module) -> list[nn.Module]:
    """The modules a method calls: a ModuleList's blocks (called one by one), else the module."""
    return list(module) if isinstance(module, nn.ModuleList) else [module]


def _turns(args: argparse.Namespace) -> str:
    """How the timed steps were taken, for the printed figures."""
    if args.consecutive > 1:
        return (f"median of {args.steps} steps, taking turns in runs of {args.consecutive}, "
                "the first of each run untimed")
    return f"median of {args.steps} steps, taking turns step by step"


def _interleaved(first, second, steps: int, warmup: int, device, consecutive: int) -> tuple[float, float]:
    """Median seconds of ``first`` and of ``second`` over ``steps`` timed calls each, the two taking
    turns in runs of ``consecutive`` calls. In a run of more than one call the first is not
    timed: it follows the other side's step, which evicts this side's parameters and optimiser
    state from the CPU caches, a state no training step starts from (MSN tiny fp32 against
    lightly, 2026-12-04, one process: ours 1.069x lightly's images/s over 20 steps taken in turns
    step by step, 1.099x over 40 steps in runs of 3)."""
    for _ in range(warmup):
        first()
        second()
    untimed = 1 if consecutive > 1 else 0
    times = ([], [])
    while len(times[0]) < steps:
        for fn, out in zip((first, second), times):
            for call in range(min(consecutive, steps - len(out) + untimed)):
                seconds = _seconds(fn, device)
                if call >= untimed:
                    out.append(seconds)
    return statistics.median(times[0]), statistics.median(times[1])


def _seconds(fn, device) -> float:
    """Wall-clock seconds of one call of ``fn``, the device's queued work included."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _flops(fn, train_step: TrainStep | None = None) -> int:
    """Floating-point operations of one call of ``fn`` (forward and backward); a compiled
    ``train_step`` is counted on its eager module (the counter cannot see into compiled code)."""
    from torch.utils.flop_counter import FlopCounterMode

    compiled = train_step.model if train_step is not None else None
    if compiled is not None:
        train_step.model = getattr(compiled, "_orig_mod", compiled)
    try:
        with FlopCounterMode(display=False) as counter:
            fn()
    finally:
        if compiled is not None:
            train_step.model = compiled
    return counter.get_total_flops()
