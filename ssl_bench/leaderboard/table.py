"""Paper-style comparison tables: rows are models, columns (protocol, dataset, metric)."""

from __future__ import annotations

import base64
import html
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..atomic import atomic_write, atomic_write_bytes
from ..errors import UserError
from ..protocols import schema_of
from ..results import load_predictions
from ..schema import LOWER, NEUTRAL, dataset_format
from .basic import FIGURES, FORMATS, is_text
from .plots import figure_png, overview_figure, protocol_figure
from .reported import load_reported, reported_label
from .stats import (DEFAULT_BOOTSTRAP, DEFAULT_CONFIDENCE, DEFAULT_SEED, bootstrap_ci, declaration,
                    direction, mean_std)

COLUMN_LEVELS = ["protocol", "dataset", "metric"]
CELL_COLUMNS = ["row", "kind", "method", "arch"] + COLUMN_LEVELS + ["mean", "std", "n", "ci_low", "ci_high",
                                                                    "source", "note"]
KIND_ORDER = {"measured": 0, "random": 1, "reported": 2}
MISSING = "–"
REPORTED_SCOPES = ("measured", "all")


def _natural(text) -> tuple:
    return tuple(int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(text)))


def _column_key(col: tuple) -> tuple:
    """Protocols in their schema's order, then datasets in the schema's format order, then metrics
    in declaration order; what no protocol declares goes last, by name."""
    protocol, dataset, metric = col
    schema = schema_of(protocol)
    if schema is None:
        return math.inf, _natural(protocol), 0, _natural(dataset), 0, _natural(metric)
    fmt = dataset_format(dataset, schema.datasets)
    fmt_rank = schema.datasets.index(fmt) if fmt is not None else len(schema.datasets)
    return schema.order, _natural(protocol), fmt_rank, _natural(dataset), schema.rank(metric), _natural(metric)


def _text(value) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def measured_label(checkpoint, method, arch, features="") -> str:
    """Row label of a measured checkpoint: ``method arch (checkpoint label)``, then ``[features]``
    where the evaluation read other features than the checkpoint's own (``results.feature_variant``).

    ``random:ARCH`` -> ``random init ARCH``; ``timm:``/``foreign:`` and imported checkpoints -> their label;
    the checkpoint label is dropped where it only repeats method and architecture.
    """
    label = _checkpoint_label(_text(checkpoint), _text(method), _text(arch))
    return f"{label} [{features}]" if _text(features) else label


def _checkpoint_label(checkpoint: str, method: str, arch: str) -> str:
    if checkpoint.startswith("random:") or method == "random":
        return f"random init {arch or checkpoint.partition(':')[2]}"
    if method in ("timm", "foreign", "import") and checkpoint:
        return checkpoint
    base = " ".join(part for part in (method, arch) if part)
    if not base:
        return checkpoint or "(unlabelled checkpoint)"
    if checkpoint in ("", base, f"{method}:{arch}"):
        return base
    return f"{base} ({checkpoint})"


def _row_kind(checkpoint, method) -> str:
    return "random" if _text(checkpoint).startswith("random:") or _text(method) == "random" else "measured"


