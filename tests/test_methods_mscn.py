"""MSCN: grid / focal / channel mask statistics, both losses, model, torchrun (the high-pass
filter: test_filters.py)."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
from test_methods_siameseim import tiny_recipe, torchrun_steps

from ssl_bench.engine import resolve_recipe
from ssl_bench.engine.loop import sync_batchnorm
from ssl_bench.engine.recipe import build_method
from ssl_bench.methods._siamese import byol_regression, nt_xent
from ssl_bench.methods.mscn import focal_mask, grid_mask, mask_rendering, mscn_mask
from ssl_bench.seeding import seeded

# ----- masks ------------------------------------------------------------------------------------
CFG = {"grid_size": 8, "mask_ratio": 0.15, "focal_p": 0.2, "focal_scale": [0.05, 0.3], "channel_p": 0.7,
       "mask_p": [1.0, 0.5], "noise_std": [0.5, 0.25]}


def test_grid_mask_ratio_and_cells():
    random.seed(0)
    masks = [grid_mask((64, 64), 8, 0.15) for _ in range(400)]
    assert abs(np.mean([m.float().mean().item() for m in masks]) - 0.15) < 0.01
    m = masks[0].reshape(8, 8, 8, 8)  # cells are all-or-nothing
    assert bool(((m.all(dim=(1, 3))) | (~m).all(dim=(1, 3))).all())


def test_focal_mask_keeps_one_rectangle_of_the_scale():
    random.seed(1)
    kept = []
    for _ in range(300):
        keep = ~focal_mask((64, 64), 8, (0.05, 0.3))
        rows, cols = keep.any(1).nonzero(), keep.any(0).nonzero()
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert int(keep.sum()) == int(box)  # one solid rectangle
        kept.append(keep.float().mean().item())
    assert 0.015 <= min(kept) and max(kept) <= 0.4 and 0.12 < np.mean(kept) < 0.22  # about U(0.05, 0.3)


def test_mask_type_probabilities():
    random.seed(2)
    draws = [mscn_mask((32, 32), CFG) for _ in range(2000)]
    focal = np.mean([info["focal"] for _, info in draws])
    channelwise = np.mean([info["channelwise"] for _, info in draws])
    assert abs(focal - 0.2) < 0.03 and abs(channelwise - 0.7) < 0.03
    shared = [m for m, info in draws if not info["channelwise"]]
    assert all(torch.equal(m[0], m[1]) and torch.equal(m[1], m[2]) for m in shared)
    independent = [m for m, info in draws if info["channelwise"] and not info["focal"]]
    assert np.mean([not torch.equal(m[0], m[1]) for m in independent]) > 0.5


def test_noise_fill_per_branch():
    random.seed(3)
    torch.manual_seed(3)
    x = torch.zeros(3, 64, 64)  # a high-passed flat image: all "no information"
    cfg = {**CFG, "mask_ratio": 0.5, "focal_p": 0.0}
    stds = {0: [], 1: []}
    masked = {0: 0, 1: 0}
    for branch in (0, 1):
        for _ in range(200):
            out = mask_rendering(x, cfg, branch)
            if out.abs().sum() > 0:
                masked[branch] += 1
                stds[branch].append(out[out != 0].std().item())
    assert masked[0] == 200 and abs(masked[1] / 200 - 0.5) < 0.1  # mask_p [1.0, 0.5]
    assert abs(np.mean(stds[0]) - 0.5) < 0.02 and abs(np.mean(stds[1]) - 0.25) < 0.01


# ----- losses -----------------------------------------------------------------------------------
def _np_ce(logits, target):
    logits = logits - logits.max()
    return -(logits[target] - np.log(np.exp(logits).sum()))


def test_nt_xent_matches_numpy():
    rng = np.random.default_rng(4)
    z1, z2 = rng.normal(size=(3, 5)), rng.normal(size=(3, 5))
    z = np.concatenate([z1, z2])
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    losses = []
    for i in range(6):
        others = [j for j in range(6) if j != i]
        logits = np.array([z[i] @ z[j] / 0.2 for j in others])
        losses.append(_np_ce(logits, others.index((i + 3) % 6)))
    assert nt_xent(torch.tensor(z1), torch.tensor(z2), 0.2).item() == pytest.approx(np.mean(losses), rel=1e-6)


def test_byol_regression_by_hand():
    p = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    z = torch.tensor([[1.0, 1.0], [0.0, -3.0]])
    # cos = 1/sqrt(2) and -1: mean(2 - 2/sqrt(2), 4)
    assert byol_regression(p, z).item() == pytest.approx(((2 - math.sqrt(2)) + 4) / 2)


# ----- model ------------------------------------------------------------------------------------
TINY = """method: mscn
backbone: {{arch: resnet18, img_size: 32}}
data: {{root: {root}, batch_size: 4, num_workers: 0}}
optim: {{name: lars, epochs: 1, warmup_epochs: 0, lr: 0.3, weight_decay: 1.0e-6, final_weight_decay: 1.0e-6}}
mscn: {{loss: {loss}, grid_size: 8, num_masks: 1, proj_hidden_dim: 32, proj_output_dim: 16, pred_hidden_dim: 32}}
checkpoint: {{every_steps: 0, every_epochs: 1}}
"""


@pytest.mark.parametrize("loss", ["simclr", "byol"])
def test_model_step_and_export(tmp_path, loss):
    recipe = resolve_recipe(tiny_recipe(tmp_path, TINY.replace("{loss}", loss)), [])
    method = build_method(recipe)
    from PIL import Image

    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8))
    with seeded(0):
        samples = [method.transform()(img) for _ in range(4)]
    batch = {k: torch.stack([s[k] for s in samples]) for k in samples[0]}
    assert batch["views"].shape == (4, 2, 2, 3, 32, 32)
    assert batch["views"].mean(dim=(-1, -2)).abs().max() < 0.3  # high-passed: ~zero-mean channels
    out, logs = method.loss(batch)
    out.backward()
    assert torch.isfinite(out) and logs["pairs"].item() == 2
    assert method.backbone.model.conv1.weight.grad.abs().sum() > 0
    assert len(method.ema_pairs()) == (2 if loss == "byol" else 0)
    backbone, meta = method.export()
    assert backbone is method.backbone
    assert meta["eval"] == {"feature": "avgpool", "final_norm": True,
                            "input_filter": {"name": "highpass", "sigma": 5.0}}


def test_torchrun_two_ranks(tmp_path):
    recipe = tiny_recipe(tmp_path, TINY.replace("{loss}", "byol").replace("batch_size: 4", "batch_size: 2"))
    torchrun_steps(tmp_path, recipe, 2, ("backbone.", "target_backbone.", "predictor."))
    meta = json.loads((tmp_path / "ddp" / "checkpoint.json").read_text())
    assert meta["method"] == "mscn" and meta["eval"]["input_filter"] == {"name": "highpass", "sigma": 5.0}


def test_byol_loss_sums_the_two_directions(tmp_path):
    """BYOL Eq. 2: L_total = L(v -> v') + L(v' -> v), each 2 - 2 cos(q, z'); with multimasks each
    direction averages over the source renderings of its view."""
    text = TINY.replace("{loss}", "byol").replace("num_masks: 1", "num_masks: 2")
    recipe = resolve_recipe(tiny_recipe(tmp_path, text), [])
    method = build_method(recipe).eval()  # BN running statistics: each pass independent of the batch
    views = torch.randn(3, 2, 3, 3, 32, 32)  # (B, view, rendering 0 target + 2 sources, C, H, W)
    with torch.no_grad():
        loss, _ = method.loss({"views": views})

        def online(x):
            return method.predictor(method.projector(method.backbone.features(x, "avgpool"))).numpy()

        def target(x):
            return method.target_projector(method.target_backbone.features(x, "avgpool")).numpy()

        def byol(p, z):
            p = p / np.linalg.norm(p, axis=1, keepdims=True)
            z = z / np.linalg.norm(z, axis=1, keepdims=True)
            return np.mean(2 - 2 * (p * z).sum(1))

        expected = sum(np.mean([byol(online(views[:, v, m]), target(views[:, 1 - v, 0])) for m in (1, 2)])
                       for v in (0, 1))
    assert loss.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("name", ["mscn", "siameseim", "msn"])
def test_methods_with_batchnorm_synchronise_it_across_gpus(name):
    """SimCLR's global BN / BYOL's cross-replica BN (MSCN), main_pretrain.py (SiameseIM) and
    msn_train.py (MSN) convert BatchNorm to SyncBatchNorm under distributed training."""
    from ssl_bench.methods import METHODS

    assert METHODS.get(name).sync_batchnorm is True
    converted = sync_batchnorm(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2)))
    assert isinstance(converted[1], torch.nn.SyncBatchNorm)
