"""MMC: Masked Momentum Contrastive learning (Wu et al., "Masked Momentum Contrastive Learning for
Zero-shot Semantic Understanding"). No official code exists:
every choice the paper leaves open is a recipe option marked ``paper-derived`` in
``ssl_bench/defaults/pretrain/mmc.yaml``.

Per image: two global views (asymmetric blur / solarisation) and ``local_views`` small
unmasked crops. The student sees each global view corrupted by GMML-style group masking in
pixel space (patch-aligned blocks filled with Gaussian noise, or, for a fraction of images,
with the pixels of another image of the batch); the EMA teacher sees the clean global views
and the local crops. Three independent 3-layer MLP heads on the student tokens:

* ``L_REC`` (Eq. 1): h_REC(patch token) -> the patch's pixels; absolute error on the masked
  pixels of the clean view, divided by all P pixels (``(1/P) sum_p M_p |x_p - x^_p|``; recipe
  ``rec_normalise: masked_pixels`` divides by the masked ones, as SiT / MAE);
* ``L_PAT`` (Eq. 2): per-patch InfoNCE between h_PAT(student patch p) and the teacher's
  h_PAT(clean patch p) of the same view (positive) against the teacher patches of the
  OTHER images (negatives: this rank's batch, or every rank's with ``pat_negatives_from:
  all_ranks``, as L_CLS does), temperature tau;
* ``L_CLS`` (Eq. 3): InfoNCE between h_CLS(student CLS of masked view i) and the teacher's
  h_CLS(CLS) of the other global view and of every local crop (keys from the batch, MoCo
  style), temperature tau = 0.2.

``L = w_rec L_REC + w_cls L_CLS + w_pat L_PAT`` (Eq. 4: all weights 1). The teacher is the EMA
of the student without its stochastic depth (DINO / iBOT teachers are built with
drop_path_rate 0), so two teacher passes on one input agree.
"""

from __future__ import annotations

import copy
import random

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..backbones import Backbone
from ..distributed import rank_and_world
from . import METHODS, Method
from ._mlp import mlp, trunc_normal_init, without_drop_path
from ._siamese import gather_no_grad, moco_info_nce
from ._views import colour_distortion, crop_view, load_rgb, to_tensor


# ----- masking (GMML, Atito et al.; MMC supplement "Augmentation") ------------------------------
def gmml_block_mask(grid: tuple[int, int], ratio: float, max_block: float) -> Tensor:
    """(h, w) bool patch mask built from random rectangles (sides 1..``max_block`` x side,
    patch-aligned like GMML's ``align=patch``) until at least ``ratio`` of the patches are
    masked (GMML ``drop_rand_patches``: blocks may overlap; the last one may overshoot)."""
    h, w = grid
    target = ratio * h * w
    mask = torch.zeros(h, w, dtype=torch.bool)
    max_h, max_w = max(1, int(h * max_block)), max(1, int(w * max_block))
    while mask.sum() < target:
        top, left = random.randrange(h), random.randrange(w)
        bh, bw = random.randint(1, max_h), random.randint(1, max_w)
        mask[top:top + bh, left:left + bw] = True
    return mask


