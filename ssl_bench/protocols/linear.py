"""Linear probe on frozen features: a grid of learning rates trained in one pass.

The recipe picks the reference variant (``variant`` is recorded with every number):

    mae        MAE main_linprobe.py: BN(affine=False) head, timm LARS, lr = blr x B/256,
               warmup + cosine per iteration
    dino       DINO eval_linear.py: CLS of the last n blocks, SGD momentum 0.9, wd 0,
               lr = 0.001 x B/256, cosine per epoch
    msn        MSN linear_eval.py: CLS without final norm -> LayerNorm -> L2 -> Linear,
               SGD nesterov, cosine per iteration
    siameseim  the MAE script with the average pool of the patch tokens
    resnet     Barlow Twins evaluate.py: SGD lr 0.3, wd 1e-6, cosine per epoch

Training reads cached features (``train_features: center`` = the eval transform, or
``augmented`` = ``augment_passes`` cached passes of the train augmentation, cycled over
epochs), or with ``train_features: online`` pushes freshly augmented images through the
frozen backbone every epoch (full fidelity, slow). Every head of the grid sees the same
batches; val top-1 is measured after every epoch; the reported ``top1`` is the maximum
over epochs (what every reference reports) at the best learning rate, ``top1_last`` the
last epoch's. The best head is saved for robustness evaluation (``_classifiers``).

A head is ``norm -> (optional L2 normalisation) -> Linear`` on frozen features, the
variants the references use:

    MAE main_linprobe.py   BatchNorm1d(affine=False, eps=1e-6) -> Linear (trunc-normal std 0.01)
    DINO eval_linear.py    Linear (normal std 0.01, bias 0)
    MSN linear_eval.py     LayerNorm -> L2 normalise -> Linear (normal std 0.01, bias 0)
    MAE --global_pool      frozen fresh fc_norm (a LayerNorm at its init: no affine effect) -> BN
                           -> Linear (``ln_bn``; SiameseIM's linear probe)
    Barlow Twins evaluate  Linear (normal std 0.01, bias 0)

``HeadGrid`` holds K independent heads (one per learning rate of the grid, each with its own
parameters, so per-parameter rules like LARS's trust ratio act per head) and evaluates all
of them in one batched forward: the parameter-free part of the norm is computed once, the
K linear maps in one batched matmul.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from timm.optim import Lars
from torch import nn

from ..data.loading import make_loader
from ..errors import UserError
from ..progress import log, progress
from ..schedules import warmup_cosine
from ..schema import Metric, Schema
from . import PROTOCOLS, EvalContext, Protocol
from ._classifiers import save_classifier
from ._common import open_classification, open_split, recipe_choice, records_for, topk_correct, topk_hits
from ._features import eval_transform, feature_spec, forward_features, split_features, train_transform

TRAIN_FEATURES = ("center", "augmented", "online")


# ----- heads -------------------------------------------------------------------------------
NORMS = ("none", "bn", "layernorm", "ln_bn")
INITS = ("normal", "trunc_normal")


class LinearHead(nn.Module):
    """``norm -> [L2] -> Linear`` over (B, D) features."""

    def __init__(self, dim: int, num_classes: int, norm: str = "none", l2_normalize: bool = False):
        super().__init__()
        if norm not in NORMS:
            raise UserError(f"recipe key 'head.norm': unknown norm '{norm}'; valid: {', '.join(NORMS)}")
        self.norm_kind, self.l2_normalize = norm, bool(l2_normalize)
        if norm == "bn":
            self.norm = nn.BatchNorm1d(dim, affine=False, eps=1e-6)  # MAE main_linprobe.py
        elif norm == "ln_bn":
            # MAE models_vit.py global_pool: fc_norm = LayerNorm(eps 1e-6), frozen at weight 1 / bias 0
            self.norm = nn.Sequential(nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False),
                                      nn.BatchNorm1d(dim, affine=False, eps=1e-6))
        elif norm == "layernorm":
            self.norm = nn.LayerNorm(dim)  # MSN linear_eval.py: torch default eps 1e-5
        else:
            self.norm = nn.Identity()
        self.linear = nn.Linear(dim, num_classes)

    def reset(self, init: str, std: float) -> None:
        if init == "trunc_normal":
            nn.init.trunc_normal_(self.linear.weight, std=std)  # MAE (after MoCo v3)
        elif init == "normal":
            nn.init.normal_(self.linear.weight, std=std)  # DINO, MSN, Barlow Twins
        else:
            raise UserError(f"recipe key 'head.init': unknown init '{init}'; valid: {', '.join(INITS)}")
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x.flatten(1))
        if self.l2_normalize:
            x = F.normalize(x, dim=-1)
        return self.linear(x)


class HeadGrid(nn.Module):
    """K independent ``LinearHead``s over the same features, evaluated in one batched pass."""

    def __init__(self, dim: int, num_classes: int, num_heads: int, *, norm: str = "none",
                 l2_normalize: bool = False, init: str = "normal", init_std: float = 0.01):
        super().__init__()
        self.heads = nn.ModuleList(LinearHead(dim, num_classes, norm, l2_normalize) for _ in range(num_heads))
        for head in self.heads:
            head.reset(init, init_std)
        self.norm_kind, self.l2_normalize = norm, l2_normalize
        # the BN has no parameters (affine=False): one shared module gives every head the same statistics
        self.shared_bn = nn.BatchNorm1d(dim, affine=False, eps=1e-6) if norm in ("bn", "ln_bn") else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) features -> (K, B, C) logits."""
        x = x.flatten(1)
        if self.norm_kind == "ln_bn":
            x = F.layer_norm(x, x.shape[-1:], eps=1e-6)
        if self.shared_bn is not None:
            x = self.shared_bn(x)
        if self.norm_kind == "layernorm":
            first = self.heads[0].norm
            x = F.layer_norm(x, first.normalized_shape, eps=first.eps)  # the parameter-free part, once
            weight = torch.stack([h.norm.weight for h in self.heads])[:, None]  # (K, 1, D)
            bias = torch.stack([h.norm.bias for h in self.heads])[:, None]
            x = x.unsqueeze(0) * weight + bias  # (K, B, D)
        else:
            x = x.unsqueeze(0).expand(len(self.heads), -1, -1)
        if self.l2_normalize:
            x = F.normalize(x, dim=-1)
        weights = torch.stack([h.linear.weight for h in self.heads])  # (K, C, D)
        biases = torch.stack([h.linear.bias for h in self.heads])[:, None]  # (K, 1, C)
        return torch.baddbmm(biases, x, weights.transpose(1, 2))

    def export(self, index: int) -> LinearHead:
        """Head ``index`` as a stand-alone ``LinearHead`` (shared BN statistics copied in)."""
        head = self.heads[index]
        out = LinearHead(head.linear.in_features, head.linear.out_features, head.norm_kind, head.l2_normalize)
        out.load_state_dict({k: v.detach().clone() for k, v in head.state_dict().items()}, strict=False)
        if self.norm_kind == "bn":
            out.norm.load_state_dict(self.shared_bn.state_dict())
        elif self.norm_kind == "ln_bn":
            out.norm[1].load_state_dict(self.shared_bn.state_dict())
        return out.eval()


