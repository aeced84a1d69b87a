"""ImageNet-layout loaders and validators on hand-built fixtures in the real layouts."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from ssl_bench.data.common import fmt_config
from ssl_bench.data.imagefolder import (ImageFolderDataset, ImageNetC, ImageNetVariant, check_file_list,
                                        check_imagenet, check_imagenet_a, check_imagenet_c, check_imagenet_r,
                                        check_imagenet_sketch)
from ssl_bench.errors import UserError

WNIDS = ["n01440764", "n01443537", "n01484850"]  # tench, goldfish, great white shark


def write_image(path: Path, colour=(10, 20, 30), size=(8, 6), fmt="JPEG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format=fmt)
    return path


def make_imagenet(root: Path, train_per: int = 3, val_per: int = 2) -> Path:
    k = 1
    for c, wnid in enumerate(WNIDS):
        for i in range(train_per):
            write_image(root / "train" / wnid / f"{wnid}_{100 + i}.JPEG", colour=(c * 80, i * 40, 0))
        for i in range(val_per):
            write_image(root / "val" / wnid / f"ILSVRC2012_val_{k:08d}.JPEG")
            k += 1
    return root


def test_imagefolder_classes_samples_and_items(tmp_path):
    root = make_imagenet(tmp_path)
    ds = ImageFolderDataset(root / "train")
    assert ds.classes == WNIDS
    assert len(ds) == 9
    assert ds.samples[0] == (str(root / "train" / WNIDS[0] / f"{WNIDS[0]}_100.JPEG"), 0)
    assert ds.samples[-1] == (str(root / "train" / WNIDS[2] / f"{WNIDS[2]}_102.JPEG"), 2)
    assert ds.targets == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    img, label = ds[4]
    assert label == 1 and img.shape == (3, 6, 8) and img.dtype == torch.float32
    # colour (80, 40, 0) of goldfish image 1 survives JPEG within a few levels
    assert abs(float(img[0].mean()) * 255 - 80) < 4 and abs(float(img[1].mean()) * 255 - 40) < 4
    sized = ImageFolderDataset(root / "val", transform=lambda im: im.size)
    assert sized[0] == ((8, 6), 0) and len(sized) == 6


def test_imagefolder_errors(tmp_path):
    with pytest.raises(UserError, match=f"^{tmp_path / 'nope'}: no such directory"):
        ImageFolderDataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no class folders"):
        ImageFolderDataset(tmp_path / "empty")


def test_subset_file_labels_index_the_full_class_list(tmp_path):
    root = make_imagenet(tmp_path)
    f = tmp_path / "1percent.txt"
    f.write_text(f"{WNIDS[2]}_101.JPEG\n{WNIDS[0]}_100.JPEG\n")
    ds = ImageFolderDataset.from_subset_file(root / "train", f)
    assert ds.classes == WNIDS
    assert ds.samples == [(str(root / "train" / WNIDS[2] / f"{WNIDS[2]}_101.JPEG"), 2),
                          (str(root / "train" / WNIDS[0] / f"{WNIDS[0]}_100.JPEG"), 0)]


def test_msn_split_file_requires_k_per_class(tmp_path):
    root = make_imagenet(tmp_path)
    d = tmp_path / "imagenet_subsets1"
    d.mkdir()
    good = d / "2imgs_class.txt"
    good.write_text("".join(f"{w}_{100 + i}.JPEG\n" for w in WNIDS for i in range(2)))
    ds = ImageFolderDataset.from_split_file(root / "train", good)
    assert len(ds) == 6 and ds.targets == [0, 0, 1, 1, 2, 2]
    bad = d / "2imgs_class.txt"
    bad.write_text("".join(f"{w}_{100 + i}.JPEG\n" for w in WNIDS for i in range(2 if w != WNIDS[1] else 1)))
    with pytest.raises(UserError) as e:
        ImageFolderDataset.from_split_file(root / "train", bad)
    assert str(e.value) == f"{bad}: class {WNIDS[1]} has 1 images, expected 2 (2imgs_class.txt holds 2 per class)"
    with pytest.raises(UserError, match="not an MSN split file name"):
        ImageFolderDataset.from_split_file(root / "train", tmp_path / "split.txt")


def test_subset_file_malformed_lines_are_reported_with_line_numbers(tmp_path):
    root = make_imagenet(tmp_path)
    f = tmp_path / "10percent.txt"
    f.write_text("\n".join([
        f"{WNIDS[0]}_100.JPEG",            # 1 ok
        f"{WNIDS[0]}_999.JPEG",            # 2 missing file
        "goldfish.JPEG",                   # 3 no underscore
        "n09999999_1.JPEG",                # 4 unknown class
        f"{WNIDS[0]}_100.JPEG",            # 5 duplicate of line 1
        f"train/{WNIDS[1]}/{WNIDS[1]}_100.JPEG",  # 6 not a bare name
        "",                                # 7 empty line in the middle
        f"{WNIDS[1]}_101.JPEG",            # 8 ok
    ]) + "\n")
    problems: list[str] = []
    entries = check_file_list(f, root / "train", WNIDS, None, problems)
    assert [(no, name) for no, name, _ in entries] == [(1, f"{WNIDS[0]}_100.JPEG"), (8, f"{WNIDS[1]}_101.JPEG")]
    assert problems == [
        f"{f}:2: {root / 'train' / WNIDS[0] / (WNIDS[0] + '_999.JPEG')} does not exist",
        f"{f}:3: 'goldfish.JPEG' has no '_' (expected <wnid>_<n>.JPEG; the class is the part before '_')",
        f"{f}:4: class 'n09999999' of 'n09999999_1.JPEG' is not a class folder of {root / 'train'}",
        f"{f}:5: '{WNIDS[0]}_100.JPEG' repeats line 1",
        f"{f}:6: 'train/{WNIDS[1]}/{WNIDS[1]}_100.JPEG' is not a bare file name (expected <wnid>_<n>.JPEG)",
        f"{f}:7: empty line (expected one file name per line)",
    ]
    with pytest.raises(UserError) as e:
        ImageFolderDataset.from_subset_file(root / "train", f)
    assert str(e.value) == (f"{problems[0]} (and 5 more problems; run `ssl-bench data check` for all)")


def test_check_imagenet_ok_with_subset_and_split_files(tmp_path):
    root = make_imagenet(tmp_path)
    (root / "1percent.txt").write_text(f"{WNIDS[0]}_100.JPEG\n")
    (root / "imagenet_subsets2").mkdir()
    (root / "imagenet_subsets2" / "1imgs_class.txt").write_text("".join(f"{w}_101.JPEG\n" for w in WNIDS))
    assert check_imagenet(root) == []
    (root / "imagenet_subsets2" / "1imgs_class.txt").write_text(f"{WNIDS[0]}_101.JPEG\nbroken\n")
    assert check_imagenet(root) == [
        f"{root}/imagenet_subsets2/1imgs_class.txt:2: 'broken' has no '_' (expected <wnid>_<n>.JPEG; "
        f"the class is the part before '_')",
        f"{root}/imagenet_subsets2/1imgs_class.txt: class {WNIDS[1]} has 0 images, expected 1 "
        f"(1imgs_class.txt holds 1 per class)",
        f"{root}/imagenet_subsets2/1imgs_class.txt: class {WNIDS[2]} has 0 images, expected 1 "
        f"(1imgs_class.txt holds 1 per class)",
    ]


def test_check_imagenet_malformed_tree(tmp_path):
    root = make_imagenet(tmp_path)
    shutil.rmtree(root / "val" / WNIDS[1])                       # val lacks a class
    (root / "train" / WNIDS[0] / "notes.txt").write_text("x")     # stray file
    (root / "train" / WNIDS[2] / f"{WNIDS[2]}_100.JPEG").write_bytes(b"not a jpeg")  # broken image
    (root / "train" / "goldfish").mkdir()                         # not a wnid, and empty
    write_image(root / "train" / "stray.JPEG")                    # image outside class folders
    problems = check_imagenet(root)
    broken = root / "train" / WNIDS[2] / f"{WNIDS[2]}_100.JPEG"
    assert problems[:4] == [
        f"{root / 'train' / 'stray.JPEG'}: image outside a class folder (expected {root / 'train'}/<wnid>/stray.JPEG)",
        f"{root / 'train' / 'goldfish'}: folder name is not a WordNet id (expected n + 8 digits, e.g. n01440764)",
        f"{root / 'train' / 'goldfish'}: no images",
        f"{root / 'train' / WNIDS[0] / 'notes.txt'}: not an image file (expected .JPEG, .jpg or .png)",
    ]
    assert problems[4].startswith(f"{broken}: cannot be read as an image (UnidentifiedImageError")
    assert problems[5:] == [f"{root / 'val'}: class folders differ from {root / 'train'} "
                            f"(missing goldfish, {WNIDS[1]})"]


def test_check_imagenet_missing_split(tmp_path):
    root = make_imagenet(tmp_path)
    shutil.rmtree(root / "val")
    assert check_imagenet(root) == [f"{root / 'val'}: missing (expected val/<wnid>/*.JPEG class folders)"]


def test_imagenet_a_r_class_subset_and_logit_slicing(tmp_path):
    for wnid in (WNIDS[2], WNIDS[0]):
        write_image(tmp_path / "imagenet-r" / wnid / "art_0.jpg")
        write_image(tmp_path / "imagenet-r" / wnid / "cartoon_1.jpg")
    ds = ImageNetVariant(tmp_path / "imagenet-r")
    assert ds.class_subset == [WNIDS[0], WNIDS[2]]
    full = ["n00000001", WNIDS[0], WNIDS[1], WNIDS[2]]
    idx = ds.logit_indices(full)
    assert idx == [1, 3]
    logits = torch.tensor([[9.0, 1.0, 8.0, 2.0], [9.0, 3.0, 8.0, 0.0]])
    # the 1000-way argmax would pick column 0 (not in the subset); the sliced argmax is a subset label
    assert logits[:, idx].argmax(1).tolist() == [1, 0]
    assert ds.targets == [0, 0, 1, 1]
    with pytest.raises(UserError) as e:
        ds.logit_indices([WNIDS[0]])
    assert str(e.value) == (f"{tmp_path / 'imagenet-r'}: classes {WNIDS[2]} are not among the 1 classes of "
                            f"the classifier")
    # a real ImageNet-R has 200 classes: a partial copy is reported
    assert check_imagenet_r(tmp_path / "imagenet-r") == [
        f"{tmp_path / 'imagenet-r'}: 2 class folders, expected 200 for imagenet-r"]
    assert check_imagenet_a(tmp_path / "missing") == [
        f"{tmp_path / 'missing'}: missing (expected missing/<wnid>/*.JPEG class folders)"]


def test_imagenet_sketch_nested_folder(tmp_path):
    write_image(tmp_path / "sketch" / WNIDS[1] / "sketch_0.JPEG")
    ds = ImageNetVariant(tmp_path)
    assert ds.root == tmp_path / "sketch" and ds.classes == [WNIDS[1]] and len(ds) == 1
    assert check_imagenet_sketch(tmp_path) == [
        f"{tmp_path / 'sketch'}: 1 class folders, expected 1000 for imagenet-sketch"]


def make_imagenet_c(root: Path) -> Path:
    cfg = fmt_config("imagenet-c")
    for c in cfg["corruptions"]:
        for s in cfg["severities"]:
            for wnid in WNIDS[:2]:
                write_image(root / c / str(s) / wnid / "ILSVRC2012_val_00000001.JPEG", size=(4, 4))
    return root


def test_imagenet_c_groups_and_check(tmp_path):
    root = make_imagenet_c(tmp_path / "imagenet-c")
    cfg = fmt_config("imagenet-c")
    data = ImageNetC(root)
    assert len(data) == 75 and data.classes == WNIDS[:2]
    groups = list(data)
    assert [(c, s) for c, s, _ in groups[:6]] == [("gaussian_noise", 1), ("gaussian_noise", 2), ("gaussian_noise", 3),
                                                  ("gaussian_noise", 4), ("gaussian_noise", 5), ("shot_noise", 1)]
    assert groups[-1][:2] == ("jpeg_compression", 5)
    assert all(len(ds) == 2 and ds.targets == [0, 1] for _, _, ds in groups)
    assert [c for c in cfg["corruptions"]] == data.corruptions
    assert check_imagenet_c(root) == []
    only = ImageNetC(root, corruptions=["fog"], severities=[3])
    assert [(c, s) for c, s, _ in only] == [("fog", 3)]


def test_imagenet_c_malformed(tmp_path):
    root = make_imagenet_c(tmp_path / "imagenet-c")
    shutil.rmtree(root / "fog" / "3")
    (root / "fog" / "6").mkdir()
    shutil.rmtree(root / "pixelate")
    (root / "snow" / "2" / WNIDS[1]).rename(root / "snow" / "2" / WNIDS[2])
    (root / "blur").mkdir()
    problems = check_imagenet_c(root)
    corr = ", ".join(fmt_config("imagenet-c")["corruptions"])
    assert problems == [
        f"{root / 'blur'}: unknown corruption folder (expected one of "
        f"{', '.join(fmt_config('imagenet-c')['corruptions'] + fmt_config('imagenet-c')['extra_corruptions'])})",
        f"{root / 'pixelate'}: missing (the benchmark has 15 corruptions: {corr})",
        f"{root / 'snow' / '2'}: class folders differ from {root / 'gaussian_noise' / '1'} "
        f"(missing {WNIDS[1]}; extra {WNIDS[2]})",
        f"{root / 'fog' / '6'}: unexpected folder (expected severities 1-5)",
        f"{root / 'fog' / '3'}: missing (expected severities 1-5)",
    ]
