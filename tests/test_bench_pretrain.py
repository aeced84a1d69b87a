"""`ssl-bench bench pretrain --method NAME` runs for every method and counts what the online
encoder saw in one step; `--against lightly` without lightly (or without a module lightly
imports) fails with one line naming the fix."""

import statistics
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from ssl_bench.benchmarks import pretrain as bench_pretrain
from ssl_bench.benchmarks._lightly_msn import build_lightly_step
from ssl_bench.benchmarks.pretrain import _batch
from ssl_bench.cli import main
from ssl_bench.engine import resolve_recipe
from ssl_bench.engine.recipe import build_method
from ssl_bench.methods import METHODS


def _table(text: str) -> dict[str, str]:
    return dict(line.split("\t", 2)[:2] for line in text.strip().splitlines() if "\t" in line)


@pytest.mark.parametrize("method", METHODS.names())
def test_bench_pretrain_every_method(method, capsys):
    assert main(["--quiet", "bench", "pretrain", "--method", method, "--steps", "1", "--warmup", "0",
                 "--batch-size", "4", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    table = _table(out)
    assert table["method"] == method
    assert float(table["method img/s"]) > 0 and float(table["ratio"]) > 0
    if method == "msn":
        # msn_tiny: 64 px anchors (16 patches, 15% dropped -> 13 kept) + CLS, and 4 focal views
        # of 32 px (4 patches + CLS) per image; the target encoder runs without gradients
        assert int(table["online tokens/step"]) == 4 * (1 + 13) + 4 * 4 * (1 + 4)
        # MSN reads the CLS token alone: 4 anchor + 16 focal views online, 4 target views
        assert "online tokens/step\t136\t(the CLS token alone through the last block for 20 images)" in out
        assert "teacher tokens/step\t68\t(the CLS token alone through the last block for 4 images)" in out
    if method == "mscn":
        assert "online encoder images/step" in table
    if method == "siameseim":
        # the ideal runs the decoder as the method does: decoder_embed, the projector blocks, the
        # position MLP, the predictor blocks and decoder_pred with gradients; the target's embedding
        # and projector blocks without
        cfg = resolve_recipe(Path("pretrain/siameseim_tiny.yaml"), [])["siameseim"]
        online = 1 + cfg["projector_depth"] + 1 + cfg["predictor_depth"] + 1
        assert f"head calls/step\t{online}\t(with gradients; {1 + cfg['projector_depth']} without)" in out
    if method == "conmim":  # the student's projector with gradients, the teacher's without
        assert "head calls/step\t1\t(with gradients; 1 without)" in out
    if method == "mmc":  # per global view h_REC, h_PAT, h_CLS with gradients, teacher h_PAT and h_CLS
        # without, and one teacher h_CLS call over all local crops
        local = resolve_recipe(Path("pretrain/mmc_tiny.yaml"), [])["mmc"]["local_views"] > 0
        assert f"head calls/step\t6\t(with gradients; {4 + local} without)" in out
    if method in ("msn", "mscn"):
        assert "head calls/step" not in table
    # what lies above the ideal, split into the parts of the update that run alone: every tiny
    # recipe has an optimiser; all but MSCN's (LARS, SimCLR-style) clip and keep teachers
    parts = table["above the ideal"]
    assert parts.endswith(" ms/step")
    line = next(line for line in out.splitlines() if line.startswith("above the ideal\t"))
    expected = ["optimiser step"] + ([] if method == "mscn" else ["clipping", "EMA"])
    assert [part.rsplit(" ", 2)[0] for part in line.split("\t(")[1].split(";")[0].split(", ")] == expected


@pytest.mark.parametrize(("steps", "consecutive", "order", "timed"), [
    (4, 3, "ab aaabbb aaabbb", [2, 3, 5, 6]),  # the first step of every run untimed
    (3, 3, "ab aaabbb aabb", [2, 3, 5]),  # the last run stops once both sides have their steps
    (1, 3, "ab aabb", [2]),
    (3, 1, "ab ab ab ab", [1, 2, 3]),  # step by step: every step timed
])
def test_interleaved_takes_turns_and_times_all_but_the_first_step_of_a_run(monkeypatch, steps, consecutive,
                                                                          order, timed):
    """One warm-up step each ("ab"), then runs; a side's n-th call (warm-up: 0) lasts 100 + n
    (first side) or 1000 + n (second side) seconds, so the medians show which calls were timed."""
    calls = []

    def fake_seconds(fn, device):
        fn()
        side = calls[-1]
        return (100 if side == "a" else 1000) + calls.count(side) - 1

    monkeypatch.setattr(bench_pretrain, "_seconds", fake_seconds)
    medians = bench_pretrain._interleaved(lambda: calls.append("a"), lambda: calls.append("b"), steps, 1, "cpu",
                                          consecutive)
    assert "".join(calls) == order.replace(" ", "")
    assert medians == (100 + statistics.median(timed), 1000 + statistics.median(timed))


LIGHTLY_ARGS = ["--quiet", "bench", "pretrain", "--method", "msn", "--against", "lightly", "--steps", "1",
                "--warmup", "0", "--batch-size", "4", "--device", "cpu"]


def _forget_lightly(monkeypatch):
    """Drop any imported lightly module, so the next import runs the import system again."""
    for name in [n for n in sys.modules if n == "lightly" or n.startswith("lightly.")]:
        monkeypatch.delitem(sys.modules, name)


def test_bench_pretrain_against_lightly_without_lightly(monkeypatch, capsys):
    _forget_lightly(monkeypatch)
    monkeypatch.setitem(sys.modules, "lightly", None)  # `import lightly` raises ModuleNotFoundError
    assert main(LIGHTLY_ARGS) == 2
    assert capsys.readouterr().err.strip() == (
        "ssl-bench: error: --against lightly: lightly is not installed; pip install --no-deps lightly==1.6.0")


def test_bench_pretrain_against_lightly_names_a_missing_dependency(monkeypatch, tmp_path, capsys):
    # a lightly whose package import needs a module that is not installed (--no-deps brings none)
    (tmp_path / "lightly").mkdir()
    (tmp_path / "lightly" / "__init__.py").write_text("import absent_dependency_of_lightly\n")
    _forget_lightly(monkeypatch)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(LIGHTLY_ARGS) == 2
    assert capsys.readouterr().err.strip() == (
        "ssl-bench: error: --against lightly: importing lightly needs the module 'absent_dependency_of_lightly', "
        "which is not installed; install the package that provides it (pip install --no-deps lightly==1.6.0 "
        "brings none of lightly's dependencies)")


def test_bench_pretrain_against_lightly_is_for_msn_only(capsys):
    args = [a if a != "msn" else "conmim" for a in LIGHTLY_ARGS]
    assert main(args) == 2
    assert capsys.readouterr().err.strip() == (
        "ssl-bench: error: --against lightly: only msn has a lightly counterpart here, not conmim")


def test_bench_pretrain_against_refuses_other_baselines(capsys):
    args = [a if a != "lightly" else "solo-learn" for a in LIGHTLY_ARGS]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert "argument --against: invalid choice: 'solo-learn'" in capsys.readouterr().err


class _Recorder:
    """A stand-in for lightly's MSN parts that records what the bench's lightly step gives them."""

    def __init__(self):
        self.encoder_calls, self.loss_calls, self.momentum_calls, self.loss_settings = [], [], [], {}
        recorder = self

        class MaskedVisionTransformerTIMM(torch.nn.Module):
            def __init__(self, vit, **settings):
                super().__init__()
                self.vit, recorder.encoder_settings = vit, settings

            def forward(self, images, idx_keep=None):
                recorder.encoder_calls.append((images, idx_keep, torch.is_grad_enabled()))
                return self.vit(images)

        class MSNLoss:
            def __init__(self, **settings):
                recorder.loss_settings = settings

            def __call__(self, anchors, targets, prototypes, target_sharpen_temperature):
                recorder.loss_calls.append((anchors.shape, targets.shape, target_sharpen_temperature))
                return anchors.float().mean() + prototypes.mean()

        def deactivate_requires_grad(module):
            module.requires_grad_(False)

        self.lightly = SimpleNamespace(
            version="recorder", MaskedVisionTransformerTIMM=MaskedVisionTransformerTIMM, MSNLoss=MSNLoss,
            MSNProjectionHead=lambda d_in, hidden, out: torch.nn.Sequential(torch.nn.Linear(d_in, hidden),
                                                                          torch.nn.Linear(hidden, out)),
            deactivate_requires_grad=deactivate_requires_grad,
            update_momentum=lambda online, target, m: self.momentum_calls.append(m))


def test_lightly_step_sees_our_views_and_recipe():
    recipe = resolve_recipe(Path("pretrain/msn_tiny.yaml"), ["data.batch_size=2"])
    batch = _batch(build_method(recipe), 2, 96, torch.device("cpu"))
    recorder = _Recorder()
    step, model = build_lightly_step(recorder.lightly, recipe, batch, torch.device("cpu"))
    prototypes = model.prototypes.detach().clone()
    step()
    (anchors, keep, anchor_grad), (focal, no_keep, focal_grad), (target, _, target_grad) = recorder.encoder_calls
    # the anchors keep CLS (token 0) and our kept patches (patch i is token i + 1), the same for both images
    assert torch.equal(anchors, batch["anchors"][:, 0]) and anchor_grad
    expected = [0] + [int(i) + 1 for i in batch["keep"][0]]
    assert len(expected) == 1 + 13 and keep.tolist() == [expected, expected]
    # focal views view-major, as our MSN flattens them; not dropped
    assert torch.equal(focal, batch["focal"].transpose(0, 1).flatten(0, 1)) and no_keep is None and focal_grad
    assert torch.equal(target, batch["target"]) and not target_grad
    # msn_tiny: 4 focal + 1 anchor view per image, 256 prototypes of 256, the official loss settings
    assert recorder.loss_calls == [(torch.Size([2 * 5, 256]), torch.Size([2, 256]), 0.25)]
    assert recorder.loss_settings == {"temperature": 0.1, "sinkhorn_iterations": 3, "regularization_weight": 1.0}
    assert recorder.encoder_settings == {"weight_initialization": "skip", "antialias": False,
                                         "pos_embed_initialization": "learn"}
    assert recorder.momentum_calls == [0.99, 0.99]  # msn_tiny ema.start, backbone and head
    assert not torch.equal(model.prototypes, prototypes)  # trained, as ours


@pytest.mark.parametrize(("option", "value"), [("--steps", "0"), ("--consecutive", "0")])
def test_bench_pretrain_refuses_fewer_than_one_step(option, value, capsys):
    args = ["--quiet", "bench", "pretrain", "--method", "msn", "--batch-size", "4", "--device", "cpu", option, value]
    assert main(args) != 0
    assert f"{option} {value}: must be at least 1" in capsys.readouterr().err
