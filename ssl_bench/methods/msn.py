"""MSN: Masked Siamese Networks (Assran et al., 2022), after facebookresearch/msn.

Per image: 1 target view and ``rand_views`` anchor views at ``rand_size`` (RandomResizedCrop
scale 0.3-1), ``focal_views`` focal views at ``focal_size`` (scale 0.05-0.3). The anchor
views drop patches (one random set of kept patches shared by the whole batch, CLS kept);
focal views are not dropped. Online encoder + projection head on the anchors; the target
encoder (EMA of encoder + head) on the unmasked target view. Loss: cross-entropy between
anchor predictions softmax(z.q/tau) and the sharpened (T), Sinkhorn-normalised target
predictions, minus ME-MAX (entropy of the mean anchor prediction). The exported encoder is
the target encoder; its evaluation feature is the last block's CLS without the final norm.

As the official ``src/deit.py``: the encoder's weights are initialised by its ``_init_weights``
(``msn.init: deit``; ``timm`` keeps timm's), and the position embedding of the smaller focal
views is resampled bicubically without antialiasing (``interpolate_pos_encoding``).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn import functional as F

from ..backbones import Backbone
from ..distributed import is_distributed
from . import METHODS, Method
from ._masks import patch_drop_keep
from ._mlp import mlp, trunc_normal_init
from ._views import colour_distortion, crop_view, load_rgb, to_tensor


class AllReduceMean(torch.autograd.Function):
    """Mean across ranks in the forward pass, identity gradient (msn src/utils.py ``AllReduce``)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        if is_distributed():
            x = x.contiguous() / dist.get_world_size()
            dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad


@torch.no_grad()
def deit_init(vit: nn.Module) -> None:
    """msn src/deit.py ``VisionTransformer``: Linear weights truncated normal (std 0.02, cut at
    +-2), biases 0; LayerNorm weight 1, bias 0; Conv2d (patch projection, conv stem) Kaiming
    normal (fan_in, ReLU gain: std sqrt(2 / fan_in)), bias 0; pos_embed and cls_token truncated
    normal (std 0.02)."""
    for m in vit.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    nn.init.trunc_normal_(vit.pos_embed, std=0.02)
    nn.init.trunc_normal_(vit.cls_token, std=0.02)


@torch.no_grad()
def sinkhorn(probs: Tensor, iterations: int = 3) -> Tensor:
    """Sinkhorn-Knopp on (B, K) target probabilities (msn src/losses.py ``distributed_sinkhorn``):
    normalise to total mass 1, then alternately give every prototype mass 1/K and every
    sample mass 1/B; rows are rescaled to sum to 1. Sums run over all ranks."""
    q = probs.T.clone()  # (K, B)
    world = dist.get_world_size() if is_distributed() else 1
    batch, protos = q.shape[1] * world, q.shape[0]
    total = q.sum()
    if is_distributed():
        dist.all_reduce(total)
    q /= total
    for _ in range(iterations):
        rows = q.sum(dim=1, keepdim=True)
        if is_distributed():
            dist.all_reduce(rows)
        q /= rows
        q /= protos
        q /= q.sum(dim=0, keepdim=True)
        q /= batch
    q *= batch
    return q.T


def msn_loss(anchors: Tensor, targets: Tensor, prototypes: Tensor, *, temperature: float = 0.1,
             sharpen: float = 0.25, use_sinkhorn: bool = True, sinkhorn_iters: int = 3,
             me_max_weight: float = 1.0) -> tuple[Tensor, dict[str, Tensor]]:
    """MSN objective (paper Eq. 1, msn src/losses.py).

    anchors: (V*B, D) projected anchor representations, view-major (view 0 of every image,
    then view 1, ...); targets: (B, D) projected target representations; prototypes (K, D).
    Returns ``H(p_target, p_anchor)`` averaged over anchors + ``w * (log K - H(mean p_anchor))``.
    """
    anchors = F.normalize(anchors.float(), dim=1)
    protos = F.normalize(prototypes.float(), dim=1)
    probs = torch.softmax(anchors @ protos.T / temperature, dim=1)
    with torch.no_grad():
        t = F.normalize(targets.float(), dim=1)
        target_probs = torch.softmax(t @ protos.T / temperature, dim=1)
        target_probs = target_probs ** (1.0 / sharpen)
        target_probs = target_probs / target_probs.sum(dim=1, keepdim=True)
        if use_sinkhorn:
            target_probs = sinkhorn(target_probs, sinkhorn_iters)
        views = anchors.shape[0] // targets.shape[0]
        target_probs = target_probs.repeat(views, 1)
    ce = torch.mean(torch.sum(-target_probs * torch.log(probs), dim=1))
    mean_probs = AllReduceMean.apply(probs.mean(dim=0))
    me_max = torch.sum(mean_probs * torch.log(mean_probs)) + math.log(float(mean_probs.numel()))
    loss = ce + me_max_weight * me_max
    with torch.no_grad():
        logs = {"msn": ce.detach(), "me_max": me_max.detach(),
                "np": torch.tensor(float(target_probs.argmax(dim=1).unique().numel())),
                "max_t": target_probs.max(dim=1).values.mean()}
    return loss, logs


def linear_value(start: float, end: float, step: int, total: int) -> float:
    """``start + (end - start) * step / total`` (msn src/msn_train.py generator schedules)."""
    return start + (end - start) * step / total


