"""COCO / LVIS detection and instance segmentation with Mask R-CNN, trained end to end.

ViT backbones follow ViTDet (window attention with global blocks, simple feature pyramid from
the last block, LN in the pyramid and heads, AdamW with layer-wise lr decay, large-scale jitter);
ResNet backbones use Mask R-CNN R50-C4 (MoCo's detectron2 configs) or R50-FPN. LVIS trains with
repeat-factor sampling (threshold ``lvis.repeat_thresh``) and keeps up to
``lvis.detections_per_image`` (300) detections per image. Metrics: COCO bbox and segm AP, AP50,
AP75, APs, APm, APl through pycocotools; LVIS AP, AP50, AP75, APs, APm, APl, APr, APc, APf
through the lvis package (``ssl_bench.dense.coco_eval``).

Backends (``backend``): ``default`` is torchvision's ``MaskRCNN`` (no compiled extension,
``ssl_bench.dense.maskrcnn``); ``mmdet`` builds mmdet's ``MaskRCNN`` from a generated config with
our backbone registered as its backbone (``ssl_bench.dense.mm``). Both train with the same data,
optimiser and schedule and are scored by the same evaluation.
Not reproduced: ViTDet-LVIS's sigmoid/federated classification loss (both backends use softmax CE).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..dense.coco_eval import COCO_METRICS, LVIS_METRICS
from ..errors import UserError
from ..progress import log, progress
from ..schema import Metric, Schema
from . import PROTOCOLS, EvalContext, Protocol
from ._common import records_for

BACKENDS = ("default", "mmdet")
FORMATS = ("coco", "lvis")


def open_instances(data: Path, fmt: str, recipe: dict, train_transform):
    from ..data.coco import CocoDetection, LvisDetection
    from ..data.resolve import dataset_name, is_format, resolve

    data = Path(data)
    if not is_format(data, fmt) and is_format(data / fmt, fmt):  # a parent of coco/ and lvis/ (detectron2 layout)
        data = data / fmt
    root = resolve(data, fmt)
    name = dataset_name(data, fmt)
    cls = CocoDetection if fmt == "coco" else LvisDetection
    splits = recipe[fmt]
    train = cls.from_root(root, splits["train_split"], train_transform)
    val = cls.from_root(root, splits["val_split"])
    if train.cat_ids != val.cat_ids:
        raise UserError(f"{val.ann_file}: its categories differ from {train.ann_file}'s; both splits need the "
                        "same category list")
    return name, train, val


class DropCrowd:
    """Training targets without crowd regions (detectron2 drops iscrowd annotations in training)."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, image, target):
        keep = target["iscrowd"] == 0
        target = dict(target)
        for key in ("boxes", "labels", "masks", "area", "iscrowd"):
            if key in target:
                target[key] = target[key][keep]
        return self.inner(image, target)


class DefaultDetBackend:
    """torchvision ``MaskRCNN`` (``ssl_bench.dense.maskrcnn``)."""

    name = "default"

    def __init__(self, backbone, num_classes: int, recipe: dict, test_cfg: dict):
        from ..dense.maskrcnn import build_maskrcnn

        self.model, self._heads = build_maskrcnn(backbone, num_classes, recipe["model"], test_cfg)

    def heads(self):
        return self._heads

    def to(self, device):
        self.model.to(device)
        return self

    def train(self, mode: bool = True):
        self.model.train(mode)

    def loss(self, images, targets) -> torch.Tensor:
        keys = ("boxes", "labels", "masks")
        losses = self.model(list(images), [{k: t[k] for k in keys} for t in targets])
        return sum(losses.values())

    @torch.no_grad()
    def predict(self, image: torch.Tensor) -> dict:
        return self.model([image])[0]


def build_backend(backbone, num_classes: int, recipe: dict, test_cfg: dict):
    if recipe["backend"] == "default":
        return DefaultDetBackend(backbone, num_classes, recipe, test_cfg)
    if recipe["backend"] == "mmdet":
        from ..dense.mm import MMDetBackend

        return MMDetBackend(backbone, num_classes, recipe, test_cfg)
    raise UserError(f"recipe key 'backend': {recipe['backend']!r}; valid: {', '.join(BACKENDS)}")


def test_settings(recipe: dict, fmt: str) -> dict:
    test = dict(recipe["test"])
    if fmt == "lvis":
        test["score_thresh"] = recipe["lvis"]["score_thresh"]
        test["detections_per_image"] = recipe["lvis"]["detections_per_image"]
    return test


