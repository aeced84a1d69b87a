"""Comparison tables on synthetic results stores: pivot, repeats, improvement rows, best
marking, bootstrap intervals, reported numbers, renderers, figures and the CLI."""

import io
import math
import struct

import numpy as np
import pandas as pd
import pytest

from ssl_bench.cli import main
from ssl_bench.errors import UserError
from ssl_bench.leaderboard import (build_table, bootstrap_ci, load_reported, pivot, render,
                                   write_leaderboard)
from ssl_bench.leaderboard.plots import overview_figure, protocol_figure
from ssl_bench.results import load_predictions, load_results, write_evaluation

MSN = {"label": "run-a", "sha256": "a" * 64, "method": "msn", "arch": "vit_tiny"}
MMC = {"label": "run-b", "sha256": "b" * 64, "method": "mmc", "arch": "vit_tiny"}
RANDOM = {"label": "random:vit_tiny", "sha256": "random:vit_tiny:seed0", "method": "random",
          "arch": "vit_tiny"}
ROW_MSN, ROW_MMC, ROW_RANDOM = "msn vit_tiny (run-a)", "mmc vit_tiny (run-b)", "random init vit_tiny"
KNN = ("knn", "embedded", "top1_k20")
ERR = ("robustness", "embedded-c", "mean_error")


def _write(store, protocol, ckpt, records, **kw):
    return write_evaluation(store, protocol=protocol, checkpoint=ckpt, recipe={}, records=records,
                            wall_time_s=1.0, **kw)


@pytest.fixture
def store(tmp_path):
    """msn: knn 60 and 64 (two seeds), error 30; mmc: knn 66, error 20; random: knn 10, error 90."""
    root = tmp_path / "results"
    for seed, value in ((0, 60.0), (1, 64.0)):
        _write(root, "knn", MSN, [{"dataset": "embedded", "metric": "top1_k20", "value": value, "seed": seed}])
    _write(root, "knn", MMC, [{"dataset": "embedded", "metric": "top1_k20", "value": 66.0}])
    _write(root, "knn", RANDOM, [{"dataset": "embedded", "metric": "top1_k20", "value": 10.0}])
    for ckpt, err in ((MSN, 30.0), (MMC, 20.0), (RANDOM, 90.0)):
        _write(root, "robustness", ckpt, [{"dataset": "embedded-c", "metric": "mean_error", "value": err}])
    return root


def test_rows_columns_and_mean_std_of_repeats(store):
    table = build_table(load_results(store), n_boot=0)
    assert table.rows == [ROW_MMC, ROW_MSN, ROW_RANDOM]  # measured by name, random init last
    assert table.columns == [KNN, ERR]                     # protocol order: knn before robustness
    assert table.mean.at[ROW_MSN, KNN] == 62.0
    assert table.std.at[ROW_MSN, KNN] == pytest.approx(math.sqrt(((60 - 62) ** 2 + (64 - 62) ** 2) / 1))
    assert table.count.at[ROW_MSN, KNN] == 2
    assert math.isnan(table.std.at[ROW_MMC, KNN]) and table.count.at[ROW_MMC, KNN] == 1
    assert table.kinds[ROW_RANDOM] == "random"
    # the foundation's pivot agrees on the means
    assert pivot(load_results(store)).loc["run-a", KNN] == 62.0


def test_three_splits_in_one_evaluation_give_mean_and_std(tmp_path):
    values = [47.0, 47.2, 46.9]
    _write(tmp_path, "lowshot", MSN, [{"dataset": "imagenet", "metric": "top1_1pct", "value": v,
                                       "split": i} for i, v in enumerate(values)])
    table = build_table(load_results(tmp_path), n_boot=0)
    col = ("lowshot", "imagenet", "top1_1pct")
    assert table.mean.at[ROW_MSN, col] == pytest.approx(sum(values) / 3)
    assert table.std.at[ROW_MSN, col] == pytest.approx(np.std(values, ddof=1))
    assert table.cell_text().at[ROW_MSN, col] == f"{sum(values) / 3:.1f} ± {np.std(values, ddof=1):.1f}"


