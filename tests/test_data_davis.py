"""DAVIS-2017 loader and validator on a hand-built fixture (indexed palette PNG annotations)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssl_bench.data.davis import DavisSequences, check_davis, read_mask, voc_palette, write_mask
from ssl_bench.errors import UserError


def make_davis(root: Path, seqs=("bear", "dog-agility"), frames=3) -> Path:
    for k, seq in enumerate(seqs):
        for t in range(frames):
            (root / "JPEGImages" / "480p" / seq).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 6), (t * 40, 0, 0)).save(root / "JPEGImages" / "480p" / seq / f"{t:05d}.jpg")
            mask = np.zeros((6, 8), np.uint8)
            mask[1:3, 1 + t:3 + t] = 1
            mask[4:6, 5:8] = 2 if k == 0 else 0
            write_mask(root / "Annotations" / "480p" / seq / f"{t:05d}.png", mask)
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "train.txt").write_text(f"{seqs[0]}\n")
    (root / "ImageSets" / "2017" / "val.txt").write_text(f"{seqs[1]}\n")
    return root


def test_voc_palette():
    pal = voc_palette()
    assert pal.shape == (256, 3)
    assert pal[:6].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128], [128, 0, 128]]
    assert pal[255].tolist() == [224, 224, 192]  # the VOC "void" colour


def test_davis_sequences(tmp_path):
    root = make_davis(tmp_path / "DAVIS")
    seqs = DavisSequences(root, "train")
    assert seqs.names == ["bear"] and len(seqs) == 1
    seq = next(iter(seqs))
    assert seq.name == "bear" and len(seq) == 3
    assert [p.name for p in seq.frames] == ["00000.jpg", "00001.jpg", "00002.jpg"]
    assert seq.object_ids == [1, 2]
    assert seq.first_mask[1:3, 1:3].tolist() == [[1, 1], [1, 1]] and int((seq.first_mask == 2).sum()) == 6
    assert np.array_equal(seq.palette, voc_palette())
    assert seq.read_mask(2)[1, 3:5].tolist() == [1, 1]
    assert seq.read_frame(1).size == (8, 6)
    val = DavisSequences(root, "val").sequence("dog-agility")
    assert val.object_ids == [1]
    mask, pal = read_mask(root / "Annotations" / "480p" / "bear" / "00000.png")
    assert mask.dtype == np.uint8 and np.array_equal(pal, voc_palette())
    with pytest.raises(UserError, match="test-dev.txt: missing"):
        DavisSequences(root, "test-dev")


def test_check_davis_ok_and_malformed(tmp_path):
    root = make_davis(tmp_path / "DAVIS")
    assert check_davis(root) == []
    sets = root / "ImageSets" / "2017"
    (sets / "val.txt").write_text("dog-agility\nblackswan\ndog-agility\n")
    ann = root / "Annotations" / "480p" / "bear"
    Image.new("RGB", (8, 6)).save(ann / "00001.png")                           # not indexed
    (root / "JPEGImages" / "480p" / "bear" / "00002.jpg").rename(root / "JPEGImages" / "480p" / "bear" / "00003.jpg")
    write_mask(root / "Annotations" / "480p" / "dog-agility" / "00000.png", np.zeros((6, 8), np.uint8))
    problems = check_davis(root)
    assert problems == [
        f"{sets / 'val.txt'}:2: sequence 'blackswan' has no folder {root / 'JPEGImages' / '480p' / 'blackswan'} "
        f"or {root / 'Annotations' / '480p' / 'blackswan'}",
        f"{sets / 'val.txt'}:3: sequence 'dog-agility' repeats line 1",
        f"{root / 'JPEGImages' / '480p' / 'bear'}: frames must be numbered 00000.jpg, 00001.jpg, ... without gaps; "
        f"expected 00002.jpg, found 00003.jpg",
        f"{ann / '00002.png'}: does not match a frame of {root / 'JPEGImages' / '480p' / 'bear'} (expected %05d.png)",
        f"{ann / '00001.png'}: mode RGB, expected an indexed palette PNG (mode P)",
        f"{root / 'Annotations' / '480p' / 'dog-agility' / '00000.png'}: first-frame annotation has no object "
        f"(all background)",
    ]


def test_check_davis_missing_layout(tmp_path):
    (tmp_path / "JPEGImages" / "480p").mkdir(parents=True)
    assert check_davis(tmp_path) == [
        f"{tmp_path / 'Annotations' / '480p'}: missing (expected annotations <seq>/%05d.png)",
        f"{tmp_path / 'ImageSets' / '2017'}: missing (expected train.txt and val.txt)",
    ]
