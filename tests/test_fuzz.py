"""Bad inputs and faults, as a new user meets them (issue 18): every case is one broken fixture built here
on the tiny embedded data, run in-process through ``ssl_bench.cli.main``, and must give the expected exit
code (2: bad input), one line on stderr naming the culprit (file, key or argument), no traceback, and
nothing written to the results store or the output folder. Broken datasets are also run through
``ssl-bench data check``, which must list the culprit (exit 1).

Disk full and read-only stores are simulated without root tricks: ``os.fsync`` / ``os.open`` patched to
raise ENOSPC / EROFS for paths inside the store.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from ssl_bench.atomic import sha256_file
from ssl_bench.backbones import Backbone
from ssl_bench.checkpoints import save_checkpoint
from ssl_bench.cli import main
from ssl_bench.results import write_evaluation

pytestmark = pytest.mark.usefixtures("one_thread")

RANDOM = "random:vit_tiny_patch16_224"
MSN_TINY = str(Path(__file__).resolve().parents[1] / "pretrain" / "msn_tiny.yaml")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """The tiny embedded data, made once; cases copy what they break."""
    from ssl_bench.data.embedded import prepare

    root = tmp_path_factory.mktemp("tiny")
    prepare(root, "tiny", seed=0, workers=2)
    shutil.rmtree(root / "imagenet-c")  # 6 MB no case here needs
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A real ssl-bench checkpoint (random ViT-Tiny weights) that cases copy and damage."""
    folder = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    save_checkpoint(folder / "checkpoint", Backbone("vit_tiny_patch16_224"), {"method": "msn", "encoder": "target"})
    return folder


@dataclass
class World:
    """What a case builds its fixture in: a fresh folder, a copy of the tiny data on request."""

    tmp: Path
    tiny: Path
    checkpoint: Path

    @property
    def results(self) -> Path:
        return self.tmp / "results"

    def data(self) -> Path:
        copy = self.tmp / "data"
        if not copy.exists():
            shutil.copytree(self.tiny, copy)
        return copy

    def ckpt(self) -> Path:
        copy = self.tmp / "ckpt"
        if not copy.exists():
            shutil.copytree(self.checkpoint, copy)
        return copy

    def eval(self, protocol: str, checkpoint: str = RANDOM, *extra: str) -> list[str]:
        return ["--quiet", "eval", "--protocol", protocol, "--checkpoint", checkpoint, "--data", str(self.data()),
                "--results", str(self.results), "--device", "cpu", *extra]


@dataclass
class Case:
    argv: list[str]
    culprit: str                 # must appear in the one line
    code: int = 2
    check: tuple[str, str] | None = None  # (format, culprit) for `ssl-bench data check`, when data is broken
    patch: Callable | None = None         # called with pytest's monkeypatch before running


CASES: dict[str, Callable[[World], Case]] = {}


def case(fn: Callable[[World], Case]) -> Callable[[World], Case]:
    CASES[fn.__name__] = fn
    return fn


# ----- helpers that break things -----------------------------------------------------------------
def rewrite_json(path: Path, edit: Callable[[dict], object]) -> None:
    """``edit`` changes the JSON object in place (its return value is ignored)."""
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def wrap_in_list(path: Path) -> None:
    path.write_text(f"[{path.read_text()}]")


def first_file(folder: Path, pattern: str) -> Path:
    return sorted(folder.rglob(pattern))[0]


def recipe(w: World, text: str | bytes, name: str = "recipe.yaml") -> Path:
    path = w.tmp / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def sidecar(w: World, edit: Callable[[dict], object]) -> str:
    folder = w.ckpt()
    rewrite_json(folder / "checkpoint.json", edit)
    return str(folder)


def resave_weights(w: World, edit: Callable[[dict], None]) -> str:
    """Change the weights file and record its new sha256, as a damaged export would."""
    folder = w.ckpt()
    state = load_file(str(folder / "checkpoint.safetensors"))
    edit(state)
    save_file(state, str(folder / "checkpoint.safetensors"))
    rewrite_json(folder / "checkpoint.json",
                 lambda m: m["weights"].update(sha256=sha256_file(folder / "checkpoint.safetensors")))
    return str(folder)