@dataclass
class ComparisonTable:
    """One comparison table; ``cells`` is its long form, one row per (row, column).

    ``cells`` columns: ``row, kind, protocol, dataset, metric, mean, std, n, ci_low,
    ci_high, source, note``; ``improvements``: ``row, target, protocol, dataset, metric,
    delta`` (positive = target better than the baseline). The wide views (``mean``,
    ``std``, ``count``, ``ci_low``, ``ci_high``, ``best``, ``improvement``) share one
    row order and one column order (``columns``).
    """

    cells: pd.DataFrame
    improvements: pd.DataFrame
    rows: list[str]
    columns: list[tuple]
    baseline: str | None = None
    digits: int = 1
    n_boot: int = DEFAULT_BOOTSTRAP
    confidence: float = DEFAULT_CONFIDENCE
    seed: int = DEFAULT_SEED
    title: str = "ssl-bench leaderboard"
    improvement_rows: list[str] = field(default_factory=list)
    provenance: list[str] = field(default_factory=list)

    # ----------------------------------------------------------------- wide views
    def _wide(self, stat: str, frame: pd.DataFrame | None = None, rows=None) -> pd.DataFrame:
        frame = self.cells if frame is None else frame
        rows = self.rows if rows is None else rows
        index = pd.MultiIndex.from_tuples(self.columns, names=COLUMN_LEVELS) if self.columns else None
        if frame.empty:
            return pd.DataFrame(index=pd.Index(rows, name="model"), columns=index, dtype=float)
        wide = frame.pivot_table(index="row", columns=COLUMN_LEVELS, values=stat, aggfunc="first",
                                 dropna=False)
        wide = wide.reindex(index=rows, columns=index).astype(float)
        wide.index.name = "model"
        return wide

    @property
    def mean(self) -> pd.DataFrame:
        return self._wide("mean")

    @property
    def std(self) -> pd.DataFrame:
        return self._wide("std")

    @property
    def count(self) -> pd.DataFrame:
        return self._wide("n")

    @property
    def ci_low(self) -> pd.DataFrame:
        return self._wide("ci_low")

    @property
    def ci_high(self) -> pd.DataFrame:
        return self._wide("ci_high")

    @property
    def improvement(self) -> pd.DataFrame:
        return self._wide("delta", self.improvements, self.improvement_rows)

    @property
    def kinds(self) -> pd.Series:
        """Row label -> ``measured``, ``random`` or ``reported``."""
        kinds = self.cells.drop_duplicates("row").set_index("row")["kind"] if not self.cells.empty \
            else pd.Series(dtype=str)
        return kinds.reindex(self.rows)

    @property
    def best(self) -> pd.DataFrame:
        """True where a cell holds the column's best mean (after rounding to ``digits``; ties
        all marked); only in columns with at least two values and a direction in the schema."""
        mean = self.mean.round(self.digits)
        best = pd.DataFrame(False, index=mean.index, columns=mean.columns)
        for col in mean.columns:
            values, way = mean[col].dropna(), direction(col[0], col[2])
            if len(values) < 2 or way == NEUTRAL:
                continue
            best[col] = mean[col] == (values.min() if way == LOWER else values.max())
        return best

    def undirected(self) -> list[tuple]:
        """Columns without a direction: statistics the schema declares so, and undeclared metrics."""
        return [col for col in self.columns if direction(col[0], col[2]) == NEUTRAL]

    # ---------------------------------------------------------------- cell text
    def cell_text(self) -> pd.DataFrame:
        """Display strings: value rows then improvement rows; ``–`` where nothing."""
        d = self.digits
        mean, std, low, high = self.mean, self.std, self.ci_low, self.ci_high
        text = pd.DataFrame(MISSING, index=mean.index, columns=mean.columns, dtype=object)
        for row in mean.index:
            for col in mean.columns:
                m = mean.at[row, col]
                if np.isnan(m):
                    continue
                cell = f"{m:.{d}f}"
                if not np.isnan(std.at[row, col]):
                    cell += f" ± {std.at[row, col]:.{d}f}"
                if not np.isnan(low.at[row, col]):
                    cell += f" [{low.at[row, col]:.{d}f}, {high.at[row, col]:.{d}f}]"
                text.at[row, col] = cell
        if self.improvement_rows:
            delta = self.improvement
            extra = delta.map(lambda v: MISSING if np.isnan(v) else f"{v:+.{d}f}").astype(object)
            text = pd.concat([text, extra])
        text.index.name = "model"
        return text

    def _row_kind_of(self, label: str) -> str:
        if label in self.improvement_rows:
            return "improvement"
        if "_kind_cache" not in self.__dict__:
            self.__dict__["_kind_cache"] = self.kinds.to_dict()
        return str(self.__dict__["_kind_cache"].get(label, "measured"))

    def legend(self) -> list[str]:
        pct = f"{100 * self.confidence:g}%"
        cells = ("Cells: mean over repeats (seeds / splits / re-runs); `± std` = sample standard "
                 "deviation when there are several")
        if self.cells["ci_low"].notna().any():
            cells += (f"; `[low, high]` = {pct} percentile bootstrap interval of the mean from the "
                      f"stored per-sample predictions (B = {self.n_boot} resamples, seed {self.seed})")
        lines = [cells + ".", "Bold: best value per column, higher or lower as each protocol declares the "
                 "metric; `–`: not evaluated."]
        undeclared = [col for col in self.undirected() if declaration(col[0], col[2]) is None]
        if undeclared:
            lines.append(f"Not declared by any protocol's schema (no best value, no improvement): "
                         f"{', '.join(' / '.join(col) for col in undeclared)}.")
        if (self.cells["kind"] == "reported").any():
            lines.append("Rows marked (reported in PAPER) are published numbers (ssl-bench's reported.csv: paper "
                         "and table in its `source` column), not measured here; their `±` is the paper's.")
        if self.baseline is not None:
            lines.append(f"Improve w.r.t. {_short(self.baseline)}: difference of the means to the row "
                         f"{self.baseline} (positive = better; none for statistics without a direction).")
        return lines + self.provenance

    # ---------------------------------------------------------------- renderers
    def render(self, fmt: str) -> str:
        if not is_text(fmt):
            raise UserError(f"--format {fmt}: unknown text format; valid: {', '.join(f for f in FORMATS if is_text(f))} "
                            f"({FIGURES} is written as files: write_leaderboard or --out)")
        return {"md": self.to_markdown, "csv": self.to_csv, "tex": self.to_latex,
                "html": self.to_html}[fmt]()

    def headline_columns(self) -> list[tuple]:
        """The summary's columns: the headline metrics of each protocol's schema (else its first column)."""
        columns = [c for c in self.columns if schema_of(c[0]) is not None and c[2] in schema_of(c[0]).headline]
        covered = {c[0] for c in columns}
        columns += [next(c for c in self.columns if c[0] == p) for p in self.protocols() if p not in covered]
        return sorted(columns, key=_column_key)

    def to_markdown(self) -> str:
        """A summary table of the headline metrics, then one table per protocol, then the legend."""
        if not self.rows:
            return "(no results)\n"
        text, best = self.cell_text(), self.best

        def table(columns: list[tuple], name) -> str:
            part = text[columns].copy()
            for row in best.index:
                for col in columns:
                    if best.at[row, col]:
                        part.at[row, col] = f"**{part.at[row, col]}**"
            part.columns = [name(col) for col in columns]
            part.index = [f"*{r}*" if r in self.improvement_rows else r for r in part.index]
            part = part.map(lambda s: str(s).replace("|", "\\|"))
            part.index = [str(r).replace("|", "\\|") for r in part.index]
            part.index.name = "model"
            return part.to_markdown(colalign=("left",) + ("right",) * len(columns))

        parts = [f"# {self.title}", "", "## Summary", "",
                 table(self.headline_columns(), lambda c: " / ".join(map(str, c)))]
        for protocol in self.protocols():
            columns = [c for c in self.columns if c[0] == protocol]
            parts += ["", f"## {protocol}", "", table(columns, lambda c: f"{c[1]} / {c[2]}")]
        return "\n".join(parts) + "\n\n" + "\n".join(self.legend()) + "\n"

    def to_csv(self) -> str:
        """Long form: one line per cell and per improvement, every statistic as a number."""
        best = self.best
        cells = self.cells.copy()
        cells["best"] = [bool(best.at[r, (p, d, m)]) if (p, d, m) in best.columns else False
                         for r, p, d, m in zip(cells["row"], cells["protocol"], cells["dataset"],
                                               cells["metric"])]
        imp = self.improvements.rename(columns={"delta": "mean"}).assign(kind="improvement")
        out = pd.concat([cells, imp], ignore_index=True)
        columns = CELL_COLUMNS[:-2] + ["best", "target", "source", "note"]
        for column in columns:
            if column not in out.columns:
                out[column] = None
        return out[columns].to_csv(index=False, float_format="%.6g")

    def _css(self) -> pd.DataFrame:
        text, best = self.cell_text(), self.best
        css = pd.DataFrame("", index=text.index, columns=text.columns, dtype=object)
        for row in text.index:
            kind = self._row_kind_of(row)
            for col in text.columns:
                style = {"reported": "color:#555;font-style:italic;background-color:#f6f6f6;",
                         "random": "color:#777;"}.get(kind, "")
                if kind == "improvement":
                    value = str(text.at[row, col])
                    style = ("color:#1a7f37;" if value.startswith("+") and value.strip("+0.") else
                             "color:#b42318;" if value.startswith("-") else "color:#555;")
                elif row in best.index and best.at[row, col]:
                    style += "font-weight:bold;background-color:#dcefdc;"
                css.at[row, col] = style
        return css

    def to_html(self, *, figures: bool = True) -> str:
        """A standalone page: the table (grouped headers), legend, figures (embedded PNG)."""
        parts = [f"<h1>{html.escape(self.title)}</h1>"]
        if not self.rows:
            parts.append("<p>(no results)</p>")
        else:
            text = self.cell_text()
            styler = (text.style.format(escape="html").format_index(escape="html", axis=0)
                      .format_index(escape="html", axis=1).apply(lambda _: self._css(), axis=None))
            styler = styler.apply_index(
                lambda labels: [{"reported": "font-style:italic;color:#555;",
                                 "random": "color:#777;",
                                 "improvement": "font-style:italic;color:#1f4e79;"}.get(
                                     self._row_kind_of(v), "") for v in labels], axis=0)
            styler = styler.set_table_attributes('class="leaderboard"')
            parts.append(f'<div class="scroll">{styler.to_html()}</div>')
            parts.append("<ul class='legend'>" + "".join(
                f"<li>{html.escape(line).replace('`', '')}</li>" for line in self.legend()) + "</ul>")
            parts.append(self._sources_html())
            if figures:
                parts.append(self._figures_html())
        style = ("body{font-family:'DejaVu Sans',Arial,sans-serif;margin:24px;color:#222}"
                 "h1{font-size:22px}h2{font-size:18px;margin-top:28px}"
                 ".scroll{overflow-x:auto}"
                 "table.leaderboard{border-collapse:collapse;font-size:13px}"
                 "table.leaderboard th,table.leaderboard td{padding:4px 8px;border:1px solid #ddd;"
                 "text-align:right;white-space:nowrap}"
                 "table.leaderboard thead th{background:#eef2f7;text-align:center}"
                 "table.leaderboard tbody th{text-align:left}"
                 ".legend{font-size:12px;color:#444}img{max-width:100%;border:1px solid #eee}"
                 "table.sources{font-size:12px;border-collapse:collapse}"
                 "table.sources td{padding:2px 8px;border-bottom:1px solid #eee}")
        return ("<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
                f"<title>{html.escape(self.title)}</title><style>{style}</style></head><body>\n"
                + "\n".join(parts) + "\n</body></html>\n")

    def _sources_html(self) -> str:
        reported = self.cells[self.cells["kind"] == "reported"]
        if reported.empty:
            return ""
        rows = reported.drop_duplicates(["row", "source", "note"])
        lines = "".join(f"<tr><td>{html.escape(r.row)}</td><td>{html.escape(_text(r.source))}</td>"
                        f"<td>{html.escape(_text(r.note))}</td></tr>"
                        for r in rows.itertuples())
        return ("<details><summary>Sources of the reported numbers</summary>"
                f"<table class='sources'>{lines}</table></details>")

    def figure_pngs(self) -> dict[str, bytes]:
        """PNG bytes: ``overview`` then one per protocol (rendered once, then cached)."""
        if "_png_cache" not in self.__dict__:
            pngs = {"overview": figure_png(overview_figure(self))}
            for protocol in self.protocols():
                pngs[protocol] = figure_png(protocol_figure(self, protocol))
            self.__dict__["_png_cache"] = pngs
        return self.__dict__["_png_cache"]

    def _figures_html(self) -> str:
        out = []
        for name, png in self.figure_pngs().items():
            out += [f"<h2>{html.escape(name if name != 'overview' else 'Overview')}</h2>", _img(png, name)]
        return "\n".join(out)

    def to_latex(self) -> str:
        if not self.rows:
            return "% (no results)\n"
        text = self.cell_text()
        css = self._css().map(lambda s: "font-weight: bold;" if "bold" in s else "")
        styler = (text.style.apply(lambda _: css, axis=None)
                  .format(escape="latex").format_index(escape="latex", axis=0)
                  .format_index(escape="latex", axis=1))
        latex = styler.to_latex(hrules=True, multicol_align="c", convert_css=True,
                                column_format="l" + "r" * len(text.columns))
        return latex.replace("±", r"$\pm$").replace(MISSING, "--")

    # ---------------------------------------------------------------- files
    def protocols(self) -> list[str]:
        return list(dict.fromkeys(col[0] for col in self.columns))

    def write(self, out_stem: Path, formats=("md", "csv", "html", "png")) -> dict[str, list[Path]]:
        """Write ``out_stem.<fmt>`` per format; ``png`` also ``out_stem.<protocol>.png``."""
        formats = check_formats(formats)
        out_stem = Path(out_stem)
        written: dict[str, list[Path]] = {}
        for fmt in formats:
            if fmt == FIGURES:
                paths = []
                for name, png in self.figure_pngs().items():
                    suffix = ".png" if name == "overview" else \
                        "." + re.sub(r"[^A-Za-z0-9_.-]", "_", name) + ".png"
                    paths.append(atomic_write_bytes(_with_suffix(out_stem, suffix), png))
                written[fmt] = paths
            else:
                text = self.render(fmt)
                path = _with_suffix(out_stem, f".{fmt}")
                atomic_write(path, lambda tmp, text=text: tmp.write_text(text))
                written[fmt] = [path]
        return written