# ----- training ----------------------------------------------------------------------------
def build_optimizer(grid: HeadGrid, lrs: list[float], optim: dict) -> torch.optim.Optimizer:
    """One pair of parameter groups per head (matrices / the rest) at that head's lr."""
    name = optim["name"]
    groups = []
    for head, lr in zip(grid.heads, lrs):
        matrices = [p for p in head.parameters() if p.ndim > 1]
        others = [p for p in head.parameters() if p.ndim <= 1]
        wd_other = optim["weight_decay"] if optim["decay_1d"] else 0.0
        groups.append({"params": matrices, "lr": lr, "base_lr": lr, "weight_decay": optim["weight_decay"],
                       "always_adapt": True})
        if others:
            # MAE's LARS and MSN exclude biases / norm parameters from decay and adaptation
            groups.append({"params": others, "lr": lr, "base_lr": lr, "weight_decay": wd_other,
                           "always_adapt": False})
    if name == "lars":
        # MAE util/lars.py: trust coefficient 0.001, momentum 0.9, no adaptation of 1-D params
        return Lars(groups, lr=lrs[0], momentum=optim["momentum"], trust_coeff=optim["trust_coeff"])
    if name == "sgd":
        for group in groups:
            group.pop("always_adapt")
        return torch.optim.SGD(groups, lr=lrs[0], momentum=optim["momentum"], nesterov=optim["nesterov"])
    raise UserError(f"recipe key 'optim.name': unknown optimiser '{name}'; valid: lars, sgd")


