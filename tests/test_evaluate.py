"""``evaluate``: one protocol on one checkpoint, stored by rank 0 only."""

from __future__ import annotations

import yaml
from test_protocols_common import make_imagefolder

from ssl_bench.evaluate import evaluate


def test_only_rank_0_stores_even_when_the_protocol_joins_no_process_group(tmp_path, monkeypatch):
    """Under torchrun or a Slurm job every rank has RANK set; k-NN runs on each rank without
    torch.distributed, and only rank 0 writes the result."""
    data = make_imagefolder(tmp_path / "data", classes=2, train=3, val=2)
    recipe = tmp_path / "knn.yaml"
    recipe.write_text(yaml.safe_dump({"transform": {"resize": 36, "crop": 32}, "ks": [2]}))
    runs = {}
    for rank in ("1", "0"):
        monkeypatch.setenv("RANK", rank)
        runs[rank] = evaluate("knn", "random:vit_tiny_patch16_224", data, recipe=recipe,
                              results_dir=tmp_path / f"results{rank}", device="cpu")
    (records1, path1), (records0, path0) = runs["1"], runs["0"]
    assert path1 is None and not list((tmp_path / "results1").glob("*/*.json"))
    assert list((tmp_path / "results0").glob("*/*.json")) == [path0]
    assert [r["value"] for r in records1] == [r["value"] for r in records0]
