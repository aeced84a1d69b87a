"""MSCN: Masked Siamese ConvNets (Jing et al., "Masked Siamese ConvNets", 2022). No official code
exists: choices the paper leaves open are recipe options marked ``paper-derived`` in
``ssl_bench/defaults/pretrain/mscn.yaml``.

Masking pipeline of the paper's Section 4.6, applied per view in the data workers:

1. standard augmentations (RandomResizedCrop, flip, colour jitter, grayscale, blur);
2. high-pass filter (``ssl_bench.filters.highpass``, sigma 5): zero now means "no information";
3. spatial mask: a random grid mask (cells of ``grid_size`` px, each dropped with probability
   ``mask_ratio``) with probability 1 - ``focal_p``, else a focal mask (a grid-aligned
   rectangle kept, everything else masked: a crop without resize); channel dimension: with
   probability ``channel_p`` three independent masks, one per colour channel, else one mask
   shared by the channels;
4. Gaussian noise in the masked area, with a different probability of masking and noise std
   per branch (asymmetry: ``mask_p``/``noise_std`` = [source, target]);
5. multimasks: every view gets one target rendering and ``num_masks`` source renderings;
   the loss runs on the asymmetric pairs (source rendering of view v, target rendering of
   view 1 - v).

Losses: SimCLR (projector 2048-2048-256 with BN after every layer, NT-Xent tau 0.2) or BYOL
(projector 2048-4096-256, predictor 256-4096-256, EMA target, cosine momentum 0.996 -> 1; the
two directions summed, BYOL Eq. 2, each averaged over the source renderings). BatchNorm is
synchronised across GPUs (SimCLR's global BN; BYOL's cross-replica BN).
Any timm ConvNet works (ResNet-50 by default); the exported checkpoint records the high-pass
filter so protocols apply it to evaluation inputs (paper Appendix A.2).
"""

from __future__ import annotations

import copy
import math
import random

import torch
from torch import Tensor

from ..backbones import Backbone
from ..filters import highpass
from . import METHODS, Method
from ._mlp import mlp
from ._siamese import byol_regression, fill_noise, nt_xent
from ._views import colour_distortion, crop_view, load_rgb, to_tensor


# ----- masks --------------------------------------------------------------------------------------
def grid_mask(size: tuple[int, int], grid: int, ratio: float) -> Tensor:
    """(H, W) bool, True = masked: the image is cut into ``grid`` px cells (the last row / column
    may be partial) and every cell is dropped independently with probability ``ratio``."""
    h, w = size
    gh, gw = math.ceil(h / grid), math.ceil(w / grid)
    cells = torch.tensor([random.random() < ratio for _ in range(gh * gw)]).reshape(gh, gw)
    return cells.repeat_interleave(grid, 0).repeat_interleave(grid, 1)[:h, :w]


