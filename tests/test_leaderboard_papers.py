"""Paper tables: each seed paper's main table with the reported value, ours and the difference."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pandas as pd
import pytest

from ssl_bench.cli import main
from ssl_bench.errors import UserError
from ssl_bench.leaderboard import load_reported
from ssl_bench.leaderboard.papers import arch_key, layouts, method_key, paper_table
from ssl_bench.leaderboard.table import CELL_COLUMNS
from ssl_bench.protocols import schema_of

COMMITTED = Path(__file__).resolve().parents[1] / "leaderboards" / "embedded.csv"
# rows x columns of each main table as printed (SiameseIM Table 1, MSCN Table 1, MSN Table 1,
# ConMIM Table 1 at 224 px, MMC Table 1)
SHAPES = {"siameseim": (3, 9), "mscn": (4, 2), "msn": (13, 3), "conmim": (12, 1), "mmc": (8, 6)}


def _cell(row, method, arch, protocol, dataset, metric, mean, low=math.nan, high=math.nan, kind="measured"):
    return {"row": row, "kind": kind, "method": method, "arch": arch, "protocol": protocol, "dataset": dataset,
            "metric": metric, "mean": mean, "std": math.nan, "n": 1, "ci_low": low, "ci_high": high,
            "source": "measured", "note": ""}


def test_layouts_are_the_papers_tables_in_schema_names():
    assert {name: (len(lay.rows), len(lay.columns)) for name, lay in layouts().items()} == SHAPES
    reported = load_reported()
    for name, lay in layouts().items():
        for column in lay.columns:
            for protocol, dataset, metric in column.parts:
                assert schema_of(protocol).metric(metric, dataset) is not None, (name, column.label)
        mine = reported[reported["paper"] == lay.paper]
        for row in lay.rows:  # every printed row has its reported numbers
            assert not mine[(mine["method"] == row.method) & (mine["architecture"] == row.architecture)
                            & (mine["epochs"] == row.epochs)].empty, (name, row.label)


def test_names_meet_across_papers_and_timm():
    assert method_key("MoCo-v3") == "mocov3" and method_key("SiameseIM") == "siameseim"
    assert arch_key("ViT-B/16") == arch_key("vit_base_patch16_224") == "vit_base_patch16"
    assert arch_key("ViT-S/8") == arch_key("vit_small_patch8_224.dino") == "vit_small_patch8"
    assert arch_key("ResNet-50") == arch_key("resnet50") and arch_key("ViT-B/16") != arch_key("vit_tiny_patch16_224")


def test_siameseim_table_reported_values_and_robustness_average():
    table = paper_table("siameseim", pd.DataFrame(columns=CELL_COLUMNS))
    text = table.text
    # Table 1 as printed; its robustness average is the mean of Table 2d's four numbers (footnote)
    assert text.loc["MoCo-v3 ViT-B/16 600ep (reported)"].tolist() == [
        "83.0", "76.7", "63.4", "47.9", "42.7", "47.3", "25.5", "25.8", "43.4"]
    assert text.loc["MAE ViT-B/16 1600ep (reported)", "Robustness avg score"] == "41.8"
    assert text.loc["SiameseIM ViT-B/16 1600ep (reported)", "Robustness avg score"] == "47.9"
    assert (text.loc["↳ ours: not measured"] == "–").all().all()
    assert list(text.index).count("↳ ours: not measured") == 3


def test_ours_and_the_difference_with_our_interval_where_comparable():
    measured = pd.DataFrame([
        # the paper's dataset and architecture: comparable
        _cell("msn vit_small_patch16_224 (mine)", "msn", "vit_small_patch16_224", "lowshot", "imagenet",
              "top1_1shot_mean", 45.0, 44.0, 46.5),
        # the embedded stand-in: shown, never subtracted
        _cell("msn vit_tiny_patch16_224 (tiny)", "msn", "vit_tiny_patch16_224", "lowshot", "embedded-imagenet",
              "top1_1shot_mean", 10.7, 9.3, 12.3),
        _cell("mae vit_base_patch16_224 (mae)", "mae", "vit_base_patch16_224", "lowshot", "imagenet",
              "top1_5shot_mean", 41.0),
        _cell("random init vit_base_patch16_224", "random", "vit_base_patch16_224", "lowshot", "imagenet",
              "top1_1shot_mean", 1.0, kind="random")])
    table = paper_table("msn", measured)
    text, rows = table.text, list(table.text.index)
    mine = rows.index("↳ ours: msn vit_small_patch16_224 (mine) on imagenet")
    assert rows[mine - 1] == "MSN ViT-S/16 800ep (reported)"       # under its own architecture's row
    assert text.iloc[mine]["1 image per class"] == "45.0 [44.0, 46.5]"
    assert rows[mine + 1] == "↳ ours − reported"
    assert text.iloc[mine + 1]["1 image per class"] == "-2.1 [-3.1, -0.6]"  # 47.1 reported
    assert text.iloc[mine + 1]["2 images per class"] == "–"                 # not measured
    tiny = rows.index("↳ ours: msn vit_tiny_patch16_224 (tiny) on embedded-imagenet")
    assert rows[tiny - 3] == "MSN ViT-S/16 800ep (reported)"  # no ViT-Tiny row: its method's first row
    assert text.iloc[tiny]["1 image per class"] == "10.7 [9.3, 12.3]"
    assert rows[tiny + 1] == "↳ ours − reported: not comparable (not the paper's dataset; other architecture)"
    assert (text.iloc[tiny + 1] == "–").all()
    mae = rows.index("↳ ours: mae vit_base_patch16_224 (mae) on imagenet")
    assert rows[mae - 1] == "MAE ViT-B/16 1600ep (reported)" and text.iloc[mae + 1]["5 images per class"] == "+0.5"
    assert not any("random init" in r for r in rows)          # MSN's table has no random-init row
    lines = pd.read_csv(io.StringIO(table.to_csv()))
    diff = lines[(lines.line == "difference") & (lines.model == "msn vit_small_patch16_224 (mine)")].iloc[0]
    assert diff["value"] == pytest.approx(45.0 - 47.1) and diff["ci_high"] == pytest.approx(46.5 - 47.1)
    assert table.notes[6].startswith("MAE ViT-B/16 1600ep: mean and std over 3 splits; 1 image per class: linear")


def test_other_architecture_on_the_papers_dataset_is_not_comparable():
    measured = pd.DataFrame([_cell("conmim vit_small_patch16_224 (s)", "conmim", "vit_small_patch16_224", "finetune",
                                   "imagenet", "top1", 82.0)])
    rows = list(paper_table("conmim", measured).text.index)
    assert rows[rows.index("ConMIM ViT-B/16 300ep (reported)") + 2] == \
        "↳ ours − reported: not comparable (other architecture)"


def test_unknown_paper_and_formats_are_user_errors():
    with pytest.raises(UserError, match="valid: siameseim, mscn, msn, conmim, mmc"):
        paper_table("dino", pd.DataFrame(columns=CELL_COLUMNS))
    with pytest.raises(UserError, match="md or csv"):
        paper_table("msn", pd.DataFrame(columns=CELL_COLUMNS)).render("tex")


@pytest.mark.parametrize("paper", sorted(SHAPES))
def test_cli_prints_each_paper_table_on_the_committed_demo_results(paper, capsys):
    assert main(["leaderboard", "--paper", paper, "--results", str(COMMITTED)]) == 0
    out = capsys.readouterr().out
    lay = layouts()[paper]
    assert out.startswith(f"# {lay.paper} {lay.table}: ")
    body = [line for line in out.splitlines() if line.startswith("| ") and "(reported)" in line]
    assert len(body) == SHAPES[paper][0]
    reported = load_reported()
    mine = reported[reported["paper"] == lay.paper]
    for line, row in zip(body, lay.rows):
        cells = [c.strip() for c in line.strip("|").split("|")][1:]
        for column, cell in zip(lay.columns, cells):
            found = mine[(mine["method"] == row.method) & (mine["architecture"] == row.architecture)
                         & (mine["epochs"] == row.epochs) & (mine["protocol"] == column.parts[0][0])
                         & (mine["dataset"] == column.parts[0][1]) & (mine["metric"] == column.parts[0][2])]
            if len(column.parts) == 1:  # the reported column is filled wherever the paper printed a value
                assert (cell == "–") == found.empty and (found.empty or cell.startswith(f"{found['value'].iloc[0]:.1f}"))
    assert "↳ ours:" in out
