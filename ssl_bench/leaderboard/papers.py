"""A seed paper's main table beside our measurements (``ssl-bench leaderboard --paper NAME``).

The layouts live in ``papers.yaml`` (package data beside this module): each paper's rows and
columns as printed. For every row of the paper the table shows

* the reported value (the packaged ``reported.csv``, rows of that paper), with the paper's std;
* ours: each measured checkpoint of the row's method (``ours`` in the layout), placed under the
  row of its method with the same architecture, else under its method's first row; a cell is the
  mean over repeats with our bootstrap interval, measured on the paper's dataset or, on the
  embedded data, on its generated stand-in (the line says which);
* ours − reported, with our interval shifted alike, only where ours ran on the paper's dataset
  with the paper's architecture: a ViT-Tiny on the embedded data reproduces no ViT-B/16 on
  ImageNet, and the line says so instead of printing a difference;
* for a row no checkpoint measures: "ours: not measured".
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import pandas as pd
import yaml

from ..errors import UserError
from ..schema import dataset_names
from .reported import load_reported

MISSING = "–"
ARROW = "↳"
_VIT = re.compile(r"ViT-(Ti|S|B|L|H)/(\d+)")
_VIT_SIZES = {"Ti": "tiny", "S": "small", "B": "base", "L": "large", "H": "huge"}


def method_key(name: str) -> str:
    """``MoCo-v3`` -> ``mocov3``: how a paper's method name meets our checkpoints' method."""
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def arch_key(name: str) -> str:
    """One spelling for a paper's and timm's architecture names: ``ViT-B/16`` and
    ``vit_base_patch16_224`` -> ``vit_base_patch16``, ``ResNet-50`` -> ``resnet50``."""
    name = str(name).strip()
    vit = _VIT.fullmatch(name)
    if vit:
        return f"vit_{_VIT_SIZES[vit.group(1)]}_patch{vit.group(2)}"
    resnet = re.fullmatch(r"ResNet-(\d+)", name)
    if resnet:
        return f"resnet{resnet.group(1)}"
    return re.sub(r"_\d+$", "", name.split(".")[0].lower())


@dataclass(frozen=True)
class Column:
    """A column of the paper: one (protocol, dataset, metric), or the mean of several (``parts``)."""

    label: str
    parts: tuple[tuple[str, str, str], ...]


@dataclass(frozen=True)
class PaperRow:
    method: str
    architecture: str
    epochs: str
    ours: str

    @property
    def label(self) -> str:
        return " ".join(p for p in (self.method, self.architecture, f"{self.epochs}ep" if self.epochs else "") if p)


@dataclass(frozen=True)
class Layout:
    name: str
    paper: str
    table: str
    caption: str
    columns: tuple[Column, ...]
    rows: tuple[PaperRow, ...]


@lru_cache(maxsize=1)
def layouts() -> dict[str, Layout]:
    """Every paper's layout from the packaged ``papers.yaml``."""
    text = resources.files(__package__).joinpath("papers.yaml").read_text(encoding="utf-8")
    out = {}
    for name, spec in yaml.safe_load(text).items():
        columns = tuple(Column(c["label"], tuple((p["protocol"], p["dataset"], p["metric"])
                                                 for p in c.get("mean_of", [c]))) for c in spec["columns"])
        rows = tuple(PaperRow(r["method"], r["architecture"], str(r.get("epochs", "")),
                              r.get("ours", method_key(r["method"]))) for r in spec["rows"])
        out[name] = Layout(name, spec["paper"], spec["table"], spec["caption"], columns, rows)
    return out


def layout(name: str) -> Layout:
    found = layouts().get(name.lower())
    if found is None:
        raise UserError(f"--paper {name}: unknown paper; valid: {', '.join(layouts())}")
    return found


