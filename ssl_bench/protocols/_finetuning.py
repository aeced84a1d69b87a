"""The fine-tuning loop both fine-tuning protocols share (``finetune_1pct``, ``finetune``).

The network is a timm classifier (``timm.create_model(arch, num_classes=C, ...)``) loaded
with the checkpoint's encoder weights, so the fine-tuned result is a plain timm model that
``robustness.load_classifier`` rebuilds. The protocol supplies the parameter groups (each with
``base_lr`` and ``min_lr``); this module does the rest:

* transforms: eval = resize + centre crop (as the other protocols); train = ``simple``
  (RandomResizedCrop + flip: Barlow Twins evaluate.py) or ``timm`` (timm ``create_transform``
  with RandAugment ``rand-m9-mstd0.5-inc1`` and random erasing: MAE main_finetune.py);
  the checkpoint's input filter (e.g. MSCN high-pass) is applied last;
* mixup / cutmix through ``timm.data.Mixup`` with ``SoftTargetCrossEntropy``, else label
  smoothing (``timm.loss.LabelSmoothingCrossEntropy``), else cross-entropy;
* per-iteration or per-epoch linear warmup + cosine lr (``ssl_bench.schedules.warmup_cosine``);
* bf16 autocast option, optional gradient clipping; the whole network in train mode
  (BatchNorm statistics update, as Barlow Twins' ``model.train()``);
* distributed: under ``torchrun`` (WORLD_SIZE > 1) the process group is set up through
  ``ssl_bench.distributed.init_distributed``; the model is wrapped in DDP, the training set
  sampled by a ``DistributedSampler``, the val set split by index without padding and
  the counts summed across ranks; rank 0 saves;
* val top-1 / top-5 after every epoch; reported: max top-1 over epochs (what MAE and
  Barlow Twins report) and the last epoch's; the best epoch's classifier is saved.
"""

from __future__ import annotations

import copy
import itertools
import math

import timm
import torch
import torch.distributed as dist
from PIL import Image, ImageOps
from timm.data import Mixup, auto_augment, create_transform
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import param_groups_layer_decay
from torch import nn

from ..backbones import arch_family, timm_kwargs
from ..data.loading import make_loader
from ..distributed import init_distributed
from ..errors import UserError
from ..filters import build_filter
from ..progress import log, progress
from ..schedules import warmup_cosine
from ..schema import Metric
from ..seeding import seed_everything, seeded
from . import EvalContext, Protocol
from ._classifiers import save_classifier
from ._common import ClassificationData, open_classification, percent, records_for, topk_hits
from ._features import autocast, eval_transform, feature_spec, train_transform

#: What both fine-tuning protocols report.
FINETUNE_METRICS = (Metric("top1", description="best epoch (what MAE and Barlow Twins report)"),
                    Metric("top5", description="at the epoch of top1"),
                    Metric("top1_last", description="last epoch"))


# ----- the classifier ----------------------------------------------------------------------
def build_classifier(arch: str, num_classes: int, *, img_size: int | None = None, patch_size: int | None = None,
                     global_pool: str | None = None, fc_norm: bool | None = None, final_norm: bool = True,
                     drop_path_rate: float = 0.0) -> nn.Module:
    """A timm classifier of ``arch`` with a fresh ``num_classes`` head."""
    kwargs = timm_kwargs(arch, img_size=img_size, patch_size=patch_size, drop_path_rate=drop_path_rate)
    kwargs["num_classes"] = num_classes
    kwargs.pop("use_fc_norm", None)  # a BEiT classifier places its norm by its pooling, like a ViT
    is_vit = arch_family(arch) != "convnet"
    if is_vit:
        if global_pool is not None:
            kwargs["global_pool"] = global_pool
        if fc_norm is not None:
            kwargs["fc_norm" if arch_family(arch) == "vit" else "use_fc_norm"] = fc_norm
    try:
        model = timm.create_model(arch, **kwargs)
    except (RuntimeError, TypeError) as err:
        raise UserError(f"cannot build a {arch} classifier ({err}); check the recipe's head keys") from None
    if is_vit and not final_norm:
        model.norm = nn.Identity()  # the checkpoint has no final norm (e.g. MSN target encoder)
    return model


