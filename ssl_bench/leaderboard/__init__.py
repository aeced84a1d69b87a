"""Leaderboards: the results store as paper-style comparison tables, figures and pages.

Python API (what ``ssl-bench leaderboard`` and ``make demo`` call)::

    from ssl_bench.leaderboard import build_table, write_leaderboard
    from ssl_bench.results import load_results

    table = build_table(load_results("results"), reported=True, baseline="random init vit_tiny_patch16_224")
    print(table.render("md"))                       # md | csv | tex | html
    table.write("leaderboards/demo", ("md", "csv", "html", "png"))

    write_leaderboard("results", "leaderboards/demo", formats=("md", "csv", "html", "png"),
                      reported=True, baseline="msn")   # -> {fmt: [paths written]}

``build_table(records, *, measured=None, reported=None, baseline=None, targets=None, n_boot=1000,
confidence=0.95, seed=0, digits=1, reported_scope="measured", title=...) -> ComparisonTable``

- rows: one per checkpoint, labelled ``method arch (checkpoint label)``
  (``random init ARCH`` for ``random:`` baselines), then reported rows
  ``Method Arch <epochs>ep (reported in PAPER)``, then ``Improve w.r.t. <baseline>`` rows;
- columns: (protocol, dataset, metric), grouped headers in HTML/LaTeX, flattened to
  ``protocol / dataset / metric`` in Markdown, ordered as the protocols' schemas declare them
  (``ssl_bench.schema``; each protocol class carries its own);
- cells: mean over repeats (seeds, splits, re-runs) with ``± std`` (ddof 1) when n > 1 and a
  bootstrap interval ``[low, high]`` when every repeat stored per-sample predictions
  (``ssl_bench.results`` docstring; algorithm in ``ssl_bench.leaderboard.stats``);
- best value per column in bold (only in columns with >= 2 values), higher or lower as the
  protocol's schema declares the metric (``stats.direction``); statistics without a direction
  and metrics no schema declares are never marked, and get no improvement;
- the Markdown summary shows each protocol's headline metrics (its schema's ``headline``).

``measured_from_csv(path)`` reads the measured cells back from a long-form CSV (``to_csv``;
e.g. the committed demo leaderboard), for ``build_table(None, measured=...)``.

``ComparisonTable``: long form ``cells`` / ``improvements`` plus wide views ``mean``, ``std``,
``count``, ``ci_low``, ``ci_high``, ``best``, ``improvement``; ``render(fmt)``, ``to_markdown()``,
``to_csv()`` (long form, every statistic a number), ``to_latex()`` (pandas Styler),
``to_html(figures=True)`` (standalone page, figures embedded as base64 PNG),
``write(out_stem, formats)``. ``png`` writes ``out_stem.png`` (overview heat map) and
``out_stem.<protocol>.png`` (bar charts); ``plots.protocol_figure`` / ``plots.overview_figure``
return the matplotlib Figures.

Reported numbers: the packaged ``reported.csv`` (``reported`` module), every row in a
protocol's own names. Paper tables: ``papers.paper_table(name, measured)`` lays out a seed
paper's main table with the reported value, ours and the difference (``papers`` module).

The foundation's ``pivot(records)``, ``render(table, fmt)`` and ``write(text, out)`` stay
as they were (``render`` also accepts a ComparisonTable).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..results import load_results
from .basic import FIGURES, FORMATS, is_text, pivot, render, write
from .reported import load_reported
from .stats import DEFAULT_BOOTSTRAP, DEFAULT_CONFIDENCE, DEFAULT_SEED, bootstrap_ci, direction
from .table import ComparisonTable, build_table, check_formats, measured_from_csv

__all__ = ["FORMATS", "FIGURES", "is_text", "ComparisonTable", "build_table", "measured_from_csv", "pivot",
           "render", "write", "write_leaderboard", "load_reported", "bootstrap_ci", "direction",
           "DEFAULT_BOOTSTRAP", "DEFAULT_CONFIDENCE", "DEFAULT_SEED"]


def write_leaderboard(results_dir: Path, out_stem: Path, formats=("md", "csv", "html", "png"), *,
                      reported=None, baseline: str | None = None, targets: list[str] | None = None,
                      **options) -> dict[str, list[Path]]:
    """Load ``results_dir``, build the table, write ``out_stem.<fmt>`` for each format.

    ``options`` go to ``build_table`` (n_boot, confidence, seed, digits, reported_scope, title).
    Returns ``{fmt: [paths]}`` (``png``: overview first, then one per protocol).
    """
    formats = check_formats(formats)
    if not Path(results_dir).is_dir():
        raise UserError(f"results folder {results_dir}: no such folder; run 'ssl-bench eval' first")
    table = build_table(load_results(results_dir), reported=reported, baseline=baseline,
                        targets=targets, **options)
    return table.write(Path(out_stem), formats)