def davis_val(w: World) -> tuple[Path, Path]:
    root = w.data() / "DAVIS"
    name = (root / "ImageSets" / "2017" / "val.txt").read_text().split()[0]
    return root / "JPEGImages" / "480p" / name, root / "Annotations" / "480p" / name


def ade_val_mask(w: World) -> Path:
    return first_file(w.data() / "ADEChallengeData2016" / "annotations" / "validation", "*.png")


def coco_val(w: World) -> Path:
    return w.data() / "coco" / "annotations" / "instances_val2017.json"


# ----- command line and recipes ---------------------------------------------------------------------
@case
def device_tpu_eval(w):
    return Case(w.eval("knn", RANDOM, "--device", "tpu"), "--device tpu")


@case
def device_tpu_pretrain(w):
    return Case(["--quiet", "pretrain", "--recipe", MSN_TINY, "--out", str(w.tmp / "run"), "--device", "tpu"],
                "--device tpu")


@case
def recipe_base_is_itself(w):
    path = recipe(w, "_base_: recipe.yaml\n")
    return Case(w.eval("knn", RANDOM, "--recipe", str(path)), "cycle")


@case
def recipe_base_cycle(w):
    recipe(w, "_base_: b.yaml\n", "a.yaml")
    path = recipe(w, "_base_: a.yaml\n", "b.yaml")
    return Case(w.eval("knn", RANDOM, "--recipe", str(path)), "a.yaml")


@case
def recipe_base_missing(w):
    path = recipe(w, "_base_: nowhere.yaml\n")
    return Case(w.eval("knn", RANDOM, "--recipe", str(path)), "nowhere.yaml")


@case
def recipe_not_utf8(w):
    path = recipe(w, b"ks: [10]\n# caf\xe9 \xff\xfe\n")
    return Case(w.eval("knn", RANDOM, "--recipe", str(path)), "recipe.yaml")


@case
def recipe_not_utf8_pretrain(w):
    path = recipe(w, b"method: msn\n# \xff\n")
    return Case(["--quiet", "pretrain", "--recipe", str(path), "--out", str(w.tmp / "run")], "recipe.yaml")


@case
def recipe_is_a_list(w):
    path = recipe(w, "- ks\n- 10\n")
    return Case(w.eval("knn", RANDOM, "--recipe", str(path)), "recipe.yaml")


@case
def recipe_bad_yaml(w):
    path = recipe(w, "ks: [10, 20\n")
    return Case(w.eval("knn", RANDOM, "--recipe", str(path)), "recipe.yaml")


@case
def recipe_unknown_key(w):
    path = recipe(w, "nearest_neighbours: 5\n")
    return Case(w.eval("knn", RANDOM, "--recipe", str(path)), "nearest_neighbours")


@case
def set_wrong_type(w):
    return Case(w.eval("knn", RANDOM, "--set", "batch_size=many"), "batch_size")


@case
def unknown_protocol(w):
    return Case(w.eval("nearest", RANDOM), "nearest")


@case
def data_folder_missing(w):
    return Case(["eval", "--protocol", "knn", "--checkpoint", RANDOM, "--data", str(w.tmp / "nothing"),
                 "--results", str(w.results)], "nothing")


@case
def pretrain_out_is_a_file(w):
    out = w.tmp / "run"
    out.write_text("not a folder\n")
    return Case(["--quiet", "pretrain", "--recipe", MSN_TINY, "--set", f"data.root={w.data()}", "--out",
                 str(out), "--device", "cpu"], str(out))


@case
def export_out_is_a_file(w):
    out = w.tmp / "exported"
    out.write_text("not a folder\n")
    return Case(["--quiet", "export", "--format", "mmseg", "--checkpoint", RANDOM, "--out", str(out)], str(out))


@case
def results_is_a_file(w):
    w.results.write_text("not a folder\n")
    return Case(w.eval("knn"), str(w.results))