def _with_suffix(stem: Path, suffix: str) -> Path:
    return stem.parent / (stem.name + suffix)


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def check_formats(formats) -> list[str]:
    formats = [formats] if isinstance(formats, str) else list(formats)
    for fmt in formats:
        if fmt not in FORMATS:
            raise UserError(f"format {fmt!r}: unknown; valid: {', '.join(FORMATS)}")
    return formats


# -------------------------------------------------------------------- building
def _measured_cells(records: pd.DataFrame, *, n_boot: int, confidence: float, seed: int) -> pd.DataFrame:
    records = records.copy()
    for column in ("method", "arch", "checkpoint_sha256", "predictions", "predictions_key",
                   "predictions_scale", "file", "features"):
        if column not in records.columns:
            records[column] = None
    records["row"] = [measured_label(c, m, a, f) for c, m, a, f in
                      zip(records["checkpoint"], records["method"], records["arch"], records["features"])]
    records["kind"] = [_row_kind(c, m) for c, m in zip(records["checkpoint"], records["method"])]
    # one label, several different checkpoints (same name, other weights): tell them apart
    hashes = records.groupby("row")["checkpoint_sha256"].nunique()
    for row in hashes[hashes > 1].index:
        mask = records["row"] == row
        records.loc[mask, "row"] = [f"{row} #{_text(h)[:8]}" for h in records.loc[mask, "checkpoint_sha256"]]
    if "file" in records.columns:
        records = records.sort_values("file", kind="stable", na_position="last")
    cache: dict[str, dict] = {}
    out = []
    for (row, protocol, dataset, metric), group in records.groupby(["row"] + COLUMN_LEVELS, sort=False):
        mean, std, n = mean_std(group["value"].astype(float))
        low = high = float("nan")
        preds = group["predictions"]
        if n_boot > 0 and preds.notna().all() and preds.map(lambda p: bool(_text(p))).all():
            samples = []
            for path, key in zip(preds, group["predictions_key"]):
                if path not in cache:
                    cache[path] = load_predictions(path)
                samples.append(cache[path][key])
            low, high = bootstrap_ci(samples, scales=group["predictions_scale"].astype(float).tolist(),
                                     n_boot=n_boot, confidence=confidence, seed=seed)
        out.append({"row": row, "kind": group["kind"].iloc[0], "method": group["method"].iloc[0],
                    "arch": group["arch"].iloc[0], "protocol": protocol, "dataset": dataset,
                    "metric": metric, "mean": mean, "std": std, "n": n, "ci_low": low, "ci_high": high,
                    "source": "measured", "note": ""})
    return pd.DataFrame(out, columns=CELL_COLUMNS)


