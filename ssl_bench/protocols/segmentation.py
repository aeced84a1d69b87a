"""ADE20k semantic segmentation with UperNet, trained end to end (MAE / BEiT mmseg protocol).

Model: ViT blocks ``model.out_indices`` (3, 5, 7, 11) -> Feature2Pyramid (4x, 2x, 1x, 0.5x) ->
UperNet decoder + auxiliary FCN head (weight 0.4); ResNet backbones feed their four stages.
Training: AdamW with layer-wise lr decay (timm ``param_groups_layer_decay``), linear warmup then
poly decay per iteration, the mmseg ADE20k pipeline (random resize 0.5-2.0, crop with
cat_max_ratio 0.75, flip, photometric distortion). Test: resize to ``test.scale``, sliding
window (``test.crop_size`` / ``test.stride``), logits resized to the original size, argmax;
mIoU exactly as mmseg ``IoUMetric`` (``ssl_bench.metrics.segmentation``).

Backends (``backend``): ``default`` needs no compiled extension (segmentation-models-pytorch's
``UPerNetDecoder`` + our neck, ``ssl_bench.protocols._dense.upernet``); ``mmseg`` builds mmseg's
``EncoderDecoder`` (Feature2Pyramid + UPerHead + FCNHead) from a generated config with our
backbone registered as its backbone, trains it with the same optimiser/schedule/pipeline, runs
mmseg's own slide inference and scores with mmseg's ``IoUMetric`` (``ssl_bench.protocols._dense.mm``).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import torch
from torch.utils.data import RandomSampler

from ..data.ade20k import ADE20kSegmentation
from ..data.loading import make_loader
from ..data.resolve import dataset_name, resolve
from ..errors import UserError
from ..metrics.segmentation import SEGMENTATION_METRICS, IoUAccumulator
from ..progress import log
from ..schema import Schema
from ..seeding import seed_everything
from . import PROTOCOLS, EvalContext, Protocol
from ._common import recipe_choice, records_for
from ._dense.common import train_iterations, trainable_backbone
from ._dense.mm import MMSegBackend
from ._dense.transforms import SegTestTransform, SegTrainTransform
from ._dense.upernet import UperNet, predict_dataset, seg_loss

BACKENDS = ("default", "mmseg")


def open_ade20k(ctx_data: Path, recipe: dict, train_transform, test_transform):
    fmt = recipe["dataset"]
    root = resolve(Path(ctx_data), fmt)
    name = dataset_name(Path(ctx_data), fmt)
    rz = bool(recipe["reduce_zero_label"])
    train = ADE20kSegmentation(root, recipe["train_split"], train_transform, reduce_zero_label=rz)
    val = ADE20kSegmentation(root, recipe["val_split"], test_transform, reduce_zero_label=rz)
    return name, train, val


def infinite_batches(dataset, batch_size: int, seed: int, num_workers: int = 0):
    """Batches drawn by a seeded random sampler, epoch after epoch (iteration-based training)."""
    if batch_size < 2:
        raise UserError(f"recipe key 'batch_size': {batch_size}; UperNet's BatchNorm layers need at least 2")
    generator = torch.Generator().manual_seed(seed)
    loader = make_loader(dataset, batch_size, sampler=RandomSampler(dataset, generator=generator), workers=num_workers,
                         drop_last=len(dataset) >= batch_size, worker_init_fn=_reseed_worker)
    for epoch in itertools.count():
        yield from loader


def _reseed_worker(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    transform = getattr(info.dataset, "transforms", None)
    if hasattr(transform, "rng"):
        transform.rng.seed(transform.rng.random() + worker_id)


class DefaultSegBackend:
    """UperNet from ``ssl_bench.protocols._dense.upernet`` (no compiled extension)."""

    name = "default"

    def __init__(self, backbone, num_classes: int, recipe: dict):
        self.model = UperNet(backbone, num_classes, recipe["model"])
        self.aux_weight = float(recipe["model"]["aux_weight"])
        self.num_classes = num_classes

    def heads(self):
        return self.model.heads()

    def train(self, mode: bool = True):
        self.model.train(mode)

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        out, aux = self.model(images)
        loss = seg_loss(out, labels)
        if aux is not None:
            loss = loss + self.aux_weight * seg_loss(aux, labels)
        return loss

    def evaluate(self, dataset, recipe: dict) -> dict:
        acc = IoUAccumulator(self.num_classes)  # labels arrive reduced by the dataset
        for pred, label in predict_dataset(self.model.logits, dataset, self.num_classes, recipe["test"]):
            acc.update(pred.numpy(), label.numpy())
        return acc.compute()


def build_backend(backbone, num_classes: int, recipe: dict):
    backend = recipe["backend"]
    if backend == "default":
        return DefaultSegBackend(backbone, num_classes, recipe)
    if backend == "mmseg":
        return MMSegBackend(backbone, num_classes, recipe)
    raise UserError(f"recipe key 'backend': {backend!r}; valid: {', '.join(BACKENDS)}")


def train_segmentation(backend, backbone, dataset, recipe: dict, device: torch.device) -> list[float]:
    """Iteration-based training on seeded random batches; returns the loss of every iteration."""
    batches = ((images.to(device), labels.to(device)) for images, labels in
               infinite_batches(dataset, int(recipe["batch_size"]), int(recipe["seed"]), int(recipe["num_workers"])))
    return train_iterations(backend, backbone, batches, recipe, device, what="segmentation training",
                            desc=f"train upernet ({backend.name})")


@PROTOCOLS.register("segmentation")
class Segmentation(Protocol):
    """ADE20k UperNet: mIoU / mAcc / aAcc (x100) after training."""

    schema = Schema(datasets=("ade20k",), metrics=SEGMENTATION_METRICS, headline=("mIoU",), order=70)

    def run(self, ctx: EvalContext) -> list[dict]:
        recipe = ctx.recipe
        recipe_choice(recipe, "backend", BACKENDS)
        seed_everything(int(recipe["seed"]))
        name, train, val = open_ade20k(ctx.data, recipe, SegTrainTransform(recipe["train_pipeline"], int(recipe["seed"])),
                                       SegTestTransform(recipe["test"]))
        backbone = trainable_backbone(ctx.checkpoint, float(recipe["model"]["drop_path"]))
        backend = build_backend(backbone, train.num_classes, recipe)
        if hasattr(backend, "to"):
            backend.to(ctx.device)
        else:
            backend.model.to(ctx.device)
        losses = train_segmentation(backend, backbone, train, recipe, ctx.device)
        log(f"segmentation: loss {losses[0]:.4f} -> {losses[-1]:.4f} over {len(losses)} iterations")
        result = backend.evaluate(val, recipe)
        extra = {"backend": recipe["backend"], "iters": len(losses), "num_classes": train.num_classes,
                 "n_train": len(train), "n_val": len(val), "loss_first": losses[0], "loss_last": losses[-1]}
        return records_for(name, {"mIoU": 100 * result["mIoU"], "mAcc": 100 * result["mAcc"],
                                  "aAcc": 100 * result["aAcc"]}, None, extra)