@dataclass
class PaperTable:
    """The paper's rows, each followed by our lines; ``lines`` is the long form (one line per
    (row, line, column)), ``text`` the display strings (index: line labels, columns: the paper's)."""

    layout: Layout
    lines: pd.DataFrame
    text: pd.DataFrame
    notes: list[str]
    digits: int

    def legend(self) -> list[str]:
        return [f"Reported: {self.layout.paper} paper {self.layout.table}, as printed (± the paper's std "
                "where it gives one).",
                "Ours: mean over repeats (± std when several) [bootstrap interval of the mean, where per-sample "
                "results were stored].",
                "ours − reported: only where ours ran on the paper's dataset with the paper's architecture; "
                "the interval is ours shifted by the reported value."] + self.notes

    def to_markdown(self) -> str:
        text = self.text.map(lambda s: str(s).replace("|", "\\|"))
        text.index = [str(i).replace("|", "\\|") for i in text.index]
        text.index.name = "row"
        table = text.to_markdown(colalign=("left",) + ("right",) * len(text.columns))
        return (f"# {self.layout.paper} {self.layout.table}: {self.layout.caption}\n\n{table}\n\n"
                + "\n".join(f"- {line}" for line in self.legend()) + "\n")

    def to_csv(self) -> str:
        return self.lines.to_csv(index=False, float_format="%.6g")

    def render(self, fmt: str) -> str:
        if fmt == "md":
            return self.to_markdown()
        if fmt == "csv":
            return self.to_csv()
        raise UserError(f"--format {fmt}: a paper table prints md or csv")


def _reported_row(reported: pd.DataFrame, row: PaperRow, part: tuple) -> pd.Series | None:
    hit = reported[(reported["method"] == row.method) & (reported["architecture"] == row.architecture)
                   & (reported["epochs"] == row.epochs) & (reported["protocol"] == part[0])
                   & (reported["dataset"] == part[1]) & (reported["metric"] == part[2])]
    return None if hit.empty else hit.iloc[0]


def _our_cell(measured: pd.DataFrame, model: str, part: tuple) -> pd.Series | None:
    """Our cell for a paper column part: on the real dataset if measured there, else on its stand-in."""
    protocol, fmt, metric = part
    hits = measured[(measured["row"] == model) & (measured["protocol"] == protocol) & (measured["metric"] == metric)]
    for name in dataset_names(fmt):
        hit = hits[hits["dataset"] == name]
        if not hit.empty:
            return hit.iloc[0]
    return None


def _attach(layout: Layout, measured: pd.DataFrame) -> dict[int, list[str]]:
    """Paper row index -> our models (row labels) placed under it: those measured in some column."""
    placed: dict[int, list[str]] = {}
    parts = [part for column in layout.columns for part in column.parts]
    models = measured.drop_duplicates("row")
    for model in models.itertuples(index=False):
        if all(_our_cell(measured, model.row, part) is None for part in parts):
            continue
        candidates = [i for i, r in enumerate(layout.rows) if r.ours == method_key(model.method)]
        same_arch = [i for i in candidates if arch_key(layout.rows[i].architecture) == arch_key(model.arch)]
        if candidates:
            placed.setdefault((same_arch or candidates)[0], []).append(model.row)
    return placed


def _fmt(value: float, digits: int, sign: bool = False) -> str:
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def paper_table(name: str, measured: pd.DataFrame, *, reported: pd.DataFrame | None = None,
                digits: int = 1) -> PaperTable:
    """Paper ``name``'s main table with ``measured`` (leaderboard cells of kinds measured / random)."""
    lay = layout(name)
    reported = load_reported() if reported is None else reported
    reported = reported[reported["paper"] == lay.paper]
    measured = measured[measured["kind"].isin(["measured", "random"])]
    placed = _attach(lay, measured)
    records, text_rows, labels, notes = [], [], [], []
    for index, row in enumerate(lay.rows):
        rep_cells, ours_lines, row_notes = {}, [], {}
        for column in lay.columns:
            found = [_reported_row(reported, row, part) for part in column.parts]
            rep_cells[column.label] = None if any(r is None for r in found) else (
                sum(float(r["value"]) for r in found) / len(found),
                float(found[0]["std"]) if len(found) == 1 else math.nan)
            row_notes.update(dict.fromkeys(n for r in found if r is not None for n in str(r["note"]).split("; ") if n))
        if row_notes:
            notes.append(f"{row.label}: {'; '.join(row_notes)}")
        labels.append(f"{row.label} (reported)")
        text_rows.append({c.label: MISSING if rep_cells[c.label] is None else
                          _fmt(rep_cells[c.label][0], digits) + (f" ± {_fmt(rep_cells[c.label][1], digits)}"
                                                                  if not math.isnan(rep_cells[c.label][1]) else "")
                          for c in lay.columns})
        for column in lay.columns:
            value = rep_cells[column.label]
            records.append(_line(index, row, "reported", "", column, value[0] if value else math.nan,
                                 value[1] if value else math.nan))
        for model in placed.get(index, []):
            ours_lines.append(_ours_lines(index, row, model, lay, measured, rep_cells, digits, records))
        if not ours_lines:
            labels.append(f"{ARROW} ours: not measured")
            text_rows.append({c.label: MISSING for c in lay.columns})
        for label, ours_text, diff_label, diff_text in ours_lines:
            labels += [label, diff_label]
            text_rows += [ours_text, diff_text]
    text = pd.DataFrame(text_rows, index=labels, columns=[c.label for c in lay.columns])
    return PaperTable(lay, pd.DataFrame(records), text, notes, digits)


