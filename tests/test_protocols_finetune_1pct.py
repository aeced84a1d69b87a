"""1% fine-tuning (Barlow Twins recipe): subset file, two learning rates, per-epoch cosine."""

from __future__ import annotations

import math

import pytest
import torch
from test_protocols_common import context, make_imagefolder

from ssl_bench.protocols.robustness import load_classifier
from ssl_bench.protocols.finetune_1pct import FineTune1Pct


def test_finetune_1pct_trains_on_the_subset_with_barlow_schedule(tmp_path, monkeypatch):
    tree = make_imagefolder(tmp_path / "data", classes=3, train=4, val=2)
    ctx = context(tree, tmp_path / "results", "finetune_1pct", epochs=2, train_batch_size=6)
    lrs = []
    step = torch.optim.SGD.step

    def recording_step(self, *args, **kwargs):
        lrs.append([g["lr"] for g in self.param_groups])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", recording_step)
    before = {k: v.clone() for k, v in ctx.checkpoint.backbone.encoder_state_dict().items()}
    records = {r["metric"]: r for r in FineTune1Pct().run(ctx)}
    # 1percent.txt of the fixture lists 2 images per class: 6 images = one batch per epoch
    assert records["top1"]["n_train"] == 6 and len(lrs) == 2
    # classifier lr 0.5, backbone 0.005 (Barlow Twins README), CosineAnnealingLR(T_max=2) stepped per epoch
    for epoch, (lr_head, lr_backbone) in enumerate(lrs):
        factor = (1 + math.cos(math.pi * epoch / 2)) / 2
        assert lr_head == pytest.approx(0.5 * factor) and lr_backbone == pytest.approx(0.005 * factor)
    model, meta = load_classifier(tmp_path / "results", ctx.checkpoint.sha256, "finetune_1pct")
    assert meta["protocol"] == "finetune_1pct" and meta["num_classes"] == 3
    state = model.state_dict()
    # the backbone was fine-tuned (not frozen): its weights moved from the checkpoint's
    assert not torch.equal(state["blocks.0.attn.qkv.weight"], before["blocks.0.attn.qkv.weight"])
    assert records["top1"]["value"] >= records["top1_last"]["value"]
    assert records["top1"]["subset_file"] == "1percent.txt"