def focal_mask(size: tuple[int, int], grid: int, scale: tuple[float, float],
               ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Tensor:
    """(H, W) bool, True = masked: everything outside one kept rectangle of whole grid cells
    whose area is about ``U(scale)`` of the image and aspect log-uniform in ``ratio`` (a
    "crop without resizing", a special case of the grid mask; paper Sec. 4.3, MSN focal
    crop scale)."""
    h, w = size
    gh, gw = math.ceil(h / grid), math.ceil(w / grid)
    area = random.uniform(*scale) * gh * gw
    aspect = math.exp(random.uniform(math.log(ratio[0]), math.log(ratio[1])))
    kh = min(gh, max(1, round(math.sqrt(area / aspect))))
    kw = min(gw, max(1, round(math.sqrt(area * aspect))))
    top, left = random.randint(0, gh - kh), random.randint(0, gw - kw)
    cells = torch.ones(gh, gw, dtype=torch.bool)
    cells[top:top + kh, left:left + kw] = False
    return cells.repeat_interleave(grid, 0).repeat_interleave(grid, 1)[:h, :w]


def mscn_mask(size: tuple[int, int], cfg: dict, channels: int = 3) -> tuple[Tensor, dict]:
    """(C, H, W) bool mask (True = masked) and what was drawn: ``{'focal', 'channelwise'}``.

    The spatial type is drawn once per masked rendering (focal with ``focal_p``, else grid);
    with ``channel_p`` every channel gets its own mask of that type."""
    focal = random.random() < cfg["focal_p"]
    channelwise = random.random() < cfg["channel_p"]

    def spatial() -> Tensor:
        if focal:
            return focal_mask(size, cfg["grid_size"], tuple(cfg["focal_scale"]))
        return grid_mask(size, cfg["grid_size"], cfg["mask_ratio"])

    if channelwise:
        mask = torch.stack([spatial() for _ in range(channels)])
    else:
        mask = spatial().expand(channels, *size).clone()
    return mask, {"focal": focal, "channelwise": channelwise}


def mask_rendering(x: Tensor, cfg: dict, branch: int) -> Tensor:
    """One masked rendering of a high-passed view for ``branch`` (0 = source, 1 = target):
    masked with probability ``mask_p[branch]``, masked area filled with N(0, noise_std[branch]^2)."""
    if random.random() >= cfg["mask_p"][branch]:
        return x
    mask, _ = mscn_mask(tuple(x.shape[-2:]), cfg, x.shape[0])
    return fill_noise(x, mask, cfg["noise_std"][branch])


class MSCNTransform:
    """PIL image -> {views (2, 1 + num_masks, 3, S, S)}: per view, rendering 0 is the target
    branch's, renderings 1.. the source branch's multimasks (all high-passed)."""

    def __init__(self, cfg: dict, img_size: int):
        self.cfg, self.img_size = cfg, img_size
        self.colour = colour_distortion(cfg["color_jitter"], cfg["jitter_p"], cfg["grayscale_p"], cfg["blur_p"])
        self.tensor = to_tensor()

    def __call__(self, img) -> dict:
        img = load_rgb(img)
        c = self.cfg
        views = []
        for _ in range(2):
            view, _ = crop_view(img, self.img_size, c["crop_scale"], interpolation=c["interpolation"])
            x = highpass(self.tensor(self.colour(view)), c["highpass_sigma"])
            renders = [mask_rendering(x, c, 1)] + [mask_rendering(x, c, 0) for _ in range(c["num_masks"])]
            views.append(torch.stack(renders))
        return {"views": torch.stack(views)}


# ----- the method -------------------------------------------------------------------------------
@METHODS.register("mscn")
class MSCN(Method):
    name = "mscn"
    sync_batchnorm = True  # SimCLR "global BN" (Sec. 2.3, batch statistics over all devices); BYOL cross-replica BN

    def __init__(self, recipe: dict):
        super().__init__(recipe)
        c, bb = self.cfg, recipe["backbone"]
        self.img_size = bb["img_size"]
        self.backbone = Backbone(bb["arch"], bb["img_size"], bb["patch_size"], drop_path_rate=bb["drop_path_rate"])
        dim = self.backbone.feature_dim("avgpool")
        if c["loss"] == "simclr":  # MSCN A.1: ReLU between layers, BN after every layer
            self.projector = mlp(dim, c["proj_hidden_dim"], c["proj_output_dim"], 2, norm="bn", act="relu",
                                 last_norm="bn")
        elif c["loss"] == "byol":  # MSCN A.1: BN after every layer except the final linear layer
            self.projector = mlp(dim, c["proj_hidden_dim"], c["proj_output_dim"], 2, norm="bn", act="relu")
            self.predictor = mlp(c["proj_output_dim"], c["pred_hidden_dim"], c["proj_output_dim"], 2,
                                 norm="bn", act="relu")
            self.target_backbone = self.freeze(copy.deepcopy(self.backbone))
            self.target_projector = self.freeze(copy.deepcopy(self.projector))
        else:
            raise ValueError(f"mscn.loss must be 'simclr' or 'byol', got {c['loss']!r}")

    def transform(self):
        return MSCNTransform(self.cfg, self.img_size)

    def pairs(self, renders: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
        """((view, source rendering), (other view, its target rendering)) pairs."""
        return [((v, m), (1 - v, 0)) for v in range(2) for m in range(1, renders)]

    def loss(self, batch: dict):
        c = self.cfg
        views = batch["views"]  # (B, 2, R, 3, S, S)
        b, _, renders = views.shape[:3]
        pairs = self.pairs(renders)
        if c["loss"] == "simclr":
            z = self.projector(self.backbone.features(views.transpose(0, 1).transpose(1, 2).flatten(0, 2), "avgpool"))
            z = z.reshape(2, renders, b, -1)
            with torch.autocast(device_type=z.device.type, enabled=False):
                loss = torch.stack([nt_xent(z[v, m].float(), z[w, n].float(), c["temperature"])
                                    for (v, m), (w, n) in pairs]).mean()
            return loss, {"pairs": torch.tensor(float(len(pairs)))}
        sources = views[:, :, 1:].transpose(0, 1).transpose(1, 2).flatten(0, 2)  # (2*(R-1)*B, ...)
        p = self.predictor(self.projector(self.backbone.features(sources, "avgpool"))).reshape(2, renders - 1, b, -1)
        with torch.no_grad():
            targets = views[:, :, 0].transpose(0, 1).flatten(0, 1)  # (2*B, ...)
            t = self.target_projector(self.target_backbone.features(targets, "avgpool")).reshape(2, b, -1)
        with torch.autocast(device_type=p.device.type, enabled=False):
            # BYOL Eq. 2: L + L~ (the two directions summed), each direction averaged over the multimasks
            loss = torch.stack([byol_regression(p[v, m - 1].float(), t[w].float())
                                for (v, m), (w, _) in pairs]).mean() * 2
        return loss, {"pairs": torch.tensor(float(len(pairs)))}

    def ema_pairs(self):
        if self.cfg["loss"] != "byol":
            return []
        return [(self.backbone, self.target_backbone), (self.projector, self.target_projector)]

    def export(self):
        return self.backbone, {"encoder": "online",
                               "eval": {"feature": "avgpool", "final_norm": True,
                                        "input_filter": {"name": "highpass", "sigma": float(self.cfg["highpass_sigma"])}}}