def fail_inside(store: Path, call: str, code: int, only: str = ""):
    """A patch making ``os.<call>`` fail with ``code`` for files inside ``store`` (whose name holds ``only``)."""
    def apply(monkeypatch):
        real = getattr(os, call)

        def failing(target, *args, **kwargs):
            path = os.readlink(f"/proc/self/fd/{target}") if isinstance(target, int) else os.fspath(target)
            if str(path).startswith(str(store)) and only in Path(path).name:
                raise OSError(code, os.strerror(code), path)
            return real(target, *args, **kwargs)
        monkeypatch.setattr(os, call, failing)
    return apply


@case
def results_read_only(w):
    w.results.mkdir()
    return Case(w.eval("knn"), str(w.results), patch=fail_inside(w.tmp / "results", "open", errno.EROFS))


@case
def results_disk_full_at_start(w):
    w.results.mkdir()
    return Case(w.eval("knn"), str(w.results), patch=fail_inside(w.tmp / "results", "fsync", errno.ENOSPC))


@case
def disk_full_writing_feature_cache(w):
    return Case(w.eval("knn"), "features.npy",
                patch=fail_inside(w.tmp / "results", "fsync", errno.ENOSPC, only="features.npy"))


@case
def disk_full_writing_result(w):
    return Case(w.eval("knn", RANDOM, "--set", "cache=false"), "knn",
                patch=fail_inside(w.tmp / "results" / "knn", "fsync", errno.ENOSPC, only=".json"))


@case
def export_disk_full(w):
    return Case(["--quiet", "export", "--format", "mmseg", "--checkpoint", RANDOM, "--out", str(w.results)], "backbone_mmseg",
                patch=fail_inside(w.tmp / "results", "fsync", errno.ENOSPC, only="backbone"))


# ----- checkpoints ----------------------------------------------------------------------------------
@case
def checkpoint_json_is_a_list(w):
    folder = w.ckpt()
    wrap_in_list(folder / "checkpoint.json")
    return Case(w.eval("knn", str(folder)), "checkpoint.json")


@case
def checkpoint_json_invalid(w):
    folder = w.ckpt()
    (folder / "checkpoint.json").write_text("{\"format\": ")
    return Case(w.eval("knn", str(folder)), "checkpoint.json")


@case
def checkpoint_json_binary(w):
    folder = w.ckpt()
    (folder / "checkpoint.json").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    return Case(w.eval("knn", str(folder)), "checkpoint.json")


@case
def checkpoint_wrong_arch(w):
    return Case(w.eval("knn", sidecar(w, lambda m: m.update(arch="vit_small_patch16_224"))), "checkpoint")


@case
def checkpoint_unknown_arch(w):
    return Case(w.eval("knn", sidecar(w, lambda m: m.update(arch="vit_nonexistent_patch16"))), "vit_nonexistent")


@case
def checkpoint_wrong_patch_size(w):
    return Case(w.eval("knn", sidecar(w, lambda m: m.update(patch_size=8))), "checkpoint")


@case
def checkpoint_without_weights_key(w):
    return Case(w.eval("knn", sidecar(w, lambda m: m.pop("weights"))), "weights")


@case
def checkpoint_without_format(w):
    return Case(w.eval("knn", sidecar(w, lambda m: m.pop("format"))), "checkpoint.json")


@case
def checkpoint_missing_tensor_matching_sha(w):
    return Case(w.eval("knn", resave_weights(w, lambda s: s.pop("norm.weight"))), "norm.weight")


@case
def checkpoint_tensor_wrong_shape_matching_sha(w):
    return Case(w.eval("knn", resave_weights(w, lambda s: s.update({"cls_token": torch.zeros(1, 1, 7)}))),
                "cls_token")


@case
def checkpoint_weights_altered(w):
    folder = w.ckpt()
    with open(folder / "checkpoint.safetensors", "r+b") as handle:
        handle.seek(200)
        handle.write(b"\x00\x01\x02")
    return Case(w.eval("knn", str(folder)), "checkpoint.safetensors")


@case
def checkpoint_weights_truncated_matching_sha(w):
    folder = w.ckpt()
    weights = folder / "checkpoint.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    rewrite_json(folder / "checkpoint.json", lambda m: m["weights"].update(sha256=sha256_file(weights)))
    return Case(w.eval("knn", str(folder)), "checkpoint.safetensors")


