"""Shared protocol parts: feature cache, evaluation conventions, transforms; the ImageFolder
fixture the other tests/test_protocols_*.py files import."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_bench.checkpoints import load_spec
from ssl_bench.errors import UserError
from ssl_bench.protocols import EvalContext
from ssl_bench.protocols import _features
from ssl_bench.protocols._features import FeatureSpec, feature_spec, final_norm_as, split_features
from ssl_bench.recipes import load_defaults

COLOURS = [(220, 40, 40), (40, 200, 40), (40, 40, 220), (220, 220, 40), (200, 40, 200), (40, 200, 200)]


def make_imagefolder(root: Path, *, classes: int = 4, train: int = 6, val: int = 3, size: int = 40,
                     seed: int = 0) -> Path:
    """ImageNet layout: root/{train,val}/<wnid>/<wnid>_<n>.JPEG, plus a SimCLR-style 1percent.txt
    (2 per class) and MSN split files imagenet_subsets{1,2,3}/{1,2,5}imgs_class.txt."""
    rng = np.random.default_rng(seed)
    wnids = [f"n{99000000 + c:08d}" for c in range(classes)]
    for split, count in (("train", train), ("val", val)):
        for c, wnid in enumerate(wnids):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for n in range(count):
                base = np.array(COLOURS[c % len(COLOURS)], np.float64)
                pixels = np.clip(base + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{wnid}_{n}.JPEG", quality=90)
    names = {w: [f"{w}_{n}.JPEG" for n in range(train)] for w in wnids}
    (root / "1percent.txt").write_text("".join(f"{n}\n" for w in wnids for n in names[w][:2]))
    for s in (1, 2, 3):
        folder = root / f"imagenet_subsets{s}"
        folder.mkdir()
        for k in (k for k in (1, 2, 5) if k <= train):
            picks = [n for w in wnids for n in rng.choice(names[w], k, replace=False)]
            (folder / f"{k}imgs_class.txt").write_text("".join(f"{n}\n" for n in picks))
    return root


def context(data: Path, results: Path, protocol: str, spec: str = "random:vit_tiny_patch16_224",
            checkpoint=None, **overrides) -> EvalContext:
    """EvalContext with the protocol's package defaults at 32 px and ``overrides`` merged in."""
    recipe = load_defaults(f"protocols/{protocol}")
    if "transform" in recipe:
        recipe["transform"].update({"resize": 36, "crop": 32})
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(recipe.get(key), dict):
            recipe[key] = {**recipe[key], **value}
        else:
            recipe[key] = value
    return EvalContext(checkpoint=checkpoint or load_spec(spec), data=data, recipe=recipe,
                       results_dir=results, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_imagefolder(tmp_path_factory.mktemp("imagenet"))


def _dataset(tree, transform_cfg, spec):
    from ssl_bench.data.imagefolder import ImageFolderDataset

    return ImageFolderDataset(tree / "train", _features.eval_transform(transform_cfg, spec.input_filter))


def test_cache_computes_once_and_memory_maps(tree, tmp_path):
    ctx = context(tree, tmp_path, "knn")
    spec = feature_spec(ctx.checkpoint, ctx.recipe)
    tcfg = ctx.recipe["transform"]
    ds = _dataset(tree, tcfg, spec)
    before = len(_features.EXTRACTIONS)
    first = split_features(ctx, ds, split="train", spec=spec, transform_cfg=tcfg, recipe=ctx.recipe)
    assert len(_features.EXTRACTIONS) == before + 1 and not first.cached
    again = split_features(ctx, ds, split="train", spec=spec, transform_cfg=tcfg, recipe=ctx.recipe)
    assert len(_features.EXTRACTIONS) == before + 1 and again.cached
    assert isinstance(again.features, np.memmap)
    np.testing.assert_array_equal(np.asarray(again.features), np.asarray(first.features))
    # the values are the backbone's CLS after the final norm, in dataset order
    images = torch.stack([ds[i][0] for i in range(3)])
    with torch.no_grad():
        want = ctx.checkpoint.backbone.features(images, "cls").numpy()
    np.testing.assert_allclose(again.features[:3], want, atol=1e-5)
    np.testing.assert_array_equal(again.labels, [label for _, label in ds.samples])
    entry = again.path
    assert json.loads((entry / "key.json").read_text())["key"]["checkpoint"] == ctx.checkpoint.sha256
    assert not list(entry.glob("*.tmp"))
    # a subset is sliced from the cached split without another forward pass
    sub = split_features(ctx, ds, split="train", spec=spec, transform_cfg=tcfg, recipe=ctx.recipe,
                         indices=[5, 1])
    assert len(_features.EXTRACTIONS) == before + 1
    np.testing.assert_array_equal(sub.features, np.asarray(first.features)[[5, 1]])


def test_cache_key_separates_feature_choices(tree, tmp_path):
    ctx = context(tree, tmp_path, "knn")
    tcfg = ctx.recipe["transform"]
    base = FeatureSpec("cls", True)
    ds = _dataset(tree, tcfg, base)
    a = split_features(ctx, ds, split="train", spec=base, transform_cfg=tcfg, recipe=ctx.recipe)
    b = split_features(ctx, ds, split="train", spec=FeatureSpec("cls", False), transform_cfg=tcfg,
                       recipe=ctx.recipe)
    c = split_features(ctx, ds, split="train", spec=FeatureSpec("avgpool", True), transform_cfg=tcfg,
                       recipe=ctx.recipe)
    assert len({a.path, b.path, c.path}) == 3
    images = ds[0][0][None]
    with torch.no_grad():
        tokens = ctx.checkpoint.backbone.tokens(images)
    np.testing.assert_allclose(b.features[0], tokens.cls_prenorm[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(c.features[0], tokens.patches.mean(1)[0].numpy(), atol=1e-5)


def test_feature_spec_from_checkpoint_unless_recipe_overrides():
    ckpt = load_spec("random:vit_tiny_patch16_224")
    ckpt.meta["eval"] = {"feature": "cls", "final_norm": False, "input_filter": {"name": "highpass", "sigma": 5}}
    auto = feature_spec(ckpt, {"feature": "auto", "final_norm": None, "input_filter": None})
    assert auto == FeatureSpec("cls", False, {"name": "highpass", "sigma": 5.0})
    forced = feature_spec(ckpt, {"feature": "cls_last4", "final_norm": True, "input_filter": "none"})
    assert forced == FeatureSpec("cls_last4", True, None)
    with pytest.raises(UserError, match="feature"):
        feature_spec(ckpt, {"feature": "pooled"})
    with pytest.raises(UserError, match="input_filter"):
        feature_spec(ckpt, {"input_filter": {"name": "sobel"}})


def test_final_norm_is_restored_after_extraction():
    ckpt = load_spec("random:vit_tiny_patch16_224")
    norm = ckpt.backbone.model.norm
    with final_norm_as(ckpt.backbone, False):
        assert isinstance(ckpt.backbone.model.norm, torch.nn.Identity)
    assert ckpt.backbone.model.norm is norm


def test_defaults_define_every_key_the_protocols_read():
    for name in ("knn", "linear", "lowshot", "finetune_1pct", "finetune"):
        recipe = load_defaults(f"protocols/{name}")
        assert recipe["dataset"] == "imagenet"
        assert copy.deepcopy(recipe) == recipe


def test_top_level_recipes_resolve_against_package_defaults():
    from ssl_bench.evaluate import resolve_protocol_recipe

    folder = Path(__file__).resolve().parents[1] / "protocols"
    names = {"knn_dino": "knn", "linear_mae": "linear", "linear_dino": "linear", "linear_msn": "linear",
             "linear_siameseim": "linear", "linear_resnet": "linear", "lowshot_msn": "lowshot",
             "finetune_1pct_barlow": "finetune_1pct", "finetune_mae": "finetune"}
    mine = [(folder / f"{stem}{suffix}.yaml", protocol) for stem, protocol in names.items() for suffix in ("", "_tiny")]
    mine.append((folder / "lowshot_siameseim.yaml", "lowshot"))
    for path, protocol in mine:
        recipe = resolve_protocol_recipe(protocol, path)
        if path.stem.endswith("_tiny"):
            assert recipe["transform"]["crop"] <= 96, path
        else:
            assert recipe["transform"]["crop"] == 224, path


def test_bf16_extraction_is_a_separate_close_entry(tree, tmp_path):
    ctx = context(tree, tmp_path, "knn")
    spec = feature_spec(ctx.checkpoint, ctx.recipe)
    tcfg = ctx.recipe["transform"]
    ds = _dataset(tree, tcfg, spec)
    fp32 = split_features(ctx, ds, split="train", spec=spec, transform_cfg=tcfg, recipe=ctx.recipe)
    bf16 = split_features(ctx, ds, split="train", spec=spec, transform_cfg=tcfg, recipe={**ctx.recipe, "bf16": True})
    assert fp32.path != bf16.path and bf16.features.dtype == np.float32
    a, b = np.asarray(fp32.features), np.asarray(bf16.features)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.98 and not np.array_equal(a, b)


def test_beit_checkpoint_features_through_the_cache(tree, tmp_path):
    """A timm BEiT (ConMIM's backbone) through the frozen-feature path every such protocol uses."""
    ctx = context(tree, tmp_path, "knn", spec="random:beit_tiny_patch16_224")
    spec = FeatureSpec("avgpool", True)
    tcfg = ctx.recipe["transform"]
    ds = _dataset(tree, tcfg, spec)
    out = split_features(ctx, ds, split="train", spec=spec, transform_cfg=tcfg, recipe=ctx.recipe)
    with torch.no_grad():
        tokens = ctx.checkpoint.backbone.tokens(ds[0][0][None])  # 32 px: a 2x2 grid of a 14x14-window BEiT
    np.testing.assert_allclose(out.features[0], tokens.patches.mean(1)[0].numpy(), atol=1e-5)
    assert out.features.shape == (len(ds), 192)
