"""ConMIM parity tests: golden values computed here by hand or with plain numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_bench.engine import resolve_recipe
from ssl_bench.engine.step import build_optimizer
from ssl_bench.methods._masks import grid_random_mask
from ssl_bench.methods.conmim import ConMIM, ConMIMTransform, conmim_loss
from ssl_bench.schedules import momentum_at
from ssl_bench.seeding import seeded


def _recipe(tmp_path, *sets):
    path = tmp_path / "r.yaml"
    path.write_text("method: conmim\nbackbone: {arch: vit_tiny_patch16_224, img_size: 64, patch_size: 16}\n"
                    "conmim: {mask_patch_size: 32, proj_hidden_dim: 32, proj_output_dim: 8}\n")
    return resolve_recipe(path, list(sets))


# ----- mask ------------------------------------------------------------------------------------
@pytest.mark.parametrize("mask_px,cells,masked_cells", [(32, 49, 37), (16, 196, 147)])
def test_grid_mask_count_and_alignment(mask_px, cells, masked_cells):
    # 224 px, patch 16 -> 14x14 patches; 32 px cells -> 7x7 = 49, ceil(49 * 0.75) = ceil(36.75) = 37
    # cells of 2x2 patches (148 patches); 16 px cells (ViT-S) -> 196 cells, ceil(147) = 147
    torch.manual_seed(0)
    mask = grid_random_mask((14, 14), 16, mask_px, 0.75)
    scale = mask_px // 16
    assert mask.shape == (14, 14) and mask.dtype == torch.bool
    assert int(mask.sum()) == masked_cells * scale * scale
    blocks = mask.reshape(14 // scale, scale, 14 // scale, scale).permute(0, 2, 1, 3).flatten(2)
    assert torch.all(blocks.all(-1) | ~blocks.any(-1))  # every cell fully masked or fully visible
    assert blocks.any(-1).sum() == masked_cells and blocks.any(-1).numel() == cells


def test_grid_mask_refuses_misaligned_cells():
    with pytest.raises(ValueError, match="multiple of the patch size"):
        grid_random_mask((14, 14), 16, 24, 0.75)


def test_transform_shares_geometry_between_renderings():
    cfg = {"mask_ratio": 0.75, "mask_patch_size": 32, "crop_scale": [0.08, 1.0], "interpolation": "bicubic",
           "strong_jitter": [0.4, 0.4, 0.2, 0.1], "strong_jitter_p": 0.0, "strong_grayscale_p": 0.0,
           "strong_blur_p": 0.0, "strong_solarize_p": 0.0, "swap_views": False}
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (80, 90, 3), dtype=np.uint8))
    with seeded(3):
        out = ConMIMTransform(cfg, 64, 16)(img)
    assert torch.equal(out["weak"], out["strong"])  # no strong perturbation -> the very same crop and flip
    assert out["mask"].shape == (4, 4) and int(out["mask"].sum()) == 12  # 2x2 cells, ceil(3) cells x 4
    cfg.update(strong_jitter_p=1.0, strong_solarize_p=1.0)
    with seeded(3):
        strong = ConMIMTransform(cfg, 64, 16)(img)
    assert torch.equal(strong["weak"], out["weak"]) and not torch.equal(strong["strong"], out["strong"])
    assert torch.equal(strong["geometry"], out["geometry"])


# ----- loss --------------------------------------------------------------------------------------
S = np.array([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]],
              [[-1.0, 0.0], [0.5, 0.5], [0.0, -2.0]]])
T = np.array([[[0.9, 0.1], [0.2, 0.8], [-1.0, 0.0]],
              [[-0.5, 0.5], [1.0, 0.0], [0.1, -1.0]]])
M = np.array([[True, False, True], [False, True, True]])


def _np_conmim(dictionary):
    s = S / np.linalg.norm(S, axis=-1, keepdims=True)
    t = T / np.linalg.norm(T, axis=-1, keepdims=True)
    losses = []
    for b in range(2):
        for n in range(3):
            if not M[b, n]:
                continue
            keys = t[b] if dictionary == "image" else t.reshape(-1, 2)
            positive = n if dictionary == "image" else b * 3 + n
            logits = keys @ s[b, n] / 0.1
            losses.append(-(logits[positive] - np.log(np.exp(logits).sum())))
    return float(np.mean(losses))


@pytest.mark.parametrize("dictionary", ["image", "batch"])
def test_conmim_loss_matches_numpy(dictionary):
    loss = conmim_loss(torch.tensor(S), torch.tensor(T), torch.tensor(M), 0.1, dictionary)
    assert loss.item() == pytest.approx(_np_conmim(dictionary), rel=1e-5)


def test_conmim_loss_ignores_visible_positions():
    s = torch.tensor(S)
    changed = s.clone()
    changed[0, 1] = torch.tensor([5.0, -3.0])  # a visible position of image 0
    changed[1, 0] = torch.tensor([-2.0, 7.0])  # a visible position of image 1
    assert conmim_loss(changed, torch.tensor(T), torch.tensor(M)).item() == pytest.approx(
        conmim_loss(s, torch.tensor(T), torch.tensor(M)).item())


# ----- schedule, model ------------------------------------------------------------------------
def test_conmim_cosine_momentum_golden():
    ema = {"schedule": "cosine", "start": 0.996, "end": 1.0, "ipe_scale": 1.0}
    total = 300 * 625  # 300 epochs at 625 iterations (batch 2048)
    assert momentum_at(0, ema, total) == pytest.approx(0.996)
    assert momentum_at(total // 2, ema, total) == pytest.approx(0.998)
    assert momentum_at(total // 4, ema, total) == pytest.approx(1 - 0.002 * (1 + math.cos(math.pi / 4)))
    assert momentum_at(total, ema, total) == pytest.approx(1.0)


def test_conmim_model_step_and_groups(tmp_path):
    recipe = _recipe(tmp_path)
    method = ConMIM(recipe).train()
    torch.manual_seed(0)
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[:, :2] = True
    batch = {"weak": torch.randn(2, 3, 64, 64), "strong": torch.randn(2, 3, 64, 64), "mask": mask}
    loss, logs = method.loss(batch)
    loss.backward()
    assert logs["masked"].item() == 8.0 and math.isfinite(loss.item())
    assert method.backbone.mask_token.grad is not None and method.backbone.mask_token.grad.abs().sum() > 0
    assert all(p.grad is None for p in method.teacher_backbone.parameters())
    assert method.teacher_projector.training  # teacher BN on batch statistics, as the official code
    last_bn = method.projector[-1]
    assert isinstance(last_bn, torch.nn.BatchNorm1d) and not last_bn.affine
    assert all(m.bias is None for m in method.projector if isinstance(m, torch.nn.Linear))
    opt = build_optimizer(method, recipe)
    no_decay = {id(p) for g in opt.param_groups if g["wd_exclude"] for p in g["params"]}
    assert id(method.backbone.model.pos_embed) in no_decay and id(method.backbone.model.cls_token) in no_decay
    assert id(method.backbone.mask_token) not in no_decay  # decayed in the official code
    backbone, meta = method.export()
    assert backbone is method.teacher_backbone and meta["encoder"] == "teacher"
    online, meta = ConMIM(_recipe(tmp_path, "conmim.export=online")).export()
    assert meta["encoder"] == "online"


# ----- official backbone, initialisation and warmup --------------------------------------------
def _truncated_std(std: float, cut: float) -> float:
    """Standard deviation of N(0, std^2) truncated at +-cut*std: std * sqrt(1 - 2 c phi(c) / (2 Phi(c) - 1))."""
    phi = math.exp(-cut * cut / 2) / math.sqrt(2 * math.pi)
    mass = math.erf(cut / math.sqrt(2))  # 2 Phi(c) - 1
    return std * math.sqrt(1 - 2 * cut * phi / mass)


def test_beit_backbone_and_official_initialisation(tmp_path):
    """modeling_pretrain.py: trunc_normal_ cut at +-std (std 0.02 -> 0.0108), block l's attn.proj and
    mlp.fc2 then divided by sqrt(2 l); shared relative position bias, layer scale 0.1, no pos_embed."""
    torch.manual_seed(0)
    method = ConMIM(_recipe(tmp_path, "backbone.arch=beit_small_patch16_224", "backbone.img_size=32"))
    model = method.backbone.model
    assert model.rel_pos_bias is not None and model.blocks[0].attn.relative_position_bias_table is None
    assert model.pos_embed is None and torch.all(model.blocks[3].gamma_2 == 0.1)
    expected = _truncated_std(0.02, 1.0)
    for weight in (model.blocks[0].attn.qkv.weight, model.blocks[6].mlp.fc1.weight, method.projector.fc1.weight):
        assert weight.abs().max() <= 0.02 and weight.std().item() == pytest.approx(expected, rel=0.03)
    for layer in (1, 12):
        for weight in (model.blocks[layer - 1].attn.proj.weight, model.blocks[layer - 1].mlp.fc2.weight):
            assert weight.std().item() == pytest.approx(expected / math.sqrt(2 * layer), rel=0.03)
            assert weight.abs().max() <= 0.02 / math.sqrt(2 * layer) + 1e-9
    for token in (model.cls_token, method.backbone.mask_token):
        assert token.abs().max() <= 0.02 and token.std().item() == pytest.approx(expected, rel=0.15)  # 384 draws
    assert model.blocks[2].attn.q_bias.abs().max() == 0 and model.patch_embed.proj.weight.abs().max() <= 0.02
    # the exported teacher is a plain timm BEiT (table copied into every block)
    backbone, _ = method.export()
    assert "blocks.11.attn.relative_position_bias_table" in backbone.encoder_state_dict()


def test_warmup_reaches_the_peak_at_its_last_step(tmp_path):
    """utils.cosine_scheduler: warmup = np.linspace(0, lr, n), then the cosine from i = 0."""
    from ssl_bench.engine.step import Schedules

    recipe = _recipe(tmp_path, "optim.epochs=2", "optim.warmup_epochs=1", "optim.min_lr=1e-5", "optim.lr=5e-4")
    assert recipe["optim"]["warmup_endpoint"] is False  # the engine's default: lr x i / n
    recipe = _recipe(tmp_path, "optim.epochs=2", "optim.warmup_epochs=1", "optim.min_lr=1e-5", "optim.lr=5e-4",
                     "optim.warmup_endpoint=true")
    ipe = 10
    sched = Schedules(recipe, ipe)
    warm = np.linspace(0, 5e-4, ipe)
    iters = np.arange(2 * ipe - ipe)
    cosine = 1e-5 + 0.5 * (5e-4 - 1e-5) * (1 + np.cos(np.pi * iters / len(iters)))
    official = np.concatenate([warm, cosine])
    assert [sched.lr(i) for i in range(2 * ipe)] == pytest.approx(official.tolist(), rel=1e-9, abs=1e-15)