@case
def checkpoint_weights_missing(w):
    folder = w.ckpt()
    (folder / "checkpoint.safetensors").unlink()
    return Case(w.eval("knn", str(folder)), "checkpoint.safetensors")


@case
def checkpoint_folder_empty(w):
    (w.tmp / "empty").mkdir()
    return Case(w.eval("knn", str(w.tmp / "empty")), "checkpoint.json")


@case
def foreign_file_is_text(w):
    path = w.tmp / "model.pth"
    path.write_text("these are not weights\n")
    return Case(w.eval("knn", f"foreign:vit_tiny_patch16_224:{path}"), "model.pth")


@case
def foreign_file_wrong_shape(w):
    state = Backbone("vit_small_patch16_224").encoder_state_dict()
    path = w.tmp / "small.pth"
    torch.save(state, path)
    return Case(w.eval("knn", f"foreign:vit_tiny_patch16_224:{path}"), "small.pth")


@case
def foreign_file_missing(w):
    return Case(w.eval("knn", f"foreign:vit_tiny_patch16_224:{w.tmp / 'absent.pth'}"), "absent.pth")


@case
def export_damaged_checkpoint(w):
    wrap_in_list(w.ckpt() / "checkpoint.json")
    return Case(["--quiet", "export", "--format", "mmseg", "--checkpoint", str(w.ckpt()), "--out",
                 str(w.results)], "checkpoint.json")


# ----- ImageFolder images (found lazily by the loader: file named) -----------------------------------
def broken_image(w: World, split: str, content: bytes, protocol: str = "knn") -> Case:
    path = first_file(w.data() / "imagenet" / split, "*.JPEG")
    path.write_bytes(content)
    return Case(w.eval(protocol, RANDOM, "--set", "cache=false"), path.name, check=("imagenet", path.name))


@case
def imagefolder_corrupt_jpeg(w):
    path = first_file(w.tiny / "imagenet" / "val", "*.JPEG")
    return broken_image(w, "val", path.read_bytes()[:300])


@case
def imagefolder_zero_byte_jpeg(w):
    return broken_image(w, "val", b"")


@case
def imagefolder_not_an_image(w):
    return broken_image(w, "train", b"<html>not found</html>\n")


@case
def imagefolder_zero_byte_pretrain(w):
    data = w.data()
    for path in (data / "imagenet" / "train").rglob("*.JPEG"):  # every one: the first batch meets one
        path.write_bytes(b"")
    return Case(["--quiet", "pretrain", "--recipe", MSN_TINY, "--set", f"data.root={data}",
                 "--set", "data.num_workers=0", "--out", str(w.results / "run"), "--device", "cpu"], ".JPEG",
                check=("imagenet", ".JPEG"))


# ----- ADE20k masks (checked eagerly) -----------------------------------------------------------------
def ade_case(w: World, mask: Path) -> Case:
    return Case(w.eval("segmentation"), mask.name, check=("ade20k", mask.name))


@case
def ade20k_mask_rgb(w):
    mask = ade_val_mask(w)
    Image.open(mask).convert("RGB").save(mask)
    return ade_case(w, mask)


@case
def ade20k_mask_palette_out_of_range(w):
    mask = ade_val_mask(w)
    with Image.open(mask) as im:
        label = np.array(im)
    palette = Image.fromarray(np.where(label > 0, 250, 0).astype(np.uint8), mode="L").convert("P")
    palette.save(mask)
    return ade_case(w, mask)


@case
def ade20k_mask_wrong_size(w):
    mask = ade_val_mask(w)
    with Image.open(mask) as im:
        im.resize((im.width + 7, im.height)).save(mask)
    return ade_case(w, mask)


@case
def ade20k_mask_missing(w):
    mask = ade_val_mask(w)
    mask.unlink()
    return Case(w.eval("segmentation"), mask.stem, check=("ade20k", mask.stem))


@case
def ade20k_mask_not_png(w):
    mask = ade_val_mask(w)
    mask.write_bytes(b"GIF89a broken")
    return ade_case(w, mask)


