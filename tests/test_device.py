"""Checks that need the accelerator: selected with ``-m device`` (``scripts/device_check.sh`` runs
them first), deselected otherwise. The device is ``SSL_BENCH_TEST_DEVICE`` (default ``cuda``); where
it does not exist these tests fail, they never skip. On CPU (``SSL_BENCH_TEST_DEVICE=cpu``) they
check the same code paths, which is how the script itself is tested."""

from __future__ import annotations

import json
import os

import pytest
import torch
from test_engine import REPO, make_images

from ssl_bench import engine
from ssl_bench.backbones import Backbone

DEVICE = os.environ.get("SSL_BENCH_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.device


@pytest.mark.parametrize("arch", ["vit_tiny_patch16_224", "vit_tiny_convstem_patch16_224", "beit_tiny_patch16_224"])
def test_backbone_on_device_matches_cpu(arch):
    torch.backends.cuda.matmul.allow_tf32 = False  # compare full fp32 results
    torch.manual_seed(0)
    cpu = Backbone(arch, img_size=64, patch_size=16, mask_token=True).eval()
    device = Backbone(arch, img_size=64, patch_size=16, mask_token=True).eval()
    device.load_state_dict(cpu.state_dict())
    device.to(DEVICE)
    x = torch.randn(2, 3, 96, 96)
    mask = torch.zeros(2, 36, dtype=torch.bool)
    mask[:, ::3] = True
    with torch.no_grad():
        want = cpu.tokens(x, mask=mask, blocks=[5]).intermediates[5]
        got = device.tokens(x.to(DEVICE), mask=mask.to(DEVICE), blocks=[5]).intermediates[5].cpu()
    assert torch.allclose(got, want, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("method", ["msn", "conmim", "siameseim", "mmc", "mscn"])
def test_tiny_recipe_trains_in_bf16_on_device(tmp_path, method):
    """Two optimiser steps of the embedded default's recipe, bf16 autocast, then export."""
    data = make_images(tmp_path / "data", per_class=4)
    sets = [f"data.root={data}", "data.batch_size=4", "data.num_workers=0", "optim.epochs=1",
            "optim.warmup_epochs=0.5", "precision=bf16", "checkpoint.every_steps=0", "log.every_steps=1"]
    sidecar = engine.pretrain(REPO / "pretrain" / f"{method}_tiny.yaml", sets, tmp_path / "run", device=DEVICE)
    meta = json.loads(sidecar.read_text())
    assert meta["step"] == 2 and meta["method"] == method
    rows = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
