"""Parts every classification protocol shares: opening the data, result records, accuracy."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data import ImageFolderDataset, dataset_name, resolve
from ..errors import UserError


@dataclass
class ClassificationData:
    """Train and val splits of one ImageFolder-style dataset with the same class list."""

    name: str
    root: Path
    train: object
    val: object
    classes: list[str]


def open_split(root: Path, split: str, transform):
    """One split (``root/split/<class>/*``) through the data package's ImageFolder loader."""
    return ImageFolderDataset(Path(root) / split, transform)


def open_classification(ctx, recipe: dict, val_transform, train_transform=None) -> ClassificationData:
    """The recipe's dataset (``dataset`` key, default imagenet) under ``ctx.data``."""
    fmt = recipe.get("dataset", "imagenet")
    root = resolve(Path(ctx.data), fmt)
    name = dataset_name(Path(ctx.data), fmt)
    train = open_split(root, recipe.get("train_split", "train"), train_transform or val_transform)
    val = open_split(root, recipe.get("val_split", "val"), val_transform)
    if list(train.classes) != list(val.classes):
        missing = sorted(set(train.classes) ^ set(val.classes))[:3]
        raise UserError(f"{root}: train and val class folders differ (e.g. {', '.join(missing)}); "
                        "both splits need the same class folders")
    return ClassificationData(name, Path(root), train, val, list(train.classes))


def recipe_choice(recipe: dict, key: str, valid: tuple[str, ...]) -> str:
    """``recipe[key]``, which must be one of ``valid`` (else a ``UserError`` naming key and choices)."""
    value = recipe.get(key)
    if value not in valid:
        raise UserError(f"recipe key '{key}': {value!r} is not one of {', '.join(valid)}")
    return value


def records_for(dataset: str, metrics: dict[str, float], spec=None, extra: dict | None = None,
                per_sample: dict[str, np.ndarray] | None = None) -> list[dict]:
    """Result records, each carrying the feature conventions and the extras.

    ``per_sample``: metric -> per-test-sample score (1 = correct) whose mean is the metric;
    the results store keeps it beside the JSON for the leaderboard's bootstrap intervals.
    """
    common = dict(extra or {})
    if spec is not None:
        common.update({"feature": spec.feature, "final_norm": spec.final_norm,
                       "input_filter": spec.input_filter})
    records = [{"dataset": dataset, "metric": metric, "value": float(value), **common}
               for metric, value in metrics.items()]
    for record in records:
        if per_sample and record["metric"] in per_sample:
            record["per_sample"] = np.asarray(per_sample[record["metric"]], dtype=np.float32)
    return records


def topk_hits(logits: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> list[torch.Tensor]:
    """Per sample, whether its label is among the top-k logits (bool), for each k (k capped at C)."""
    top = logits.topk(min(max(ks), logits.shape[-1]), dim=-1).indices
    hits = top == labels.unsqueeze(-1)
    return [hits[..., :min(k, top.shape[-1])].any(-1) for k in ks]


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> list[int]:
    """Number of samples whose label is among the top-k logits, for each k (k capped at C)."""
    return [int(hit.sum()) for hit in topk_hits(logits, labels, ks)]


def percent(count: float, total: int) -> float:
    return 100.0 * float(count) / max(int(total), 1)