@case
def ade20k_mask_values_exceed_classes(w):
    mask = ade_val_mask(w)
    with Image.open(mask) as im:
        label = np.array(im)
    label[0, 0] = 200
    Image.fromarray(label, mode="L").save(mask)
    return ade_case(w, mask)


# ----- COCO / LVIS annotations (checked eagerly) ----------------------------------------------------
def coco_case(w: World, path: Path, culprit: str, protocol: str = "detection", fmt: str = "coco") -> Case:
    return Case(w.eval(protocol, RANDOM, "--set", f"datasets=[{fmt}]"), culprit, check=(fmt, culprit))


@case
def coco_image_file_missing(w):
    path = coco_val(w)
    name = json.loads(path.read_text())["images"][0]["file_name"]
    (w.data() / "coco" / "val2017" / name).unlink()
    return coco_case(w, path, name)


@case
def coco_unknown_category(w):
    path = coco_val(w)
    rewrite_json(path, lambda d: d["annotations"][0].update(category_id=999))
    return coco_case(w, path, "annotations[0].category_id")


@case
def coco_unknown_image_id(w):
    path = coco_val(w)
    rewrite_json(path, lambda d: d["annotations"][1].update(image_id=424242))
    return coco_case(w, path, "annotations[1].image_id")


@case
def coco_negative_box(w):
    path = coco_val(w)
    rewrite_json(path, lambda d: d["annotations"][2]["bbox"].__setitem__(2, -5.0))
    return coco_case(w, path, "annotations[2].bbox")


@case
def coco_box_not_numbers(w):
    path = coco_val(w)
    rewrite_json(path, lambda d: d["annotations"][0].update(bbox="10 10 20 20"))
    return coco_case(w, path, "annotations[0].bbox")


@case
def coco_json_invalid(w):
    path = coco_val(w)
    path.write_text(path.read_text()[:-40])
    return coco_case(w, path, "instances_val2017.json")


@case
def coco_json_is_a_list(w):
    path = coco_val(w)
    wrap_in_list(path)
    return coco_case(w, path, "instances_val2017.json")


@case
def coco_json_without_annotations(w):
    path = coco_val(w)
    rewrite_json(path, lambda d: d.pop("annotations"))
    return coco_case(w, path, "annotations")


@case
def coco_duplicate_image_id(w):
    path = coco_val(w)
    rewrite_json(path, lambda d: d["images"][1].update(id=d["images"][0]["id"]))
    return coco_case(w, path, "images[1].id")


@case
def coco_bad_polygon(w):
    path = coco_val(w)
    rewrite_json(path, lambda d: d["annotations"][0].update(segmentation=[[1.0, 2.0, 3.0]]))
    return coco_case(w, path, "annotations[0].segmentation")


@case
def coco_prompt_seg_unknown_image_id(w):
    path = coco_val(w)
    rewrite_json(path, lambda d: d["annotations"][0].update(image_id=-1))
    return Case(w.eval("prompt_seg"), "annotations[0].image_id", check=("coco", "annotations[0].image_id"))


@case
def lvis_category_without_frequency(w):
    path = w.data() / "lvis" / "lvis_v1_val.json"
    rewrite_json(path, lambda d: d["categories"][0].pop("frequency"))
    return coco_case(w, path, "categories[0].frequency", fmt="lvis")


@case
def lvis_image_without_coco_url(w):
    path = w.data() / "lvis" / "lvis_v1_val.json"
    rewrite_json(path, lambda d: d["images"][0].pop("coco_url"))
    return coco_case(w, path, "images[0].coco_url", fmt="lvis")


@case
def lvis_unknown_category(w):
    path = w.data() / "lvis" / "lvis_v1_val.json"
    rewrite_json(path, lambda d: d["annotations"][0].update(category_id=777))
    return coco_case(w, path, "annotations[0].category_id", fmt="lvis")