def classifier_from_checkpoint(checkpoint, num_classes: int, recipe: dict, final_norm: bool) -> tuple[nn.Module, dict]:
    """The checkpoint's encoder in a timm classifier; returns (model, kwargs to rebuild it)."""
    with seeded(int(recipe["seed"])):  # the fresh head's initialisation, the same whatever ran before
        return _classifier(checkpoint, num_classes, recipe, final_norm)


def _classifier(checkpoint, num_classes: int, recipe: dict, final_norm: bool) -> tuple[nn.Module, dict]:
    backbone = checkpoint.backbone
    head = recipe["head"]
    kwargs = {"drop_path_rate": float(recipe["drop_path"])}
    if backbone.is_vit:
        pool = head["pool"]
        if pool == "auto":  # the checkpoint's own feature: mean of patch tokens (+ fc_norm) or the CLS token
            pool = "avg" if checkpoint.eval.get("feature") == "avgpool" else "token"
        kwargs.update(img_size=checkpoint.meta.get("img_size"), patch_size=backbone.patch_size,
                      global_pool=pool, fc_norm=head["fc_norm"], final_norm=final_norm)
    model = build_classifier(backbone.arch, num_classes, **kwargs)
    state = backbone.encoder_state_dict()
    own = model.state_dict()
    # MAE's global-pool head drops the final norm (models_vit.py: fc_norm replaces norm)
    state = {k: v for k, v in state.items() if k in own}
    missing = [k for k in own if k not in state]
    allowed = ("head.", "fc_norm.", "fc.", "norm.")
    bad = [k for k in missing if not k.startswith(allowed)]
    if bad:
        raise UserError(f"{checkpoint.label}: encoder weights lack {', '.join(bad[:3])} for the {backbone.arch} "
                        "classifier; check the architecture")
    model.load_state_dict(state, strict=False)
    classifier = model.get_classifier()
    std = float(head["init_std"])
    if head["init"] == "trunc_normal":
        nn.init.trunc_normal_(classifier.weight, std=std)  # MAE main_finetune.py: std 2e-5
    elif head["init"] == "normal":
        nn.init.normal_(classifier.weight, std=std)  # Barlow Twins evaluate.py: std 0.01
    else:
        raise UserError(f"recipe key 'head.init': unknown init '{head['init']}'; valid: normal, trunc_normal")
    nn.init.zeros_(classifier.bias)
    return model, kwargs


def layer_decay_groups(model: nn.Module, *, weight_decay: float, layer_decay: float,
                       heads: list[nn.Module] = ()) -> list[dict]:
    """Parameter groups with layer-wise lr decay, each carrying ``lr_scale``, from timm's
    ``param_groups_layer_decay``. For a ViT the scale is layer_decay ** (L + 1 - layer id): patch
    embedding and tokens id 0, block i id i + 1, the classifier L + 1 (MAE util/lr_decay.py,
    BEiT / mmseg LayerDecayOptimizerConstructor, ViTDet get_vit_lr_decay_rate); ResNets follow
    timm's stage grouping. No weight decay on 1-D parameters nor on the model's
    ``no_weight_decay()`` names (pos_embed, cls_token). ``heads``: trained modules outside
    ``model`` (a dense protocol's decoder), at scale 1 with the same 1-D rule."""
    no_wd = set(getattr(model, "no_weight_decay", lambda: set())())
    groups = param_groups_layer_decay(model, weight_decay=weight_decay, no_weight_decay_list=no_wd,
                                      layer_decay=layer_decay)
    if hasattr(model, "blocks") and not list(model.get_classifier().parameters()):
        # a ViT / BEiT without a classifier: timm 1.0 puts the final norm in the last block's group,
        # so its top id is L and block i would get decay ** (L - (i + 1)); the classifier's layer
        # L + 1 is empty
        for group in groups:
            group["lr_scale"] *= layer_decay
    seen = {id(p) for g in groups for p in g["params"]}
    decay, no_decay = [], []
    for head in heads:
        for p in head.parameters():
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (no_decay if p.ndim <= 1 else decay).append(p)
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0})
    return groups


