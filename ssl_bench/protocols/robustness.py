"""Robustness of a checkpoint's classifier: ImageNet-A, ImageNet-R, ImageNet-Sketch, ImageNet-C.

The classifier is the linear-probe head or the fine-tuned network saved for this checkpoint by the
``linear`` / ``finetune`` protocols (``<results>/heads/<sha256>/``, ``load_classifier``),
applied with the feature conventions and eval transform stored with it. When none is saved and
``train_if_missing`` is true, the linear probe is trained first (the ``linear`` protocol's package
defaults, overridden by this recipe's ``linear`` mapping, on the clean train set of ``dataset``),
and the records say so (``classifier_trained_here: true``).

* ImageNet-A / ImageNet-R (200 classes): the logits are sliced to the dataset's wnids (sorted)
  before the argmax (hendrycks/natural-adv-examples, hendrycks/imagenet-r eval code);
* ImageNet-Sketch: argmax over all the classifier's classes;
* ImageNet-C: top-1 error per corruption and severity; per corruption the mean over severities;
  ``mean_error`` = mean over the 15 benchmark corruptions (Hendrycks' "mCE unnormalized");
  ``mCE`` = mean over the 15 of CE_c = sum_s E_{s,c} / sum_s E^AlexNet_{s,c} (x100), with the
  AlexNet errors of the recipe; ``100-mCE`` as SiameseIM reports ("1-mCE").

A GENERATED corruption set (``ssl-bench data prepare``: reported under its own dataset name,
e.g. ``embedded-c``) gets the raw errors and their mean only: the AlexNet denominators were
measured on the real ImageNet-C images with 1000-way classification, so a ratio against them
on other images and classes means nothing, and a number named like mCE would be taken for one
in a leaderboard. mCE is likewise left out when a real ImageNet-C folder lacks some of the 15
benchmark corruptions (``mCE_skipped`` says why). All values are percentages.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.imagefolder import ImageNetC, ImageNetVariant
from ..data.loading import make_loader
from ..data.resolve import dataset_name, resolve
from ..errors import UserError
from ..filters import normalise_filter
from ..metrics.robustness import corruption_errors, mce, mean_errors
from ..progress import log, progress
from ..recipes import load_defaults, merge
from ..schema import LOWER, Metric, Schema
from . import PROTOCOLS, EvalContext, Protocol
from ._classifiers import classifier_dir, list_classifiers, read_classifier
from ._features import FeatureSpec, eval_transform, split_features
from ._finetuning import build_classifier
from .linear import Linear, LinearHead

VARIANTS = ("imagenet-a", "imagenet-r", "imagenet-sketch", "imagenet-c")
_C = ("imagenet-c",)


def dataset_root(ctx: EvalContext, cfg: dict, fmt: str) -> Path:
    """The folder of ``fmt``: ``roots[fmt]`` (relative to --data) when given, else found under --data."""
    given = cfg["roots"].get(fmt)
    return resolve(Path(ctx.data) / given if given else Path(ctx.data), fmt)


def load_classifier(results_dir: Path, sha256: str, name: str | None = None) -> tuple[nn.Module, dict]:
    """A saved classifier of the checkpoint with this sha256 and its metadata (``_classifiers``).

    Linear heads come back as ``LinearHead`` (input: features as described by
    ``meta['feature_spec']`` and ``meta['transform']``); fine-tuned networks as the timm
    classifier (input: images).
    """
    state, meta = read_classifier(results_dir, sha256, name)
    if meta.get("kind") == "linear":
        module = LinearHead(meta["dim"], meta["num_classes"], meta["norm"], meta["l2_normalize"])
    elif meta.get("kind") == "finetuned":
        module = build_classifier(meta["arch"], meta["num_classes"], **meta["model_kwargs"])
    else:
        raise UserError(f"{classifier_dir(results_dir, sha256)}/{meta.get('name')}.json: unknown classifier "
                        f"kind {meta.get('kind')!r}")
    module.load_state_dict(state)
    return module.eval(), meta


def _classifier(ctx: EvalContext, cfg: dict):
    """(module, meta, trained_here) for this checkpoint."""
    sha = ctx.checkpoint.sha256
    wanted = cfg["classifier"]
    names = list_classifiers(ctx.results_dir, sha)
    if wanted != "auto":
        return (*load_classifier(ctx.results_dir, sha, wanted), False)
    linear = [n for n in names if n.startswith("linear")]
    others = [n for n in names if not n.startswith("linear")]
    if len(linear) == 1 or (not linear and len(others) == 1):
        return (*load_classifier(ctx.results_dir, sha, (linear or others)[0]), False)
    if names:
        raise UserError(f"recipe key 'classifier': several classifiers are saved for this checkpoint "
                        f"({', '.join(names)}); name one")
    if not cfg["train_if_missing"]:
        raise UserError(f"no classifier saved for {ctx.checkpoint.label} under {ctx.results_dir}/heads; run "
                        "'ssl-bench eval --protocol linear' first or set train_if_missing: true")
    recipe = merge(load_defaults("protocols/linear"), {"dataset": cfg["dataset"], **cfg["linear"]},
                   "robustness recipe key 'linear'")
    recipe["save_head"] = True
    log(f"robustness: no classifier saved for {ctx.checkpoint.label}; training the linear probe "
        f"(variant {recipe['variant']}) on the clean {cfg['dataset']} train split first")
    clean = dataset_root(ctx, cfg, cfg["dataset"])
    Linear().run(EvalContext(ctx.checkpoint, clean, recipe, ctx.results_dir, ctx.device, ctx.shared))
    return (*load_classifier(ctx.results_dir, sha, f"linear-{recipe['variant']}"), True)


class _Scorer:
    """Logits of a dataset under the classifier (linear head on cached features, or a network)."""

    def __init__(self, ctx: EvalContext, cfg: dict, module, meta: dict):
        spec = meta["feature_spec"]
        self.spec = FeatureSpec(spec["feature"], bool(spec["final_norm"]),
                                normalise_filter(spec.get("input_filter")))
        self.transform_cfg = meta["transform"]
        self.transform = eval_transform(self.transform_cfg, self.spec.input_filter)
        self.ctx, self.cfg, self.meta = ctx, cfg, meta
        self.module = module.to(ctx.device).eval()
        self.classes = list(meta["classes"])

    @torch.no_grad()
    def logits(self, dataset, desc: str) -> tuple[np.ndarray, np.ndarray]:
        """(N, classes) logits and (N,) labels (the dataset's own label indices)."""
        if self.meta.get("kind") == "linear":
            feats = split_features(self.ctx, dataset, split=desc, spec=self.spec, transform_cfg=self.transform_cfg,
                                   recipe=self.cfg)
            out = []
            for start in range(0, len(feats), 4096):
                x = torch.from_numpy(np.array(feats.features[start:start + 4096], np.float32)).to(self.ctx.device)
                out.append(self.module(x).float().cpu().numpy())
            return np.concatenate(out) if out else np.zeros((0, len(self.classes))), np.asarray(feats.labels)
        loader = make_loader(dataset, int(self.cfg["batch_size"]), workers=int(self.cfg["num_workers"]))
        out, labels = [], []
        for images, y in progress(loader, desc=desc, unit="batch"):
            out.append(self.module(images.to(self.ctx.device)).float().cpu().numpy())
            labels.append(np.asarray(y))
        return np.concatenate(out), np.concatenate(labels)


def hits_sliced(logits: np.ndarray, labels: np.ndarray, columns: list[int] | None) -> np.ndarray:
    """Per sample, whether the top-1 prediction is right, with the logits restricted to ``columns``
    (label k = columns[k]) or over all classes."""
    logits = np.asarray(logits)
    pred = (logits[:, columns] if columns is not None else logits).argmax(1)
    return pred == labels


def top1_percent(hits: np.ndarray) -> float:
    return 100.0 * float(np.mean(hits)) if len(hits) else float("nan")


def accuracy_sliced(logits: np.ndarray, labels: np.ndarray, columns: list[int] | None) -> float:
    """Top-1 % of ``hits_sliced``."""
    return top1_percent(hits_sliced(logits, labels, columns))


def _map_labels(dataset, classes: list[str]) -> np.ndarray:
    """Index in the classifier's class list of each of the dataset's label indices."""
    return np.asarray(dataset.logit_indices(classes), dtype=np.int64)


@PROTOCOLS.register("robustness")
class Robustness(Protocol):
    """ImageNet-A/R/Sketch accuracy and ImageNet-C errors / mCE with the checkpoint's classifier."""

    schema = Schema(datasets=VARIANTS, metrics=(
        Metric("top1", datasets=VARIANTS[:3]),
        Metric("mean_error", direction=LOWER, datasets=_C,
               description="mean over the benchmark corruptions of the error averaged over severities"),
        Metric("mCE", direction=LOWER, datasets=_C, description="AlexNet-normalised corruption error"),
        Metric("100-mCE", datasets=_C, description="SiameseIM's 1-mCE"),
        Metric("CE/{corruption:name}", direction=LOWER, datasets=_C),
        Metric("error/{corruption:name}", direction=LOWER, datasets=_C),
        Metric("error/{corruption:name}/{severity:int}", direction=LOWER, datasets=_C)),
        headline=("top1", "mean_error", "100-mCE"), order=110)

    def run(self, ctx: EvalContext) -> list[dict]:
        cfg = ctx.recipe
        unknown = [d for d in cfg["datasets"] if d not in VARIANTS]
        if unknown or not cfg["datasets"]:
            raise UserError(f"recipe key 'datasets': {unknown or cfg['datasets']!r}; valid: {', '.join(VARIANTS)}")
        ctx.checkpoint.backbone.to(ctx.device).eval()
        module, meta, trained = _classifier(ctx, cfg)
        scorer = _Scorer(ctx, cfg, module, meta)
        common = {"classifier": meta.get("name"), "classifier_kind": meta.get("kind"),
                  "classifier_trained_here": trained, "classifier_clean_top1": meta.get("top1"),
                  "classifier_dataset": meta.get("dataset"), "unit": "percent"}
        records: list[dict] = []
        for fmt in cfg["datasets"]:
            try:
                root = dataset_root(ctx, cfg, fmt)
            except UserError:
                if cfg["skip_missing"]:
                    log(f"robustness: no {fmt} under {ctx.data}; skipped")
                    continue
                raise
            name = dataset_name(root, fmt)
            if fmt == "imagenet-c":
                records += self._corruptions(ImageNetC(root, scorer.transform), name, scorer, cfg, common)
                continue
            dataset = ImageNetVariant(root, scorer.transform)
            logits, labels = scorer.logits(dataset, f"{name}")
            columns = _map_labels(dataset, scorer.classes)
            if fmt in ("imagenet-a", "imagenet-r"):  # 200-class slice before the argmax
                hits = hits_sliced(logits, labels, list(columns))
                extra = {"logits": f"sliced to the {len(columns)} classes present"}
            else:  # Sketch: all classes
                hits = hits_sliced(logits, columns[labels], None)
                extra = {"logits": f"all {len(scorer.classes)} classes"}
            records.append({"dataset": name, "metric": "top1", "value": top1_percent(hits),
                            "n": len(labels), **extra, **common, "per_sample": hits.astype(np.float32)})
        if not records:
            raise UserError(f"--data {ctx.data}: none of {', '.join(cfg['datasets'])} found")
        return records

    def _corruptions(self, data, name: str, scorer: _Scorer, cfg: dict, common: dict) -> list[dict]:
        wanted = cfg["corruptions"] or data.corruptions
        severities = [int(s) for s in cfg["severities"]]
        missing = [c for c in wanted if c not in data.corruptions]
        if missing:
            raise UserError(f"recipe key 'corruptions': {', '.join(missing)} not under {data.root}")
        columns = _map_labels(data.group(wanted[0], severities[0]), scorer.classes)
        errors: dict[str, dict[int, float]] = {}
        for corruption in progress(wanted, desc=f"{name} corruptions", unit="corruption"):
            errors[corruption] = {}
            for severity in severities:
                logits, labels = scorer.logits(data.group(corruption, severity), f"{name} {corruption}/{severity}")
                errors[corruption][severity] = 1.0 - accuracy_sliced(logits, columns[labels], None) / 100.0
        alexnet = {k: float(v) for k, v in cfg["alexnet_errors"].items()}
        records = [{"dataset": name, "metric": f"error/{c}/{s}", "value": 100.0 * e, **common}
                   for c, by in errors.items() for s, e in by.items()]
        real = name == "imagenet-c"
        benchmark = [c for c in alexnet if c in errors]
        if sorted(severities) == [1, 2, 3, 4, 5]:
            means = mean_errors(errors)
            records += [{"dataset": name, "metric": f"error/{c}", "value": 100.0 * e, **common} for c, e in means.items()]
            if benchmark:
                records.append({"dataset": name, "metric": "mean_error",
                                "value": 100.0 * float(np.mean([means[c] for c in benchmark])),
                                "corruptions": len(benchmark), **common})
            reason = None
            if not real:
                reason = (f"{name} is a generated corruption set, not ImageNet-C: AlexNet's ImageNet-C errors "
                          "are no reference for it")
            elif len(benchmark) < len(alexnet):
                reason = f"only {len(benchmark)} of the {len(alexnet)} benchmark corruptions are present"
            if reason is None:
                ces = corruption_errors(errors, alexnet)
                records += [{"dataset": name, "metric": f"CE/{c}", "value": 100.0 * v, **common} for c, v in ces.items()]
                value = 100.0 * mce(errors, alexnet)
                records.append({"dataset": name, "metric": "mCE", "value": value, **common})
                records.append({"dataset": name, "metric": "100-mCE", "value": 100.0 - value, **common})
            else:
                log(f"robustness: mCE not reported: {reason}")
                for r in records:
                    r["mCE_skipped"] = reason
        return records
