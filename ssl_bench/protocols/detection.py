"""COCO / LVIS detection and instance segmentation with Mask R-CNN, trained end to end.

ViT backbones follow ViTDet (window attention with global blocks, simple feature pyramid from
the last block, LN in the pyramid and heads, AdamW with layer-wise lr decay, large-scale jitter);
ResNet backbones use Mask R-CNN R50-C4 (MoCo's detectron2 configs) or R50-FPN. LVIS trains with
repeat-factor sampling (threshold ``lvis.repeat_thresh``) and keeps up to
``lvis.detections_per_image`` (300) detections per image. Metrics: COCO bbox and segm AP, AP50,
AP75, APs, APm, APl through pycocotools; LVIS AP, AP50, AP75, APs, APm, APl, APr, APc, APf
through the lvis package (``ssl_bench.protocols._dense.coco_eval``).

Backends (``backend``): ``default`` is torchvision's ``MaskRCNN`` (no compiled extension,
``ssl_bench.protocols._dense.maskrcnn``); ``mmdet`` builds mmdet's ``MaskRCNN`` from a generated config with
our backbone registered as its backbone (``ssl_bench.protocols._dense.mm``). Both train with the same data,
optimiser and schedule and are scored by the same evaluation.
Not reproduced: ViTDet-LVIS's sigmoid/federated classification loss (both backends use softmax CE).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..data.coco import CocoDetection, LvisDetection
from ..data.resolve import dataset_name, is_format, resolve
from ..errors import UserError
from ..progress import log, progress
from ..schema import Metric, Schema
from ..seeding import seed_everything
from . import PROTOCOLS, EvalContext, Protocol
from ._common import recipe_choice, records_for
from ._dense.coco_eval import COCO_METRICS, LVIS_METRICS, coco_evaluate, lvis_evaluate, to_results
from ._dense.common import train_iterations, trainable_backbone
from ._dense.maskrcnn import build_maskrcnn
from ._dense.mm import MMDetBackend
from ._dense.sampling import infinite_indices, repeat_factors
from ._dense.transforms import LSJTransform

BACKENDS = ("default", "mmdet")
FORMATS = ("coco", "lvis")


def open_instances(data: Path, fmt: str, recipe: dict, train_transform):
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
    """torchvision ``MaskRCNN`` (``ssl_bench.protocols._dense.maskrcnn``)."""

    name = "default"

    def __init__(self, backbone, num_classes: int, recipe: dict, test_cfg: dict):
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
        return MMDetBackend(backbone, num_classes, recipe, test_cfg)
    raise UserError(f"recipe key 'backend': {recipe['backend']!r}; valid: {', '.join(BACKENDS)}")


def test_settings(recipe: dict, fmt: str) -> dict:
    test = dict(recipe["test"])
    if fmt == "lvis":
        test["score_thresh"] = recipe["lvis"]["score_thresh"]
        test["detections_per_image"] = recipe["lvis"]["detections_per_image"]
    return test


def train_detector(backend, backbone, dataset, recipe: dict, device: torch.device, *, lvis: bool) -> list[float]:
    """Iteration-based training on images drawn in a seeded order (LVIS: with repeat factors)."""
    generator = torch.Generator().manual_seed(int(recipe["seed"]))
    factors = None
    if lvis and float(recipe["lvis"]["repeat_thresh"]) > 0:
        cats = [{a["category_id"] for a in dataset.anns_by_image.get(i, [])} for i in dataset.ids]
        factors = repeat_factors(cats, float(recipe["lvis"]["repeat_thresh"]))
    order = infinite_indices(len(dataset), generator, factors)

    def batches():
        while True:
            samples = [dataset[next(order)] for _ in range(int(recipe["batch_size"]))]
            yield ([s[0].to(device) for s in samples],
                   [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in s[1].items()} for s in samples])

    return train_iterations(backend, backbone, batches(), recipe, device, what="detection training",
                            desc=f"train mask r-cnn ({backend.name})")


@torch.no_grad()
def detect(backend, dataset, device: torch.device, desc: str) -> list[dict]:
    """COCO-format results of every image of ``dataset``."""
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
        recipe = ctx.recipe
        recipe_choice(recipe, "backend", BACKENDS)
        formats = recipe["datasets"]
        if not formats or any(f not in FORMATS for f in formats):
            raise UserError(f"recipe key 'datasets': {formats!r}; give a non-empty list of {', '.join(FORMATS)}")
        records = []
        for fmt in formats:
            seed_everything(int(recipe["seed"]))
            lsj = recipe["lsj"]
            transform = DropCrowd(LSJTransform(recipe["model"]["image_size"], lsj["min_scale"], lsj["max_scale"],
                                               lsj["flip_prob"], seed=int(recipe["seed"])))
            name, train, val = open_instances(ctx.data, fmt, recipe, transform)
            backbone = trainable_backbone(ctx.checkpoint, float(recipe["model"]["drop_path"]))
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