def classifier_params(model: nn.Module) -> tuple[list, list]:
    """(classifier parameters, all others) of a timm classifier."""
    head_ids = {id(p) for p in model.get_classifier().parameters()}
    head = [p for p in model.parameters() if id(p) in head_ids]
    rest = [p for p in model.parameters() if id(p) not in head_ids]
    return head, rest


# ----- transforms --------------------------------------------------------------------------
def _patch_posterize_zero_bits() -> None:
    """timm's RandAugment ('inc1' increasing levels) asks PIL to keep 0 bits at magnitude 10; Pillow >= 11
    refuses (``bits must be between or equal to 1 and 8``) where older Pillow returned a black image. Map
    0 bits back to that result so MAE's ``rand-m9-mstd0.5-inc1`` runs on this stack as it did for MAE."""
    try:
        ImageOps.posterize(Image.new("RGB", (1, 1)), 0)
        return  # this Pillow still accepts 0 bits
    except ValueError:
        pass
    original = auto_augment.posterize

    def posterize(img, bits_to_keep, **kwargs):
        if bits_to_keep <= 0:
            return Image.new(img.mode, img.size)  # keep no bit: all zeros, as Pillow < 11 did
        return original(img, bits_to_keep, **kwargs)

    for name, op in list(auto_augment.NAME_TO_OP.items()):
        if op is original:
            auto_augment.NAME_TO_OP[name] = posterize


def finetune_train_transform(recipe: dict, input_filter: dict | None):
    tcfg, aug = recipe["transform"], recipe["augment"]
    if aug["kind"] == "simple":
        return train_transform(tcfg, input_filter)
    if aug["kind"] != "timm":
        raise UserError(f"recipe key 'augment.kind': unknown '{aug['kind']}'; valid: simple, timm")

    _patch_posterize_zero_bits()
    transform = create_transform(
        input_size=int(tcfg["crop"]), is_training=True, scale=tuple(tcfg["train_scale"]),
        color_jitter=aug["color_jitter"], auto_augment=aug["auto_augment"] or None,
        interpolation=tcfg["interpolation"], mean=tuple(tcfg["mean"]), std=tuple(tcfg["std"]),
        re_prob=float(aug["reprob"]), re_mode=aug["remode"], re_count=int(aug["recount"]))
    if input_filter:
        transform.transforms.append(build_filter(input_filter))
    return transform


def _loss_and_mixup(recipe: dict, num_classes: int):
    aug = recipe["augment"]
    if aug["mixup"] > 0 or aug["cutmix"] > 0:
        mixup = Mixup(mixup_alpha=aug["mixup"], cutmix_alpha=aug["cutmix"], prob=aug["mixup_prob"],
                      switch_prob=aug["mixup_switch_prob"], mode=aug["mixup_mode"],
                      label_smoothing=aug["smoothing"], num_classes=num_classes)
        return SoftTargetCrossEntropy(), mixup
    if aug["smoothing"] > 0:
        return LabelSmoothingCrossEntropy(smoothing=aug["smoothing"]), None
    return nn.CrossEntropyLoss(), None


# ----- distributed evaluation --------------------------------------------------------------
class _Shard(torch.utils.data.Dataset):
    """Every ``world``-th sample from ``rank`` (val under DDP: no padding, no double counting)."""

    def __init__(self, dataset, rank: int, world: int):
        self.dataset, self.indices = dataset, list(range(rank, len(dataset), world))

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return self.dataset[self.indices[i]]


@torch.no_grad()
def evaluate_classifier(model: nn.Module, loader, device, bf16: bool, world: int) -> torch.Tensor:
    """Per validation sample (in dataset order, gathered across ranks), whether its label is
    the top-1 / among the top-5 logits: a bool tensor (n, 2). Rank r holds samples r, r + world, ..."""
    model.eval()
    hits = []
    for images, labels in progress(loader, desc="val", unit="batch"):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with autocast(device, bf16):
            logits = model(images).float()
        hits.append(torch.stack(topk_hits(logits, labels, (1, 5)), dim=1).cpu())
    local = torch.cat(hits) if hits else torch.zeros(0, 2, dtype=torch.bool)
    if world == 1:
        return local
    shards = [None] * world
    dist.all_gather_object(shards, local)
    out = torch.zeros(sum(len(x) for x in shards), 2, dtype=torch.bool)
    for rank, shard in enumerate(shards):  # undo _Shard's interleaving
        out[rank::world] = shard
    return out


