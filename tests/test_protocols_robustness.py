"""Robustness: logit slicing, the classifier hand-off from the linear probe, mCE on real-layout trees."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssl_bench.evaluate import evaluate
from ssl_bench.protocols.robustness import accuracy_sliced, hits_sliced
from ssl_bench.results import load_predictions, load_results


pytestmark = pytest.mark.usefixtures("one_thread")


CORRUPTIONS = ["gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
               "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
               "jpeg_compression"]
WNIDS = ["n01440764", "n01443537", "n01484850"]


def _images(folder: Path, n: int, colour, rng, ext=".JPEG"):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = np.clip(np.array(colour) + rng.normal(0, 25, (32, 32, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"{folder.name}_{i}{ext}")


def make_tree(root: Path, generated_c: bool = False) -> Path:
    """ImageNet (3 classes), ImageNet-A/R (2-class subsets), Sketch (sketch/<wnid>), ImageNet-C (15 x 5)."""
    rng = np.random.default_rng(0)
    colours = {WNIDS[0]: (200, 40, 40), WNIDS[1]: (40, 200, 40), WNIDS[2]: (40, 40, 200)}
    for w, c in colours.items():
        _images(root / "imagenet/train" / w, 6, c, rng)
        _images(root / "imagenet/val" / w, 2, c, rng)
        _images(root / "imagenet-sketch/sketch" / w, 2, c, rng)
    for w in WNIDS[1:]:
        _images(root / "imagenet-a" / w, 2, colours[w], rng, ".jpg")
        _images(root / "imagenet-r" / w, 2, colours[w], rng, ".jpg")
    for corruption in CORRUPTIONS:
        for s in range(1, 6):
            for w in WNIDS:
                _images(root / "imagenet-c" / corruption / str(s) / w, 1, colours[w], rng)
    if generated_c:  # a manifest as `ssl-bench data prepare` writes: the C set is a generated one
        (root / "ssl-bench-data.json").write_text(json.dumps({"sets": {"imagenet-c": {
            "subfolder": "imagenet-c", "format": "imagenet-c", "dataset_name": "embedded-c"}}}))
    return root


SETS = ["roots={imagenet: imagenet, imagenet-a: imagenet-a, imagenet-r: imagenet-r, "
        "imagenet-sketch: imagenet-sketch, imagenet-c: imagenet-c}",
        "linear={epochs: 2, transform: {resize: 36, crop: 32}}", "cache=true"]


def test_accuracy_slices_logits_before_argmax():
    logits = np.array([[0.0, 5.0, 1.0, 2.0],    # full argmax: class 1 (outside the subset)
                       [3.0, 0.0, 0.5, 1.0]])
    columns = [2, 3]                            # the dataset's 2 classes are classifier classes 2, 3
    labels = np.array([1, 0])                   # sliced argmax: row 0 -> 1 (class 3), row 1 -> 1 (class 3)
    assert accuracy_sliced(logits, labels, columns) == pytest.approx(50.0)
    assert accuracy_sliced(logits, np.array([1, 0]), None) == pytest.approx(100.0)
    np.testing.assert_array_equal(hits_sliced(logits, labels, columns), [True, False])


def test_robustness_trains_the_probe_then_reports_mce(tmp_path):
    data = make_tree(tmp_path / "data")
    records, _ = evaluate("robustness", "random:vit_tiny_patch16_224", data, results_dir=tmp_path / "r",
                          device="cpu", sets=SETS)
    by = {(r["dataset"], r["metric"]): r for r in records}
    assert {d for d, _ in by} == {"imagenet-a", "imagenet-r", "imagenet-sketch", "imagenet-c"}
    assert all(r["classifier_trained_here"] for r in records)
    assert by[("imagenet-a", "top1")]["n"] == 4 and "2 classes" in by[("imagenet-a", "top1")]["logits"]
    assert "all 3 classes" in by[("imagenet-sketch", "top1")]["logits"]
    # mCE from the reported per-severity errors, by the Hendrycks & Dietterich formula
    alexnet = {"gaussian_noise": .886428, "shot_noise": .894468, "impulse_noise": .922640, "defocus_blur": .819880,
               "glass_blur": .826268, "motion_blur": .785948, "zoom_blur": .798360, "snow": .866816,
               "frost": .826572, "fog": .819324, "brightness": .564592, "contrast": .853204,
               "elastic_transform": .646056, "pixelate": .717840, "jpeg_compression": .606500}
    err = {c: [by[("imagenet-c", f"error/{c}/{s}")]["value"] / 100 for s in range(1, 6)] for c in CORRUPTIONS}
    expected = 100 * np.mean([sum(err[c]) / (5 * alexnet[c]) for c in CORRUPTIONS])
    assert by[("imagenet-c", "mCE")]["value"] == pytest.approx(expected, rel=1e-9)
    assert by[("imagenet-c", "100-mCE")]["value"] == pytest.approx(100 - expected, rel=1e-9)
    assert by[("imagenet-c", "mean_error")]["value"] == pytest.approx(100 * np.mean([np.mean(err[c]) for c in err]))
    # each error is a multiple of 1/3 (3 images per group)
    assert all(abs(e * 3 - round(e * 3)) < 1e-9 for v in err.values() for e in v)
    # per-sample hits of A/R/Sketch are stored (bootstrap intervals), their mean is the top-1
    stored = load_results(tmp_path / "r").set_index(["dataset", "metric"])
    for name in ("imagenet-a", "imagenet-r", "imagenet-sketch"):
        row = stored.loc[(name, "top1")]
        hits = load_predictions(row["predictions"], row["predictions_key"])
        assert set(np.unique(hits)) <= {0.0, 1.0} and len(hits) == by[(name, "top1")]["n"]
        assert 100 * hits.mean() == pytest.approx(row["value"])
    # second run: the saved head is used, nothing is trained
    again, _ = evaluate("robustness", "random:vit_tiny_patch16_224", data, results_dir=tmp_path / "r",
                        device="cpu", sets=SETS + ["datasets=[imagenet-a]"])
    assert not again[0]["classifier_trained_here"] and again[0]["classifier"] == "linear-mae"
    assert again[0]["value"] == by[("imagenet-a", "top1")]["value"]


def test_generated_corruptions_are_named_apart_and_get_no_mce(tmp_path):
    data = make_tree(tmp_path / "data", generated_c=True)
    records, _ = evaluate("robustness", "random:vit_tiny_patch16_224", data, results_dir=tmp_path / "r",
                          device="cpu", sets=SETS + ["datasets=[imagenet-c]", "corruptions=[fog, snow]"])
    metrics = {r["metric"] for r in records}
    assert {r["dataset"] for r in records} == {"embedded-c"}
    assert "mCE" not in metrics and "100-mCE" not in metrics and not any(m.startswith("CE/") for m in metrics)
    assert {"error/fog/1", "error/snow/5", "error/fog", "mean_error"} <= metrics
    assert "generated" in records[0]["mCE_skipped"]
