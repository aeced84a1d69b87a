"""MMC: the three losses on fixed tensors (numpy / hand golden values), GMML masking, model, torchrun."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from test_methods_siameseim import tiny_recipe, torchrun_steps

from ssl_bench.engine import resolve_recipe
from ssl_bench.engine.recipe import build_method
from ssl_bench.methods.mmc import (cls_info_nce, gmml_block_mask, patch_info_nce, patchify,
                                   reconstruction_loss, replace_from_other_images)
from ssl_bench.seeding import seeded


def _np_normalize(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _np_ce(logits, target):
    logits = logits - logits.max()
    return -(logits[target] - np.log(np.exp(logits).sum()))


# ----- L_REC ---------------------------------------------------------------------------------------
def test_reconstruction_loss_by_hand():
    pred = torch.tensor([[[1.0, 2.0], [5.0, 5.0], [0.0, 0.0]]])
    target = torch.tensor([[[0.0, 0.0], [0.0, 0.0], [1.0, -3.0]]])
    mask = torch.tensor([[True, False, True]])
    # paper Eq. 1: (1/P) sum_p M_p |x_p - x^_p| over all P = 6 pixels: (1 + 2 + 1 + 3) / 6 (patch 1 unmasked)
    assert reconstruction_loss(pred, target, mask).item() == pytest.approx(7 / 6)
    # masked pixels only (SiT / MAE): masked patches 0 and 2 have mean |err| 1.5 and 2.0 -> 1.75
    assert reconstruction_loss(pred, target, mask, "masked_pixels").item() == pytest.approx(1.75)


def test_patchify_raster_order():
    img = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4)
    p = patchify(img, 2)
    assert p.shape == (1, 4, 8)
    # patch 1 = rows 0-1, cols 2-3; pixel (0, 0) of channels 0 and 1 first
    assert p[0, 1, :2].tolist() == [2.0, 18.0]


# ----- L_PAT ---------------------------------------------------------------------------------------
def _np_patch_nce(q, k, tau, negatives):
    q, k = _np_normalize(q), _np_normalize(k)
    b, n, _ = q.shape
    losses = []
    for i in range(b):
        for p in range(n):
            keys = [k[i, p]]
            for j in range(b):
                if j != i:
                    keys.extend(k[j] if negatives == "all" else [k[j, p]])
            losses.append(_np_ce(np.array(keys) @ q[i, p] / tau, 0))
    return np.array(losses).reshape(b, n)


@pytest.mark.parametrize("negatives", ["all", "same_position"])
def test_patch_info_nce_matches_numpy(negatives):
    rng = np.random.default_rng(1)
    q, k = rng.normal(size=(3, 4, 5)), rng.normal(size=(3, 4, 5))
    expect = _np_patch_nce(q, k, 0.2, negatives)
    got = patch_info_nce(torch.tensor(q), torch.tensor(k), 0.2, negatives=negatives)
    assert got.item() == pytest.approx(expect.mean(), rel=1e-5)
    mask = torch.tensor([[True, False, False, True], [False] * 4, [True] * 4])
    got = patch_info_nce(torch.tensor(q), torch.tensor(k), 0.2, negatives=negatives, query_mask=mask)
    assert got.item() == pytest.approx(expect[mask.numpy()].mean(), rel=1e-5)


@pytest.mark.parametrize("negatives", ["all", "same_position"])
def test_patch_info_nce_gathered_negatives(monkeypatch, negatives):
    """As rank 1 of 2: the keys of rank 0's images (gathered first) join as negatives only."""
    from ssl_bench.methods import mmc

    rng = np.random.default_rng(4)
    q, k, other = rng.normal(size=(2, 3, 5)), rng.normal(size=(2, 3, 5)), rng.normal(size=(2, 3, 5))
    monkeypatch.setattr(mmc, "rank_and_world", lambda: (1, 2))
    monkeypatch.setattr(mmc, "gather_no_grad", lambda x: torch.cat([torch.tensor(_np_normalize(other)).float(), x]))
    got = patch_info_nce(torch.tensor(q), torch.tensor(k), 0.2, negatives=negatives, gather=True)
    qn, kn, on = _np_normalize(q), _np_normalize(k), _np_normalize(other)
    losses = []
    for i in range(2):
        for p in range(3):
            keys = [kn[i, p]]  # positive: the same image's patch at p
            for j, image in enumerate(list(on) + list(kn)):
                if j != 2 + i:  # every other image, of either rank
                    keys.extend(image if negatives == "all" else [image[p]])
            losses.append(_np_ce(np.array(keys) @ qn[i, p] / 0.2, 0))
    assert got.item() == pytest.approx(np.mean(losses), rel=1e-5)


def test_patch_info_nce_perfect_match_is_small():
    k = torch.eye(4).repeat(2, 1).reshape(2, 4, 4)  # orthogonal positions, image 1 = -image 0
    k[1] = -k[1]
    assert patch_info_nce(k.clone(), k, 0.05).item() < 1e-6