# ----- the protocols' shared run ------------------------------------------------------------
class FineTuning(Protocol):
    """A protocol that fine-tunes the checkpoint's encoder in a timm classifier; a subclass says
    which training set (``train_set``) and which parameter groups with which lrs (``param_groups``)."""

    def train_set(self, data: ClassificationData, recipe: dict, transform):
        raise NotImplementedError

    def param_groups(self, model: nn.Module, recipe: dict) -> tuple[list[dict], dict]:
        """(groups with ``params``, ``base_lr``, ``min_lr``, ``weight_decay``; extras for the records)."""
        raise NotImplementedError

    def run(self, ctx: EvalContext) -> list[dict]:
        recipe = ctx.recipe
        spec = feature_spec(ctx.checkpoint, recipe)
        data = open_classification(ctx, recipe, eval_transform(recipe["transform"], spec.input_filter))
        train = self.train_set(data, recipe, finetune_train_transform(recipe, spec.input_filter))
        model, kwargs = classifier_from_checkpoint(ctx.checkpoint, len(data.classes), recipe, spec.final_norm)
        groups, extra = self.param_groups(model, recipe)
        return run_finetuning(ctx, recipe, protocol=self.name, data=data, train_dataset=train, model=model,
                              param_groups=groups, optimizer=recipe["optim"]["name"], spec=spec, model_kwargs=kwargs,
                              extra={**extra, "pool": recipe["head"]["pool"]})


