"""scripts/supervised_control.py: trains with the labels and writes a checkpoint the protocols load."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ssl_bench.backbones import Backbone
from ssl_bench.checkpoints import load_spec

REPO = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("supervised_control", REPO / "scripts" / "supervised_control.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dark_and_bright(root: Path, per_class: int = 16, size: int = 32) -> Path:
    """Two classes a linear head separates at once: dark noise and bright noise."""
    rng = np.random.default_rng(0)
    for label, (lo, hi) in enumerate([(0, 60), (195, 255)]):
        folder = root / "imagenet" / "train" / f"n{label:08d}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(lo, hi, (size, size, 3), dtype=np.uint8)).save(folder / f"img{i}.JPEG")
    return root


def test_control_learns_the_labels_and_saves_a_loadable_checkpoint(tmp_path):
    data = _dark_and_bright(tmp_path / "data")
    out = tmp_path / "control"
    assert _script().main(["--arch", "resnet18", "--img-size", "32", "--data", str(data), "--out", str(out),
                           "--steps", "16", "--batch-size", "8", "--lr", "1e-3"]) == 0

    ckpt = load_spec(str(out))
    control = ckpt.meta["control"]
    assert control["steps"] == 16 and control["loss_window"] == 4
    # chance for two classes is ln 2 = 0.693; with the labels, the last 4 steps are far below it
    assert control["loss_last"] < 0.1 * math.log(2) < control["loss_first"]
    assert ckpt.meta["eval"]["feature"] == "avgpool" and ckpt.meta["method"] == "supervised-control"
    torch.manual_seed(0)
    init = Backbone("resnet18").model.state_dict()
    trained = ckpt.backbone.model.state_dict()
    assert not torch.equal(init["conv1.weight"], trained["conv1.weight"])
