"""SiameseIM: relative position + scale embedding, UniGrad, blockwise mask, model and engine runs.

Golden values are computed here independently: positions by hand and with the official
code's flip-first formula re-derived in numpy; UniGrad with the explicit O(N^2) sum.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from test_engine import make_images, torchrun_rank_weights

from ssl_bench.engine import resolve_recipe
from ssl_bench.engine.recipe import build_method
from ssl_bench.methods._masks import blockwise_mask
from ssl_bench.methods.siameseim import (TokenBatchNorm, grid_sincos, relative_embedding, relative_positions,
                                        unigrad_loss)
from ssl_bench.seeding import seeded

GRID = (4, 4)


def geometry(view1, view2):
    """(1, 2, 5) tensor of (top, left, h, w, flip) per view."""
    return torch.tensor([[view1, view2]], dtype=torch.float64)


# ----- relative positions -----------------------------------------------------------------------
V1 = (10, 20, 80, 40, 0)   # top, left, height, width, flip
V2 = (30, 30, 40, 80, 0)


def test_relative_positions_by_hand():
    # view-2 patch (u, v) centre in source pixels: y = 30 + (u + .5) * 10, x = 30 + (v + .5) * 20;
    # in view-1 patch units (20 px tall, 10 px wide patches, origin at (10, 20)), minus the .5 anchor
    rows, cols, scale = relative_positions(geometry(V1, V2), GRID)
    expect_rows = [0.75, 1.25, 1.75, 2.25]   # (y - 10) / 20 - .5
    expect_cols = [1.5, 3.5, 5.5, 7.5]       # (x - 20) / 10 - .5
    assert np.allclose(rows[0].reshape(4, 4).numpy(), np.array(expect_rows)[:, None].repeat(4, 1))
    assert np.allclose(cols[0].reshape(4, 4).numpy(), np.array(expect_cols)[None, :].repeat(4, 0))
    assert np.allclose(scale[0].numpy(), [10 * math.log(0.5), 10 * math.log(2.0)])


def test_relative_positions_flipped_view_by_hand():
    # view 2 flipped: its column v reads the crop right to left, x = 30 + 80 - (v + .5) * 20
    rows, cols, _ = relative_positions(geometry(V1, V2[:4] + (1,)), GRID)
    assert np.allclose(cols[0, :4].numpy(), [7.5, 5.5, 3.5, 1.5])
    assert np.allclose(rows[0, ::4].numpy(), [0.75, 1.25, 1.75, 2.25])  # rows unchanged by a flip


def _official(view1, view2, image_width, grid):
    """The official pipeline re-derived in numpy: it flips the whole image FIRST, then crops, so
    a flipped view's left edge is W - left - width; relative_flip = XOR of the flips;
    (delta_i, delta_j, delta_h, delta_w, flip_delta_j) = ((i2-i1)/h1, (j2-j1)/w1, h2/h1, w2/w1,
    (W-j1-j2)/w1); rows = delta_h*(u+.5) + delta_i*N - .5; cols likewise, or when relatively
    flipped -delta_w*(v+.5) + flip_delta_j*N - .5 (util/pos_embed.py)."""
    (t1, l1, h1, w1, f1), (t2, l2, h2, w2, f2) = view1, view2
    j1 = image_width - l1 - w1 if f1 else l1
    j2 = image_width - l2 - w2 if f2 else l2
    n = grid[0]
    u, v = np.meshgrid(np.arange(n) + 0.5, np.arange(n) + 0.5, indexing="ij")
    rows = h2 / h1 * u + (t2 - t1) / h1 * n - 0.5
    if bool(f1) != bool(f2):
        cols = -w2 / w1 * v + (image_width - j1 - j2) / w1 * n - 0.5
    else:
        cols = w2 / w1 * v + (j2 - j1) / w1 * n - 0.5
    return rows.reshape(-1), cols.reshape(-1)


@pytest.mark.parametrize("flips", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_relative_positions_match_official_flip_first_formula(flips):
    view1, view2 = V1[:4] + (flips[0],), V2[:4] + (flips[1],)
    rows, cols, _ = relative_positions(geometry(view1, view2), GRID)
    exp_rows, exp_cols = _official(view1, view2, image_width=160, grid=GRID)
    assert np.allclose(rows[0].numpy(), exp_rows)
    assert np.allclose(cols[0].numpy(), exp_cols)


def test_paper_anchor_is_eq2():
    # paper Eq. 2 (anchor 0): rows = h2/h1 * u + (i2 - i1)/h1 * N
    rows, cols, _ = relative_positions(geometry(V1, V2), GRID, anchor=0.0)
    assert np.allclose(rows[0, ::4].numpy(), [0.5 * u + 20 / 80 * 4 for u in range(4)])
    assert np.allclose(cols[0, :4].numpy(), [2.0 * v + 10 / 40 * 4 for v in range(4)])


def _np_sincos_1d(pos, dim):
    omega = 1.0 / 10000 ** (np.arange(dim // 2) / (dim / 2))
    out = np.outer(pos, omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def test_embedding_values_for_known_crops():
    dim = 8
    emb = relative_embedding(geometry(V1, V2), GRID, dim)[0].numpy()  # (16, 16)
    rows = np.repeat([0.75, 1.25, 1.75, 2.25], 4)
    cols = np.tile([1.5, 3.5, 5.5, 7.5], 4)
    sh, sw = 10 * math.log(0.5), 10 * math.log(2.0)
    expect = np.concatenate([_np_sincos_1d(rows, 4), _np_sincos_1d(cols, 4),
                             _np_sincos_1d(np.full(16, sh), 4), _np_sincos_1d(np.full(16, sw), 4)], axis=1)
    assert np.allclose(emb, expect, atol=1e-6)


@pytest.mark.parametrize("flip", [0, 1])
def test_same_view_degenerates_to_ordinary_positions(flip):
    view = (7, 3, 50, 60, flip)
    rows, cols, scale = relative_positions(geometry(view, view), GRID)
    u, v = np.meshgrid(np.arange(4), np.arange(4), indexing="ij")
    assert np.allclose(rows[0].numpy(), u.reshape(-1)) and np.allclose(cols[0].numpy(), v.reshape(-1))
    assert np.allclose(scale.numpy(), 0)
    dim = 16
    emb = relative_embedding(geometry(view, view), GRID, dim)[0]
    # first half: the ordinary MAE 2-d sin-cos of the decoder positions; second: PE(0) = [0.., 1..]
    ordinary = np.concatenate([_np_sincos_1d(u.reshape(-1), 8), _np_sincos_1d(v.reshape(-1), 8)], axis=1)
    assert np.allclose(emb[:, :dim].numpy(), ordinary, atol=1e-6)
    assert np.allclose(grid_sincos(GRID, dim).numpy(), ordinary, atol=1e-6)
    assert np.allclose(emb[:, dim:].numpy(), np.tile([0, 0, 0, 0, 1, 1, 1, 1], 2)[None].repeat(16, 0), atol=1e-6)


# ----- UniGrad ------------------------------------------------------------------------------------
def test_unigrad_by_hand():
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    # pos = mean(|(0,-1)|^2, |(0,1)|^2) = 1; C = mean(z z^T) = [[.5,.5],[.5,.5]]; neg = mean(.5, .5)
    loss = unigrad_loss(y, z, 0.02, target_norm=False)
    assert loss.item() == pytest.approx((1 + 0.02 * 0.5) / 2)


def test_unigrad_equals_explicit_quadratic_formula():
    rng = np.random.default_rng(0)
    pred = rng.normal(size=(2, 5, 8))
    target = rng.normal(size=(2, 5, 8)) * 3 + 1
    z = target.reshape(-1, 8)
    z = (z - z.mean(1, keepdims=True)) / np.sqrt(z.var(1, keepdims=True) + 1e-5)  # LN, no affine
    y = pred.reshape(-1, 8)
    pos = np.mean(np.sum((y - z) ** 2, axis=1))
    neg = np.mean([np.mean([(zj @ yi) ** 2 for zj in z]) for yi in y])  # N x N similarities
    expect = (pos + 0.02 * neg) / 8
    got = unigrad_loss(torch.tensor(pred, dtype=torch.float32), torch.tensor(target, dtype=torch.float32), 0.02)
    assert got.item() == pytest.approx(expect, rel=1e-5)


def test_unigrad_gradient_flows_to_prediction_only():
    pred = torch.randn(3, 4, 6, requires_grad=True)
    target = torch.randn(3, 4, 6, requires_grad=True)
    unigrad_loss(pred, target).backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0 and target.grad is None


# ----- blockwise mask -----------------------------------------------------------------------------
def test_blockwise_mask_fixed_count_and_blocks():
    random.seed(0)
    masks = [blockwise_mask((14, 14), 118) for _ in range(200)]
    assert all(int(m.sum()) == 118 for m in masks)  # exactly 118 of 196 (official config)
    # blockwise: a masked patch's right neighbour is masked far more often than the 118/196 chance
    same = np.mean([(m[:, 1:] & m[:, :-1]).sum().item() / m[:, :-1].sum().item() for m in masks])
    assert same > 0.8


# ----- model through the engine ------------------------------------------------------------------
TINY = """method: siameseim
backbone: {{arch: vit_tiny_patch16_224, img_size: 32, patch_size: 16}}
data: {{root: {root}, batch_size: 4, num_workers: 0}}
optim: {{epochs: 1, warmup_epochs: 0, lr: 0.0005, betas: [0.9, 0.95], clip_grad: 1.0}}
ema: {{schedule: cosine, start: 0.995, end: 1.0}}
siameseim: {{decoder_dim: 32, decoder_heads: 2, projector_depth: 1, predictor_depth: 1,
            num_masking_patches: 2, min_mask_patches: 1}}
