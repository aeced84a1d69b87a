"""``evaluate``: protocols on one checkpoint, stored by rank 0 only; several share one load and their features."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from test_protocols_common import make_imagefolder

import ssl_bench.evaluate as evaluate_module
from ssl_bench.cli import main
from ssl_bench.evaluate import evaluate
from ssl_bench.protocols import _features


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


def test_many_protocols_load_once_extract_each_split_once_and_match_separate_runs(tmp_path, monkeypatch, capsys):
    """``ssl-bench eval --protocol knn,linear,lowshot``: one checkpoint load; the three protocols
    share the eval transform, so train and val are extracted once each, even without the on-disk
    cache; every record equals the one the protocol gives alone."""
    data = make_imagefolder(tmp_path / "data", classes=3, train=6, val=2)
    sets = ["transform.resize=36", "transform.crop=32", "cache=false"]
    alone = {p: evaluate(p, "random:vit_tiny_patch16_224", data, sets=sets, results_dir=tmp_path / "alone",
                         device="cpu")[0] for p in ("knn", "linear", "lowshot")}
    loads = []
    real_load = evaluate_module.load_spec
    monkeypatch.setattr(evaluate_module, "load_spec", lambda spec: loads.append(spec) or real_load(spec))
    before = len(_features.EXTRACTIONS)
    argv = ["--quiet", "eval", "--protocol", "knn,linear,lowshot", "--checkpoint", "random:vit_tiny_patch16_224",
            "--data", str(data), "--results", str(tmp_path / "together"), "--device", "cpu", "--json"]
    for item in sets:
        argv += ["--set", item]
    assert main(argv) == 0
    assert loads == ["random:vit_tiny_patch16_224"]
    assert sorted(d for d, _ in _features.EXTRACTIONS[before:]) == ["features train", "features val"]
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [p["protocol"] for p in printed] == ["knn", "linear", "lowshot"]
    for entry in printed:
        assert entry["metrics"] == {f"{r['dataset']}/{r['metric']}": r["value"] for r in alone[entry["protocol"]]}
        assert Path(entry["results_file"]).is_file()


def test_recipe_for_several_protocols_must_name_its_protocol(tmp_path, capsys):
    argv = ["eval", "--protocol", "knn,linear", "--checkpoint", "random:vit_tiny_patch16_224",
            "--data", str(tmp_path), "--recipe", str(tmp_path / "x.yaml")]
    assert main(argv) == 2
    assert "give --recipe-for P=FILE" in capsys.readouterr().err
    assert main(["eval", "--protocol", "knn,knn", "--checkpoint", "random:vit_tiny_patch16_224",
                 "--data", str(tmp_path)]) == 2
    assert "distinct protocol names" in capsys.readouterr().err
