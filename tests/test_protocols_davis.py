"""DAVIS label propagation (DINO eval_video_segmentation.py) on a small tree in the real layout."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from vos_benchmark.benchmark import benchmark

from ssl_bench.data.davis import voc_palette
from ssl_bench.evaluate import evaluate
from ssl_bench.protocols.davis import neighborhood_mask, norm_mask, propagate, target_size


pytestmark = pytest.mark.usefixtures("one_thread")


def make_davis(root: Path, sequences=("cows",), frames=6, size=(112, 64), split="val") -> Path:
    """DAVIS/JPEGImages/480p/<seq>/%05d.jpg, Annotations/480p/<seq>/%05d.png (VOC palette), ImageSets/2017."""
    rng = np.random.default_rng(0)
    davis = root / "DAVIS"
    w, h = size
    yy, xx = np.mgrid[:h, :w]
    for s, seq in enumerate(sequences):
        bg = rng.integers(0, 256, size=(h // 8 + 1, w // 8 + 1, 3)).repeat(8, 0).repeat(8, 1)[:h, :w]
        colours = rng.integers(0, 256, size=(3, 3))
        for t in range(frames):
            img = bg.copy()
            mask = np.zeros((h, w), np.uint8)
            for k in range(1, 3 + s % 2):
                cy, cx = h * (0.25 + 0.25 * (k - 1)) + t, w * (0.2 + 0.25 * k) + 2 * t
                blob = ((yy - cy) / 10) ** 2 + ((xx - cx) / 14) ** 2 <= 1
                img[blob] = colours[k - 1]
                mask[blob] = k
            (davis / "JPEGImages/480p" / seq).mkdir(parents=True, exist_ok=True)
            (davis / "Annotations/480p" / seq).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img.astype(np.uint8)).save(davis / "JPEGImages/480p" / seq / f"{t:05d}.jpg", quality=95)
            ann = Image.fromarray(mask, mode="P")
            ann.putpalette(voc_palette().reshape(-1).tolist())
            ann.save(davis / "Annotations/480p" / seq / f"{t:05d}.png")
    (davis / "ImageSets/2017").mkdir(parents=True, exist_ok=True)
    (davis / "ImageSets/2017" / f"{split}.txt").write_text("\n".join(sequences) + "\n")
    (davis / "ImageSets/2017/train.txt").write_text("")
    return root


def test_target_size_floors_the_long_side_to_64():
    assert target_size(480, 854, 480, 64) == (480, 832)    # DAVIS 480p landscape
    assert target_size(854, 480, 480, 64) == (832, 480)    # portrait
    assert target_size(64, 112, 64, 64) == (64, 64)        # 112 -> floor(112 / 64) * 64


def test_neighborhood_window():
    mask = neighborhood_mask(4, 5, 1, "cpu").reshape(4, 5, 4, 5)
    assert mask[0, 0].sum() == 4 and mask[2, 2].sum() == 9
    assert mask[2, 2, 1, 1] == 1 and mask[2, 2, 0, 2] == 0


def test_propagation_joint_topk_by_hand():
    # a 1x3 grid, two context frames; features are 2-d unit vectors; query token 0 points at angle 0
    angles_ctx = torch.tensor([[0.0, 1.0, 3.0], [0.2, 2.0, 0.1]])
    feats = [torch.stack([a.cos(), a.sin()], 1) for a in angles_ctx]
    tar = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    segs = [torch.tensor([[[[1.0, 0.0, 0.0]]], [[[0.0, 1.0, 1.0]]]]).reshape(1, 2, 1, 3),
            torch.tensor([[0.0, 0.0, 1.0], [1.0, 1.0, 0.0]]).reshape(1, 2, 1, 3)]
    out = propagate(tar, feats, segs, (1, 3), temperature=0.1, topk=3, mask=None)[0, :, 0, 0]
    # by hand: affinities exp(cos(angle) / 0.1) over all 6 keys; keep the 3 largest jointly
    cos = torch.cat([angles_ctx[0].cos(), angles_ctx[1].cos()])
    aff = torch.exp(cos / 0.1)
    keep = aff >= aff.topk(3).values.min()
    assert keep.tolist() == [True, False, False, True, False, True]
    w = torch.where(keep, aff, torch.zeros_like(aff))
    w = w / w.sum()
    labels = torch.tensor([[1.0, 0, 0, 0, 0, 1], [0, 1, 1, 1, 1, 0]])
    expected = labels @ w
    assert torch.allclose(out, expected, atol=1e-6)


def test_norm_mask_min_max_per_channel():
    m = torch.tensor([[[1.0, 3.0]], [[0.0, 0.0]], [[2.0, 4.0]]])
    out = norm_mask(m)
    assert out[0].tolist() == [[0.0, 1.0]] and out[1].tolist() == [[0.0, 0.0]] and out[2].tolist() == [[0.0, 1.0]]


def test_identical_frames_propagate_the_first_annotation():
    torch.manual_seed(0)
    feat = torch.randn(12, 8)  # 3x4 grid, distinct tokens
    seg = torch.nn.functional.one_hot(torch.tensor([0, 1, 1, 0, 2, 2, 1, 0, 0, 0, 2, 1]), 3)
    seg = seg.T.float().reshape(1, 3, 3, 4)
    out = propagate(feat, [feat], [seg], (3, 4), temperature=0.1, topk=1, mask=None)
    assert torch.equal(out.argmax(1), seg.argmax(1))


def test_davis_end_to_end_matches_vos_benchmark(tmp_path):
    data = make_davis(tmp_path / "data")
    out = tmp_path / "masks"
    records, path = evaluate("davis", "random:vit_tiny_patch16_224", data, results_dir=tmp_path / "results",
                             device="cpu", sets=[f"output_dir={out}"])
    scores = {r["metric"]: r["value"] for r in records}
    assert {r["dataset"] for r in records} == {"davis"}
    # DAVIS results layout, indexed PNGs with the DAVIS palette, frame 0 = the given annotation
    for seq in ("cows",):
        files = sorted(p.name for p in (out / seq).iterdir())
        assert files == [f"{t:05d}.png" for t in range(6)]
        with Image.open(out / seq / "00003.png") as im:
            assert im.mode == "P" and im.size == (112, 64)
            assert np.array(im.getpalette()[:12]).tolist() == voc_palette()[:4].reshape(-1).tolist()
        first_pred = np.array(Image.open(out / seq / "00000.png"))
        first_gt = np.array(Image.open(data / "DAVIS/Annotations/480p" / seq / "00000.png"))
        assert np.array_equal(first_pred, first_gt)
    jf, j, f, _ = benchmark([str(data / "DAVIS/Annotations/480p")], [str(out)], num_processes=1, verbose=False)
    assert scores["J-Mean"] == pytest.approx(j[0], abs=1e-6)
    assert scores["F-Mean"] == pytest.approx(f[0], abs=1e-6)
    assert scores["J&F-Mean"] == pytest.approx(jf[0], abs=1e-6)
    stored = json.loads(Path(path).read_text())
    assert stored["recipe"]["n_last_frames"] == 7 and stored["recipe"]["topk"] == 5
    # the records name the mask folder, and the store (hence the leaderboard) reads them back
    assert {r["masks_dir"] for r in records} == {str(out)}
    from ssl_bench.results import load_results

    loaded = load_results(tmp_path / "results")
    assert loaded.set_index("metric").at["J&F-Mean", "value"] == pytest.approx(scores["J&F-Mean"])


@pytest.fixture(scope="module")
def embedded_davis(tmp_path_factory):
    """Only the DAVIS set of the embedded tiny data (the generator of `ssl-bench data prepare`)."""
    from ssl_bench.data.embedded import video
    from ssl_bench.data.embedded.context import Context, set_context
    from ssl_bench.data.embedded.prepare import load_profile
    from ssl_bench.data.embedded.sources import load_backgrounds, load_fashion_mnist

    root = tmp_path_factory.mktemp("embedded")
    cfg = load_profile("tiny")
    ctx = Context(root=root, profile=cfg, seed=0, fm=load_fashion_mnist(cfg["fashion_mnist"]),
                  backgrounds=load_backgrounds(cfg))
    set_context(ctx)
    try:
        entry = video.generate(ctx, 1)
    finally:
        set_context(None)
    from ssl_bench.data.common import MANIFEST_NAME, write_json
    from ssl_bench.data.resolve import EMBEDDED_NAMES

    write_json(root / MANIFEST_NAME, {"sets": {"davis": {**entry, "dataset_name": EMBEDDED_NAMES["davis"]}}})
    return root


def test_embedded_videos_score_as_vos_benchmark(embedded_davis, tmp_path):
    out = tmp_path / "masks"
    records, _ = evaluate("davis", "random:vit_tiny_patch16_224", embedded_davis, results_dir=tmp_path / "r",
                          device="cpu", sets=[f"output_dir={out}"])
    scores = {r["metric"]: r["value"] for r in records}
    gt = embedded_davis / "DAVIS/Annotations/480p"
    val = (embedded_davis / "DAVIS/ImageSets/2017/val.txt").read_text().split()
    assert sorted(p.name for p in out.iterdir()) == sorted(val)
    # vos-benchmark scores every sequence folder under the ground-truth root: give it the val ones only
    gt_val = tmp_path / "gt_val"
    gt_val.mkdir()
    for seq in val:
        (gt_val / seq).symlink_to(gt / seq, target_is_directory=True)
    jf, j, f, _ = benchmark([str(gt_val)], [str(out)], num_processes=1, verbose=False)
    assert scores["J-Mean"] == pytest.approx(j[0], abs=1e-6)
    assert scores["F-Mean"] == pytest.approx(f[0], abs=1e-6)
    assert scores["J&F-Mean"] == pytest.approx(jf[0], abs=1e-6)
    assert records[0]["dataset"] == "embedded-davis"  # a generated set is reported under its own name