def test_improvement_rows_against_a_baseline(store):
    table = build_table(load_results(store), baseline="random", n_boot=0)
    assert table.baseline == ROW_RANDOM
    imp = table.improvement
    assert list(imp.index) == [f"mmc vit_tiny: improve w.r.t. {ROW_RANDOM}",
                               f"msn vit_tiny: improve w.r.t. {ROW_RANDOM}"]
    msn = imp.loc[f"msn vit_tiny: improve w.r.t. {ROW_RANDOM}"]
    assert msn[KNN] == 62.0 - 10.0
    assert msn[ERR] == 90.0 - 30.0          # error: lower is better, so the gain is baseline - target
    text = table.cell_text()
    assert text.at[f"mmc vit_tiny: improve w.r.t. {ROW_RANDOM}", KNN] == "+56.0"
    # one target: the paper's single "Improve w.r.t." row
    one = build_table(load_results(store), baseline="run-b", targets=["msn"], n_boot=0)
    assert list(one.improvement.index) == ["Improve w.r.t. mmc vit_tiny"]
    assert one.improvement.iloc[0][KNN] == 62.0 - 66.0
    assert one.cell_text().iloc[-1][KNN] == "-4.0"


def test_unknown_or_ambiguous_baseline_is_a_user_error(store):
    records = load_results(store)
    with pytest.raises(UserError) as err:
        build_table(records, baseline="dino", n_boot=0)
    assert "'dino'" in str(err.value) and ROW_MSN in str(err.value) and ROW_RANDOM in str(err.value)
    second_msn = records[records.checkpoint == "run-a"].assign(checkpoint="run-c", checkpoint_sha256="c")
    with pytest.raises(UserError, match="matches several rows"):
        build_table(pd.concat([records, second_msn]), baseline="msn", n_boot=0)
    with pytest.raises(UserError, match="--target 'nope'"):
        build_table(records, baseline="random", targets=["nope"], n_boot=0)


def test_best_value_marking_per_column(store, tmp_path):
    table = build_table(load_results(store), n_boot=0)
    best = table.best
    assert best[KNN].to_dict() == {ROW_MMC: True, ROW_MSN: False, ROW_RANDOM: False}
    assert best[ERR].to_dict() == {ROW_MMC: True, ROW_MSN: False, ROW_RANDOM: False}  # lowest error
    md = table.to_markdown()
    assert "| knn / embedded / top1_k20 |" in md.replace("  ", "").replace(" |", " |")
    assert "**66.0**" in md and "**20.0**" in md and "**62.0 ± 2.8**" not in md
    # ties after rounding are all best; a column with one value marks nothing
    _write(tmp_path / "r", "knn", MSN, [{"dataset": "d", "metric": "top1_k10", "value": 70.04},
                                        {"dataset": "solo", "metric": "top1_k10", "value": 1.0}])
    _write(tmp_path / "r", "knn", MMC, [{"dataset": "d", "metric": "top1_k10", "value": 69.96}])
    tie = build_table(load_results(tmp_path / "r"), n_boot=0).best
    assert tie[("knn", "d", "top1_k10")].all() and not tie[("knn", "solo", "top1_k10")].any()


def _independent_bootstrap(arrays, scale, n_boot, confidence, seed):
    rng = np.random.default_rng(seed)
    stats = []
    for a in arrays:
        idx = rng.integers(0, len(a), size=(n_boot, len(a)))
        stats.append(scale * a[idx].mean(axis=1))
    pooled = np.mean(stats, axis=0)
    alpha = 1 - confidence
    return np.percentile(pooled, 100 * alpha / 2), np.percentile(pooled, 100 * (1 - alpha / 2))