def train_detector(backend, backbone, dataset, recipe: dict, device: torch.device, *, lvis: bool) -> list[float]:
    from ..dense.common import build_adamw, check_finite, layer_decay_groups, lr_factor, set_lr
    from ..dense.sampling import infinite_indices, repeat_factors

    optim, sched = recipe["optim"], recipe["schedule"]
    iters, batch = int(sched["iters"]), int(recipe["batch_size"])
    groups = layer_decay_groups(backbone, backend.heads(), weight_decay=float(optim["weight_decay"]),
                                layer_decay=float(optim["layer_decay"]))
    optimizer = build_adamw(groups, optim)
    generator = torch.Generator().manual_seed(int(recipe["seed"]))
    factors = None
    if lvis and float(recipe["lvis"]["repeat_thresh"]) > 0:
        cats = [{a["category_id"] for a in dataset.anns_by_image.get(i, [])} for i in dataset.ids]
        factors = repeat_factors(cats, float(recipe["lvis"]["repeat_thresh"]))
    order = infinite_indices(len(dataset), generator, factors)
    backend.train(True)
    losses = []
    bar = progress(range(iters), desc=f"train mask r-cnn ({backend.name})", unit="it")
    for it in bar:
        set_lr(optimizer, float(optim["lr"]), lr_factor(it, sched, iters))
        samples = [dataset[next(order)] for _ in range(batch)]
        images = [s[0].to(device) for s in samples]
        targets = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in s[1].items()} for s in samples]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bool(recipe["bf16"])):
            loss = backend.loss(images, targets)
        check_finite(loss.detach(), it, "detection training")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    backend.train(False)
    return losses


@torch.no_grad()
def detect(backend, dataset, device: torch.device, desc: str) -> list[dict]:
    """COCO-format results of every image of ``dataset``."""
    from ..dense.coco_eval import to_results

    results = []
    for i in progress(range(len(dataset)), desc=desc, unit="img"):
        image, target = dataset[i]
        output = backend.predict(image.to(device))
        results += to_results(output, target["image_id"], dataset.label_to_cat_id)
    return results


@PROTOCOLS.register("detection")
class Detection(Protocol):
    """Mask R-CNN on COCO and/or LVIS: bbox and segm AP metrics (x100)."""

    schema = Schema(datasets=FORMATS, metrics=tuple(
        Metric(f"{kind}_{ap}", datasets=FORMATS if ap in COCO_METRICS else ("lvis",))
        for kind in ("bbox", "segm") for ap in LVIS_METRICS), headline=("bbox_AP", "segm_AP"), order=60)

    def run(self, ctx: EvalContext) -> list[dict]:
        from ..dense.coco_eval import coco_evaluate, lvis_evaluate
        from ..dense.common import seed_all, set_drop_path, trainable_backbone
        from ..dense.transforms import LSJTransform

        recipe = ctx.recipe
        if recipe["backend"] not in BACKENDS:
            raise UserError(f"recipe key 'backend': {recipe['backend']!r}; valid: {', '.join(BACKENDS)}")
        formats = recipe["datasets"]
        if not formats or any(f not in FORMATS for f in formats):
            raise UserError(f"recipe key 'datasets': {formats!r}; give a non-empty list of {', '.join(FORMATS)}")
        records = []
        for fmt in formats:
            seed_all(int(recipe["seed"]))
            lsj = recipe["lsj"]
            transform = DropCrowd(LSJTransform(recipe["model"]["image_size"], lsj["min_scale"], lsj["max_scale"],
                                               lsj["flip_prob"], seed=int(recipe["seed"])))
            name, train, val = open_instances(ctx.data, fmt, recipe, transform)
            backbone = trainable_backbone(ctx.checkpoint)
            set_drop_path(backbone, float(recipe["model"]["drop_path"]))
            backend = build_backend(backbone, train.num_classes, recipe, test_settings(recipe, fmt)).to(ctx.device)
            losses = train_detector(backend, backbone, train, recipe, ctx.device, lvis=fmt == "lvis")
            log(f"detection {name}: loss {losses[0]:.4f} -> {losses[-1]:.4f} over {len(losses)} iterations")
            results = detect(backend, val, ctx.device, f"detect {name}")
            if fmt == "coco":
                metrics = coco_evaluate(val.ann_file, results, image_ids=val.ids)
            else:
                metrics = lvis_evaluate(val.ann_file, results, max_dets=int(recipe["lvis"]["detections_per_image"]))
            extra = {"backend": recipe["backend"], "iters": len(losses), "num_classes": train.num_classes,
                     "n_train": len(train), "n_val": len(val), "detections": len(results),
                     "loss_first": losses[0], "loss_last": losses[-1]}
            records += records_for(name, {k.replace("/", "_"): v for k, v in metrics.items()}, None, extra)
        return records