class MSNTransform:
    """PIL image -> {target, anchors (R,3,S,S), focal (F,3,s,s), keep (K,)}."""

    def __init__(self, cfg: dict, patch_size: int):
        self.cfg = cfg
        self.colour = colour_distortion(
            [0.8 * cfg["color_jitter"]] * 3 + [0.2 * cfg["color_jitter"]], 0.8, 0.2, cfg["blur_p"])
        self.tensor = to_tensor()
        self.num_patches = (cfg["rand_size"] // patch_size) ** 2

    def _view(self, img, size, scale):
        view, geometry = crop_view(img, size, scale)
        return self.tensor(self.colour(view)), geometry.tensor()

    def __call__(self, img) -> dict:
        img = load_rgb(img)
        c = self.cfg
        rand = [self._view(img, c["rand_size"], c["rand_crop_scale"]) for _ in range(c["rand_views"] + 1)]
        focal = [self._view(img, c["focal_size"], c["focal_crop_scale"]) for _ in range(c["focal_views"])]
        out = {"target": rand[0][0], "anchors": torch.stack([v for v, _ in rand[1:]]),
               "keep": patch_drop_keep(self.num_patches, c["patch_drop"]),
               "geometry": torch.stack([g for _, g in rand + focal])}
        if focal:
            out["focal"] = torch.stack([v for v, _ in focal])
        return out


@METHODS.register("msn")
class MSN(Method):
    name = "msn"
    sync_batchnorm = True  # msn_train.py: convert_sync_batchnorm when world_size > 1 (GPU only)

    def __init__(self, recipe: dict):
        super().__init__(recipe)
        c, bb = self.cfg, recipe["backbone"]
        self.backbone = Backbone(bb["arch"], c["rand_size"], bb["patch_size"],
                                 drop_path_rate=bb["drop_path_rate"], pos_antialias=c["pos_antialias"])
        if not self.backbone.is_vit:
            raise ValueError("MSN needs a ViT backbone (patch drop)")
        if c["init"] == "deit":
            deit_init(self.backbone.model)
        elif c["init"] != "timm":
            raise ValueError(f"msn.init must be 'deit' or 'timm', got {c['init']!r}")
        self.head = mlp(self.backbone.embed_dim, c["hidden_dim"], c["output_dim"], 3,
                        norm="bn" if c["use_bn"] else None, act="gelu")
        trunc_normal_init(self.head)
        protos = torch.empty(c["num_proto"], c["output_dim"])
        bound = (1.0 / c["output_dim"]) ** 0.5  # msn_train.py: uniform(-1/sqrt(d), 1/sqrt(d))
        nn.init.uniform_(protos, -bound, bound)
        self.prototypes = nn.Parameter(protos)
        self.target_backbone = self.freeze(copy.deepcopy(self.backbone))
        self.target_head = self.freeze(copy.deepcopy(self.head))

    def transform(self):
        return MSNTransform(self.cfg, self.backbone.patch_size)

    def _encode(self, backbone: Backbone, head: nn.Module, images: Tensor, keep=None) -> Tensor:
        # MSN reads the CLS token alone (official deit.py: norm(x)[:, 0]), so the last block computes
        # it alone: the same values, about 1/depth of the encoder's work less (Backbone.tokens)
        return head(backbone.tokens(images, keep=keep, prefix_only=True).cls)

    def loss(self, batch: dict):
        c = self.cfg
        anchors = batch["anchors"].transpose(0, 1).flatten(0, 1)  # view-major (R*B, 3, S, S)
        keep = batch["keep"][0] if c["patch_drop"] > 0 else None  # one draw for the whole batch
        z = [self._encode(self.backbone, self.head, anchors, keep)]
        if "focal" in batch:
            z.append(self._encode(self.backbone, self.head, batch["focal"].transpose(0, 1).flatten(0, 1)))
        with torch.no_grad():
            h = self._encode(self.target_backbone, self.target_head, batch["target"])
        with torch.autocast(device_type=anchors.device.type, enabled=False):
            sharpen = linear_value(c["start_sharpen"], c["final_sharpen"], self.step,
                                   int(self.total_steps * self.recipe["optim"]["ipe_scale"]))
            return msn_loss(torch.cat(z).float(), h.float(), self.prototypes, temperature=c["temperature"],
                            sharpen=sharpen, use_sinkhorn=c["use_sinkhorn"],
                            sinkhorn_iters=c["sinkhorn_iters"], me_max_weight=c["memax_weight"])

    def ema_pairs(self):
        return [(self.backbone, self.target_backbone), (self.head, self.target_head)]

    def extra_param_groups(self):
        # msn_train.py init_opt: prototypes get the scheduled lr, no weight decay, no LARS adaptation
        return [{"params": [self.prototypes], "weight_decay": 0.0, "wd_exclude": True}]

    def no_weight_decay(self, name, param):
        # msn_train.py init_opt: 'bias' or 'bn' in the name, or a 1-d parameter
        return "bias" in name or "bn" in name or param.ndim == 1

    def clip_parameters(self):
        # msn_train.py clips encoder.parameters() (trunk + head), not the prototypes
        return [p for p in list(self.backbone.parameters()) + list(self.head.parameters()) if p.requires_grad]

    def export(self):
        encoder = self.cfg["export"]
        backbone = self.target_backbone if encoder == "target" else self.backbone
        return backbone, {"encoder": encoder,
                          "eval": {"feature": self.cfg["eval_feature"], "final_norm": True,
                                   "input_filter": None}}