def test_bootstrap_interval_from_stored_predictions(tmp_path):
    rng = np.random.default_rng(123)
    arrays = [(rng.random(300) < p).astype(np.uint8) for p in (0.70, 0.74)]
    for seed, correct in enumerate(arrays):
        _write(tmp_path, "linear", MSN, [{"dataset": "imagenet", "metric": "top1",
                                          "value": 100 * correct.mean(), "seed": seed}],
               predictions={"imagenet": {"correct": correct}})
    records = load_results(tmp_path)
    ordered = [np.load(path.replace(".json", ".npz"))["imagenet/correct"]
               for path in sorted(records["file"])]  # the store's order: by file name
    table = build_table(records, n_boot=400, confidence=0.9, seed=7)
    low, high = _independent_bootstrap(ordered, 100.0, 400, 0.9, 7)
    col = ("linear", "imagenet", "top1")
    assert table.ci_low.at[ROW_MSN, col] == pytest.approx(low, abs=1e-9)
    assert table.ci_high.at[ROW_MSN, col] == pytest.approx(high, abs=1e-9)
    mean = 100 * (arrays[0].mean() + arrays[1].mean()) / 2
    assert low < mean < high
    assert table.cell_text().at[ROW_MSN, col] == \
        f"{mean:.1f} ± {np.std([100 * a.mean() for a in arrays], ddof=1):.1f} [{low:.1f}, {high:.1f}]"


def test_bootstrap_ci_chunked_equals_one_draw_and_has_binomial_width():
    rng = np.random.default_rng(5)
    correct = (rng.random(5000) < 0.6).astype(float)   # 1000 x 5000 draws: computed in chunks
    low, high = bootstrap_ci([correct], scales=[100.0], n_boot=1000, confidence=0.95, seed=3)
    ref_low, ref_high = _independent_bootstrap([correct], 100.0, 1000, 0.95, 3)
    assert (low, high) == pytest.approx((ref_low, ref_high), abs=1e-12)
    p = correct.mean()
    half_width = 1.96 * math.sqrt(p * (1 - p) / correct.size) * 100   # normal approximation
    assert (high - low) / 2 == pytest.approx(half_width, rel=0.15)


def test_predictions_store_roundtrip_and_checks(tmp_path):
    correct = np.array([1, 0, 1, 1, 0, 1, 1, 1])
    path = _write(tmp_path, "knn", MSN,
                  [{"dataset": "d", "metric": "top1", "value": 75.0},
                   {"dataset": "d", "metric": "top5", "value": 100.0},     # not the mean of `correct`
                   {"dataset": "e", "metric": "top1", "value": 0.5, "per_sample": [1, 0]}],
                  predictions={"d": {"correct": correct}})
    assert path.with_suffix(".npz").is_file()
    rows = load_results(tmp_path).set_index(["dataset", "metric"])
    assert rows.loc[("d", "top1"), "predictions_key"] == "d/correct"
    assert rows.loc[("d", "top1"), "predictions_scale"] == 100.0
    assert rows.loc[("e", "top1"), "predictions_scale"] == 1.0          # a fraction, not percent
    assert pd.isna(rows.loc[("d", "top5"), "predictions"])
    np.testing.assert_array_equal(load_predictions(path, "d/correct"), correct)
    assert set(load_predictions(path)) == {"d/correct", "e/top1"}
    with pytest.raises(ValueError, match="neither"):
        _write(tmp_path, "knn", MSN, [{"dataset": "d", "metric": "top1", "value": 70.0,
                                       "per_sample": correct}])


def test_reported_csv_is_well_formed_and_cites_its_tables():
    rep = load_reported()
    assert len(rep) > 300 and set(rep["paper"]) == {"SiameseIM", "MSCN", "MSN", "ConMIM", "MMC", "DINO"}
    assert not rep.duplicated(["paper", "method", "architecture", "epochs", "protocol", "dataset", "metric"]).any()
    assert rep["source"].str.match(r"(SiameseIM|MSCN|MSN|ConMIM|MMC) paper Table \d|DINO repository README").all()
    assert rep["value"].between(0, 100).all()
    row = rep[(rep.method == "SiameseIM") & (rep.protocol == "finetune") & (rep.epochs == "1600")]
    assert row["value"].tolist() == [84.1]