def patchify(images: Tensor, patch: int) -> Tensor:
    """(B, C, H, W) -> (B, N, patch*patch*C), patches in raster order, pixels (p, q, c) (MAE)."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // patch, patch, w // patch, patch)
    return torch.einsum("bchpwq->bhwpqc", x).reshape(b, (h // patch) * (w // patch), patch * patch * c)


# ----- losses -----------------------------------------------------------------------------------
def reconstruction_loss(pred: Tensor, target: Tensor, mask: Tensor, normalise: str = "all_pixels") -> Tensor:
    """L_REC: absolute error of the masked patches' pixels.

    pred, target: (B, N, P) patch pixels; mask: (B, N) bool (True = masked). ``all_pixels``
    divides the masked error by every pixel (paper Eq. 1: ``1/P sum_p M_p |x_p - x^_p|``);
    ``masked_pixels`` by the masked ones only (SiT / MAE)."""
    err = (pred.float() - target.float()).abs().mean(dim=-1)  # per patch
    weight = mask.float()
    if normalise == "all_pixels":
        return (err * weight).mean()
    if normalise == "masked_pixels":
        return (err * weight).sum() / weight.sum().clamp_min(1.0)
    raise ValueError(f"mmc.rec_normalise must be 'all_pixels' or 'masked_pixels', got {normalise!r}")


def patch_info_nce(queries: Tensor, keys: Tensor, temperature: float, *, negatives: str = "all",
                   query_mask: Tensor | None = None, gather: bool = False) -> Tensor:
    """L_PAT (MMC Eq. 2) on (B, N, D) student queries and teacher keys of the same view.

    The positive of query (b, p) is key (b, p); negatives are teacher patches of the other
    images: every position (``negatives='all'``) or the same position only
    (``'same_position'``). Keys of the same image at other positions are excluded. With
    ``gather`` the keys of every rank's images join as negatives (no gradient; MoCo style).
    The loss averages over the queries selected by ``query_mask`` (B, N) (default: all patches).
    """
    b, n, _ = queries.shape
    q = F.normalize(queries.float(), dim=-1)
    k = F.normalize(keys.detach().float(), dim=-1)
    rank = 0
    if gather:
        rank, _ = rank_and_world()
        k = gather_no_grad(k.contiguous())
    own = torch.arange(b, device=q.device) + rank * b  # this rank's images among the keys
    if negatives == "all":
        logits = q.reshape(b * n, -1) @ k.reshape(-1, k.shape[-1]).T / temperature  # (BN, B_all N)
        query_image = own.repeat_interleave(n)
        key_image = torch.arange(k.shape[0], device=q.device).repeat_interleave(n)
        target = query_image * n + torch.arange(n, device=q.device).repeat(b)
        key_index = torch.arange(k.shape[0] * n, device=q.device)
        same_image = query_image[:, None] == key_image[None, :]
        logits = logits.masked_fill(same_image & (target[:, None] != key_index[None, :]), float("-inf"))
        losses = F.cross_entropy(logits, target, reduction="none").reshape(b, n)
    elif negatives == "same_position":
        logits = torch.einsum("bnd,cnd->nbc", q, k) / temperature  # (N, B, B_all)
        target = own.expand(n, b)
        losses = F.cross_entropy(logits.reshape(n * b, -1), target.reshape(-1), reduction="none")
        losses = losses.reshape(n, b).T
    else:
        raise ValueError(f"mmc.pat_negatives must be 'all' or 'same_position', got {negatives!r}")
    if query_mask is None:
        return losses.mean()
    weight = query_mask.float()
    return (losses * weight).sum() / weight.sum().clamp_min(1.0)


def cls_info_nce(queries: list[Tensor], keys: list[Tensor], pairs: list[tuple[int, int]],
                 temperature: float) -> Tensor:
    """L_CLS (MMC Eq. 3): mean over (query view, key view) ``pairs`` of the InfoNCE of the
    student CLS embeddings of one view against the teacher CLS embeddings of another (keys of
    the whole batch, gathered across ranks; positive = same image)."""
    return torch.stack([moco_info_nce(queries[i], keys[j], temperature) for i, j in pairs]).mean()


# ----- data -------------------------------------------------------------------------------------
class MMCTransform:
    """PIL image -> {clean (2,3,S,S), masked (2,3,S,S), mask (2,h,w) bool, replace (2,) bool,
    local (L,3,s,s) when local_views > 0}."""

    def __init__(self, cfg: dict, img_size: int, patch_size: int):
        self.cfg, self.img_size, self.patch = cfg, img_size, patch_size
        self.grid = (img_size // patch_size, img_size // patch_size)
        self.colour = [colour_distortion(cfg["color_jitter"], cfg["jitter_p"], cfg["grayscale_p"],
                                         cfg["blur_p"][i], cfg["solarize_p"][i]) for i in range(2)]
        self.local_colour = colour_distortion(cfg["color_jitter"], cfg["jitter_p"], cfg["grayscale_p"],
                                              cfg["local_blur_p"], 0.0)
        self.tensor = to_tensor()

    def __call__(self, img) -> dict:
        img = load_rgb(img)
        c = self.cfg
        clean, masked, masks, replace = [], [], [], []
        for i in range(2):
            view, _ = crop_view(img, self.img_size, c["crop_scale"], interpolation=c["interpolation"])
            x = self.tensor(self.colour[i](view))
            other = random.random() < c["replace_p"]
            lo, hi = c["replace_ratio"] if other else c["mask_ratio"]
            mask = gmml_block_mask(self.grid, random.uniform(lo, hi), c["max_block"])
            pixels = mask.repeat_interleave(self.patch, 0).repeat_interleave(self.patch, 1)
            noise = torch.randn_like(x) * c["noise_std"]
            clean.append(x)
            masked.append(torch.where(pixels[None], noise, x))  # 'other' views are refilled in the batch
            masks.append(mask)
            replace.append(other)
        out = {"clean": torch.stack(clean), "masked": torch.stack(masked), "mask": torch.stack(masks),
               "replace": torch.tensor(replace)}
        if c["local_views"]:
            out["local"] = torch.stack([
                self.tensor(self.local_colour(crop_view(img, c["local_size"], c["local_crop_scale"],
                                                        interpolation=c["interpolation"])[0]))
                for _ in range(c["local_views"])])
        return out


def replace_from_other_images(masked: Tensor, clean: Tensor, mask: Tensor, replace: Tensor, patch: int) -> Tensor:
    """GMML 'replace' corruption: for images flagged in ``replace`` (B,), the masked patches take
    the pixels of the next image in the batch (image i from i + 1, the last from the first;
    same view, same place)."""
    if not bool(replace.any()) or clean.shape[0] < 2:
        return masked
    pixels = mask.repeat_interleave(patch, 1).repeat_interleave(patch, 2)[:, None]  # (B,1,H,W)
    donor = clean.roll(-1, dims=0)
    swapped = torch.where(pixels, donor, clean)
    return torch.where(replace[:, None, None, None], swapped, masked)


# ----- the method -------------------------------------------------------------------------------
@METHODS.register("mmc")
class MMC(Method):
    name = "mmc"
    # the paper's three MLP heads (Sec. 3): h_REC on the masked patches, h_PAT on every patch (Eq. 2),
    # h_CLS on the class token; the teacher's copies of h_PAT and h_CLS
    essential_heads = ("head_rec", "head_pat", "head_cls", "teacher_head_pat", "teacher_head_cls")

    def __init__(self, recipe: dict):
        super().__init__(recipe)
        c, bb = self.cfg, recipe["backbone"]
        self.img_size = bb["img_size"]
        self.backbone = Backbone(bb["arch"], bb["img_size"], bb["patch_size"], drop_path_rate=bb["drop_path_rate"])
        if not self.backbone.is_vit:
            raise ValueError("MMC needs a ViT backbone (CLS and patch tokens)")
        dim, p = self.backbone.embed_dim, self.backbone.patch_size

        def head(out_dim: int) -> nn.Sequential:
            module = mlp(dim, c["head_hidden_dim"], out_dim, c["head_layers"], norm=c["head_norm"] or None,
                         act=c["head_act"])
            trunc_normal_init(module)
            return module

        self.head_rec = head(p * p * 3)
        self.head_cls = head(c["head_output_dim"])
        self.head_pat = head(c["head_output_dim"])
        self.teacher_backbone = self.freeze(without_drop_path(copy.deepcopy(self.backbone)))
        self.teacher_head_cls = self.freeze(copy.deepcopy(self.head_cls))
        self.teacher_head_pat = self.freeze(copy.deepcopy(self.head_pat))

    def transform(self):
        return MMCTransform(self.cfg, self.img_size, self.backbone.patch_size)

    @staticmethod
    def _tokens_head(head: nn.Module, tokens: Tensor) -> Tensor:
        b, n, d = tokens.shape
        return head(tokens.reshape(b * n, d)).reshape(b, n, -1)

    def _masked_reconstruction(self, patches: Tensor, mask: Tensor) -> Tensor:
        """h_REC's pixels for the masked patches, zeros elsewhere: L_REC weighs only masked
        patches (Eq. 1), so the head runs on those alone (its BatchNorm statistics are theirs)."""
        pred = self.head_rec(patches[mask])
        return pred.new_zeros(*mask.shape, pred.shape[-1]).index_put((mask,), pred)

    def loss(self, batch: dict):
        c, p = self.cfg, self.backbone.patch_size
        clean, masks = batch["clean"], batch["mask"].flatten(2)  # (B,2,3,S,S), (B,2,N)
        views = clean.shape[1]
        q_cls, l_rec, l_pat = [], [], []
        t_cls, t_pat = [], []
        with torch.no_grad():  # teacher on the clean global views (+ local crops below)
            for v in range(views):
                t = self.teacher_backbone.tokens(clean[:, v])
                t_cls.append(self.teacher_head_cls(t.cls))
                t_pat.append(self._tokens_head(self.teacher_head_pat, t.patches))
            if "local" in batch:
                local = batch["local"]
                flat = self.teacher_backbone.tokens(local.flatten(0, 1), prefix_only=True).cls
                keys = self.teacher_head_cls(flat).reshape(local.shape[0], local.shape[1], -1)
                t_cls.extend(keys[:, i] for i in range(local.shape[1]))
        for v in range(views):
            x = replace_from_other_images(batch["masked"][:, v], clean[:, v], batch["mask"][:, v],
                                          batch["replace"][:, v], p)
            s = self.backbone.tokens(x)
            q_cls.append(self.head_cls(s.cls))
            pred = self._masked_reconstruction(s.patches, masks[:, v])
            q_pat = self._tokens_head(self.head_pat, s.patches)
            with torch.autocast(device_type=x.device.type, enabled=False):
                l_rec.append(reconstruction_loss(pred.float(), patchify(clean[:, v].float(), p), masks[:, v],
                                                 c["rec_normalise"]))
                l_pat.append(patch_info_nce(q_pat.float(), t_pat[v], c["temperature"], negatives=c["pat_negatives"],
                                            query_mask=masks[:, v] if c["pat_queries"] == "masked" else None,
                                            gather=self._gather_pat()))
        pairs = [(i, j) for i in range(views) for j in range(len(t_cls))
                 if j != i or c["cls_same_view"]]
        with torch.autocast(device_type=clean.device.type, enabled=False):
            l_cls = cls_info_nce([q.float() for q in q_cls], [k.float() for k in t_cls], pairs, c["temperature"])
            rec, pat = torch.stack(l_rec).mean(), torch.stack(l_pat).mean()
            loss = c["w_rec"] * rec + c["w_cls"] * l_cls + c["w_pat"] * pat
        return loss, {"l_rec": rec.detach(), "l_cls": l_cls.detach(), "l_pat": pat.detach(),
                      "masked": masks.float().mean()}

    def _gather_pat(self) -> bool:
        where = self.cfg["pat_negatives_from"]
        if where not in ("local_batch", "all_ranks"):
            raise ValueError(f"mmc.pat_negatives_from must be 'local_batch' or 'all_ranks', got {where!r}")
        return where == "all_ranks"

    def ema_pairs(self):
        return [(self.backbone, self.teacher_backbone), (self.head_cls, self.teacher_head_cls),
                (self.head_pat, self.teacher_head_pat)]

    def export(self):
        encoder = self.cfg["export"]
        backbone = self.teacher_backbone if encoder == "teacher" else self.backbone
        return backbone, {"encoder": encoder,
                          "eval": {"feature": self.cfg["eval_feature"], "final_norm": True, "input_filter": None}}
