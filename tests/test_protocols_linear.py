"""Linear probe: batched heads, LARS step, lr schedule, cache reuse after k-NN, saved head."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_protocols_common import context, make_imagefolder

from ssl_bench.protocols import _features
from ssl_bench.protocols.knn import KNN
from ssl_bench.protocols.linear import HeadGrid, Linear, LinearHead, build_optimizer, set_lr
from ssl_bench.protocols.robustness import load_classifier


@pytest.mark.parametrize("norm,l2", [("none", False), ("bn", False), ("layernorm", True), ("ln_bn", False)])
def test_grid_forward_equals_each_head(norm, l2):
    torch.manual_seed(0)
    grid = HeadGrid(16, 5, 3, norm=norm, l2_normalize=l2, init="normal", init_std=0.5)
    for head in grid.heads:  # make the LayerNorm affine parameters differ per head
        for p in head.norm.parameters():
            p.data.normal_()
    x = torch.randn(8, 16) * 3 + 1
    grid.train()
    out = grid(x)
    for i, head in enumerate(grid.heads):
        z = x
        if norm == "ln_bn":
            z = (z - z.mean(1, keepdim=True)) / torch.sqrt(z.var(1, unbiased=False, keepdim=True) + 1e-6)
        if norm in ("bn", "ln_bn"):
            z = (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + 1e-6)
        elif norm == "layernorm":
            z = (x - x.mean(1, keepdim=True)) / torch.sqrt(x.var(1, unbiased=False, keepdim=True) + 1e-5)
            z = z * head.norm.weight + head.norm.bias
        if l2:
            z = z / z.norm(dim=1, keepdim=True)
        want = z @ head.linear.weight.T + head.linear.bias
        torch.testing.assert_close(out[i], want, atol=1e-4, rtol=1e-4)
    # an exported head reproduces its slice of the grid in eval mode
    grid.eval()
    torch.testing.assert_close(grid.export(1)(x), grid(x)[1], atol=1e-5, rtol=1e-5)


def test_lars_step_matches_mae_rule():
    """One step of the grid's LARS equals MAE util/lars.py, written out here: matrices get
    dp * (0.001 * |w| / |dp|), biases the plain gradient; momentum buffer starts at the update."""
    torch.manual_seed(0)
    grid = HeadGrid(6, 3, 2, norm="bn", init="trunc_normal", init_std=0.01)
    lrs = [0.5, 2.0]
    opt = build_optimizer(grid, lrs, {"name": "lars", "momentum": 0.9, "nesterov": False, "weight_decay": 0.0,
                                      "decay_1d": False, "trust_coeff": 0.001})
    x, y = torch.randn(10, 6), torch.randint(0, 3, (10,))
    before = [(h.linear.weight.detach().clone(), h.linear.bias.detach().clone()) for h in grid.heads]
    loss = F.cross_entropy(grid(x).flatten(0, 1), y.repeat(2), reduction="mean") * 2
    loss.backward()
    grads = [(h.linear.weight.grad.clone(), h.linear.bias.grad.clone()) for h in grid.heads]
    opt.step()
    for (w0, b0), (gw, gb), lr, head in zip(before, grads, lrs, grid.heads):
        q = 0.001 * w0.norm() / gw.norm()
        torch.testing.assert_close(head.linear.weight.detach(), w0 - lr * gw * q, atol=1e-7, rtol=1e-5)
        torch.testing.assert_close(head.linear.bias.detach(), b0 - lr * gb, atol=1e-7, rtol=1e-5)


def test_warmup_cosine_schedule_per_iteration():
    grid = HeadGrid(4, 2, 1)
    opt = build_optimizer(grid, [1.0], {"name": "sgd", "momentum": 0.9, "nesterov": False,
                                        "weight_decay": 0.0, "decay_1d": False})
    # MAE lr_sched: epoch < warmup -> lr * epoch / warmup, else half cosine to min_lr
    for step, want in [(0, 0.0), (5, 0.5), (10, 1.0), (55, 0.5 * (1 + math.cos(math.pi * 0.5))), (100, 0.0)]:
        set_lr(opt, step, total=100, warmup=10, min_lr=0.0)
        assert opt.param_groups[0]["lr"] == pytest.approx(want)


def test_linear_after_knn_reuses_features_and_saves_head(tmp_path):
    tree = make_imagefolder(tmp_path / "data")
    results = tmp_path / "results"
    knn_ctx = context(tree, results, "knn")
    KNN().run(knn_ctx)
    ckpt = knn_ctx.checkpoint
    seen = []
    hook = ckpt.backbone.model.patch_embed.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    ctx = context(tree, results, "linear", checkpoint=ckpt, epochs=3, train_batch_size=8)
    records = {r["metric"]: r for r in Linear().run(ctx)}
    hook.remove()
    assert seen == []  # no backbone forward pass at all: train and val features came from the cache
    grid = records["top1"]["grid"]
    assert set(grid) == {"0.003125", "0.03125"}  # base lrs 0.1 and 1 scaled by 8/256
    assert records["top1"]["value"] == max(g["top1_max"] for g in grid.values())
    assert records["top1"]["value"] >= records["top1_last"]["value"]
    # the saved head reproduces the reported top-1 on the cached val features
    head, meta = load_classifier(results, ckpt.sha256)
    assert isinstance(head, LinearHead) and meta["variant"] == "mae" and meta["num_classes"] == 4
    val = _features.FeatureCache(results / "features")
    entries = [e for e in (results / "features").iterdir()]
    feats = {len(np.load(e / "labels.npy")): e for e in entries}
    x = torch.from_numpy(np.load(feats[12] / "features.npy"))
    labels = np.load(feats[12] / "labels.npy")
    with torch.no_grad():
        top1 = 100 * (head(x).argmax(1).numpy() == labels).mean()
    assert top1 == pytest.approx(records["top1"]["value"])
    # per-sample hits for the bootstrap interval: the saved head's, sample by sample
    np.testing.assert_array_equal(records["top1"]["per_sample"],
                                  (head(x).argmax(1).numpy() == labels).astype(np.float32))
    assert "per_sample" not in records["top1_last"]
    assert val.root == results / "features"


def test_online_training_runs_the_backbone(tmp_path):
    tree = make_imagefolder(tmp_path / "data", classes=3, train=4, val=2)
    ctx = context(tree, tmp_path / "results", "linear", epochs=1, train_batch_size=4,
                  train_features="online", save_head=False, optim={"lrs": [0.1]})
    before = list(_features.EXTRACTIONS)
    records = {r["metric"]: r for r in Linear().run(ctx)}
    assert records["top1"]["train_features"] == "online" and records["top1"]["n_train"] == 12
    assert [d for d, _ in _features.EXTRACTIONS[len(before):]] == ["features val"]