def test_reported_rows_beside_measured(store):
    records = load_results(store)
    table = build_table(records, reported=True, n_boot=0)
    dino = "DINO ViT-B/16 (reported in DINO)"
    assert table.kinds[dino] == "reported"                      # knn is a measured protocol
    assert table.mean.at[dino, ("knn", "imagenet", "top1_k20")] == 76.1
    assert {col[0] for col in table.columns} == {"knn", "robustness"}  # only measured protocols
    assert "SiameseIM ViT-B/16 1600ep (reported in SiameseIM)" in table.rows  # its robustness numbers
    every = build_table(records, reported=True, reported_scope="all", n_boot=0)
    siameseim = "SiameseIM ViT-B/16 1600ep (reported in SiameseIM)"
    assert every.mean.at[siameseim, ("finetune", "imagenet", "top1")] == 84.1
    msn = every.cell_text().at["MSN ViT-S/16 800ep (reported in MSN)", ("lowshot", "imagenet", "top1_1shot_mean")]
    assert msn == "47.1 ± 0.1"                                   # the paper's std over 3 splits
    # one baseline, two papers: each paper's own number on its own row
    moco = ("finetune", "imagenet", "top1")
    assert every.mean.at["MoCo-v3 ViT-B/16 600ep (reported in SiameseIM)", moco] == 83.0
    assert every.mean.at["MoCo-v3 ViT-B/16 600ep (reported in ConMIM)", moco] == 83.2
    assert every.rows.index(ROW_RANDOM) < every.rows.index(dino)  # measured rows first
    assert "DINO repository README" in every.to_csv()
    with pytest.raises(UserError, match="no such file"):
        build_table(records, reported="/no/such.csv")


def test_renderers(store):
    _write(store, "knn", MMC, [{"dataset": "embedded", "metric": "top1_k10", "value": 65.0}])
    table = build_table(load_results(store), baseline="random", n_boot=0)
    csv = pd.read_csv(io.StringIO(table.render("csv")))
    cell = csv[(csv.row == ROW_MSN) & (csv.metric == "top1_k20")].iloc[0]
    assert (cell["mean"], cell["n"], cell["best"]) == (62.0, 2, False)
    assert cell["std"] == pytest.approx(2.828427, rel=1e-5)
    assert set(csv.kind) == {"measured", "random", "improvement"}
    tex = table.render("tex")
    assert "\\multicolumn{2}{c}{knn}" in tex and "metric & top1\\_k10 & top1\\_k20 & mean\\_error" in tex
    assert "\\bfseries 66.0" in tex and "62.0 $\\pm$ 2.8" in tex
    assert "vit\\_tiny" in tex and "+56.0" in tex
    page = table.to_html(figures=False)
    assert page.startswith("<!DOCTYPE html>") and 'colspan="2"' in page and "font-weight: bold" in page
    assert "62.0 ± 2.8" in page and "Improve w.r.t." in page
    assert render(table, "md") == table.to_markdown()           # the foundation's render delegates
    with pytest.raises(UserError, match="pdf"):
        table.render("pdf")


def test_figures_show_the_table(store):
    table = build_table(load_results(store), n_boot=0)
    fig = protocol_figure(table, "knn")
    bars = {label.get_text(): patch.get_width()
            for label, patch in zip(fig.axes[0].get_yticklabels(), fig.axes[0].patches)}
    assert bars == {ROW_RANDOM: 10.0, ROW_MSN: 62.0, ROW_MMC: 66.0}
    heat = overview_figure(table).axes[0].images[0].get_array()
    assert heat.shape == (3, 2)
    assert heat[0, 0] == 1.0 and heat[2, 0] == 0.0                 # best / worst knn
    assert heat[0, 1] == 1.0 and heat[2, 1] == 0.0                 # lowest error is best


