"""SiameseIM: Siamese Image Modeling (Tao et al., CVPR 2023), after OpenGVLab/Siamese-Image-Modeling.

Two views of one image with their crop geometry (MoCo v3 augmentations, asymmetric
blur / solarisation). The online encoder (ViT without final norm, fixed sin-cos positions,
frozen patch embedding) sees the visible tokens of view 1 (BEiT blockwise mask, fixed
count); a linear ``decoder_embed`` + projector (transformer blocks with BatchNorm) follows.
The predictor (BN transformer blocks) gets the CLS and visible view-1 tokens with their
ordinary sin-cos positions plus one mask token per view-2 patch, whose position is that
patch's place relative to view 1's top-left corner in view-1 patch units, sin-cos embedded
and concatenated with the sin-cos embedding of the scale change
``s = (10 ln(h2/h1), 10 ln(w2/w1))``, then a Linear (paper Eq. 2 and after). The target is
the momentum encoder + projector on all view-2 tokens, normalised by LayerNorm without
affine. Loss: dense UniGrad per token, ``(||y - z||^2 + lambda * y^T C y) / D`` with ``C``
the target correlation matrix (O(D^2) memory). The exported encoder is the ONLINE one, no
final norm, evaluated by global average pooling of the patch tokens.
"""

from __future__ import annotations

import copy
from functools import partial

import torch
import torch.distributed as dist
from timm.models.vision_transformer import Block
from torch import Tensor, nn
from torch.nn import functional as F

from ..backbones import Backbone
from ..distributed import is_distributed
from . import METHODS, Method
from ._mlp import without_drop_path
from ._masks import blockwise_mask
from ._views import colour_distortion, crop_view, load_rgb, to_tensor


