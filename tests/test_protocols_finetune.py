"""Full fine-tuning (MAE recipe): layer decay groups, weight loading, a tiny run, saved classifier."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_protocols_common import context, make_imagefolder

from ssl_bench.checkpoints import load_spec
from ssl_bench.data.imagefolder import ImageFolderDataset
from ssl_bench.protocols._features import eval_transform
from ssl_bench.protocols._finetuning import build_classifier, classifier_from_checkpoint
from ssl_bench.protocols.robustness import load_classifier
from ssl_bench.protocols.finetune import FineTune, finetune_param_groups
from ssl_bench.recipes import load_defaults


def _mae_layer_id(name: str, depth: int) -> int:
    """MAE util/lr_decay.py get_layer_id_for_vit, written out."""
    if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def test_layer_decay_groups_follow_mae():
    model = build_classifier("vit_tiny_patch16_224", 5, global_pool="avg")
    depth = len(model.blocks)
    recipe = {"optim": {"blr": 5e-4, "weight_decay": 0.05, "layer_decay": 0.65}, "train_batch_size": 512,
              "schedule": {"min_lr": 1e-6}}
    groups, lr = finetune_param_groups(model, recipe)
    assert lr == pytest.approx(1e-3)  # blr x batch / 256
    names = {id(p): n for n, p in model.named_parameters()}
    seen = set()
    for group in groups:
        for p in group["params"]:
            name = names[id(p)]
            seen.add(name)
            scale = 0.65 ** (depth + 1 - _mae_layer_id(name, depth))
            assert group["lr_scale"] == pytest.approx(scale), name
            assert group["base_lr"] == pytest.approx(1e-3 * scale) and group["min_lr"] == pytest.approx(1e-6 * scale)
            no_decay = p.ndim == 1 or name in ("cls_token", "pos_embed")
            assert group["weight_decay"] == (0.0 if no_decay else 0.05), name
    assert seen == set(names.values())


def test_classifier_loads_encoder_and_replaces_norm_by_fc_norm():
    ckpt = load_spec("random:vit_tiny_patch16_224")
    recipe = load_defaults("protocols/finetune")
    model, kwargs = classifier_from_checkpoint(ckpt, 4, recipe, final_norm=True)
    enc = ckpt.backbone.model
    torch.testing.assert_close(model.blocks[3].attn.qkv.weight, enc.blocks[3].attn.qkv.weight)
    torch.testing.assert_close(model.pos_embed, enc.pos_embed)
    assert isinstance(model.norm, torch.nn.Identity) and isinstance(model.fc_norm, torch.nn.LayerNorm)
    # trunc_normal_(std=2e-5) with the absolute cut at +-2 (MAE / timm / torch): in effect normal(0, 2e-5)
    assert model.head.weight.std().item() == pytest.approx(2e-5, rel=0.15)
    assert not model.head.bias.any()
    assert kwargs["global_pool"] == "avg" and kwargs["drop_path_rate"] == 0.1


def test_finetune_tiny_run_saves_best_classifier(tmp_path):
    tree = make_imagefolder(tmp_path / "data", classes=3, train=2, val=2)
    ctx = context(tree, tmp_path / "results", "finetune", epochs=2, train_batch_size=6)
    records = {r["metric"]: r for r in FineTune().run(ctx)}
    assert set(records) == {"top1", "top5", "top1_last"}
    assert records["top1"]["value"] >= records["top1_last"]["value"]
    assert records["top5"]["value"] == 100.0  # 3 classes
    model, meta = load_classifier(tmp_path / "results", ctx.checkpoint.sha256, "finetune")
    assert meta["kind"] == "finetuned" and meta["classes"] == sorted(p.name for p in (tree / "val").iterdir())
    # the saved network reproduces the reported (best-epoch) top-1 on val
    val = ImageFolderDataset(tree / "val", eval_transform(ctx.recipe["transform"]))
    images = torch.stack([val[i][0] for i in range(len(val))])
    labels = np.array([label for _, label in val.samples])
    with torch.no_grad():
        logits = model(images).numpy()
    correct = logits.argmax(1) == labels
    top1 = 100 * correct.mean()
    assert top1 == pytest.approx(records["top1"]["value"])
    # per-sample hits of the best epoch, sample by sample (for the leaderboard's bootstrap)
    np.testing.assert_array_equal(records["top1"]["per_sample"], correct.astype(np.float32))
    assert records["top1"]["per_sample"].mean() * 100 == pytest.approx(records["top1"]["value"])
    assert records["top1_last"]["per_sample"].mean() * 100 == pytest.approx(records["top1_last"]["value"])


def test_fraction_of_an_epoch_fine_tunes_whole_steps_on_the_mae_schedule(tmp_path, monkeypatch):
    tree = make_imagefolder(tmp_path / "data", classes=3, train=4, val=2)  # 12 training images
    ctx = context(tree, tmp_path / "results", "finetune", epochs=0.5, train_batch_size=2,
                  schedule={"warmup_epochs": 0.25})
    head_lrs = []
    step = torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        head_lrs.append(max(g["lr"] for g in self.param_groups))  # the head's group: layer-decay scale 1
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    records = {r["metric"]: r for r in FineTune().run(ctx)}
    # 6 iterations per epoch: half an epoch is 3 optimiser steps, 1.5 of them warmup. MAE util/lr_sched.py
    # per iteration: lr x t / warmup, then min_lr + (lr - min_lr) / 2 x (1 + cos(pi (t - warmup) / (total - warmup)))
    lr, min_lr = 5e-4 * 2 / 256, 1e-6
    expected = [0.0, lr / 1.5, min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * 0.5 / 1.5))]
    assert head_lrs == pytest.approx(expected)
    assert records["top1"]["epochs"] == 0.5 and records["top1"]["n_train"] == 12


def test_randaugment_posterize_at_full_magnitude_runs():
    """MAE's rand-m9-mstd0.5-inc1 reaches magnitude 10, where timm asks PIL to keep 0 bits."""
    from PIL import Image
    from timm.data.auto_augment import AugmentOp

    from ssl_bench.protocols._finetuning import finetune_train_transform

    recipe = load_defaults("protocols/finetune")
    finetune_train_transform(recipe, None)
    op = AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=10)
    img = Image.new("RGB", (8, 8), (200, 100, 50))
    assert np.asarray(op(img)).max() == 0  # no bit kept: black, as Pillow < 11 returned


