"""Dataset resolution on real layouts: the folder itself, conventional sub-folders, and the error messages."""

from __future__ import annotations

import json

import pytest

from ssl_bench.data import FORMATS, dataset_name, is_format, resolve
from ssl_bench.data.common import MANIFEST_NAME
from ssl_bench.errors import UserError


def touch_dirs(root, *paths):
    for p in paths:
        (root / p).mkdir(parents=True, exist_ok=True)


def test_real_layouts_resolve_to_themselves_and_keep_real_names(tmp_path):
    touch_dirs(tmp_path / "imagenet", "train/n01440764", "val/n01440764")
    touch_dirs(tmp_path / "coco", "annotations", "val2017")
    (tmp_path / "coco" / "annotations" / "instances_val2017.json").write_text("{}")
    touch_dirs(tmp_path, "lvis")
    (tmp_path / "lvis" / "lvis_v1_val.json").write_text("{}")
    touch_dirs(tmp_path / "ade", "ADEChallengeData2016/images/training", "ADEChallengeData2016/annotations/training")
    touch_dirs(tmp_path / "datasets", "DAVIS/JPEGImages/480p/bear")
    touch_dirs(tmp_path / "imagenet-c", "fog/1/n01440764")
    touch_dirs(tmp_path / "imagenet-r", "n01443537")
    touch_dirs(tmp_path / "ImageNet-Sketch", "sketch/n01440764")
    touch_dirs(tmp_path / "imagenet-a", "n01498041")
    expected = {
        "imagenet": tmp_path / "imagenet",
        "coco": tmp_path / "coco",
        "lvis": tmp_path / "lvis",
        "ade20k": tmp_path / "ade" / "ADEChallengeData2016",
        "davis": tmp_path / "datasets" / "DAVIS",
        "imagenet-c": tmp_path / "imagenet-c",
        "imagenet-r": tmp_path / "imagenet-r",
        "imagenet-sketch": tmp_path / "ImageNet-Sketch" / "sketch",
        "imagenet-a": tmp_path / "imagenet-a",
    }
    given = {"ade20k": tmp_path / "ade", "davis": tmp_path / "datasets",
             "imagenet-sketch": tmp_path / "ImageNet-Sketch"}
    assert set(expected) == set(FORMATS)
    for fmt, path in expected.items():
        assert resolve(given.get(fmt, path), fmt) == path, fmt
        assert dataset_name(given.get(fmt, path), fmt) == fmt  # a real dataset keeps its real name
    assert not is_format(tmp_path / "imagenet", "coco")


def test_resolution_errors(tmp_path):
    with pytest.raises(UserError) as e:
        resolve(tmp_path, "cityscapes")
    assert str(e.value) == ("--format: unknown format 'cityscapes'; valid: imagenet, coco, lvis, ade20k, davis, "
                            "imagenet-c, imagenet-r, imagenet-sketch, imagenet-a")
    with pytest.raises(UserError, match=f"^{tmp_path / 'none'}: no such directory"):
        resolve(tmp_path / "none", "imagenet")
    touch_dirs(tmp_path, "train")
    with pytest.raises(UserError) as e:
        resolve(tmp_path, "imagenet")
    assert str(e.value).startswith(f"{tmp_path}: not a imagenet dataset (expected train/<wnid>/*.JPEG and "
                                   f"val/<wnid>/*.JPEG) and no {MANIFEST_NAME} here")


def test_manifest_subfolder_resolution(tmp_path):
    touch_dirs(tmp_path, "my-c/fog/1/n99000000")
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({"generator": "ssl_bench.data.embedded", "sets": {
        "imagenet-c": {"format": "imagenet-c", "subfolder": "my-c", "dataset_name": "embedded-c"},
        "davis": {"format": "davis", "subfolder": "DAVIS-gone", "dataset_name": "embedded-davis"}}}))
    assert resolve(tmp_path, "imagenet-c") == tmp_path / "my-c"
    assert dataset_name(tmp_path, "imagenet-c") == "embedded-c"
    assert dataset_name(tmp_path / "my-c", "imagenet-c") == "embedded-c"  # also when given the set folder
    with pytest.raises(UserError, match="DAVIS-gone: listed in .* as the davis set but it is missing or incomplete"):
        resolve(tmp_path, "davis")
