"""The embedded data generator (tiny profile), the data CLI, the loaders on its output and the loader benchmark.

One tiny tree is prepared per module (through the CLI handler); the determinism test prepares a second one
with a different worker count and compares every byte.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ssl_bench.data import FORMATS, dataset_name, resolve
from ssl_bench.data.check import check
from ssl_bench.data.common import MANIFEST_NAME, fmt_config
from ssl_bench.data.embedded import load_profile, prepare, prepare_if_needed
from ssl_bench.data.embedded import sources
from ssl_bench.data.embedded.compose import rng_for
from ssl_bench.data.embedded.context import Context
from ssl_bench.cli import main
from ssl_bench.errors import UserError
from ssl_bench.progress import set_quiet

PROFILE = load_profile("tiny")
WNIDS = [f"n{99000000 + k:08d}" for k in range(10)]


def run_cli(*argv: str) -> int:
    return main(["--quiet", *argv])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    set_quiet(True)
    root = tmp_path_factory.mktemp("embedded") / "sb-data"
    assert run_cli("data", "prepare", "--root", str(root), "--profile", "tiny", "--workers", "1") == 0
    return root


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------ the tree

def test_every_format_passes_its_validator(tiny, capsys):
    for fmt in FORMATS:
        folder, problems = check(tiny, fmt)
        assert problems == [], fmt
        assert folder == tiny / json.loads((tiny / MANIFEST_NAME).read_text())["sets"][fmt]["subfolder"]
    capsys.readouterr()
    assert run_cli("data", "check", "--root", str(tiny), "--format", "all") == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("OK: imagenet (") and "imagenet-a (" in out[0]
    assert run_cli("data", "check", "--root", str(tiny), "--format", "davis") == 0
    assert capsys.readouterr().out == f"OK: davis ({tiny / 'DAVIS'})\n"


def test_manifest_records_provenance_without_timestamps(tiny):
    text = (tiny / MANIFEST_NAME).read_text()
    m = json.loads(text)
    assert (m["profile"], m["seed"], m["complete"], m["generator_version"]) == ("tiny", 0, True, "1")
    assert sorted(m["sets"]) == sorted(FORMATS)
    assert {f: s["dataset_name"] for f, s in m["sets"].items()} == {
        "imagenet": "embedded-imagenet", "coco": "embedded-coco", "lvis": "embedded-lvis",
        "ade20k": "embedded-ade20k", "davis": "embedded-davis", "imagenet-c": "embedded-c",
        "imagenet-r": "embedded-r", "imagenet-sketch": "embedded-sketch", "imagenet-a": "embedded-a"}
    fm = m["sources"]["fashion_mnist"]
    assert fm["licence"] == "MIT" and fm["debian_package"] == "dataset-fashion-mnist"
    assert sorted(fm["files"]) == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz",
                                   "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]
    assert all(re.fullmatch("[0-9a-f]{64}", f["sha256"]) for f in fm["files"].values())
    assert m["sources"]["backgrounds"]["brick"]["licence"].startswith("CC0")
    assert m["sources"]["backgrounds"]["astronaut"]["licence"].startswith("public domain")
    assert "not ImageNet-C" in m["sets"]["imagenet-c"]["how"]
    assert m["sets"]["imagenet-c"]["corruptions"] == fmt_config("imagenet-c")["corruptions"]
    assert all(s["seed"] == 0 and s["sources"] for s in m["sets"].values())
    assert not re.search(r"\d{4}-\d{2}-\d{2}|\d{2}:\d{2}:\d{2}", text)  # no dates or clock times


def test_counts_and_names_follow_the_profile(tiny):
    im = tiny / "imagenet"
    assert sorted(p.name for p in (im / "train").iterdir()) == WNIDS
    assert sorted(p.name for p in (im / "train" / WNIDS[3]).iterdir()) == sorted(
        f"{WNIDS[3]}_{j}.JPEG" for j in range(8))
    assert len(list((im / "val").rglob("*.JPEG"))) == 30
    assert sorted(p.name for p in (im / "val" / WNIDS[0]).iterdir()) == [
        "embedded_val_00000001.JPEG", "embedded_val_00000002.JPEG", "embedded_val_00000003.JPEG"]
    one = (im / "1percent.txt").read_text().splitlines()
    assert len(one) == 10 and sorted(line.split("_")[0] for line in one) == WNIDS
    for s in (1, 2, 3):
        for k in (1, 2, 5):
            lines = (im / f"imagenet_subsets{s}" / f"{k}imgs_class.txt").read_text().splitlines()
            assert sorted(line.split("_")[0] for line in lines) == sorted(WNIDS * k)
    c = tiny / "imagenet-c"
    assert sorted(p.name for p in c.iterdir()) == sorted(fmt_config("imagenet-c")["corruptions"])
    assert sorted(p.name for p in (c / "fog").iterdir()) == ["1", "2", "3", "4", "5"]
    assert len(list((c / "zoom_blur" / "4").rglob("*.JPEG"))) == 10
    assert sorted(p.name for p in (tiny / "imagenet-r").iterdir()) == [WNIDS[k] for k in (0, 1, 2, 3, 4, 5, 7, 8)]
    assert sorted(p.name for p in (tiny / "imagenet-r" / WNIDS[0]).iterdir()) == ["cartoon_0.jpg", "painting_1.jpg"]
    assert sorted(p.name for p in (tiny / "imagenet-a").iterdir()) == [WNIDS[k] for k in (0, 1, 3, 5, 7, 8, 9)]
    assert len(list((tiny / "imagenet-sketch").rglob("sketch_*.JPEG"))) == 20
    coco = json.loads((tiny / "coco" / "annotations" / "instances_train2017.json").read_text())
    assert len(coco["images"]) == 16 and coco["images"][0]["file_name"] == "000000000001.jpg"
    assert len(list((tiny / "coco" / "val2017").iterdir())) == 8
    ade = tiny / "ADEChallengeData2016"
    assert len(list((ade / "images" / "training").iterdir())) == 12
    assert sorted(p.name for p in (ade / "annotations" / "validation").iterdir())[0] == "ADE_val_00000001.png"
    davis = tiny / "DAVIS"
    seqs = (davis / "ImageSets" / "2017" / "val.txt").read_text().split()
    assert len(seqs) == 2 and len((davis / "ImageSets" / "2017" / "train.txt").read_text().split()) == 2
    assert sorted(p.name for p in (davis / "JPEGImages" / "480p" / seqs[0]).iterdir()) == [
        f"{t:05d}.jpg" for t in range(6)]


def test_coco_and_lvis_json_load_and_score_ap_one(tiny):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    from ssl_bench.data.lvis_compat import import_lvis
    for split in ("train2017", "val2017"):
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO(str(tiny / "coco" / "annotations" / f"instances_{split}.json"))
            dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
                     "segmentation": a["segmentation"], "score": 1.0} for a in gt.loadAnns(gt.getAnnIds())]
            for iou in ("bbox", "segm"):
                ev = COCOeval(gt, gt.loadRes(dets), iou)
                ev.evaluate()
                ev.accumulate()
                ev.summarize()
                assert ev.stats[0] == 1.0, (split, iou)
    lvis = import_lvis()
    cats = json.loads((tiny / "lvis" / "lvis_v1_train.json").read_text())["categories"]
    assert {c["frequency"] for c in cats} == {"r", "c", "f"}
    for c in cats:  # tiny thresholds: rare <= 1 image, common <= 3
        assert c["frequency"] == ("r" if c["image_count"] <= 1 else "c" if c["image_count"] <= 3 else "f")
    coco_train = json.loads((tiny / "coco" / "annotations" / "instances_train2017.json").read_text())
    lvis_train = json.loads((tiny / "lvis" / "lvis_v1_train.json").read_text())
    assert len(lvis_train["annotations"]) < len(coco_train["annotations"])  # federated
    for img in lvis_train["images"]:
        present = {a["category_id"] for a in lvis_train["annotations"] if a["image_id"] == img["id"]}
        assert not present & set(img["neg_category_ids"])
        assert img["coco_url"].startswith("embedded://coco/train2017/")
    gt = lvis.LVIS(str(tiny / "lvis" / "lvis_v1_val.json"))
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
             "segmentation": a["segmentation"], "score": 1.0} for a in gt.load_anns()]
    ev = lvis.LVISEval(gt, dets, iou_type="segm")
    ev.run()
    assert ev.results["AP"] == 1.0


def test_loaders_on_the_embedded_tree(tiny):
    from ssl_bench.data import (ADE20kSegmentation, CocoDetection, DavisSequences, ImageFolderDataset,
                                ImageNetC, ImageNetVariant, LvisDetection)
    im = resolve(tiny, "imagenet")
    train = ImageFolderDataset(im / "train")
    assert train.classes == WNIDS and len(train) == 80
    assert len(ImageFolderDataset.from_subset_file(im / "train", im / "1percent.txt")) == 10
    five = ImageFolderDataset.from_split_file(im / "train", im / "imagenet_subsets1" / "5imgs_class.txt")
    assert sorted(five.targets) == sorted(list(range(10)) * 5)
    a = ImageNetVariant(resolve(tiny, "imagenet-a"))
    assert a.logit_indices(train.classes) == [0, 1, 3, 5, 7, 8, 9]
    groups = list(ImageNetC(resolve(tiny, "imagenet-c")))
    assert len(groups) == 75 and all(len(ds) == 10 for _, _, ds in groups)
    x, y = groups[0][2][0]
    assert x.shape == (3, 64, 64) and y == 0
    coco = CocoDetection.from_root(resolve(tiny, "coco"), "val2017")
    _, t = coco[0]
    anns = [a for a in coco.dataset["annotations"] if a["image_id"] == t["image_id"]]
    assert t["masks"].flatten(1).sum(1).tolist() == [a["area"] for a in anns]  # RLE masks are exact
    assert t["labels"].min() >= 1 and t["labels"].max() <= 10
    lv = LvisDetection.from_root(resolve(tiny, "lvis"), "val")
    assert len(lv) == 8 and lv.image_root == tiny / "coco"
    ade = ADE20kSegmentation(resolve(tiny, "ade20k"), "training")
    assert ade.num_classes == 13 and ade.class_names[-3:] == ["brick", "grass", "gravel"]
    labels = torch.cat([ade[i][1].flatten() for i in range(len(ade))]).unique().tolist()
    assert set(labels) <= set(range(13)) | {255} and 255 in labels
    for seq in DavisSequences(resolve(tiny, "davis"), "val"):
        assert seq.object_ids[:2] == [1, 2]
        masks = [seq.read_mask(t) for t in range(len(seq))]
        assert not (masks[-1] == 2).any()             # object 2 has left the frame
        first = int((masks[0] == 1).sum())
        # object 1 (behind) loses pixels to object 2 while it sweeps past
        assert min(int((m == 1).sum()) for m in masks[1:-2]) < first or first == 0


def test_dataset_names_and_resolution(tiny, tmp_path):
    assert dataset_name(tiny, "imagenet-c") == "embedded-c"
    assert dataset_name(tiny / "imagenet", "imagenet") == "embedded-imagenet"
    assert resolve(tiny, "davis") == tiny / "DAVIS"
    assert resolve(tiny, "lvis") == tiny / "lvis"
    with pytest.raises(UserError) as e:
        resolve(tmp_path, "coco")
    assert str(e.value) == (f"{tmp_path}: not a coco dataset (expected annotations/instances_<split>.json and "
                            f"<split>/ image folders) and no {MANIFEST_NAME} here; point at the dataset folder, or "
                            f"run `ssl-bench data prepare --root {tmp_path}` for the embedded data")
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / MANIFEST_NAME).write_text(json.dumps({"generator": "x", "sets": {}}))
    with pytest.raises(UserError, match=f"{partial / MANIFEST_NAME}: lists no davis set"):
        resolve(partial, "davis")


def test_cli_check_reports_problems_with_exit_code_1(tiny, tmp_path, capsys):
    broken = tmp_path / "imagenet"
    shutil.copytree(tiny / "imagenet", broken)
    shutil.rmtree(broken / "val" / WNIDS[4])
    with open(broken / "1percent.txt", "a") as f:
        f.write("n99000001-7.JPEG\n")
    capsys.readouterr()
    assert run_cli("data", "check", "--root", str(broken), "--format", "imagenet") == 1
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [
        f"{broken / 'val'}: class folders differ from {broken / 'train'} (missing {WNIDS[4]})",
        f"{broken / '1percent.txt'}:11: 'n99000001-7.JPEG' has no '_' (expected <wnid>_<n>.JPEG; the class is the "
        f"part before '_')",
    ]
    assert captured.err.strip().endswith("2 problems found")
    assert run_cli("data", "check", "--root", str(broken), "--format", "all") == 2
    assert "--format all needs a tree made by" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        with contextlib.redirect_stderr(io.StringIO()):
            run_cli("data", "check", "--root", str(broken), "--format", "pascal")


# --------------------------------------------------------------------------------------- determinism

def test_same_seed_gives_byte_identical_files(tiny, tmp_path):
    again = tmp_path / "again"
    prepare(again, "tiny", seed=0, workers=2)
    a, b = files_of(tiny), files_of(again)
    assert sorted(a) == sorted(b) and len(a) > 1000
    assert [k for k in a if a[k] != b[k]] == []


def test_prepare_if_needed_reuses_a_matching_tree(tiny, monkeypatch):
    import importlib
    mod = importlib.import_module("ssl_bench.data.embedded.prepare")  # the module, not the function it exports
    calls = []
    monkeypatch.setattr(mod, "prepare", lambda root, **kw: calls.append((root, kw)) or {"regenerated": True})
    manifest = prepare_if_needed(tiny, profile="tiny")
    assert calls == [] and manifest["profile"] == "tiny" and manifest["complete"] is True
    assert prepare_if_needed(tiny, profile="tiny", seed=3) == {"regenerated": True}      # other seed
    assert prepare_if_needed(tiny, profile="demo") == {"regenerated": True}              # other profile
    assert [kw["seed"] for _, kw in calls] == [3, 0]


def test_seed_changes_the_images():
    fm = sources.load_fashion_mnist(PROFILE["fashion_mnist"])
    ctx = Context(root=Path("."), profile=PROFILE, seed=0, fm=fm, backgrounds=sources.load_backgrounds(PROFILE))
    def image(seed):
        return ctx.object_image("train", 0, 64, (0.5, 0.9), rng_for(seed, "imagenet-train", 0, 0))
    assert np.array_equal(image(0), image(0))
    assert not np.array_equal(image(0), image(1))


# ------------------------------------------------------------------------------------ sources & errors

def test_fashion_mnist_missing_says_what_to_install(tmp_path, monkeypatch):
    cfg = dict(PROFILE["fashion_mnist"], dir=str(tmp_path / "fm"))
    monkeypatch.delenv(sources.ENV_DIR, raising=False)
    monkeypatch.setattr(sources, "_can_apt", lambda: False)
    with pytest.raises(UserError) as e:
        sources.ensure_fashion_mnist(cfg)
    assert str(e.value) == (
        f"{tmp_path / 'fm'}: Fashion-MNIST files missing (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
        f"t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz); install them with `sudo apt-get update && sudo "
        f"apt-get install -y dataset-fashion-mnist`, or set SSL_BENCH_FASHION_MNIST to a folder holding the four "
        f"IDX .gz files from https://github.com/zalandoresearch/fashion-mnist")


def test_fashion_mnist_installed_with_apt_when_root(tmp_path, monkeypatch):
    cfg = dict(PROFILE["fashion_mnist"], dir=str(tmp_path / "fm"))
    real = sources.fashion_mnist_dir(PROFILE["fashion_mnist"])
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        if cmd[:2] == ["apt-get", "install"]:  # the package puts the four files in place
            shutil.copytree(real, tmp_path / "fm")
        return type("R", (), {"returncode": 0, "stdout": ""})()

    monkeypatch.delenv(sources.ENV_DIR, raising=False)
    monkeypatch.setattr(sources, "_can_apt", lambda: True)
    monkeypatch.setattr(sources.subprocess, "run", fake_run)
    assert sources.ensure_fashion_mnist(cfg) == tmp_path / "fm"
    assert calls == [["apt-get", "update"], ["apt-get", "install", "-y", "dataset-fashion-mnist"]]


def test_prepare_refuses_foreign_folders_and_bad_profiles(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError) as e:
        prepare(tmp_path, "tiny")
    assert str(e.value) == (f"{tmp_path}: not empty and holds no {MANIFEST_NAME}; give an empty or new folder "
                            f"(prepare only overwrites trees it made)")
    with pytest.raises(UserError, match="--profile: unknown profile 'huge'; valid: demo, tiny"):
        prepare(tmp_path / "new", "huge")


# ----------------------------------------------------------------------------------- loading & bench

def test_make_loader_batches(tiny):
    from ssl_bench.data import ImageFolderDataset, make_loader
    from ssl_bench.data.loading import measure_throughput
    from ssl_bench.protocols._features import eval_transform
    tcfg = {"resize": 55, "crop": 48, "interpolation": "bicubic", "mean": [0.5] * 3, "std": [0.25] * 3}
    ds = ImageFolderDataset(tiny / "imagenet" / "val", eval_transform(tcfg), draft_size=55)
    b0 = next(iter(make_loader(ds, 8, workers=0)))
    b1 = next(iter(make_loader(ds, 8, workers=1)))
    assert b0[0].shape == (8, 3, 48, 48) and b0[1].tolist() == [0, 0, 0, 1, 1, 1, 2, 2]
    assert torch.equal(b0[0], b1[0])
    r = measure_throughput(ds, batch_size=4, workers=0, batches=3, warmup=1)
    assert (r["images"], r["batches"]) == (12, 3) and r["images_per_s"] > 0


def test_bench_data_prints_both_rates_and_ratio(tiny, capsys):
    from ssl_bench.benchmarks import data as bench
    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    args = p.parse_args(["--data", str(tiny), "--workers", "1", "--batches", "2", "--batch-size", "8",
                         "--size", "32"])
    capsys.readouterr()
    assert bench.run(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("loader throughput: embedded-imagenet train (80 images in ")
    assert re.fullmatch(r"  workers=0: [0-9.]+ images/s \(16 images in [0-9.]+ s\)", out[1])
    assert re.fullmatch(r"  workers=1: [0-9.]+ images/s \(16 images in [0-9.]+ s\)", out[2])
    assert re.fullmatch(r"  ratio \(1 workers / 0 workers\): [0-9.]+x", out[3])