# ----- DAVIS (checked eagerly) ------------------------------------------------------------------------
@case
def davis_mask_wrong_size(w):
    _, anns = davis_val(w)
    mask = anns / "00002.png"
    with Image.open(mask) as im:
        im.resize((im.width // 2, im.height)).save(mask)
    return Case(w.eval("davis"), "00002.png", check=("davis", "00002.png"))


@case
def davis_mask_rgb(w):
    _, anns = davis_val(w)
    mask = anns / "00001.png"
    with Image.open(mask) as im:
        im.convert("RGB").save(mask)
    return Case(w.eval("davis"), "00001.png", check=("davis", "00001.png"))


@case
def davis_first_mask_missing(w):
    _, anns = davis_val(w)
    (anns / "00000.png").unlink()
    return Case(w.eval("davis"), "00000.png", check=("davis", "00000.png"))


@case
def davis_listed_sequence_missing(w):
    root = w.data() / "DAVIS"
    with open(root / "ImageSets" / "2017" / "val.txt", "a") as handle:
        handle.write("no-such-sequence\n")
    return Case(w.eval("davis"), "no-such-sequence", check=("davis", "no-such-sequence"))


@case
def davis_frame_corrupt(w):
    frames, _ = davis_val(w)
    (frames / "00003.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return Case(w.eval("davis"), "00003.jpg", check=("davis", "00003.jpg"))


# ----- the leaderboard under --strict (without it: test_leaderboard_skips_one_bad_file_among_20) -------
def store_with(w: World, damage: Callable[[Path], None]) -> Case:
    good = write_evaluation(w.tmp / "store", protocol="knn", checkpoint={"label": "a", "sha256": "x", "method": "m",
                                                                          "arch": "vit"},
                            recipe={}, records=[{"dataset": "in", "metric": "top1", "value": 50.0,
                                                 "per_sample": np.array([1.0, 0.0])}], wall_time_s=1.0)
    damage(good)
    return Case(["--quiet", "leaderboard", "--results", str(w.tmp / "store"), "--strict"], good.name)


@case
def result_json_binary(w):
    return store_with(w, lambda p: p.write_bytes(b"\x00\x9f\x92\x96 binary"))


@case
def result_json_is_a_list(w):
    return store_with(w, lambda p: p.write_text("[1, 2, 3]"))


@case
def result_record_without_value(w):
    return store_with(w, lambda p: rewrite_json(p, lambda d: d["records"][0].pop("value")))


@case
def result_record_value_not_a_number(w):
    return store_with(w, lambda p: rewrite_json(p, lambda d: d["records"][0].update(value="n/a")))


@case
def result_npz_missing(w):
    return store_with(w, lambda p: p.with_suffix(".npz").unlink())


@case
def result_npz_corrupt(w):
    return store_with(w, lambda p: p.with_suffix(".npz").write_bytes(b"PK\x03\x04 broken zip"))


@case
def result_truncated_json(w):
    return store_with(w, lambda p: p.write_text(p.read_text()[:50]))


# ----- the checks ---------------------------------------------------------------------------------------
def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_gives_one_line_naming_the_culprit(name, tiny, checkpoint, tmp_path, capsys, monkeypatch):
    w = World(tmp_path, tiny, checkpoint)
    c = CASES[name](w)
    store = [w.results, w.tmp / "run", w.tmp / "exported"]
    before = {f for folder in store for f in files_under(folder)}
    if c.patch is not None:
        c.patch(monkeypatch)
    code = main(c.argv)
    monkeypatch.undo()
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == c.code, err
    assert len(lines) == 1 and lines[0].startswith("ssl-bench: error: "), err
    assert c.culprit in lines[0], lines[0]
    assert "Traceback" not in out + err
    after = {f for folder in store for f in files_under(folder)}
    assert after <= before, f"written: {sorted(after - before)}"


def test_the_fuzz_set_has_at_least_60_cases():
    assert len(CASES) >= 60


DATA_CASES = sorted(name for name in CASES if name.split("_")[0] in ("imagefolder", "ade20k", "coco", "lvis", "davis"))


@pytest.mark.parametrize("name", DATA_CASES)
def test_data_check_lists_the_culprit(name, tiny, checkpoint, tmp_path, capsys):
    w = World(tmp_path, tiny, checkpoint)
    c = CASES[name](w)
    fmt, culprit = c.check
    code = main(["--quiet", "data", "check", "--root", str(w.data()), "--format", fmt])
    out, err = capsys.readouterr()
    assert code == 1, out + err
    assert culprit in out and "Traceback" not in out + err
