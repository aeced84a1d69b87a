"""Same inputs, same result: every protocol run twice through ``evaluate``, first on a cold feature
cache, then on the warm one after the global random generators moved, gives exactly the same
records and per-sample results (per-sample hits, detections, predicted label maps, prompt IoUs,
propagated masks) and the same trained classifiers."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_protocols_common import make_imagefolder
from test_protocols_davis import make_davis
from test_protocols_detection import write_fixture
from test_protocols_linear_seg import make_ade
from test_protocols_prompt_seg import make_coco
from test_protocols_robustness import SETS as ROBUSTNESS_SETS
from test_protocols_robustness import make_tree

from ssl_bench.backbones import Backbone
from ssl_bench.checkpoints import save_checkpoint
from ssl_bench.evaluate import evaluate
from ssl_bench.protocols import _features

SMALL = ["transform.resize=36", "transform.crop=32"]
DETECTION = ["model.image_size=64", "model.window_size=2", "schedule.iters=2", "model.fpn_channels=32",
             "model.box_fc=64", "model.roi_batch_size_per_image=64", "model.rpn.pre_nms_topk=[300, 300]",
             "model.rpn.post_nms_topk=[100, 100]", "test.score_thresh=0.0", "lvis.score_thresh=0.0",
             "test.detections_per_image=20", "lvis.detections_per_image=20"]
SEGMENTATION = ["model.channels=16", "model.aux_channels=8", "schedule.iters=2", "train_pipeline.scale=[128, 32]",
                "train_pipeline.crop_size=[32, 32]", "test.scale=[128, 32]", "test.crop_size=[32, 32]",
                "test.stride=[21, 21]"]

# protocol -> (data fixture, --set overrides, whether it reads the feature cache)
CASES = {
    "knn": (lambda root: make_imagefolder(root), SMALL, True),
    "linear": (lambda root: make_imagefolder(root), SMALL + ["epochs=2", "train_batch_size=8"], True),
    "lowshot": (lambda root: make_imagefolder(root), SMALL + ["lambd=0.1"], True),
    "robustness": (make_tree, ROBUSTNESS_SETS + ["corruptions=[fog, snow]"], True),
    "finetune": (lambda root: make_imagefolder(root, classes=3, train=2, val=2),
                 SMALL + ["epochs=1", "train_batch_size=6"], False),
    "finetune_1pct": (lambda root: make_imagefolder(root, classes=3, train=4, val=2),
                      SMALL + ["epochs=1", "train_batch_size=6"], False),
    "detection": (write_fixture, DETECTION + ["datasets=[lvis]"], False),
    "segmentation": (lambda root: make_ade(root, n_train=4, n_val=2), SEGMENTATION, False),
    "linear_seg": (lambda root: make_ade(root, n_train=4, n_val=2),
                   ["iterations=3", "batch_size=2", "train_size=32", "test_size=32"], False),
    "prompt_seg": (make_coco, ["input_size=128"], False),
    "davis": (lambda root: make_davis(root, frames=4), ["short_side=64", "multiple=16"], False),
}


@pytest.fixture(autouse=True)
def _one_thread():
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A checkpoint of ours: loading it draws nothing from the global generators (random:ARCH reseeds)."""
    torch.manual_seed(7)
    stem = tmp_path_factory.mktemp("ckpt") / "checkpoint"
    save_checkpoint(stem, Backbone("vit_tiny_patch16_224"), {"method": "test", "encoder": "online"})
    return stem.with_suffix(".json")


def _outputs(monkeypatch, protocol: str, results: Path) -> dict:
    """Hooks that keep the per-sample outputs of protocols whose records hold only aggregates."""
    captured: dict[str, list] = {"outputs": []}
    if protocol == "detection":
        from ssl_bench.protocols import detection

        detect = detection.detect
        monkeypatch.setattr(detection, "detect", lambda *a, **k: captured["outputs"].append(detect(*a, **k))
                            or captured["outputs"][-1])
    elif protocol in ("segmentation", "linear_seg"):
        from ssl_bench.metrics.segmentation import IoUAccumulator

        update = IoUAccumulator.update
        monkeypatch.setattr(IoUAccumulator, "update", lambda self, pred, label: (
            captured["outputs"].append(np.array(pred)), update(self, pred, label))[1])
    elif protocol == "prompt_seg":
        from ssl_bench.protocols import prompt_seg

        summarise = prompt_seg.summarise
        monkeypatch.setattr(prompt_seg, "summarise", lambda scores, *a: (
            captured["outputs"].append((np.stack(scores.inter), np.stack(scores.union))), summarise(scores, *a))[1])
    return captured


def _run(protocol: str, data: Path, results: Path, sets: list[str], checkpoint: Path, monkeypatch) -> dict:
    with monkeypatch.context() as patch:
        captured = _outputs(patch, protocol, results)
        records, _ = evaluate(protocol, str(checkpoint), data, sets=sets, results_dir=results, device="cpu")
    if protocol == "davis":
        masks = sorted(Path(records[0]["masks_dir"]).rglob("*.png"))
        captured["outputs"] = [(p.name, p.read_bytes()) for p in masks]
    # trained classifiers (linear heads, fine-tuned networks), weight by weight
    heads = {p.name: load_file(p) for p in sorted((results / "heads").rglob("*.safetensors"))}
    return {"records": records, "outputs": captured["outputs"], "heads": heads}


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.shape == b.shape and np.array_equal(a, b)
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, float):
        return a == b or (math.isnan(a) and isinstance(b, float) and math.isnan(b))
    return a == b


@pytest.mark.parametrize("protocol", sorted(CASES))
def test_cold_then_warm_cache_gives_the_same_result(protocol, checkpoint, tmp_path, monkeypatch):
    make, sets, cached = CASES[protocol]
    data, results = make(tmp_path / "data"), tmp_path / "results"
    cold = _run(protocol, data, results, sets, checkpoint, monkeypatch)
    torch.rand(5), np.random.rand(5), random.random()  # whatever ran in between moved the generators
    extractions = len(_features.EXTRACTIONS)
    warm = _run(protocol, data, results, sets, checkpoint, monkeypatch)
    if cached:
        assert (results / "features").is_dir() and len(_features.EXTRACTIONS) == extractions  # a warm cache
    for record in cold["records"] + warm["records"]:
        record.pop("classifier_trained_here", None)  # robustness: trained on the cold run, loaded on the warm
    assert len(cold["records"]) == len(warm["records"]) > 0
    for first, second in zip(cold["records"], warm["records"]):
        assert _same(first, second), (first["dataset"], first["metric"])
    assert any("per_sample" in r for r in cold["records"]) or cold["outputs"]
    assert _same(cold["outputs"], warm["outputs"])
    assert _same(cold["heads"], warm["heads"])