def _gathered_hits(rank: int, world: int, init_file: str, out: str) -> None:
    import torch.distributed as dist

    from ssl_bench.protocols._finetuning import _Shard, evaluate_classifier

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)  # the same classifier on every rank
    model = torch.nn.Linear(4, 6)
    x = torch.randn(11, 4, generator=torch.Generator().manual_seed(1))
    data = torch.utils.data.TensorDataset(x, torch.arange(11) % 6)
    loader = torch.utils.data.DataLoader(_Shard(data, rank, world), batch_size=3)
    hits = evaluate_classifier(model, loader, torch.device("cpu"), False, world)
    if rank == 0:
        torch.save(hits, out)
    dist.destroy_process_group()


def test_validation_hits_of_two_ranks_come_back_in_dataset_order(tmp_path):
    import torch.multiprocessing as mp

    out = tmp_path / "hits.pt"
    mp.spawn(_gathered_hits, args=(2, str(tmp_path / "init"), str(out)), nprocs=2)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 6)
    x = torch.randn(11, 4, generator=torch.Generator().manual_seed(1))
    labels = (torch.arange(11) % 6).numpy()
    with torch.no_grad():
        logits = model(x).numpy()
    top5 = np.argsort(-logits, axis=1)[:, :5]
    expected = np.stack([logits.argmax(1) == labels, (top5 == labels[:, None]).any(1)], axis=1)
    np.testing.assert_array_equal(torch.load(out).numpy(), expected)


def test_beit_checkpoint_becomes_a_timm_beit_classifier():
    """BEiT fine-tuning (run_class_finetuning.py): mean pooling + fc_norm, the encoder's relative
    position tables and layer scale loaded block by block."""
    ckpt = load_spec("random:beit_tiny_patch16_224")
    recipe = load_defaults("protocols/finetune")
    model, _ = classifier_from_checkpoint(ckpt, 4, recipe, final_norm=True)
    enc = ckpt.backbone.model
    torch.testing.assert_close(model.blocks[7].attn.relative_position_bias_table,
                               enc.blocks[7].attn.relative_position_bias_table)
    torch.testing.assert_close(model.blocks[7].gamma_1, enc.blocks[7].gamma_1)
    assert isinstance(model.norm, torch.nn.Identity) and isinstance(model.fc_norm, torch.nn.LayerNorm)
    x = torch.randn(2, 3, 224, 224)
    model.eval()  # no stochastic depth
    with torch.no_grad():
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
        tokens = ckpt.backbone.tokens(x).prenorm  # the same blocks, before any norm
    torch.testing.assert_close(pooled, model.fc_norm(tokens[:, 1:].mean(1)), atol=1e-5, rtol=1e-5)