def measured_from_csv(path: Path) -> pd.DataFrame:
    """The measured and random-init cells of a leaderboard's long form (``ComparisonTable.to_csv``),
    statistics as computed when it was written (the committed demo leaderboard is one)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--results {path}: no such file; give a results folder or a leaderboard CSV "
                        "(ssl-bench leaderboard --format csv)")
    table = pd.read_csv(path, keep_default_na=False, na_values={c: [""] for c in ("mean", "std", "n", "ci_low",
                                                                                  "ci_high")})
    missing = [c for c in CELL_COLUMNS if c not in table.columns]
    if missing:
        raise UserError(f"{path}: not a leaderboard long form of this version (no column {', '.join(missing)}); "
                        "write it again with ssl-bench leaderboard --format csv")
    cells = table[table["kind"].isin(["measured", "random"])][CELL_COLUMNS].reset_index(drop=True)
    for column in ("dataset", "metric"):
        cells[column] = cells[column].astype(str)
    return cells


def _reported_cells(reported: pd.DataFrame) -> pd.DataFrame:
    out = []
    for r in reported.itertuples(index=False):
        out.append({"row": reported_label(r.paper, r.method, r.architecture, r.epochs), "kind": "reported",
                    "method": r.method, "arch": _text(r.architecture),
                    "protocol": r.protocol, "dataset": r.dataset, "metric": r.metric,
                    "mean": float(r.value), "std": float(r.std) if pd.notna(r.std) else float("nan"),
                    "n": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"),
                    "source": r.source, "note": _text(r.note)})
    cells = pd.DataFrame(out, columns=CELL_COLUMNS)
    dup = cells.duplicated(["row"] + COLUMN_LEVELS, keep=False)
    if dup.any():
        first = cells[dup].iloc[0]
        raise UserError(f"reported numbers: {first['row']} has several values for "
                        f"{first['protocol']} / {first['dataset']} / {first['metric']}; keep one "
                        "row per (paper, method, architecture, epochs, protocol, dataset, metric)")
    return cells


def _short(row: str) -> str:
    """A row label without its trailing ``(checkpoint label)``."""
    return re.sub(r" \((?!reported in )[^()]*\)$", "", row)


def resolve_row(name: str, table_rows: list[str], cells: pd.DataFrame, *, what: str = "--baseline") -> str:
    """A row label from a user's name: the exact row label, a checkpoint label or a method."""
    if name in table_rows:
        return name
    lowered = name.lower()
    matches = [row for row in table_rows
               if row.lower().startswith(lowered + " ") or f"({lowered})" in row.lower()
               or (row.lower().startswith(lowered + " (reported in ") and row.endswith(")"))]
    measured = [row for row in matches if " (reported in " not in row]
    matches = measured or matches
    if len(matches) == 1:
        return matches[0]
    valid = "; ".join(table_rows) or "(no rows)"
    if not matches:
        raise UserError(f"{what} {name!r}: no such row; valid: {valid} "
                        "(a row label, a checkpoint label or a method name)")
    raise UserError(f"{what} {name!r} matches several rows: {'; '.join(matches)}; give one full row label")