checkpoint: {{every_steps: 0, every_epochs: 1}}
"""


def tiny_recipe(tmp_path: Path, text: str, per_class: int = 4) -> Path:
    data = make_images(tmp_path / "data", per_class=per_class, size=48)
    path = tmp_path / "recipe.yaml"
    path.write_text(text.format(root=data))
    return path


def test_model_step_export_and_ema(tmp_path):
    recipe = resolve_recipe(tiny_recipe(tmp_path, TINY), [])
    method = build_method(recipe)
    vit = method.backbone.model
    assert isinstance(vit.norm, torch.nn.Identity)  # no final norm (official encoder)
    assert not vit.pos_embed.requires_grad and not vit.patch_embed.proj.weight.requires_grad
    assert torch.allclose(vit.pos_embed[0, 1:], grid_sincos((2, 2), 192)) and vit.pos_embed[0, 0].abs().sum() == 0
    from PIL import Image

    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8))
    with seeded(0):
        samples = [method.transform()(img) for _ in range(4)]
    batch = {k: torch.stack([s[k] for s in samples]) for k in samples[0]}
    assert batch["mask"].flatten(1).sum(1).tolist() == [2, 2, 2, 2]
    target_before = {k: v.clone() for k, v in method.target_backbone.state_dict().items()}
    loss, logs = method.loss(batch)
    loss.backward()
    assert torch.isfinite(loss) and logs["masked"].item() == 2
    assert all(p.grad is None for p in method.target_backbone.parameters())
    assert method.mask_token.grad is not None and method.decoder_pos_mlp.weight.grad.abs().sum() > 0
    assert all(torch.equal(v, method.target_backbone.state_dict()[k]) for k, v in target_before.items())
    names = {id(p) for p in method.backbone.parameters()}
    assert len(method.ema_pairs()) == 3 and id(method.ema_pairs()[0][0].model.cls_token) in names
    backbone, meta = method.export()
    assert backbone is method.backbone and meta["encoder"] == "online"
    assert meta["eval"] == {"feature": "avgpool", "final_norm": False, "input_filter": None}


def torchrun_steps(tmp_path: Path, recipe: Path, steps: int, prefixes: tuple[str, ...]) -> None:
    """Run ``recipe`` under torchrun with 2 CPU ranks and check both ranks finish with identical
    parameters, online and teacher/target."""
    r0, r1 = torchrun_rank_weights(tmp_path, recipe, tmp_path / "ddp", steps)
    assert r0.keys() == r1.keys()
    for prefix in prefixes:
        assert any(k.startswith(prefix) for k in r0), prefix
    for key in r0:
        assert torch.equal(r0[key], r1[key]), key
    meta = json.loads((tmp_path / "ddp" / "train_state.json").read_text())
    assert meta["step"] == steps and meta["world_size"] == 2


def test_torchrun_two_ranks(tmp_path):
    # 8 images / 2 ranks / batch 2 -> 2 steps
    recipe = tiny_recipe(tmp_path, TINY.replace("batch_size: 4", "batch_size: 2"))
    torchrun_steps(tmp_path, recipe, 2, ("backbone.", "target_backbone.", "target_projector."))
    run = tmp_path / "ddp"
    meta = json.loads((run / "checkpoint.json").read_text())
    assert meta["method"] == "siameseim" and meta["encoder"] == "online"
    assert meta["eval"]["final_norm"] is False and meta["eval"]["feature"] == "avgpool"
    from ssl_bench.checkpoints import load_spec

    assert isinstance(load_spec(str(run)).backbone.model.norm, torch.nn.Identity)
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    # cosine EMA 0.995 -> 1 over the run's 2 steps: m(0) = 0.995, m(1) = 0.995 + 0.005 / 2
    assert [round(r["momentum"], 6) for r in log] == [0.995, 0.9975]


def test_target_has_no_drop_path_and_conv_stem_freezes_whole(tmp_path):
    """models_sim.py builds mm_blocks without drop path: the target (train mode) is deterministic while
    the online encoder drops paths; a frozen patch embedding of a conv-stem ViT is the whole stem."""
    text = TINY.replace("{{arch: vit_tiny_patch16_224, img_size: 32, patch_size: 16}}",
                        "{{arch: vit_tiny_convstem_patch16_224, img_size: 32, patch_size: 16, drop_path_rate: 0.5}}")
    method = build_method(resolve_recipe(tiny_recipe(tmp_path, text), [])).train()
    assert not any(p.requires_grad for p in method.backbone.model.patch_embed.parameters())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.manual_seed(0)
        online = [method.backbone.tokens(x).prenorm for _ in range(2)]
        target = [method.target_backbone.tokens(x).prenorm for _ in range(2)]
    assert not torch.allclose(online[0], online[1]) and torch.equal(target[0], target[1])


def test_token_batchnorm_equals_the_official_permuted_batchnorm():
    # official PermuteBN: BatchNorm1d on the (B, C, L) permutation of (B, L, C) tokens, in float32
    torch.manual_seed(0)
    x = torch.randn(3, 5, 4) * torch.tensor([1.0, 2.0, 0.5, 3.0]) + torch.tensor([0.0, 1.0, -2.0, 4.0])
    ours, official = TokenBatchNorm(4), torch.nn.BatchNorm1d(4)
    y = ours(x)
    expected = official(x.transpose(1, 2)).transpose(1, 2)
    assert torch.allclose(y, expected, atol=1e-6)
    # by hand: per channel over the 15 tokens, biased variance, eps 1e-5
    flat = x.reshape(-1, 4)
    assert torch.allclose(y.reshape(-1, 4), (flat - flat.mean(0)) / torch.sqrt(flat.var(0, unbiased=False) + 1e-5),
                          atol=1e-5)
    # running statistics: momentum 0.1 towards the mean and the unbiased variance of the 15 tokens
    assert torch.allclose(ours.bn.running_mean, 0.1 * flat.mean(0), atol=1e-6)
    assert torch.allclose(ours.bn.running_var, 0.9 + 0.1 * flat.var(0, unbiased=True), atol=1e-5)
    assert torch.allclose(ours.bn.running_var, official.running_var, atol=1e-6)
    # under bf16 autocast: statistics in float32, output in the input's bf16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = TokenBatchNorm(4)(x.bfloat16())
    assert z.dtype == torch.bfloat16
    assert torch.allclose(z.float(), TokenBatchNorm(4)(x.bfloat16().float()), atol=1e-2)