def _line(index: int, row: PaperRow, line: str, model: str, column: Column, value: float, std: float,
          low: float = math.nan, high: float = math.nan, dataset: str = "", comparable=None) -> dict:
    return {"paper_row": row.label, "row_index": index, "line": line, "model": model, "column": column.label,
            "protocol": "+".join(dict.fromkeys(p[0] for p in column.parts)),
            "dataset": dataset or "+".join(dict.fromkeys(p[1] for p in column.parts)),
            "metric": "+".join(p[2] for p in column.parts), "value": value, "std": std, "ci_low": low,
            "ci_high": high, "comparable": comparable}


def _ours_lines(index: int, row: PaperRow, model: str, lay: Layout, measured: pd.DataFrame, rep_cells: dict,
                digits: int, records: list) -> tuple[str, dict, str, dict]:
    """(ours label, ours texts, difference label, difference texts) of one model under one paper row."""
    ours_text, diff_text, datasets, reasons = {}, {}, set(), set()
    arch = measured.loc[measured["row"] == model, "arch"].iloc[0]
    same_arch = arch_key(arch) == arch_key(row.architecture)
    for column in lay.columns:
        cells = [_our_cell(measured, model, part) for part in column.parts]
        if any(c is None for c in cells):
            ours_text[column.label] = diff_text[column.label] = MISSING
            records.append(_line(index, row, "ours", model, column, math.nan, math.nan))
            continue
        datasets |= {c["dataset"] for c in cells}
        real = all(c["dataset"] == part[1] for c, part in zip(cells, column.parts))
        mean = sum(float(c["mean"]) for c in cells) / len(cells)
        single = cells[0] if len(cells) == 1 else None
        std = float(single["std"]) if single is not None else math.nan
        low = float(single["ci_low"]) if single is not None else math.nan
        high = float(single["ci_high"]) if single is not None else math.nan
        text = _fmt(mean, digits)
        if not math.isnan(std):
            text += f" ± {_fmt(std, digits)}"
        if not math.isnan(low):
            text += f" [{_fmt(low, digits)}, {_fmt(high, digits)}]"
        ours_text[column.label] = text
        comparable = real and same_arch
        records.append(_line(index, row, "ours", model, column, mean, std, low, high,
                             "+".join(dict.fromkeys(c["dataset"] for c in cells)), comparable))
        rep = rep_cells[column.label]
        if rep is None or not comparable:
            diff_text[column.label] = MISSING
            if rep is not None:
                reasons |= ({"other architecture"} if not same_arch else set()) | (
                    {"not the paper's dataset"} if not real else set())
            continue
        delta = mean - rep[0]
        diff = _fmt(delta, digits, sign=True)
        if not math.isnan(low):
            diff += f" [{_fmt(low - rep[0], digits, True)}, {_fmt(high - rep[0], digits, True)}]"
        diff_text[column.label] = diff
        records.append(_line(index, row, "difference", model, column, delta, math.nan, low - rep[0],
                             high - rep[0], comparable=True))
    on = ", ".join(sorted(datasets)) or "nothing of this table"
    diff_label = f"{ARROW} ours − reported" + (f": not comparable ({'; '.join(sorted(reasons))})" if reasons else "")
    return f"{ARROW} ours: {model} on {on}", ours_text, diff_label, diff_text
