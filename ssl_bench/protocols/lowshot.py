"""Low-shot logistic regression on frozen features (reference: MSN logistic_eval.py).

For k images per class (MSN split files ``imagenet_subsets<s>/<k>imgs_class.txt``; three
splits, reported as mean and standard deviation) and for SimCLR subset files (``1percent.txt``,
reported as ``top1_1pct``): features of the listed training images, each row centred (minus
its own mean) then L2-normalised (cyanure ``preprocess(centering=True, normalize=True,
columns=False)``); a multinomial L2-regularised logistic regression without intercept;
top-1 on the whole val split, preprocessed the same way.

Regularisation. MSN calls cyanure with ``lambd = lambda / n`` (n = number of training
samples). Cyanure minimises ``(1/n) sum_i loss_i + (lambd/2) ||W||^2`` (loss averaged:
cyanure utils/loss.h; ridge ``0.5 * lambda * ||w||^2``: utils/regul.h), i.e.
``(1/n) sum_i loss_i + lambda/(2n) ||W||^2``. Multiplying by n/lambda gives scikit-learn's
``C sum_i loss_i + 1/2 ||W||^2`` with ``C = 1/lambda``: the 1/n of the average and the
lambda/n of MSN cancel, so C does not depend on n. (With two classes scikit-learn fits one
weight vector w = W1 - W2; the penalty of the minimum-norm softmax pair W1 = -W2 = w/2 is
lambda/4 ||w||^2, hence C = 2/lambda there.) ``tests/test_protocols_lowshot.py`` checks the
optimum against the gradient of the cyanure objective.

Standard deviation over splits: population (ddof 0), the paper does not say which.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

from ..data import ImageFolderDataset
from ..errors import UserError
from ..progress import log, progress
from ..schema import NEUTRAL, Metric, Schema
from . import PROTOCOLS, EvalContext, Protocol
from ._common import open_classification, records_for
from ._features import eval_transform, feature_spec, split_features


def center_normalize(x: np.ndarray) -> np.ndarray:
    """Each row minus its mean, then scaled to unit L2 norm (cyanure preprocess, rows)."""
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def sklearn_C(lambd: float, num_classes: int) -> float:
    """scikit-learn's C for MSN's lambda (see the module docstring); independent of n."""
    if lambd <= 0:
        raise UserError(f"recipe key 'lambd': must be positive, got {lambd!r}")
    return (2.0 if num_classes == 2 else 1.0) / lambd


def fit_logistic(x: np.ndarray, y: np.ndarray, lambd: float, *, max_iter: int = 1000,
                 tol: float = 1e-6) -> LogisticRegression:
    """Multinomial L2 logistic regression without intercept, MSN's regularisation."""
    clf = LogisticRegression(C=sklearn_C(lambd, len(np.unique(y))), fit_intercept=False, solver="lbfgs",
                             max_iter=int(max_iter), tol=float(tol))
    return clf.fit(x, y)


def _resolve(root: Path, name: str) -> Path:
    path = Path(name)
    return path if path.is_absolute() else root / path


@PROTOCOLS.register("lowshot")
class LowShot(Protocol):
    """MSN low-shot logistic regression: k per class over splits, and subset files."""

    schema = Schema(datasets=("imagenet",), metrics=(
        Metric("top1_{k:int}shot_mean", description="mean over the splits of k images per class"),
        Metric("top1_{k:int}shot_std", direction=NEUTRAL, description="population std over the splits"),
        Metric("top1_{n:int}pct", description="SimCLR subset file <n>percent.txt"),
        Metric("top1_{subset:name}", description="another subset file, named by its stem")),
        headline=("top1_1shot_mean", "top1_1pct"), order=30)

    def run(self, ctx: EvalContext) -> list[dict]:
        recipe = ctx.recipe
        spec = feature_spec(ctx.checkpoint, recipe)
        tcfg = recipe["transform"]
        transform = eval_transform(tcfg, spec.input_filter)
        data = open_classification(ctx, recipe, transform)
        train_root = data.root / recipe["train_split"]
        index = {Path(p).name: i for i, (p, _) in enumerate(data.train.samples)}
        val = split_features(ctx, data.val, split="val", spec=spec, transform_cfg=tcfg, recipe=recipe)
        val_x = center_normalize(val.features)
        lambd = float(recipe["lambd"])

        split_dir = _resolve(data.root, recipe["split_dir"]) if recipe["split_dir"] else data.root
        lists: list[tuple[str, Path, int | None]] = []  # (metric group, file, shots)
        for k in recipe["shots"]:
            for s in recipe["splits"]:
                path = split_dir / f"imagenet_subsets{s}" / f"{k}imgs_class.txt"
                if not path.is_file():
                    raise UserError(f"{path}: MSN split file missing ({k} images per class, split {s}); recipe "
                                    "keys 'shots'/'splits' list the files to use, 'split_dir' where they are")
                lists.append((f"{k}shot", path, int(k)))
        for name in recipe["subset_files"]:
            path = _resolve(data.root, name)
            if not path.is_file():
                raise UserError(f"{path}: subset file missing (recipe key 'subset_files'; SimCLR format, one "
                                "training file name per line)")
            group = path.stem.replace("percent", "pct")
            if self.schema.metric(f"top1_{group}") is None:
                raise UserError(f"{path}: a subset file is named <n>percent.txt or starts with a letter "
                                "(its metric is top1_<name>)")
            lists.append((group, path, None))
        subsets = []
        for group, path, shots in lists:
            subset = ImageFolderDataset.from_file_list(train_root, path, shots=shots)
            subsets.append((group, [index[Path(p).name] for p, _ in subset.samples]))
        # one forward pass over the union of every listed image (or a slice of cached train features)
        union = sorted({i for _, indices in subsets for i in indices})
        position = {i: n for n, i in enumerate(union)}
        feats = split_features(ctx, data.train, split="train subsets", spec=spec, transform_cfg=tcfg,
                               recipe=recipe, indices=union)
        train_x = center_normalize(feats.features)

        per_split: dict[str, list[float]] = {}
        hits: dict[str, list[np.ndarray]] = {}
        for group, indices in progress(subsets, desc="low-shot fits", unit="fit"):
            rows = [position[i] for i in indices]
            clf = fit_logistic(train_x[rows], feats.labels[rows], lambd, max_iter=recipe["max_iter"],
                               tol=recipe["tol"])
            correct = clf.predict(val_x) == val.labels  # classes absent from the subset are never predicted
            hits.setdefault(group, []).append(correct)
            per_split.setdefault(group, []).append(100.0 * float(np.mean(correct)))
        metrics: dict[str, float] = {}
        per_sample: dict[str, np.ndarray] = {}  # per val image: fraction of the splits that got it right
        for group, values in per_split.items():
            name = f"top1_{group}_mean" if group.endswith("shot") else f"top1_{group}"
            metrics[name] = float(np.mean(values))
            per_sample[name] = np.mean(hits[group], axis=0)
            if group.endswith("shot"):
                metrics[f"top1_{group}_std"] = float(np.std(values))
        log("low-shot: " + ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()))
        extra = {"lambd": lambd, "C": sklearn_C(lambd, len(data.classes)), "per_split": per_split,
                 "n_val": len(val)}
        return records_for(data.name, metrics, spec, extra, per_sample)