def set_lr(optimizer, step: float, total: float, warmup: float, min_lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = warmup_cosine(step, base=group["base_lr"], final=min_lr, warmup_steps=warmup,
                                    total_steps=total)


@torch.no_grad()
def evaluate_grid(grid: HeadGrid, feats, labels: np.ndarray, device, chunk: int = 4096) -> np.ndarray:
    """(K, 2) correct counts (top-1, top-5) of every head on (N, D) features."""
    grid.eval()
    counts = np.zeros((len(grid.heads), 2), dtype=np.int64)
    for s in range(0, len(labels), chunk):
        x = torch.from_numpy(np.array(feats[s:s + chunk], dtype=np.float32)).to(device)
        y = torch.from_numpy(np.asarray(labels[s:s + chunk])).to(device)
        logits = grid(x)
        for i in range(len(grid.heads)):
            counts[i] += topk_correct(logits[i], y, (1, 5))
    return counts


@torch.no_grad()
def head_hits(head: torch.nn.Module, feats, labels: np.ndarray, device, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample top-1 and top-5 hits (bool) of one trained head on (N, D) features."""
    head.eval().to(device)
    top1, top5 = [], []
    for s in range(0, len(labels), chunk):
        x = torch.from_numpy(np.array(feats[s:s + chunk], dtype=np.float32)).to(device)
        y = torch.from_numpy(np.asarray(labels[s:s + chunk])).to(device)
        hit1, hit5 = topk_hits(head(x), y, (1, 5))
        top1.append(hit1.cpu().numpy())
        top5.append(hit5.cpu().numpy())
    return np.concatenate(top1), np.concatenate(top5)


def train_grid(grid: HeadGrid, lrs: list[float], recipe: dict, epoch_batches, val_feats, val_labels,
               device) -> dict:
    """Train every head of ``grid`` on the batches ``epoch_batches(epoch)`` yields.

    Returns per head the val top-1/top-5 after every epoch and the state of each head at
    its best epoch.
    """
    optim, sched = recipe["optim"], recipe["schedule"]
    optimizer = build_optimizer(grid, lrs, optim)
    epochs = int(recipe["epochs"])
    n_heads = len(grid.heads)
    history = np.zeros((epochs, n_heads, 2))
    best = np.full(n_heads, -1.0)
    best_states: list[dict | None] = [None] * n_heads
    grid.to(device)
    for epoch in progress(range(epochs), desc="linear probe", unit="epoch"):
        grid.train()
        batches = epoch_batches(epoch)
        ipe = max(1, len(batches))
        for i, (x, y) in enumerate(batches):
            step = epoch * ipe + (i if sched["per_iteration"] else 0)
            set_lr(optimizer, step, epochs * ipe, sched["warmup_epochs"] * ipe, sched["min_lr"])
            logits = grid(x.to(device))
            y = y.to(device)
            # the heads share no parameters: the summed loss gives each head its own gradient
            loss = F.cross_entropy(logits.flatten(0, 1), y.repeat(n_heads), reduction="mean") * n_heads
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        counts = evaluate_grid(grid, val_feats, val_labels, device)
        history[epoch] = 100.0 * counts / max(len(val_labels), 1)
        for h in range(n_heads):
            if history[epoch, h, 0] > best[h]:
                best[h] = history[epoch, h, 0]
                best_states[h] = {"epoch": epoch, "head": grid.export(h)}
    return {"history": history, "best": best_states}


class _FeatureBatches:
    """Shuffled mini-batches over cached (memory-mapped) features."""

    def __init__(self, feats, labels, batch_size: int, drop_last: bool, generator: torch.Generator):
        self.feats, self.labels = feats, labels
        self.batch_size, self.drop_last = batch_size, drop_last
        order = torch.randperm(len(labels), generator=generator).numpy()
        n = len(order) // batch_size * batch_size if drop_last and len(order) >= batch_size else len(order)
        self.chunks = [order[s:s + batch_size] for s in range(0, n, batch_size)]

    def __len__(self):
        return len(self.chunks)

    def __iter__(self):
        for idx in self.chunks:
            rows = np.sort(idx)  # sorted reads are kinder to a memory map; order within a batch is irrelevant
            yield (torch.from_numpy(np.asarray(self.feats[rows], dtype=np.float32)),
                   torch.from_numpy(np.asarray(self.labels[rows], dtype=np.int64)))


class _OnlineBatches:
    """Freshly augmented images through the frozen backbone (``train_features: online``)."""

    def __init__(self, ctx, dataset, spec, recipe, generator):
        batch = int(recipe["train_batch_size"])
        self.loader = make_loader(dataset, batch, shuffle=True, generator=generator,
                                  drop_last=bool(recipe["drop_last"]) and len(dataset) >= batch,
                                  workers=int(recipe["num_workers"]))
        self.ctx, self.spec, self.bf16 = ctx, spec, bool(recipe["bf16"])

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        backbone = self.ctx.checkpoint.backbone.to(self.ctx.device).eval()
        for images, labels in progress(self.loader, desc="online features", unit="batch"):
            yield forward_features(backbone, images.to(self.ctx.device), self.spec, self.bf16).cpu(), labels


def effective_lrs(recipe: dict) -> list[float]:
    base = [float(v) for v in recipe["optim"]["lrs"]]
    if not base or min(base) <= 0:
        raise UserError(f"recipe key 'optim.lrs': expected a non-empty list of positive learning rates, "
                        f"got {recipe['optim']['lrs']!r}")
    scale = int(recipe["train_batch_size"]) / 256.0 if recipe["optim"]["scale_lr"] else 1.0
    return [b * scale for b in base]


@PROTOCOLS.register("linear")
class Linear(Protocol):
    """Linear probe (grid of learning rates) on frozen features."""

    schema = Schema(datasets=("imagenet",), metrics=(
        Metric("top1", description="best epoch of the best learning rate (what the references report)"),
        Metric("top5", description="at the epoch and learning rate of top1"),
        Metric("top1_last", description="last epoch of the best learning rate")),
        headline=("top1",), order=20)

    def run(self, ctx: EvalContext) -> list[dict]:
        recipe = ctx.recipe
        mode = recipe_choice(recipe, "train_features", TRAIN_FEATURES)
        spec = feature_spec(ctx.checkpoint, recipe)
        tcfg = recipe["transform"]
        data = open_classification(ctx, recipe, eval_transform(tcfg, spec.input_filter))
        val = split_features(ctx, data.val, split="val", spec=spec, transform_cfg=tcfg, recipe=recipe)
        generator = torch.Generator().manual_seed(int(recipe["seed"]))
        # head initialisation and online augmentations draw from it; feature extraction in between
        # (on a cache miss) runs in a seeded fork and leaves it as it was
        torch.manual_seed(int(recipe["seed"]))
        bs, drop_last = int(recipe["train_batch_size"]), bool(recipe["drop_last"])
        if mode == "center":
            train = split_features(ctx, data.train, split="train", spec=spec, transform_cfg=tcfg, recipe=recipe)
            n_train = len(train)
            epoch_batches = lambda epoch: _FeatureBatches(train.features, train.labels, bs, drop_last, generator)  # noqa: E731
        else:
            augmented = open_split(data.root, recipe["train_split"], train_transform(tcfg, spec.input_filter))
            n_train = len(augmented)
            if mode == "online":
                epoch_batches = lambda epoch: _OnlineBatches(ctx, augmented, spec, recipe, generator)  # noqa: E731
            else:
                passes = int(recipe["augment_passes"])
                if passes < 1:
                    raise UserError("recipe key 'augment_passes': must be >= 1 with train_features: augmented")
                cached = [split_features(ctx, augmented, split=f"train aug {p + 1}/{passes}", spec=spec,
                                         transform_cfg={**tcfg, "augment": "rrc+flip"}, recipe=recipe,
                                         augment_pass=p) for p in range(passes)]
                epoch_batches = lambda epoch: _FeatureBatches(  # noqa: E731
                    cached[epoch % passes].features, cached[epoch % passes].labels, bs, drop_last, generator)
        lrs = effective_lrs(recipe)
        head_cfg = recipe["head"]
        dim = ctx.checkpoint.backbone.feature_dim(spec.feature)
        grid = HeadGrid(dim, len(data.classes), len(lrs), norm=head_cfg["norm"],
                        l2_normalize=head_cfg["l2_normalize"], init=head_cfg["init"],
                        init_std=float(head_cfg["init_std"]))
        result = train_grid(grid, lrs, recipe, epoch_batches, val.features, val.labels, ctx.device)
        history = result["history"]
        best_head = int(np.argmax(history[:, :, 0].max(axis=0)))
        best_epoch = int(np.argmax(history[:, best_head, 0]))
        top1, top5 = history[best_epoch, best_head]
        grid_summary = {f"{lr:g}": {"top1_max": float(history[:, h, 0].max()), "top1_last": float(history[-1, h, 0])}
                        for h, lr in enumerate(lrs)}
        log(f"linear probe: best lr {lrs[best_head]:g} top-1 {top1:.2f} at epoch {best_epoch + 1}")
        variant = recipe["variant"]
        if recipe["save_head"]:
            state = result["best"][best_head]
            head = state["head"]
            save_classifier(ctx.results_dir, ctx.checkpoint.sha256, f"linear-{variant}", head, {
                "kind": "linear", "protocol": "linear", "variant": variant, "dim": dim,
                "num_classes": len(data.classes), "classes": data.classes, "norm": head.norm_kind,
                "l2_normalize": head.l2_normalize, "feature_spec": spec.as_dict(), "transform": tcfg,
                "lr": lrs[best_head], "epoch": state["epoch"] + 1, "top1": float(top1), "dataset": data.name})
        extra = {"variant": variant, "lr": lrs[best_head], "best_epoch": best_epoch + 1,
                 "epochs": int(recipe["epochs"]), "train_features": mode, "n_train": n_train,
                 "n_val": len(val), "grid": grid_summary}
        # the best head again on val, per sample, for the leaderboard's bootstrap interval
        hit1, hit5 = head_hits(result["best"][best_head]["head"], val.features, val.labels, ctx.device)
        return records_for(data.name, {"top1": top1, "top5": top5,
                                       "top1_last": history[-1, best_head, 0]}, spec, extra,
                           per_sample={"top1": hit1, "top5": hit5})
