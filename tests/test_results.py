"""The results store under concurrent writers, and the leaderboard pivot."""

import multiprocessing as mp

import pandas as pd

from ssl_bench.leaderboard import pivot, render
from ssl_bench.results import evaluation_key, feature_variant, load_results, stored_keys, write_evaluation

WRITERS, PER_WRITER = 8, 50


def _writer(results_dir, writer, barrier):
    barrier.wait()  # all processes start writing at the same moment
    for i in range(PER_WRITER):
        write_evaluation(results_dir, protocol="knn",
                         checkpoint={"label": f"ckpt{writer}", "sha256": f"h{writer}",
                                     "method": "msn", "arch": "vit_tiny"},
                         recipe={"k": [10, 20]}, wall_time_s=0.1,
                         records=[{"dataset": "embedded", "metric": f"m{i:02d}",
                                   "value": writer * 1000 + i}])


def test_eight_concurrent_writers_lose_no_record(tmp_path):
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(WRITERS)
    procs = [ctx.Process(target=_writer, args=(tmp_path, w, barrier)) for w in range(WRITERS)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(600)
        assert proc.exitcode == 0
    records = load_results(tmp_path)
    assert len(records) == WRITERS * PER_WRITER
    table = pivot(records)
    assert table.shape == (WRITERS, PER_WRITER)
    assert table.notna().to_numpy().sum() == WRITERS * PER_WRITER
    assert table.loc["ckpt3", ("knn", "embedded", "m07")] == 3007
    assert not list(tmp_path.rglob("*.tmp"))  # no temporary file left behind


def test_records_carry_their_context(tmp_path):
    write_evaluation(tmp_path, protocol="linear", checkpoint={"label": "a", "sha256": "x",
                                                              "method": "mmc", "arch": "vit_small"},
                     recipe={"lr": 0.1}, wall_time_s=2.5,
                     records=[{"dataset": "imagenet", "metric": "top1", "value": 70.0}])
    row = load_results(tmp_path).iloc[0]
    assert (row.checkpoint, row.method, row.protocol, row.metric, row.value) == \
        ("a", "mmc", "linear", "top1", 70.0)
    assert row.wall_time_s == 2.5 and row.checkpoint_sha256 == "x" and row.timestamp


def test_pivot_averages_repeats_and_renders_every_format():
    records = pd.DataFrame({"checkpoint": ["a", "a", "b"], "protocol": ["knn"] * 3,
                            "dataset": ["d"] * 3, "metric": ["top1"] * 3, "value": [10.0, 20.0, 5.0]})
    table = pivot(records)
    assert table.loc["a", ("knn", "d", "top1")] == 15.0
    assert "| a " in render(table, "md") and "15" in render(table, "md")
    assert render(table, "csv").splitlines()[0].startswith("protocol,knn")
    assert "\\begin{tabular}" in render(table, "tex")
    assert render(table, "html").startswith("<!DOCTYPE html>")


def test_predictions_is_the_stores_own_key(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="'predictions' is the store's own key"):
        write_evaluation(tmp_path, protocol="davis", checkpoint={"label": "a", "sha256": "x"}, recipe={},
                         wall_time_s=1.0, records=[{"dataset": "davis", "metric": "J-Mean", "value": 50.0,
                                                    "predictions": "masks/"}])
    assert not any(tmp_path.rglob("*.json"))


def test_evaluation_key_is_checkpoint_protocol_and_the_whole_recipe(tmp_path):
    """The demo's and the sweep's reuse rule: a stored evaluation matches only the same checkpoint
    hash, protocol and resolved recipe, seed included (unlike ``recipe_key``, which groups seeds)."""
    recipe = {"ks": [10, 20], "seed": 0, "transform": {"crop": 224}}
    write_evaluation(tmp_path, protocol="knn", checkpoint={"label": "a", "sha256": "h1"}, recipe=recipe,
                     records=[{"dataset": "imagenet", "metric": "top1", "value": 1.0}], wall_time_s=0.1)
    keys = stored_keys(tmp_path)
    assert keys == {evaluation_key("h1", "knn", {"transform": {"crop": 224}, "seed": 0, "ks": [10, 20]})}
    for other in (evaluation_key("h2", "knn", recipe), evaluation_key("h1", "linear", recipe),
                  evaluation_key("h1", "knn", {**recipe, "seed": 1}),
                  evaluation_key("h1", "knn", {**recipe, "transform": {"crop": 96}})):
        assert other not in keys
    assert stored_keys(tmp_path / "no-store-yet") == set()


def test_feature_variant_names_what_differs_from_the_checkpoints_own_reading():
    own = {"feature": "cls", "final_norm": True, "input_filter": None}
    record = {"feature": "cls", "final_norm": True, "input_filter": None}
    assert feature_variant(record, own) == ""
    assert feature_variant({"value": 1.0}, own) == ""  # a protocol that reads no such features
    assert feature_variant({**record, "feature": "avgpool", "final_norm": False}, own) == "avgpool, no final norm"
    assert feature_variant({**record, "feature": "cls_prenorm"}, own) == "cls_prenorm"
    highpass = {"name": "highpass", "sigma": 5}
    assert feature_variant({**record, "input_filter": highpass}, own) == "highpass input filter, sigma 5"
    # the same filter written two ways is the same reading; removing a checkpoint's filter is not
    assert feature_variant({**record, "input_filter": {"name": "highpass", "sigma": 5.0}},
                           {**own, "input_filter": "highpass:5"}) == ""
    assert feature_variant(record, {**own, "input_filter": highpass}) == "no input filter"
