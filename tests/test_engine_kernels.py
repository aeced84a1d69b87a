"""The training step's kernels: the attention kernel a recipe's ``attention`` resolves to, the layout
of convolution input (``conv_layout``), torch's fused AdamW (the same update rule as the per-tensor
loop), and ``compile: true`` (slow)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ssl_bench.attention import attention_kernel, resolve_attention
from ssl_bench.backbones import Backbone
from ssl_bench.conv_layout import conv_layout, resolve_conv_layout
from ssl_bench.engine import resolve_recipe
from ssl_bench.engine.recipe import build_method
from ssl_bench.engine.step import Schedules, TrainStep, build_optimizer
from ssl_bench.errors import UserError
from ssl_bench.benchmarks.pretrain import _batch

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_auto_attention_is_math_only_on_cpu_under_bf16():
    assert resolve_attention("auto", CPU, bf16=True) == "math"
    assert resolve_attention("auto", CPU, bf16=False) == "torch"
    assert resolve_attention("auto", CUDA, bf16=True) == "torch"
    assert resolve_attention("flash", CPU, bf16=True) == "flash"
    with pytest.raises(UserError, match="attention: 'fast' is not valid; use auto or one of torch, math"):
        resolve_attention("fast", CPU, bf16=True)


def test_math_kernel_is_softmax_attention_and_the_only_one_allowed():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8) for _ in range(3))
    with attention_kernel("math"):
        assert torch.backends.cuda.math_sdp_enabled() and not torch.backends.cuda.flash_sdp_enabled()
        out = F.scaled_dot_product_attention(q, k, v)
    assert torch.backends.cuda.flash_sdp_enabled()  # restored on exit
    by_hand = torch.softmax(q @ k.transpose(-1, -2) / 8 ** 0.5, dim=-1) @ v
    assert torch.allclose(out, by_hand, atol=1e-6)


def test_auto_conv_layout_is_channels_last_only_on_cpu():
    assert resolve_conv_layout("auto", CPU) == "channels_last"
    assert resolve_conv_layout("auto", CUDA) == "contiguous"
    assert resolve_conv_layout("contiguous", CPU) == "contiguous"
    with pytest.raises(UserError, match="conv_layout: 'nhwc' is not valid; use auto, channels_last or contiguous"):
        resolve_conv_layout("nhwc", CPU)


@pytest.mark.parametrize("arch, converted", [("resnet18", True), ("vit_tiny_convstem_patch16_224", True),
                                             ("vit_tiny_patch16_224", False)])
def test_channels_last_reaches_convolutions_only_and_keeps_the_features(arch, converted):
    """ConvNets and conv stems read channels-last images inside the step's context (a plain patch
    projection, where it did not help, keeps NCHW); outside it nothing changes. The features are
    the NCHW ones up to float rounding, and the parameters keep their layout."""
    torch.manual_seed(0)
    backbone = Backbone(arch, 64, 16).eval()
    images = torch.randn(2, 3, 64, 64)
    kind = "avgpool" if arch == "resnet18" else "cls"
    with conv_layout("channels_last"):
        laid_out = backbone.conv_input(images)
        features = backbone.features(images, kind)
    assert laid_out.is_contiguous(memory_format=torch.channels_last) is converted
    assert laid_out.is_contiguous() is not converted
    assert backbone.conv_input(images) is images  # outside the context
    with conv_layout("contiguous"):
        assert backbone.conv_input(images) is images
    reference = backbone.features(images, kind)
    assert torch.allclose(features, reference, rtol=1e-4, atol=1e-5)
    assert all(p.is_contiguous() for p in backbone.parameters())


def test_mscn_step_with_channels_last_input_matches_nchw():
    """One MSCN (ResNet-18) step each way from the same start: the same loss and gradients up to
    float rounding."""
    steps = {layout: _step("mscn", ["precision=fp32", f"conv_layout={layout}"])
             for layout in ("channels_last", "contiguous")}
    (fast, batch), (plain, _) = steps["channels_last"], steps["contiguous"]
    assert fast.conv_layout == "channels_last" and plain.conv_layout == "contiguous"
    assert torch.allclose(fast(batch, 0).loss, plain(batch, 0).loss, rtol=1e-4)
    for a, b in zip(fast.method.parameters(), plain.method.parameters()):
        if a.grad is not None:
            assert torch.allclose(a.grad, b.grad, rtol=1e-3, atol=1e-5)


def _step(method_name: str, sets=()):
    recipe = resolve_recipe(Path(f"pretrain/{method_name}_tiny.yaml"), [f"method={method_name}",
                                                                      "data.batch_size=4", *sets])
    torch.manual_seed(0)
    method = build_method(recipe).train()
    step = TrainStep(method, build_optimizer(method, recipe), Schedules(recipe, ipe=1000), recipe, CPU)
    return step, _batch(method, 4, 96, CPU)


def test_adamw_runs_fused_and_updates_like_torchs_default_loop():
    step, batch = _step("msn", ["precision=fp32"])
    assert step.optimizer.defaults["fused"] is True
    reference = build_optimizer(step.method, step.method.recipe, fused=False)
    assert not reference.defaults["fused"]
    params = [p for group in step.optimizer.param_groups for p in group["params"]]
    start = [p.detach().clone() for p in params]
    step(batch, 0)
    after_fused = [p.detach().clone() for p in params]
    grads = [p.grad.clone() for p in params]
    with torch.no_grad():  # the same gradients through torch's default AdamW from the same start
        for p, s, g in zip(params, start, grads):
            p.copy_(s)
            p.grad = g
    for group, ref_group in zip(step.optimizer.param_groups, reference.param_groups):
        ref_group["lr"], ref_group["weight_decay"] = group["lr"], group["weight_decay"]
    reference.step()
    assert any(not torch.equal(a, s) for a, s in zip(after_fused, start))
    for a, p in zip(after_fused, params):
        assert torch.allclose(a, p, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_compiled_step_matches_the_eager_step():
    eager, batch = _step("msn", ["precision=fp32"])
    compiled, _ = _step("msn", ["precision=fp32", "compile=true"])
    assert compiled.model is not compiled.method and hasattr(compiled.model, "_orig_mod")
    loss_eager, loss_compiled = eager(batch, 0).loss, compiled(batch, 0).loss
    assert abs(float(loss_eager) - float(loss_compiled)) < 1e-4
    # the gradients of the same start (Adam's first update is lr x sign(gradient), which magnifies
    # float noise in near-zero gradients, so the gradients are compared, not the updated weights)
    pairs = [(a.grad, b.grad) for a, b in zip(eager.method.parameters(), compiled.method.parameters())
             if a.grad is not None]
    assert len(pairs) > 100 and all(b is not None for _, b in pairs)
    for a, b in pairs:
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-6)
