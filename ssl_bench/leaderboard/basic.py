"""The foundation's basic pivot: checkpoints x (protocol, dataset, metric), cells the mean."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..errors import UserError

FIGURES = "png"
#: Every leaderboard format: text (Markdown, long-form CSV, LaTeX, HTML page) and the figures,
#: which are written as files only.
FORMATS = ("md", "csv", "tex", "html", FIGURES)


def is_text(fmt: str) -> bool:
    return fmt in FORMATS and fmt != FIGURES


def pivot(records: pd.DataFrame) -> pd.DataFrame:
    """Rows: checkpoints; columns: (protocol, dataset, metric); cells: the mean of the
    stored values (several evaluations of the same cell are averaged)."""
    if records.empty:
        return pd.DataFrame()
    table = records.pivot_table(index="checkpoint", columns=["protocol", "dataset", "metric"],
                                values="value", aggfunc="mean")
    return table.sort_index(axis=0).sort_index(axis=1)


def render(table, fmt: str, *, digits: int = 2) -> str:
    """The table as Markdown, CSV, LaTeX or a standalone HTML page.

    ``table`` is a ``pivot`` DataFrame or a ``ComparisonTable`` (then rendered by
    ``ComparisonTable.render``, with its own digits).
    """
    if not isinstance(table, pd.DataFrame):  # a ComparisonTable (whose module imports this one)
        return table.render(fmt)
    if not is_text(fmt):
        raise UserError(f"--format {fmt}: not a text format; valid: {', '.join(f for f in FORMATS if is_text(f))}")
    if table.empty:
        return "(no results)\n"
    if fmt == "csv":
        return table.to_csv()
    if fmt == "md":
        flat = table.copy()
        flat.columns = [" / ".join(map(str, col)) for col in flat.columns]
        return flat.round(digits).to_markdown() + "\n"
    if fmt == "tex":
        return table.round(digits).to_latex(float_format=f"%.{digits}f", multicolumn=True,
                                            multicolumn_format="c", na_rep="--")
    body = table.round(digits).to_html(na_rep="&ndash;", border=0, classes="leaderboard")
    return ("<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>ssl-bench leaderboard</title>"
            "<style>body{font-family:sans-serif} table{border-collapse:collapse}"
            "td,th{padding:4px 8px;border-bottom:1px solid #ddd;text-align:right}</style>"
            f"</head><body><h1>ssl-bench leaderboard</h1>\n{body}\n</body></html>\n")


def write(text: str, out: Path | None) -> None:
    if out is None:
        print(text, end="")
        return
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(text)