# ----- the loop ----------------------------------------------------------------------------
def run_finetuning(ctx, recipe: dict, *, protocol: str, data, train_dataset, model: nn.Module,
                   param_groups: list[dict], optimizer: str, spec, model_kwargs: dict,
                   extra: dict | None = None) -> list[dict]:
    """Train ``model`` on ``train_dataset``, evaluate on ``data.val`` every epoch, save the best.

    ``param_groups``: dicts with ``params``, ``base_lr``, ``min_lr``, ``weight_decay``.
    ``optimizer``: ``sgd`` (momentum ``optim.momentum``) or ``adamw`` (``optim.betas``).
    """
    device = ctx.device
    world, rank = init_distributed(device)
    # transforms (torchvision, RandAugment, random erasing), mixup and drop path draw from the global
    # torch / python / numpy generators: all three seeded, per rank
    seed_everything(int(recipe["seed"]) + rank)
    sched, optim = recipe["schedule"], recipe["optim"]
    epochs, batch = float(recipe["epochs"]), int(recipe["train_batch_size"])
    if batch % world:
        raise UserError(f"recipe key 'train_batch_size': {batch} does not split over {world} processes")
    per_rank = batch // world
    bf16 = bool(recipe["bf16"])
    num_classes = len(data.classes)
    criterion, mixup = _loss_and_mixup(recipe, num_classes)
    if mixup is not None and per_rank % 2:
        raise UserError(f"recipe key 'train_batch_size': mixup/cutmix need an even batch per process, got {per_rank}")

    model.to(device)
    for group in param_groups:
        group["lr"] = group["base_lr"]
    # fused kernels: the same update rule, several times faster on CPU than the per-tensor loop
    fused = {"fused": True} if device.type in ("cpu", "cuda") else {}
    if optimizer == "sgd":
        opt = torch.optim.SGD(param_groups, lr=param_groups[0]["base_lr"], momentum=float(optim["momentum"]), **fused)
    elif optimizer == "adamw":
        opt = torch.optim.AdamW(param_groups, lr=param_groups[0]["base_lr"], betas=tuple(optim["betas"]), **fused)
    else:
        raise UserError(f"recipe key 'optim.name': unknown optimiser '{optimizer}'; valid: sgd, adamw")
    net = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    sampler = (torch.utils.data.DistributedSampler(train_dataset, num_replicas=world, rank=rank, shuffle=True,
                                                   seed=int(recipe["seed"])) if world > 1 else None)
    drop_last = len(train_dataset) >= batch and (mixup is not None or bool(recipe["drop_last"]))
    workers = int(recipe["num_workers"])
    loader = make_loader(train_dataset, per_rank, shuffle=sampler is None, sampler=sampler, drop_last=drop_last,
                         workers=workers, pin_memory=device.type == "cuda",
                         generator=torch.Generator().manual_seed(int(recipe["seed"])) if sampler is None else None)
    val_set = _Shard(data.val, rank, world) if world > 1 else data.val
    val_loader = make_loader(val_set, int(recipe["batch_size"]), workers=workers)
    ipe = max(1, len(loader))
    # a fraction of an epoch runs whole steps, as in pretraining (Schedules): the last epoch stops early
    total, warmup = int(epochs * ipe), float(sched["warmup_epochs"]) * ipe
    if total < 1:
        raise UserError(f"recipe key 'epochs': {epochs:g} epochs of {ipe} iterations is no whole step; raise it")
    clip = recipe["optim"]["clip_grad"]
    history = []
    best = (-1.0, None, None)  # (top1, epoch, state)
    for epoch in progress(range(math.ceil(total / ipe)), desc=protocol, unit="epoch"):
        net.train()
        if sampler is not None:
            sampler.set_epoch(epoch)
        steps = min(ipe, total - epoch * ipe)
        for i, (images, labels) in enumerate(progress(itertools.islice(loader, steps), desc=f"epoch {epoch + 1}",
                                                      unit="batch", total=steps)):
            step = epoch * ipe + (i if sched["per_iteration"] else 0)
            for group in opt.param_groups:
                group["lr"] = warmup_cosine(step, base=group["base_lr"], final=group["min_lr"],
                                            warmup_steps=warmup, total_steps=total)
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            targets = labels
            if mixup is not None:
                images, targets = mixup(images, labels)
            with autocast(device, bf16):
                logits = net(images)
            loss = criterion(logits.float(), targets)
            if not torch.isfinite(loss):
                raise UserError(f"{protocol}: loss is {loss.item()} at epoch {epoch + 1}, step {i}; "
                                "lower the learning rate (optim.*lr*) or disable bf16")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if clip:
                nn.utils.clip_grad_norm_(model.parameters(), float(clip))
            opt.step()
        hits = evaluate_classifier(model, val_loader, device, bf16, world)
        n_val = len(hits)
        top1, top5 = (percent(int(c), n_val) for c in hits.sum(0))
        history.append((top1, top5, hits))
        if top1 > best[0]:
            best = (top1, epoch, copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
                    if recipe["save_classifier"] and rank == 0 else None)
    top1_max, best_epoch = best[0], best[1]
    log(f"{protocol}: top-1 {top1_max:.2f} at epoch {best_epoch + 1} of {epochs:g}")
    if recipe["save_classifier"] and rank == 0:
        model.load_state_dict(best[2])
        save_classifier(ctx.results_dir, ctx.checkpoint.sha256, protocol, model.cpu(), {
            "kind": "finetuned", "protocol": protocol, "arch": ctx.checkpoint.backbone.arch,
            "num_classes": num_classes, "classes": data.classes, "model_kwargs": model_kwargs,
            "feature_spec": spec.as_dict(), "transform": recipe["transform"], "epoch": best_epoch + 1,
            "top1": top1_max, "dataset": data.name})
    last1 = history[-1][0]
    info = {"epochs": recipe["epochs"], "best_epoch": best_epoch + 1, "n_train": len(train_dataset), "n_val": n_val,
            "world_size": world, **(extra or {})}
    best_hits, last_hits = history[best_epoch][2].numpy(), history[-1][2].numpy()
    return records_for(data.name, {"top1": top1_max, "top5": history[best_epoch][1], "top1_last": last1},
                       spec, info, per_sample={"top1": best_hits[:, 0], "top5": best_hits[:, 1],
                                               "top1_last": last_hits[:, 0]})

