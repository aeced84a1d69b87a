"""Published numbers, shown beside measured rows and marked "reported".

``reported.csv`` ships with the package (beside this module). Columns: ``paper, method,
architecture, epochs, protocol, dataset, metric, value, std, source, note``:

* ``paper``: whose table the number is from (one of the seed papers, or ``DINO`` for its
  repository's README); a baseline two papers report is two rows, each paper's own number;
* ``source``: the table (or README) it is printed in;
* ``std``: the paper's spread over splits / seeds where it gives one;
* ``note``: what a reader must know to compare (a protocol variant, another pretraining set).

Names are the ones the protocols write: every row's (protocol, dataset, metric) is declared by
that protocol's schema (``ssl_bench.schema``); ``load_reported`` refuses a file with a row no
schema accepts, since such a row could never stand beside a measured value.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pandas as pd

from ..errors import UserError
from ..protocols import schema_of

PACKAGED = "reported.csv"
REPORTED_COLUMNS = ["paper", "method", "architecture", "epochs", "protocol", "dataset", "metric", "value",
                    "std", "source", "note"]
REQUIRED_COLUMNS = [c for c in REPORTED_COLUMNS if c not in ("std", "note")]


def _read(handle, where: str) -> pd.DataFrame:
    table = pd.read_csv(handle, dtype={"epochs": "string", "architecture": "string"}, keep_default_na=False,
                        na_values={"value": [""], "std": [""]})
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise UserError(f"{where}: missing columns {', '.join(missing)}; "
                        f"expected {', '.join(REQUIRED_COLUMNS)} (optional: std, note)")
    for column in ("std", "note"):
        if column not in table.columns:
            table[column] = float("nan") if column == "std" else ""
    table["value"] = pd.to_numeric(table["value"], errors="raise")
    table["std"] = pd.to_numeric(table["std"], errors="coerce")
    return table[REPORTED_COLUMNS]


def unmatched(table: pd.DataFrame) -> pd.DataFrame:
    """The rows whose (protocol, dataset, metric) no protocol's schema declares."""
    def accepted(row) -> bool:
        schema = schema_of(row.protocol)
        return schema is not None and schema.metric(row.metric, row.dataset) is not None

    return table[[not accepted(row) for row in table.itertuples(index=False)]]


def read_reported(path: Path | str | None = None) -> pd.DataFrame:
    """The packaged ``reported.csv`` (None) or a CSV in its columns, as read (``load_reported`` checks it)."""
    if path is None:
        with resources.files(__package__).joinpath(PACKAGED).open(encoding="utf-8") as handle:
            return _read(handle, f"{__package__}/{PACKAGED}")
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--reported {path}: no such file; give a CSV with columns {', '.join(REQUIRED_COLUMNS)} "
                        f"(ssl-bench ships its own: omit the file name)")
    return _read(path, str(path))


def load_reported(path: Path | str | None = None) -> pd.DataFrame:
    """``read_reported``, refusing a row no protocol's schema accepts."""
    table = read_reported(path)
    where = f"{__package__}/{PACKAGED}" if path is None else str(path)
    bad = unmatched(table)
    if not bad.empty:
        first = bad.iloc[0]
        raise UserError(f"{where}: {len(bad)} rows name a protocol / dataset / metric no protocol writes, e.g. "
                        f"{first['protocol']} / {first['dataset']} / {first['metric']} ({first['method']}); "
                        "use the names in the protocol's schema (ssl-bench protocols write them in results)")
    return table


def reported_label(paper: str, method: str, architecture, epochs) -> str:
    """Row label, e.g. ``SiameseIM ViT-B/16 1600ep (reported in SiameseIM)``."""
    parts = [str(method)]
    for value, suffix in ((architecture, ""), (epochs, "ep")):
        text = "" if value is None or pd.isna(value) else str(value).strip()
        if text:
            parts.append(text + suffix)
    return " ".join(parts) + f" (reported in {paper})"
