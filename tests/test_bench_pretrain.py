"""`ssl-bench bench pretrain --method NAME` runs for every method and counts what the online
encoder saw in one step."""

from pathlib import Path

import pytest

from ssl_bench.cli import main
from ssl_bench.engine import resolve_recipe
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
    if method in ("msn", "mmc", "mscn"):
        assert "head calls/step" not in table