# ----- L_CLS ---------------------------------------------------------------------------------------
def test_cls_info_nce_matches_numpy():
    rng = np.random.default_rng(2)
    queries = [rng.normal(size=(4, 6)) for _ in range(2)]
    keys = [rng.normal(size=(4, 6)) for _ in range(3)]
    pairs = [(0, 1), (0, 2), (1, 0), (1, 2)]
    expect = np.mean([np.mean([_np_ce(_np_normalize(keys[j]) @ _np_normalize(queries[i])[b] / 0.2, b)
                               for b in range(4)]) for i, j in pairs])
    got = cls_info_nce([torch.tensor(q) for q in queries], [torch.tensor(k) for k in keys], pairs, 0.2)
    assert got.item() == pytest.approx(expect, rel=1e-5)


# ----- masking ---------------------------------------------------------------------------------
def test_gmml_mask_ratio_and_blocks():
    random.seed(0)
    fractions = [gmml_block_mask((14, 14), 0.6, 0.3).float().mean().item() for _ in range(300)]
    assert min(fractions) >= 0.6 and np.mean(fractions) < 0.7  # reaches the target, small overshoot


def test_replace_from_other_images():
    clean = torch.arange(3, dtype=torch.float32)[:, None, None, None].expand(3, 3, 4, 4).clone()
    masked = torch.full_like(clean, -9.0)  # noise stand-in
    mask = torch.zeros(3, 2, 2, dtype=torch.bool)
    mask[:, 0, 0] = True
    out = replace_from_other_images(masked, clean, mask, torch.tensor([True, False, True]), patch=2)
    assert out[0, :, 0, 0].tolist() == [1.0] * 3 and out[0, :, 3, 3].tolist() == [0.0] * 3  # donor = next image, 1
    assert torch.equal(out[1], masked[1])  # not flagged: keeps its noise-filled view
    assert out[2, 0, 1, 1].item() == 0.0 and out[2, 0, 2, 2].item() == 2.0  # the last takes the first


TINY = """method: mmc
backbone: {{arch: vit_tiny_patch16_224, img_size: 32, patch_size: 16}}
data: {{root: {root}, batch_size: 4, num_workers: 0}}
optim: {{epochs: 1, warmup_epochs: 0, lr: 0.00075, weight_decay: 0.04, final_weight_decay: 0.04}}
mmc: {{head_hidden_dim: 32, head_output_dim: 16, local_views: 2, local_size: 16}}
checkpoint: {{every_steps: 0, every_epochs: 1}}
"""


def test_transform_statistics_and_model_step(tmp_path):
    recipe = resolve_recipe(tiny_recipe(tmp_path, TINY), [])
    method = build_method(recipe)
    from PIL import Image

    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8))
    transform = method.transform()
    with seeded(0):
        samples = [transform(img) for _ in range(200)]
    replace = torch.stack([s["replace"] for s in samples]).float().mean().item()
    assert abs(replace - 0.35) < 0.08  # paper Fig. 8: 35 % chance of masking with another image
    s = samples[0]
    pixels = s["mask"][0].repeat_interleave(16, 0).repeat_interleave(16, 1)
    assert torch.equal(s["masked"][0][:, ~pixels], s["clean"][0][:, ~pixels])  # visible pixels untouched
    batch = {k: torch.stack([x[k] for x in samples[:4]]) for k in samples[0]}
    loss, logs = method.loss(batch)
    loss.backward()
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(logs["l_rec"].item() + logs["l_cls"].item() + logs["l_pat"].item(), rel=1e-5)
    for head in (method.head_rec, method.head_cls, method.head_pat):
        assert head.fc1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in method.teacher_backbone.parameters())
    backbone, meta = method.export()
    assert backbone is method.teacher_backbone
    assert meta["eval"] == {"feature": "avgpool", "final_norm": True, "input_filter": None}


def test_torchrun_two_ranks(tmp_path):
    recipe = tiny_recipe(tmp_path, TINY.replace("batch_size: 4", "batch_size: 2"))
    torchrun_steps(tmp_path, recipe, 2, ("backbone.", "teacher_backbone.", "teacher_head_pat."))
    meta = json.loads((tmp_path / "ddp" / "checkpoint.json").read_text())
    assert meta["method"] == "mmc" and meta["encoder"] == "teacher"


def test_teacher_has_no_drop_path(tmp_path):
    """The student keeps its stochastic depth; the teacher (train mode, as in training) gives the same
    output twice on one input, as a DINO-lineage teacher built with drop_path_rate 0."""
    recipe = resolve_recipe(tiny_recipe(tmp_path, TINY.replace("patch_size: 16}", "patch_size: 16, "
                                                                      "drop_path_rate: 0.5}")), [])
    method = build_method(recipe).train()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.manual_seed(0)
        student = [method.backbone.tokens(x).normed for _ in range(2)]
        teacher = [method.teacher_backbone.tokens(x).normed for _ in range(2)]
    assert not torch.allclose(student[0], student[1])
    assert torch.equal(teacher[0], teacher[1])