def build_table(records: pd.DataFrame | None, *, measured: pd.DataFrame | None = None, reported=None,
                baseline: str | None = None, targets: list[str] | None = None, n_boot: int = DEFAULT_BOOTSTRAP,
                confidence: float = DEFAULT_CONFIDENCE, seed: int = DEFAULT_SEED, digits: int = 1,
                reported_scope: str = "measured", title: str = "ssl-bench leaderboard",
                provenance: list[str] = ()) -> ComparisonTable:
    """The comparison table of ``records`` (a ``load_results`` DataFrame), or of ``measured``
    cells computed before (``measured_from_csv``; then ``provenance`` says where they come from).

    reported: None/False (none), True (the packaged reported.csv), a CSV path or a
        DataFrame in that CSV's columns; rows labelled ``... (reported in PAPER)``.
    reported_scope: ``measured`` keeps reported rows of the protocols that have measured
        results (all if there are none); ``all`` keeps every reported row.
    baseline: row to compare with (row label, checkpoint label or method name); adds one
        "Improve w.r.t. <baseline>" row per target (default: every measured row but it).
    n_boot: bootstrap resamples (0: no intervals); confidence, seed: see ``stats``.
    """
    if reported_scope not in REPORTED_SCOPES:
        raise UserError(f"reported_scope {reported_scope!r}: unknown; valid: {', '.join(REPORTED_SCOPES)}")
    if not 0 < confidence < 1:
        raise UserError(f"--confidence {confidence}: must lie strictly between 0 and 1, e.g. 0.95")
    if n_boot < 0:
        raise UserError(f"--bootstrap {n_boot}: must be >= 0 (0 disables intervals)")
    superseded = 0
    if records is not None and not records.empty:
        records, superseded = latest_recipe_only(records)
        measured = _measured_cells(records, n_boot=n_boot, confidence=confidence, seed=seed)
    measured = pd.DataFrame(columns=CELL_COLUMNS) if measured is None else measured
    parts = [measured] if not measured.empty else []
    if reported is not None and reported is not False:
        table = reported if isinstance(reported, pd.DataFrame) else \
            load_reported(None if reported is True else reported)
        if reported_scope == "measured" and not measured.empty:
            table = table[table["protocol"].isin(set(measured["protocol"]))]
        rep = _reported_cells(table)
        if not rep.empty:
            parts.append(rep)
    cells = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=CELL_COLUMNS)
    if not cells.empty:
        order = cells.drop_duplicates("row")
        rows = sorted(order["row"], key=lambda r: (KIND_ORDER[order.set_index("row").at[r, "kind"]],
                                                   _natural(r)))
        columns = sorted(set(zip(cells["protocol"], cells["dataset"], cells["metric"])), key=_column_key)
    else:
        rows, columns = [], []
    improvements = pd.DataFrame(columns=["row", "target"] + COLUMN_LEVELS + ["delta"])
    improvement_rows: list[str] = []
    base = None
    if baseline is not None:
        base = resolve_row(baseline, rows, cells)
        kinds = cells.drop_duplicates("row").set_index("row")["kind"]
        if targets:
            target_rows = [resolve_row(t, rows, cells, what="--target") for t in targets]
        else:
            target_rows = [r for r in rows if r != base and kinds[r] != "reported"]
        target_rows = [t for t in dict.fromkeys(target_rows) if t != base]
        means = cells.set_index(["row"] + COLUMN_LEVELS)["mean"]
        records_out = []
        for target in target_rows:
            label = (f"{_short(target)}: improve w.r.t. {_short(base)}" if len(target_rows) > 1
                     else f"Improve w.r.t. {_short(base)}")
            improvement_rows.append(label)
            for col in columns:
                t, b, way = means.get((target, *col)), means.get((base, *col)), direction(col[0], col[2])
                if t is None or b is None or way == NEUTRAL:
                    continue
                delta = (b - t) if way == LOWER else (t - b)
                records_out.append({"row": label, "target": target, "protocol": col[0],
                                    "dataset": col[1], "metric": col[2], "delta": float(delta)})
        if records_out:
            improvements = pd.DataFrame(records_out)
    return ComparisonTable(cells=cells, improvements=improvements, rows=rows, columns=columns,
                           baseline=base, digits=digits, n_boot=n_boot, confidence=confidence, seed=seed,
                           title=title, improvement_rows=improvement_rows,
                           provenance=provenance_lines(records, superseded) + list(provenance))


