"""Published numbers from the papers, shown beside measured rows and marked "reported".

``leaderboards/reported.csv`` columns: ``method, architecture, epochs, protocol, dataset,
metric, value, std, source, note`` (``std``: the paper's spread over splits/seeds where it
gives one; ``note``: what a reader must know to compare, e.g. a variant of the protocol).
Names are ours (protocol / dataset / metric as our protocols write them); each row's
``source`` names the paper table it was taken from.

``convert_reference`` reads a results table in another naming (columns ``method, arch,
pretrain_epochs, protocol, dataset, metric, value, source``) into ours; its names that differ
from ours are mapped by ``REFERENCE_NAMES`` (``*`` keeps the metric):

| reference protocol | reference metric | our protocol | our metric |
| --- | --- | --- | --- |
| knn | top1 | knn | top1_k20 (DINO's k = 20) |
| lowshot_logreg_1pct | top1 | lowshot | top1_1pct |
| lowshot_logreg_1img / _2img / _5img | top1 | lowshot | top1_1img / top1_2img / top1_5img |
| finetune_1pct | top1 | finetune | top1_1pct |
| segmentation_upernet | mIoU | segmentation | mIoU |
| detection_c4 | * | detection | * (note: Mask R-CNN R50-C4) |
| prompt_seg_opt | mIoU | prompt_seg | mIoU_opt |
| davis | JF_mean | davis | J&F_mean |
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..errors import UserError

DEFAULT_REPORTED = Path(__file__).resolve().parents[2] / "leaderboards" / "reported.csv"
REPORTED_COLUMNS = ["method", "architecture", "epochs", "protocol", "dataset", "metric", "value",
                    "std", "source", "note"]
REQUIRED_COLUMNS = ["method", "architecture", "epochs", "protocol", "dataset", "metric", "value",
                    "source"]

# (reference protocol, reference metric) -> (our protocol, our metric); metric None keeps it
REFERENCE_NAMES: dict[tuple[str, str | None], tuple[str, str | None]] = {
    ("knn", "top1"): ("knn", "top1_k20"),
    ("lowshot_logreg_1pct", "top1"): ("lowshot", "top1_1pct"),
    ("lowshot_logreg_1img", "top1"): ("lowshot", "top1_1img"),
    ("lowshot_logreg_2img", "top1"): ("lowshot", "top1_2img"),
    ("lowshot_logreg_5img", "top1"): ("lowshot", "top1_5img"),
    ("finetune_1pct", "top1"): ("finetune", "top1_1pct"),
    ("segmentation_upernet", "mIoU"): ("segmentation", "mIoU"),
    ("detection_c4", None): ("detection", None),
    ("prompt_seg_opt", "mIoU"): ("prompt_seg", "mIoU_opt"),
    ("davis", "JF_mean"): ("davis", "J&F_mean"),
}


def map_reference_name(protocol: str, metric: str) -> tuple[str, str]:
    """Our (protocol, metric) for a (protocol, metric) of the other naming."""
    if (protocol, metric) in REFERENCE_NAMES:
        return REFERENCE_NAMES[(protocol, metric)]
    if (protocol, None) in REFERENCE_NAMES:
        return REFERENCE_NAMES[(protocol, None)][0], metric
    return protocol, metric


def convert_reference(path: Path) -> pd.DataFrame:
    """A results table in the other naming (method, arch, pretrain_epochs, ...) in our column names."""
    ref = pd.read_csv(path, dtype={"pretrain_epochs": "string"}, keep_default_na=False)
    names = [map_reference_name(p, m) for p, m in zip(ref["protocol"], ref["metric"])]
    return pd.DataFrame({"method": ref["method"], "architecture": ref["arch"],
                         "epochs": ref["pretrain_epochs"],
                         "protocol": [p for p, _ in names], "dataset": ref["dataset"],
                         "metric": [m for _, m in names], "value": ref["value"].astype(float),
                         "std": float("nan"), "source": ref["source"], "note": ""})


def load_reported(path: Path | str | None = None) -> pd.DataFrame:
    """The reported-numbers CSV (default ``leaderboards/reported.csv``), checked."""
    path = DEFAULT_REPORTED if path is None else Path(path)
    if not path.is_file():
        raise UserError(f"--reported {path}: no such file; give a CSV with columns "
                        f"{', '.join(REQUIRED_COLUMNS)} (the repository ships leaderboards/reported.csv)")
    table = pd.read_csv(path, dtype={"epochs": "string"}, keep_default_na=False,
                        na_values={"value": [""], "std": [""]})
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise UserError(f"{path}: missing columns {', '.join(missing)}; "
                        f"expected {', '.join(REQUIRED_COLUMNS)} (optional: std, note)")
    for column in ("std", "note"):
        if column not in table.columns:
            table[column] = float("nan") if column == "std" else ""
    table["value"] = pd.to_numeric(table["value"], errors="raise")
    table["std"] = pd.to_numeric(table["std"], errors="coerce")
    return table[REPORTED_COLUMNS]


def reported_label(method: str, architecture: str, epochs) -> str:
    """Row label, e.g. ``SiameseIM ViT-B/16 1600ep (reported)``."""
    epochs = "" if epochs is None or pd.isna(epochs) else str(epochs).strip()
    parts = [str(method), str(architecture or "").strip()]
    if epochs:
        parts.append(f"{epochs}ep")
    return " ".join(p for p in parts if p) + " (reported)"
