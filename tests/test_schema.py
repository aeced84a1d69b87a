"""The metric schema: each protocol declares its name once and its metrics; stored records,
the synthetic store and every published number of reported.csv are checked against it."""

from __future__ import annotations

import fnmatch
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from ssl_bench.errors import UserError
from ssl_bench.leaderboard import load_reported
from ssl_bench.leaderboard.reported import REPORTED_COLUMNS, unmatched
from ssl_bench.leaderboard.synthetic import write_synthetic_store
from ssl_bench.protocols import PROTOCOLS, schema_of
from ssl_bench.recipes import load_defaults
from ssl_bench.results import load_results
from ssl_bench.schema import LOWER, NEUTRAL, Metric, Schema

ROOT = Path(__file__).resolve().parents[1]


def test_placeholders_match_their_kind_only():
    knn = Metric("top1_k{k:int}")
    assert knn.matches("top1_k20") and not knn.matches("top1_k") and not knn.matches("top1_kx") \
        and not knn.matches("top5_k20")
    threshold = Metric("mIoU@{t:num}")
    assert threshold.matches("mIoU@0.1") and threshold.matches("mIoU@2") and not threshold.matches("mIoU@opt")
    corruption = Metric("error/{c:name}/{s:int}")
    assert corruption.matches("error/gaussian_noise/3") and not corruption.matches("error/gaussian_noise")
    assert not Metric("top1_{subset:name}").matches("top1_1img")  # a name starts with a letter
    with pytest.raises(ValueError, match="placeholder kind"):
        Metric("x{a:float}")
    with pytest.raises(ValueError, match="headline"):
        Schema(datasets=("imagenet",), metrics=(Metric("top1"),), headline=("top5",), order=1)


def test_each_protocol_is_named_once_and_declares_its_metrics():
    names = PROTOCOLS.names()
    assert len(names) == 11
    orders = [PROTOCOLS.get(n).schema.order for n in names]
    assert len(set(orders)) == len(orders)  # a strict column order
    for name in names:
        cls = PROTOCOLS.get(name)
        assert cls.name == name  # set by PROTOCOLS.register
        source = Path(sys.modules[cls.__module__].__file__).read_text()
        assert f'name = "{name}"' not in source  # written once, in the decorator
        assert isinstance(cls.schema, Schema) and cls.schema.headline
    assert schema_of("no-such-protocol") is None


@pytest.mark.parametrize("dataset, metric, direction", [
    ("embedded-c", "100-mCE", "higher"), ("imagenet-c", "mCE", LOWER), ("embedded-c", "mean_error", LOWER),
    ("imagenet-c", "error/fog/5", LOWER), ("embedded-a", "top1", "higher")])
def test_robustness_directions_and_dataset_naming(dataset, metric, direction):
    declared = schema_of("robustness").metric(metric, dataset)
    assert declared is not None and declared.direction == direction
    assert schema_of("robustness").metric("top1", "imagenet-c") is None      # no top-1 on ImageNet-C
    assert schema_of("robustness").metric("top1", "imagenet") is None        # not a robustness set


def test_statistics_have_no_direction():
    assert schema_of("lowshot").metric("top1_5shot_std").direction == NEUTRAL
    assert schema_of("prompt_seg").metric("opt_threshold").direction == NEUTRAL
    assert schema_of("davis").metric("J-Decay").direction == LOWER
    assert schema_of("detection").metric("bbox_APr", "lvis") is not None
    assert schema_of("detection").metric("bbox_APr", "coco") is None          # APr/APc/APf are LVIS's


def test_reported_csv_walks_through_the_schema_with_no_unmatched_row():
    table = load_reported()
    assert list(table.columns) == REPORTED_COLUMNS
    bad = unmatched(table)
    assert bad.empty, bad[["paper", "method", "protocol", "dataset", "metric"]].to_string()


def test_a_reported_row_in_other_names_is_refused(tmp_path):
    table = load_reported().head(3).copy()
    table.loc[table.index[1], ["protocol", "metric"]] = ["detection", "AP_box"]  # a drifted name
    path = tmp_path / "mine.csv"
    table.to_csv(path, index=False)
    assert len(unmatched(table)) == 1
    with pytest.raises(UserError, match="1 rows .* detection / imagenet / AP_box"):
        load_reported(path)


def test_reported_numbers_and_paper_layouts_are_package_data(tmp_path):
    """They load from a copy of the package alone (a non-editable install: no repository around it)."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["ssl_bench"]
    for name in ("leaderboard/reported.csv", "leaderboard/papers.yaml"):
        assert (ROOT / "ssl_bench" / name).is_file() and any(fnmatch.fnmatch(name, glob) for glob in data)
    assert not (ROOT / "leaderboards" / "reported.csv").exists()
    shutil.copytree(ROOT / "ssl_bench", tmp_path / "site" / "ssl_bench")  # with its bytecode: no recompiling
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    code = ("import ssl_bench, sys; from ssl_bench.leaderboard.reported import read_reported; "
            "from ssl_bench.leaderboard.papers import layouts; "
            "assert ssl_bench.__file__.startswith(sys.argv[1]); print(len(read_reported()), len(layouts()))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "site")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(len(load_reported())), "5"]


def test_the_synthetic_store_writes_what_the_protocols_write(tmp_path):
    records = load_results(write_synthetic_store(tmp_path / "store", n_test=50))
    assert not records.empty
    for row in records.itertuples():
        assert schema_of(row.protocol).metric(row.metric, row.dataset) is not None, (row.protocol, row.metric)
    import json

    knn = json.loads(next((tmp_path / "store" / "knn").glob("*.json")).read_text())
    assert set(knn["recipe"]) <= set(load_defaults("protocols/knn")) and knn["recipe"]["ks"] == [20]


def test_evaluate_refuses_a_record_the_schema_does_not_declare(tmp_path, monkeypatch):
    from test_protocols_common import make_imagefolder

    from ssl_bench.evaluate import evaluate
    from ssl_bench.protocols.knn import KNN

    monkeypatch.setattr(KNN, "run", lambda self, ctx: [{"dataset": "imagenet", "metric": "top1", "value": 1.0}])
    with pytest.raises(ValueError, match="knn wrote imagenet/top1, which its schema"):
        evaluate("knn", "random:vit_tiny_patch16_224", make_imagefolder(tmp_path / "d"), results_dir=tmp_path / "r",
                 device="cpu")
    assert not (tmp_path / "r").exists()  # nothing stored
