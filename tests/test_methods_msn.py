"""MSN parity tests: golden values computed here by hand or with plain numpy."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_bench.engine import resolve_recipe
from ssl_bench.engine.step import Schedules, build_optimizer
from ssl_bench.methods._masks import patch_drop_keep
from ssl_bench.methods.msn import MSN, MSNTransform, msn_loss, sinkhorn
from ssl_bench.schedules import momentum_at
from ssl_bench.seeding import seeded


def _recipe(tmp_path, **msn):
    text = ("method: msn\nbackbone: {arch: vit_tiny_patch16_224, patch_size: 16}\n"
            "msn: {rand_size: 64, focal_size: 32, focal_views: 2, hidden_dim: 32, output_dim: 8, num_proto: 5"
            + "".join(f", {k}: {v}" for k, v in msn.items()) + "}\n")
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return resolve_recipe(path, [])


# ----- masking ---------------------------------------------------------------------------
@pytest.mark.parametrize("patches,ratio,kept", [(196, 0.15, 166), (196, 0.3, 137), (784, 0.7, 235), (16, 0.3, 11)])
def test_patch_drop_count(patches, ratio, kept):
    # floor(N * (1 - ratio)): 196*0.85=166.6 -> 166; 196*0.7=137.2 -> 137; 784*0.3=235.2 -> 235; 16*0.7=11.2 -> 11
    keep = patch_drop_keep(patches, ratio)
    assert keep.numel() == kept
    assert keep.unique().numel() == kept and int(keep.min()) >= 0 and int(keep.max()) < patches


def test_patch_drop_is_shared_across_the_batch(tmp_path):
    recipe = _recipe(tmp_path, patch_drop=0.3)
    method = MSN(recipe)
    seen = []
    original = method.backbone.tokens

    def spy(images, **kw):
        seen.append((images.shape[0], kw.get("keep"), kw.get("prefix_only")))
        return original(images, **kw)

    lengths = []  # tokens entering the first block, per call
    method.backbone.model.blocks[0].register_forward_hook(lambda _m, inputs, _out: lengths.append(inputs[0].shape[1]))
    method.backbone.tokens = spy
    batch = {"anchors": torch.randn(3, 1, 3, 64, 64), "focal": torch.randn(3, 2, 3, 32, 32),
             "target": torch.randn(3, 3, 64, 64),
             "keep": torch.stack([torch.randperm(16)[:11] for _ in range(3)])}
    method.loss(batch)
    (n_anchor, keep, anchor_cls_only), (n_focal, focal_keep, focal_cls_only) = seen
    assert n_anchor == 3 and torch.equal(keep, batch["keep"][0]) and keep.dim() == 1  # one draw, all images
    assert n_focal == 6 and focal_keep is None  # focal views are not dropped
    assert lengths == [1 + 11, 1 + 4]  # CLS + floor(16 * 0.7) kept patches; CLS + 2x2 focal patches
    assert anchor_cls_only and focal_cls_only  # MSN reads the CLS token alone


def test_focal_and_random_crop_scales():
    cfg = {"rand_size": 64, "focal_size": 32, "rand_views": 1, "focal_views": 10, "rand_crop_scale": [0.3, 1.0],
           "focal_crop_scale": [0.05, 0.3], "color_jitter": 0.5, "blur_p": 0.5, "patch_drop": 0.15}
    transform = MSNTransform(cfg, 16)
    img = Image.fromarray(np.full((200, 300, 3), 128, np.uint8))
    for i in range(20):
        with seeded(i):
            out = transform(img)
        assert out["target"].shape == (3, 64, 64) and out["anchors"].shape == (1, 3, 64, 64)
        assert out["focal"].shape == (10, 3, 32, 32)
        assert out["keep"].numel() == 13  # floor(16 * 0.85) = 13
        area = (out["geometry"][:, 2] * out["geometry"][:, 3]).double() / (200 * 300)
        # rounding of h, w to integers moves the area by < 1 % here
        assert torch.all(area[:2] >= 0.3 * 0.99) and torch.all(area[:2] <= 1.0 + 1e-9)
        assert torch.all(area[2:] >= 0.05 * 0.98) and torch.all(area[2:] <= 0.3 * 1.02)


def test_views_depend_only_on_the_seed():
    cfg = {"rand_size": 32, "focal_size": 16, "rand_views": 1, "focal_views": 2, "rand_crop_scale": [0.3, 1.0],
           "focal_crop_scale": [0.05, 0.3], "color_jitter": 0.5, "blur_p": 0.5, "patch_drop": 0.15}
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 50, 3), dtype=np.uint8))
    with seeded(5):
        a = MSNTransform(cfg, 16)(img)
    random.random(), torch.rand(3)  # disturb the global streams
    with seeded(5):
        b = MSNTransform(cfg, 16)(img)
    assert all(torch.equal(a[k], b[k]) for k in a)


# ----- loss ------------------------------------------------------------------------------
def _np_softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _np_sinkhorn(p, iters):
    q = p.T.copy()  # K x B
    k, b = q.shape
    q /= q.sum()
    for _ in range(iters):
        q /= q.sum(axis=1, keepdims=True) * k
        q /= q.sum(axis=0, keepdims=True) * b
    return (q * b).T


def _np_normalize(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


ANCHORS = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-0.6, 0.8]])  # 2 views x 2 images, view-major
TARGETS = np.array([[0.8, 0.6], [-0.28, 0.96]])
PROTOS = np.array([[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]])


def _np_msn(sinkhorn_on=True, sharpen=0.25, tau=0.1, lam=1.0):
    a, t, q = _np_normalize(ANCHORS), _np_normalize(TARGETS), _np_normalize(PROTOS)
    probs = _np_softmax(a @ q.T / tau)
    target = _np_softmax(t @ q.T / tau) ** (1 / sharpen)
    target /= target.sum(axis=1, keepdims=True)
    if sinkhorn_on:
        target = _np_sinkhorn(target, 3)
    target = np.concatenate([target, target])  # anchor view v of image i -> target of image i
    ce = np.mean(np.sum(-target * np.log(probs), axis=1))
    mean_p = probs.mean(axis=0)
    entropy = -np.sum(mean_p * np.log(mean_p))
    return ce + lam * (math.log(3) - entropy), ce


@pytest.mark.parametrize("use_sinkhorn", [True, False])
def test_msn_loss_matches_numpy(use_sinkhorn):
    expected, expected_ce = _np_msn(use_sinkhorn)
    anchors = torch.tensor(ANCHORS, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor(TARGETS, dtype=torch.float64, requires_grad=True)
    loss, logs = msn_loss(anchors.double(), targets, torch.tensor(PROTOS), temperature=0.1, sharpen=0.25,
                          use_sinkhorn=use_sinkhorn, me_max_weight=1.0)
    # msn_loss computes in float32
    assert loss.item() == pytest.approx(expected, rel=1e-4)
    assert logs["msn"].item() == pytest.approx(expected_ce, rel=1e-4)
    loss.backward()
    assert anchors.grad is not None and targets.grad is None  # gradients through the anchors only


def test_sinkhorn_matches_numpy_and_balances():
    p = _np_softmax(np.array([[3.0, 1.0, 0.0], [2.5, 0.5, 0.1], [0.2, 0.1, 4.0], [1.0, 1.0, 1.0]]))
    out = sinkhorn(torch.tensor(p), 3).numpy()
    np.testing.assert_allclose(out, _np_sinkhorn(p, 3), rtol=1e-6)
    np.testing.assert_allclose(out.sum(axis=1), np.ones(4), rtol=1e-6)  # rows are assignments
    # columns (prototypes) get close to B/K = 4/3 each after 3 iterations
    np.testing.assert_allclose(out.sum(axis=0), np.full(3, 4 / 3), rtol=0.05)


def test_me_max_is_zero_for_uniform_mean_prediction():
    # two anchors whose predictions are mirror images -> mean prediction uniform over 2 prototypes
    anchors = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss, logs = msn_loss(anchors, anchors, protos, use_sinkhorn=False)
    assert logs["me_max"].item() == pytest.approx(0.0, abs=1e-6)


# ----- schedules -----------------------------------------------------------------------------
def test_msn_linear_momentum_truncated():
    ema = {"schedule": "linear", "start": 0.996, "end": 1.0, "ipe_scale": 1.25}
    total = 1000  # the momentum reaches 1.0 only at 1250 steps
    assert momentum_at(0, ema, total) == pytest.approx(0.996)
    assert momentum_at(500, ema, total) == pytest.approx(0.996 + 0.004 * 500 / 1250)  # 0.9976
    assert momentum_at(1000, ema, total) == pytest.approx(0.9992)


def test_msn_lr_and_wd_schedules(tmp_path):
    recipe = _recipe(tmp_path)
    recipe["optim"].update(lr=0.001, start_lr=0.0002, min_lr=1e-6, warmup_epochs=15.0, epochs=100,
                           ipe_scale=1.25, step_offset=1, weight_decay=0.04, final_weight_decay=0.4)
    s = Schedules(recipe, ipe=10)  # warmup 150 steps, horizon 1250
    # step 0 is the scheduler's first step(): progress 1/150 of the warmup
    assert s.lr(0) == pytest.approx(0.0002 + 0.0008 / 150)
    assert s.lr(149) == pytest.approx(0.001)  # 150 -> peak, cosine starts
    # last step of the run (999 -> 1000): progress (1000-150)/(1250-150)
    expected = 1e-6 + (0.001 - 1e-6) * 0.5 * (1 + math.cos(math.pi * 850 / 1100))
    assert s.lr(999) == pytest.approx(expected)
    assert s.weight_decay(0) == pytest.approx(0.4 + (0.04 - 0.4) * 0.5 * (1 + math.cos(math.pi / 1250)))
    assert s.weight_decay(999) == pytest.approx(0.4 + (0.04 - 0.4) * 0.5 * (1 + math.cos(math.pi * 0.8)))


def test_msn_param_groups_and_export(tmp_path):
    recipe = _recipe(tmp_path)
    method = MSN(recipe)
    opt = build_optimizer(method, recipe)
    decayed = {id(p) for g in opt.param_groups if not g["wd_exclude"] for p in g["params"]}
    names = {id(p): n for n, p in method.named_parameters()}
    assert id(method.prototypes) not in decayed
    assert all(("bias" not in names[i] and "bn" not in names[i]) for i in decayed)
    assert id(method.backbone.model.pos_embed) in decayed  # 3-d, decayed in the official code
    assert not any(p.requires_grad for p in method.target_backbone.parameters())
    backbone, meta = method.export()
    assert backbone is method.target_backbone and meta["encoder"] == "target"
    assert meta["eval"]["feature"] == "cls_prenorm"


# ----- official src/deit.py behaviour --------------------------------------------------------
def test_focal_position_embedding_is_plain_bicubic(tmp_path):
    """deit.py interpolate_pos_encoding: F.interpolate(bicubic, scale_factor=sqrt(npatch / N)), no
    antialiasing; the CLS position is kept. A 32 px focal view of a 64 px model: 2x2 from 4x4."""
    method = MSN(_recipe(tmp_path))
    vit = method.backbone.model
    with torch.no_grad():
        tokens = method.backbone.add_positions(torch.zeros(1, 2, 2, 192))
        pos = vit.pos_embed[:, 1:].reshape(1, 4, 4, 192).permute(0, 3, 1, 2)
        official = torch.nn.functional.interpolate(pos, scale_factor=math.sqrt(4 / 16), mode="bicubic")
        official = official.permute(0, 2, 3, 1).reshape(1, 4, 192)
        antialiased = torch.nn.functional.interpolate(pos, size=(2, 2), mode="bicubic", antialias=True)
    assert torch.allclose(tokens[:, 1:], official, atol=1e-6)
    assert torch.allclose(tokens[:, 0], vit.cls_token[:, 0] + vit.pos_embed[:, 0], atol=1e-6)
    assert not torch.allclose(official, antialiased.permute(0, 2, 3, 1).reshape(1, 4, 192), atol=1e-3)


def test_encoder_initialisation_is_deits(tmp_path):
    """deit.py _init_weights: patch projection Kaiming normal (fan_in, ReLU): std sqrt(2 / (3*16*16))
    = 0.051; cls_token and pos_embed std 0.02 (timm: cls_token 1e-6); Linear std 0.02, biases 0."""
    torch.manual_seed(0)
    vit = MSN(_recipe(tmp_path)).backbone.model
    assert vit.patch_embed.proj.weight.std().item() == pytest.approx(math.sqrt(2 / 768), rel=0.03)
    assert vit.patch_embed.proj.bias.abs().max() == 0
    assert vit.cls_token.std().item() == pytest.approx(0.02, rel=0.15)  # 192 draws
    assert vit.pos_embed.std().item() == pytest.approx(0.02, rel=0.03)
    assert vit.blocks[5].mlp.fc2.weight.std().item() == pytest.approx(0.02, rel=0.03)
    assert vit.blocks[5].attn.qkv.bias.abs().max() == 0 and torch.all(vit.blocks[5].norm1.weight == 1)
    timm_init = MSN(_recipe(tmp_path, init="timm")).backbone.model
    assert timm_init.cls_token.std().item() < 1e-5  # the timm default the recipe option keeps