def _listed(values) -> str:
    values = sorted({str(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))})
    return ", ".join(values) if values else "unknown"


def latest_recipe_only(records: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Per (checkpoint, protocol, features read), the records of the most recent evaluation's
    recipe (seeds aside): repeats of that experiment are averaged, while evaluations under an
    older, different recipe are left out rather than mixed in. Evaluations that read other
    features than the checkpoint's own (``features``) are rows of their own, not older recipes.
    Returns (kept records, evaluations left out)."""
    if "recipe_key" not in records.columns:
        return records, 0
    checkpoint = records["checkpoint_sha256"].fillna(records["checkpoint"]).astype(str)
    features = (records["features"] if "features" in records.columns else pd.Series("", index=records.index))
    features = features.fillna("").astype(str)
    keys = records["recipe_key"].fillna("")
    evaluations = (records.assign(_ckpt=checkpoint, _features=features, _key=keys)
                   .drop_duplicates(["file", "_ckpt", "protocol", "_features"]))
    latest = (evaluations.sort_values(["timestamp", "file"], na_position="first")
              .groupby(["_ckpt", "protocol", "_features"])["_key"].last())
    wanted = pd.Series(list(zip(checkpoint, records["protocol"], features)), index=records.index).map(latest)
    keep = keys.eq(wanted)
    left_out = records.loc[~keep, "file"].nunique()
    return records[keep], int(left_out)


def provenance_lines(records: pd.DataFrame | None, superseded: int = 0) -> list[str]:
    """What produced the measured rows: dates, code commits, torch, machine (from the results store)."""
    if records is None or records.empty:
        return []
    evaluations = records.drop_duplicates("file")
    days = sorted(str(t)[:10] for t in evaluations["timestamp"].dropna())
    when = (days[0] if days[0] == days[-1] else f"{days[0]} to {days[-1]}") if days else "unknown dates"
    commits = _listed(str(c)[:10] for c in evaluations["code_commit"].dropna())
    dirty = " (some with uncommitted changes)" if evaluations["code_dirty"].eq(True).any() else ""
    imported = (evaluations.dropna(subset=["imported"]).drop_duplicates(["checkpoint", "imported"])
                if "imported" in evaluations else evaluations.iloc[:0])
    return [f"Measured: {len(evaluations)} evaluations on {when} (UTC), code commit {commits}{dirty}, "
            f"torch {_listed(evaluations['torch'])}, machine: {_listed(evaluations['machine'])}."] + (
        [f"Left out: {superseded} older evaluations whose protocol recipe differs from the latest one "
         "for the same checkpoint and protocol."] if superseded else []) + [
        f"Imported: {row.checkpoint} from {row.imported}." for row in imported.itertuples()]