# ----- positions ------------------------------------------------------------------------------
def sincos_1d(positions: Tensor, dim: int) -> Tensor:
    """(..., ) positions -> (..., dim): ``[sin(p w_k), cos(p w_k)]``, ``w_k = 10000^(-k/(dim/2))``,
    k = 0..dim/2-1 (MAE / SiameseIM util/pos_embed.py)."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even dimension, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    out = positions.double()[..., None] * omega.to(positions.device)
    return torch.cat([out.sin(), out.cos()], dim=-1).float()


def sincos_2d(rows: Tensor, cols: Tensor, dim: int) -> Tensor:
    """Row positions embedded in the first ``dim/2`` channels, columns in the second
    (SiameseIM get_2d_sincos_pos_embed: emb_h then emb_w)."""
    if dim % 4:
        raise ValueError(f"2-d sin-cos embedding needs a dimension divisible by 4, got {dim}")
    return torch.cat([sincos_1d(rows, dim // 2), sincos_1d(cols, dim // 2)], dim=-1)


def grid_positions(grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """(h*w,) row and column indices of a patch grid in raster order."""
    h, w = grid
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                                indexing="ij")
    return rows.reshape(-1), cols.reshape(-1)


def grid_sincos(grid: tuple[int, int], dim: int) -> Tensor:
    """(h*w, dim) ordinary fixed 2-d sin-cos position embedding (MAE)."""
    return sincos_2d(*grid_positions(grid), dim)


def relative_positions(geometry: Tensor, grid: tuple[int, int], anchor: float = 0.5) -> tuple[Tensor, Tensor, Tensor]:
    """Positions of view-2 patches in view-1 patch units and the scale change.

    geometry: (B, 2, 5) float, per view (top, left, height, width, flip) in source pixels
    (``_views.Geometry``: crop, then an optional horizontal flip of the crop). Each view is
    resized to the same (h, w) patch grid. For the view-2 patch (u, v), the point at
    ``(u + anchor, v + anchor)`` patches inside view 2 is mapped to the source image and then
    into view 1's patch coordinates (flips of either view included), minus ``anchor``.

    anchor 0.5 (official code, get_2d_sincos_pos_embed_relative: patch centres) or 0.0 (paper
    Eq. 2: ``h2/h1 * u + (i2 - i1)/h1 * N_h``). The same view gives (u, v) in both cases.
    Returns rows (B, h*w), cols (B, h*w), scale (B, 2) = (10 ln(h2/h1), 10 ln(w2/w1)).
    """
    g = geometry.double()
    t1, l1, h1, w1, f1 = g[:, 0].unbind(-1)
    t2, l2, h2, w2, f2 = g[:, 1].unbind(-1)
    gh, gw = grid
    u, v = grid_positions(grid)
    u, v = u.to(g.device), v.to(g.device)
    # rows: view-2 row -> source y -> view-1 row
    y = t2[:, None] + (u[None] + anchor) * (h2 / gh)[:, None]
    rows = (y - t1[:, None]) * (gh / h1)[:, None] - anchor
    # columns: a flipped view reads its crop right to left
    c2 = (v[None] + anchor) * (w2 / gw)[:, None]
    x = torch.where(f2[:, None] > 0.5, (l2 + w2)[:, None] - c2, l2[:, None] + c2)
    c1 = torch.where(f1[:, None] > 0.5, (l1 + w1)[:, None] - x, x - l1[:, None])
    cols = c1 * (gw / w1)[:, None] - anchor
    scale = torch.stack([10 * torch.log(h2 / h1), 10 * torch.log(w2 / w1)], dim=-1)
    return rows, cols, scale


def relative_embedding(geometry: Tensor, grid: tuple[int, int], dim: int, anchor: float = 0.5) -> Tensor:
    """(B, h*w, 2*dim): ``Concat(PE(p2), PE(s))`` of paper Eq. 3, i.e. sin-cos of rows, cols
    (``dim`` channels, like ``grid_sincos``) then of the two scale changes (``dim`` channels)."""
    rows, cols, scale = relative_positions(geometry, grid, anchor)
    pos = sincos_2d(rows, cols, dim)
    scale_emb = sincos_2d(scale[:, 0:1].expand_as(rows), scale[:, 1:2].expand_as(cols), dim)
    return torch.cat([pos, scale_emb], dim=-1)


# ----- loss -----------------------------------------------------------------------------------
def unigrad_loss(pred: Tensor, target: Tensor, neg_weight: float = 0.02, *, target_norm: bool = True,
                 eps: float = 1e-5) -> Tensor:
    """Dense UniGrad (SiameseIM models_sim.py ``compute_unigrad_loss``).

    pred, target: (..., D); every token is a sample. The target is normalised by LayerNorm
    without affine (MAE-like, ``target_norm``); the prediction is not normalised.
    ``pos = mean_i ||y_i - z_i||^2``; ``C = mean_j z_j z_j^T`` over all target tokens (of all
    ranks); ``neg = mean_i y_i^T C y_i`` (= mean_i mean_j (z_j . y_i)^2, never formed as an
    N x N matrix); loss = ``(pos + neg_weight * neg) / D``.
    """
    dim = pred.shape[-1]
    y = pred.float().reshape(-1, dim)
    with torch.no_grad():
        z = target.float().reshape(-1, dim)
        if target_norm:
            z = F.layer_norm(z, (dim,), eps=eps)
        corr = z.T @ z / z.shape[0]
        if is_distributed():
            dist.all_reduce(corr)
            corr /= dist.get_world_size()
    pos = ((y - z) ** 2).sum(-1).mean()
    neg = ((y @ corr) * y).sum(-1).mean()
    return (pos + neg_weight * neg) / dim


# ----- modules --------------------------------------------------------------------------------
class TokenBatchNorm(nn.Module):
    """BatchNorm1d over (B, L, C) tokens, statistics in float32 (official ``PermuteBN``).

    The tokens are normalised as one (B * L, C) batch: the same per-channel statistics as the
    official permute to (B, C, L), without its two transposed copies. The output keeps the input's
    dtype, which is what autocast would cast it to for the linear layers that read it."""

    def __init__(self, dim: int, device=None, dtype=None):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.bn(x.reshape(-1, x.shape[-1]).float()).reshape(x.shape).to(x.dtype)


def blocks(depth: int, dim: int, heads: int, mlp_ratio: float, norm: str) -> nn.ModuleList:
    if norm == "bn":
        norm_layer = TokenBatchNorm
    elif norm == "ln":
        norm_layer = partial(nn.LayerNorm, eps=1e-6)  # models_sim.py partial(LayerNorm, eps=1e-6)
    else:
        raise ValueError(f"siameseim: norm must be 'bn' or 'ln', got {norm!r}")
    return nn.ModuleList([Block(dim, heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer) for _ in range(depth)])


def mae_init(module: nn.Module) -> None:
    """Xavier-uniform Linear weights, zero biases, unit LayerNorm (models_sim.py ``_init_weights``)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class SiameseIMTransform:
    """PIL image -> {x1, x2 (3,S,S), geometry (2,5) float, mask (h,w) bool}
    (main_pretrain.py ``DataAugmentationForSIM`` + ``ImagenetWithMask``)."""

    def __init__(self, cfg: dict, img_size: int, patch_size: int):
        self.cfg, self.img_size = cfg, img_size
        self.grid = (img_size // patch_size, img_size // patch_size)
        self.colour = [colour_distortion(cfg["color_jitter"], cfg["jitter_p"], cfg["grayscale_p"],
                                         cfg["blur_p"][i], cfg["solarize_p"][i]) for i in range(2)]
        self.tensor = to_tensor()

    def __call__(self, img) -> dict:
        img = load_rgb(img)
        c = self.cfg
        views, geometry = [], []
        for i in range(2):
            view, geo = crop_view(img, self.img_size, c["crop_scale"], flip_p=c["flip_p"],
                                  interpolation=c["interpolation"])
            views.append(self.tensor(self.colour[i](view)))
            geometry.append(geo.tensor())
        mask = blockwise_mask(self.grid, c["num_masking_patches"], min_block=c["min_mask_patches"],
                              max_block=c["max_mask_patches"], min_aspect=c["mask_min_aspect"])
        return {"x1": views[0], "x2": views[1], "geometry": torch.stack(geometry).float(), "mask": mask}


@METHODS.register("siameseim")
class SiameseIM(Method):
    name = "siameseim"
    sync_batchnorm = True  # main_pretrain.py: convert_sync_batchnorm under distributed training (GPU only)
    # the paper's decoder (Fig. 2): projector and predictor blocks with their embeddings, online and target
    essential_heads = ("decoder_embed", "projector", "predictor", "decoder_pos_mlp", "decoder_pred",
                       "target_decoder_embed", "target_projector")

    def __init__(self, recipe: dict):
        super().__init__(recipe)
        c, bb = self.cfg, recipe["backbone"]
        self.img_size = bb["img_size"]
        self.backbone = Backbone(bb["arch"], bb["img_size"], bb["patch_size"], final_norm=False,
                                 drop_path_rate=bb["drop_path_rate"])
        if not self.backbone.is_vit:
            raise ValueError("SiameseIM needs a ViT backbone (visible-token encoding)")
        vit, dim, dd = self.backbone.model, self.backbone.embed_dim, c["decoder_dim"]
        self.grid = (bb["img_size"] // self.backbone.patch_size,) * 2
        if c["init"] == "mae":
            mae_init(vit)
            w = vit.patch_embed.proj.weight.data
            nn.init.xavier_uniform_(w.view(w.shape[0], -1))
            nn.init.normal_(vit.cls_token, std=0.02)
        # fixed sin-cos positions, CLS position zero (models_sim.py initialize_weights)
        pos = torch.cat([torch.zeros(vit.num_prefix_tokens, dim), grid_sincos(self.grid, dim)])
        vit.pos_embed.data.copy_(pos.unsqueeze(0))
        vit.pos_embed.requires_grad_(False)
        if not c["train_patch_embed"]:  # the whole patch embedding (projection, or conv stem + projection)
            vit.patch_embed.requires_grad_(False)
        self.decoder_embed = nn.Linear(dim, dd)
        self.projector = blocks(c["projector_depth"], dd, c["decoder_heads"], c["mlp_ratio"], c["projector_norm"])
        self.predictor = blocks(c["predictor_depth"], dd, c["decoder_heads"], c["mlp_ratio"], c["predictor_norm"])
        self.decoder_pos_mlp = nn.Linear(2 * dd, dd)
        self.decoder_pred = nn.Linear(dd, dd)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dd))
        for module in (self.decoder_embed, self.projector, self.predictor, self.decoder_pos_mlp, self.decoder_pred):
            mae_init(module)
        nn.init.normal_(self.mask_token, std=0.02)
        # models_sim.py build_momentum_target: mm_blocks are built without drop path
        self.target_backbone = self.freeze(without_drop_path(copy.deepcopy(self.backbone)))
        self.target_decoder_embed = self.freeze(copy.deepcopy(self.decoder_embed))
        self.target_projector = self.freeze(copy.deepcopy(self.projector))

    def transform(self):
        return SiameseIMTransform(self.cfg, self.img_size, self.backbone.patch_size)

    def _project(self, embed: nn.Module, projector: nn.ModuleList, tokens: Tensor) -> Tensor:
        x = embed(tokens)
        for blk in projector:
            x = blk(x)
        return x

    def loss(self, batch: dict):
        c = self.cfg
        x1, x2, mask = batch["x1"], batch["x2"], batch["mask"].flatten(1)
        b, n = mask.shape
        visible = (~mask).nonzero()[:, 1].reshape(b, -1)  # fixed mask count: same K per image
        online = self.backbone.tokens(x1, keep=visible).prenorm  # (B, 1+K, D), no final norm
        online = self._project(self.decoder_embed, self.projector, online)
        dd = online.shape[-1]
        pos = grid_sincos(self.grid, dd).to(online.device, online.dtype)
        vis_pos = pos[visible]  # (B, K, dd)
        rel = relative_embedding(batch["geometry"], self.grid, dd, c["rel_pos_anchor"]).to(online.device)
        x2_pos = self.decoder_pos_mlp(rel.to(online.dtype))  # (B, N, dd)
        seq = torch.cat([online[:, :1], online[:, 1:] + vis_pos, self.mask_token.to(online.dtype) + x2_pos], dim=1)
        for blk in self.predictor:
            seq = blk(seq)
        pred = self.decoder_pred(seq[:, -n:])
        with torch.no_grad():  # target BN in train mode: batch statistics (official model.train())
            target = self.target_backbone.tokens(x2).prenorm
            target = self._project(self.target_decoder_embed, self.target_projector, target)[:, 1:]
        with torch.autocast(device_type=pred.device.type, enabled=False):
            loss = unigrad_loss(pred.float(), target.float(), c["neg_weight"], target_norm=c["target_norm"])
        return loss, {"masked": mask.sum(dim=1).float().mean()}

    def ema_pairs(self):
        # models_sim.py mm_update: patch embed, blocks, cls token, decoder_embed, projector blocks
        return [(self.backbone, self.target_backbone), (self.decoder_embed, self.target_decoder_embed),
                (self.projector, self.target_projector)]

    def export(self):
        encoder = self.cfg["export"]
        backbone = self.target_backbone if encoder == "target" else self.backbone
        return backbone, {"encoder": encoder,
                          "eval": {"feature": self.cfg["eval_feature"], "final_norm": False, "input_filter": None}}