def test_write_leaderboard_files(store, tmp_path):
    written = write_leaderboard(store, tmp_path / "lb" / "board", formats=("md", "csv", "html", "png"),
                                reported=True, baseline="random", n_boot=50)
    assert [p.name for p in written["png"]] == ["board.png", "board.knn.png", "board.robustness.png"]
    for path in written["png"]:
        head = path.read_bytes()[:24]
        assert head[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", head[16:24])[0] > 300
    page = written["html"][0].read_text()
    assert page.count("data:image/png;base64,") == 3 and "(reported in DINO)" in page
    assert "**66.0**" in written["md"][0].read_text()
    with pytest.raises(UserError, match="'svg'"):
        write_leaderboard(store, tmp_path / "x", formats=("svg",))


def test_cli_leaderboard(store, tmp_path, capsys):
    out = tmp_path / "lb.md"
    assert main(["--quiet", "leaderboard", "--results", str(store), "--out", str(out), "--reported",
                 "--baseline", "msn", "--bootstrap", "0"]) == 0
    text = out.read_text()
    assert "DINO ViT-B/16 (reported in DINO)" in text and "Improve w.r.t." in text
    assert main(["--quiet", "leaderboard", "--results", str(store), "--format", "png",
                 "--out", str(tmp_path / "fig.png")]) == 0
    assert (tmp_path / "fig.png").is_file() and (tmp_path / "fig.knn.png").is_file()
    capsys.readouterr()
    # --quiet silences the progress bar; the error line must still be printed, alone.
    assert main(["--quiet", "leaderboard", "--results", str(store), "--baseline", "dino"]) == 2
    err = capsys.readouterr().err
    assert "--baseline 'dino'" in err and ROW_MSN in err and len(err.strip().splitlines()) == 1
    assert main(["leaderboard", "--results", str(store), "--format", "svg"]) == 2
    assert "valid: md, csv, tex, html, png, all" in capsys.readouterr().err
    assert main(["leaderboard", "--results", str(store), "--format", "png"]) == 2
    assert "--out" in capsys.readouterr().err


def test_legend_names_dates_commits_and_machine(store):
    """The provenance line comes from the stored evaluations: 7 files, their day, commit and machine."""
    import json

    from ssl_bench.provenance import code_version

    files = sorted(store.rglob("*.json"))
    payload = json.loads(files[0].read_text())
    payload.update(timestamp="2026-01-02T03:04:05+00:00",
                   machine={"cpu": "Test CPU", "cpus": 2, "system": "Linux x86_64", "accelerator": None})
    files[0].write_text(json.dumps(payload))
    line = build_table(load_results(store), n_boot=0).legend()[-1]
    commit = code_version()["commit"][:10]
    assert line.startswith(f"Measured: {len(files)} evaluations on 2026-01-02 to ")
    assert f"code commit {commit}" in line
    assert "2 x Test CPU, Linux x86_64, no GPU" in line


def _stamp(path, timestamp):
    import json
    from pathlib import Path

    payload = json.loads(Path(path).read_text())
    payload["timestamp"] = timestamp
    Path(path).write_text(json.dumps(payload))


def test_an_older_recipe_is_left_out_and_seeds_of_the_latest_are_averaged(tmp_path):
    root = tmp_path / "results"

    def knn(value, recipe, timestamp):
        path = write_evaluation(root, protocol="knn", checkpoint=MSN, recipe=recipe, wall_time_s=1.0,
                                records=[{"dataset": "embedded", "metric": "top1_k20", "value": value}])
        _stamp(path, timestamp)

    knn(40.0, {"ks": [20], "temperature": 0.1, "seed": 0}, "2026-12-01T10:00:00+00:00")  # older recipe
    knn(60.0, {"ks": [20], "temperature": 0.07, "seed": 0}, "2026-12-02T10:00:00+00:00")
    knn(64.0, {"ks": [20], "temperature": 0.07, "seed": 1}, "2026-12-02T11:00:00+00:00")  # a repeat
    write_evaluation(root, protocol="robustness", checkpoint=MSN, recipe={"batch_size": 8}, wall_time_s=1.0,
                     records=[{"dataset": "embedded-c", "metric": "mean_error", "value": 30.0}])
    table = build_table(load_results(root), n_boot=0)
    assert table.mean.at[ROW_MSN, KNN] == 62.0 and table.count.at[ROW_MSN, KNN] == 2
    assert table.mean.at[ROW_MSN, ERR] == 30.0
    assert any(line.startswith("Left out: 1 older evaluations") for line in table.legend())
    assert "Measured: 3 evaluations" in " ".join(table.legend())


def test_a_baseline_read_as_a_method_reads_is_a_row_of_its_own(tmp_path):
    """random: evaluated with its own conventions (cls, final norm) and, later, with a method's
    (avgpool, no final norm): two rows, neither left out as an older recipe; a later repeat of
    the second is averaged into it."""
    root = tmp_path / "results"
    own = {"feature": "cls", "final_norm": True, "input_filter": None}
    ckpt = {**RANDOM, "eval": own}

    def knn(value, feature, final_norm, timestamp, seed=0):
        path = write_evaluation(root, protocol="knn", checkpoint=ckpt, wall_time_s=1.0,
                                recipe={"feature": feature, "final_norm": final_norm, "seed": seed},
                                records=[{"dataset": "embedded", "metric": "top1_k20", "value": value,
                                          "feature": feature, "final_norm": final_norm, "input_filter": None}])
        _stamp(path, timestamp)

    knn(11.4, "cls", True, "2026-12-01T10:00:00+00:00")
    knn(13.6, "avgpool", False, "2026-12-01T11:00:00+00:00")
    knn(14.0, "avgpool", False, "2026-12-01T12:00:00+00:00", seed=1)
    table = build_table(load_results(root), n_boot=0)
    matched = f"{ROW_RANDOM} [avgpool, no final norm]"
    assert table.rows == [ROW_RANDOM, matched]
    assert table.mean.at[ROW_RANDOM, KNN] == 11.4
    assert table.mean.at[matched, KNN] == pytest.approx(13.8) and table.count.at[matched, KNN] == 2
    assert not any(line.startswith("Left out") for line in table.legend())


def test_markdown_leads_with_headline_metrics_then_one_section_per_protocol(tmp_path):
    root = tmp_path / "results"
    _write(root, "lowshot", MSN, [{"dataset": "embedded", "metric": m, "value": v}
                                  for m, v in (("top1_1shot_mean", 30.0), ("top1_1shot_std", 1.5),
                                               ("top1_1pct", 40.0))])
    _write(root, "knn", MSN, [{"dataset": "embedded", "metric": m, "value": v}
                              for m, v in (("top1_k20", 50.0), ("top5_k20", 80.0))])
    _write(root, "custom", MSN, [{"dataset": "d", "metric": "score", "value": 7.0}])
    table = build_table(load_results(root), n_boot=0)
    # the schema's headline metrics, in its declaration order; an undeclared protocol's first column, last
    assert table.headline_columns() == [("knn", "embedded", "top1_k20"), ("lowshot", "embedded", "top1_1shot_mean"),
                                        ("lowshot", "embedded", "top1_1pct"), ("custom", "d", "score")]
    md = table.to_markdown()
    summary, sections = md.split("## knn")
    header = summary.split("## Summary")[1].strip().splitlines()[0]
    assert [h.strip() for h in header.strip("|").split("|")] == [
        "model", "knn / embedded / top1_k20", "lowshot / embedded / top1_1shot_mean",
        "lowshot / embedded / top1_1pct", "custom / d / score"]
    assert "top1_1shot_std" not in summary and "| embedded / top1_1shot_std |" in sections.replace("  ", "")
    assert sections.index("## lowshot") < sections.index("## custom")


def test_directions_come_from_the_schema(tmp_path):
    """Best values, improvements and figures read each metric's direction from its protocol's schema:
    the best 100-mCE is the highest, the best mCE, mean error and DAVIS decay the lowest, and a
    statistic (the std over low-shot splits) is never marked and never 'improved'."""
    root = tmp_path / "results"
    for ckpt, score, error, std, decay in ((MSN, 60.0, 30.0, 1.0, 5.0), (MMC, 70.0, 20.0, 2.0, 3.0),
                                           (RANDOM, 10.0, 90.0, 0.5, 9.0)):
        _write(root, "robustness", ckpt, [{"dataset": "imagenet-c", "metric": "100-mCE", "value": score},
                                          {"dataset": "imagenet-c", "metric": "mCE", "value": 100 - score},
                                          {"dataset": "embedded-c", "metric": "mean_error", "value": error}])
        _write(root, "lowshot", ckpt, [{"dataset": "embedded-imagenet", "metric": "top1_1shot_std", "value": std}])
        _write(root, "davis", ckpt, [{"dataset": "embedded-davis", "metric": "J-Decay", "value": decay}])
    table = build_table(load_results(root), baseline="random", n_boot=0)
    one_minus, mce = ("robustness", "imagenet-c", "100-mCE"), ("robustness", "imagenet-c", "mCE")
    error, std = ("robustness", "embedded-c", "mean_error"), ("lowshot", "embedded-imagenet", "top1_1shot_std")
    decay = ("davis", "embedded-davis", "J-Decay")
    for col in (one_minus, mce, error, decay):
        assert table.best[col].to_dict() == {ROW_MMC: True, ROW_MSN: False, ROW_RANDOM: False}, col
    assert not table.best[std].any() and table.undirected() == [std]
    imp = table.improvement.loc[f"msn vit_tiny: improve w.r.t. {ROW_RANDOM}"]
    assert (imp[one_minus], imp[mce], imp[error], imp[decay]) == (50.0, 50.0, 60.0, 4.0)  # all better: positive
    assert math.isnan(imp[std])
    worse = build_table(load_results(root), baseline="mmc", targets=["msn"], n_boot=0).improvement.iloc[0]
    assert (worse[one_minus], worse[mce], worse[error], worse[decay]) == (-10.0, -10.0, -10.0, -2.0)
    heat = overview_figure(table).axes[0].images[0].get_array()
    columns = table.mean.columns.tolist()
    assert [heat[0, columns.index(c)] for c in (one_minus, mce, error, decay)] == [1.0] * 4  # mmc: best everywhere
    assert heat.mask[:, columns.index(std)].all()                                          # no colour scale
    labels = {ax.get_xlabel() for ax in protocol_figure(table, "robustness").axes if ax.get_visible()}
    assert labels == {"100-mCE (higher is better)", "mCE (lower is better)", "mean_error (lower is better)"}
    assert protocol_figure(table, "lowshot").axes[0].get_xlabel() == "top1_1shot_std"
    assert not any(line.startswith("Not declared") for line in table.legend())


def test_an_undeclared_metric_is_neither_marked_nor_improved_and_the_legend_says_so(store):
    _write(store, "knn", MSN, [{"dataset": "embedded", "metric": "made_up", "value": 1.0}])
    _write(store, "knn", MMC, [{"dataset": "embedded", "metric": "made_up", "value": 2.0}])
    table = build_table(load_results(store), baseline="random", n_boot=0)
    col = ("knn", "embedded", "made_up")
    assert not table.best[col].any() and table.improvement[col].isna().all()
    assert "Not declared by any protocol's schema (no best value, no improvement): knn / embedded / made_up." \
        in table.legend()


def test_measured_cells_read_back_from_the_long_form_csv(store, tmp_path):
    from ssl_bench.leaderboard import measured_from_csv

    rng = np.random.default_rng(0)
    hits = (rng.random(200) < 0.7).astype(np.uint8)
    _write(store, "linear", MSN, [{"dataset": "embedded", "metric": "top1", "value": 100 * hits.mean(),
                                   "per_sample": hits}])
    table = build_table(load_results(store), reported=True, baseline="random", n_boot=200)
    path = tmp_path / "board.csv"
    path.write_text(table.to_csv())
    cells = measured_from_csv(path)
    assert set(cells["kind"]) == {"measured", "random"}
    again = build_table(None, measured=cells, n_boot=0, provenance=["Measured: read from board.csv."])
    for stat in ("mean", "std", "count", "ci_low", "ci_high"):
        pd.testing.assert_frame_equal(getattr(again, stat), getattr(table, stat).loc[again.rows, again.columns],
                                      check_exact=False, rtol=1e-5)
    assert not math.isnan(again.ci_low.at[ROW_MSN, ("linear", "embedded", "top1")])
    assert again.legend()[-1] == "Measured: read from board.csv."
    old = tmp_path / "old.csv"
    old.write_text(pd.read_csv(path).drop(columns=["method", "arch"]).to_csv(index=False))
    with pytest.raises(UserError, match="no column method, arch"):
        measured_from_csv(old)


def test_cli_reads_the_committed_demo_leaderboard_when_there_is_no_results_folder(tmp_path, monkeypatch, capsys):
    from pathlib import Path

    (tmp_path / "leaderboards").mkdir()
    committed = Path(__file__).resolve().parents[1] / "leaderboards" / "embedded.csv"
    (tmp_path / "leaderboards" / "embedded.csv").write_bytes(committed.read_bytes())
    monkeypatch.chdir(tmp_path)
    assert main(["leaderboard", "--format", "md", "--bootstrap", "0"]) == 0
    out = capsys.readouterr()
    assert "reading the committed demo leaderboard leaderboards/embedded.csv" in out.err
    assert "msn vit_tiny_convstem_patch16_224 (msn_tiny)" in out.out and "Measured: read from the leaderboard" in out.out
    (tmp_path / "leaderboards" / "embedded.csv").unlink()
    assert main(["leaderboard"]) == 2
    assert "--results results: no such folder" in capsys.readouterr().err


def test_leaderboard_skips_one_bad_file_among_20_and_names_it(tmp_path, capsys):
    """One unusable result file does not hide the other 19: each is a row (a checkpoint of its own, with a
    value only it has), the bad one is named on stderr, and --strict refuses the store naming it."""
    store = tmp_path / "results"
    paths = [write_evaluation(store, protocol="knn", checkpoint={"label": f"ckpt{i:02d}", "sha256": f"s{i}",
                                                                  "method": "msn", "arch": "vit_tiny"},
                              recipe={}, wall_time_s=1.0,
                              records=[{"dataset": "embedded-imagenet", "metric": "top1_k20", "value": 10.0 + i}])
             for i in range(20)]
    bad = paths[7]
    bad.write_bytes(b"\x00\xff\x13 not JSON")
    assert main(["--quiet", "leaderboard", "--results", str(store), "--format", "csv", "--bootstrap", "0"]) == 0
    out, err = capsys.readouterr()
    shown = {i for i in range(20) if f"ckpt{i:02d}" in out}
    assert shown == set(range(20)) - {7}
    warnings = [line for line in err.splitlines() if line.strip()]
    assert len(warnings) == 1 and str(bad) in warnings[0] and "skipping" in warnings[0]
    assert main(["--quiet", "leaderboard", "--results", str(store), "--strict"]) == 2
    _, err = capsys.readouterr()
    assert str(bad) in err and len(err.strip().splitlines()) == 1
