"""ConMIM: masked image modelling with denoising contrast (Yi et al., ICLR 2023),
after TencentARC/ConMIM.

One flip + RandomResizedCrop shared by two renderings: the weak one (crop only) is
corrupted by a random mask on a coarse grid (75 %, masked patches replaced by a learnable
mask token); the strong one (+ colour jitter, grayscale, blur, solarisation) is encoded in
full by the momentum teacher. Every token goes through a 3-layer BN projector; the loss is a
per-image patch-level InfoNCE: each masked student token against all teacher tokens of
the same image, the same position being the positive (temperature 0.1).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..backbones import Backbone
from . import METHODS, Method
from ._masks import grid_random_mask
from ._mlp import mlp, trunc_normal_init
from ._views import colour_distortion, crop_view, load_rgb, to_tensor


def conmim_loss(student: Tensor, teacher: Tensor, mask: Tensor, temperature: float = 0.1,
                dictionary: str = "image") -> Tensor:
    """Denoising contrastive loss (paper Eq. 3, appendix A.2; ConMIM engine_for_pretraining.py).

    student, teacher: (B, N, D) projected patch tokens; mask: (B, N) bool, True = masked.
    ``dictionary='image'``: the keys of a masked query are the N teacher tokens of its own
    image; ``'batch'``: all B*N teacher tokens (the paper's ablation). Cross-entropy over the
    masked positions only; the positive is the teacher token at the same position.
    """
    student = F.normalize(student.float(), dim=-1)
    teacher = F.normalize(teacher.float(), dim=-1)
    batch, tokens, _ = student.shape
    positions = torch.arange(tokens, device=student.device).expand(batch, tokens)
    if dictionary == "image":
        logits = torch.einsum("bnd,bkd->bnk", student, teacher) / temperature
        return F.cross_entropy(logits[mask], positions[mask])
    if dictionary == "batch":
        logits = student[mask] @ teacher.flatten(0, 1).T / temperature
        offsets = torch.arange(batch, device=student.device)[:, None] * tokens
        return F.cross_entropy(logits, (positions + offsets)[mask])
    raise ValueError(f"conmim.dictionary must be 'image' or 'batch', got {dictionary!r}")


class ConMIMTransform:
    """PIL image -> {weak (3,S,S), strong (3,S,S), mask (h,w) bool, geometry (5,)}."""

    def __init__(self, cfg: dict, img_size: int, patch_size: int):
        self.cfg, self.img_size, self.patch_size = cfg, img_size, patch_size
        self.tensor = to_tensor()
        self.strong = colour_distortion(cfg["strong_jitter"], cfg["strong_jitter_p"], cfg["strong_grayscale_p"],
                                        cfg["strong_blur_p"], cfg["strong_solarize_p"])

    def __call__(self, img) -> dict:
        img = load_rgb(img)
        view, geometry = crop_view(img, self.img_size, self.cfg["crop_scale"], interpolation=self.cfg["interpolation"])
        weak, strong = self.tensor(view), self.tensor(self.strong(view))
        if self.cfg["swap_views"]:  # paper Table 8 variant: strong view corrupted, weak view to the teacher
            weak, strong = strong, weak
        grid = (self.img_size // self.patch_size,) * 2
        mask = grid_random_mask(grid, self.patch_size, self.cfg["mask_patch_size"], self.cfg["mask_ratio"])
        return {"weak": weak, "strong": strong, "mask": mask, "geometry": geometry.tensor()}


@METHODS.register("conmim")
class ConMIM(Method):
    name = "conmim"
    # BEiT/ConMIM ``no_weight_decay()``: pos_embed and cls_token (mask_token IS decayed there)
    no_decay_names = ("backbone.model.pos_embed", "backbone.model.cls_token")

    def __init__(self, recipe: dict):
        super().__init__(recipe)
        c, bb = self.cfg, recipe["backbone"]
        self.backbone = Backbone(bb["arch"], bb["img_size"], bb["patch_size"], mask_token=True,
                                 drop_path_rate=bb["drop_path_rate"])
        if not self.backbone.is_vit:
            raise ValueError("ConMIM needs a ViT backbone (mask token)")
        self.projector = mlp(self.backbone.embed_dim, c["proj_hidden_dim"], c["proj_output_dim"],
                             c["proj_layers"], bias=False, norm="bn", act="relu", last_norm="bn",
                             last_affine=False)
        trunc_normal_init(self.projector)
        self.teacher_backbone = self.freeze(copy.deepcopy(self.backbone))
        self.teacher_projector = self.freeze(copy.deepcopy(self.projector))

    def transform(self):
        return ConMIMTransform(self.cfg, self.recipe["backbone"]["img_size"], self.backbone.patch_size)

    def _project(self, projector: nn.Module, tokens: Tensor, prefix: int) -> Tensor:
        # projector over every token (CLS included, as the official code flattens B*L), CLS dropped after
        b, length, d = tokens.shape
        return projector(tokens.reshape(b * length, d)).reshape(b, length, -1)[:, prefix:]

    def loss(self, batch: dict):
        mask = batch["mask"].flatten(1)
        with torch.no_grad():  # the teacher stays in train mode: BN batch statistics (official)
            t = self.teacher_backbone.tokens(batch["strong"])
            keys = self._project(self.teacher_projector, t.normed, t.num_prefix)
        s = self.backbone.tokens(batch["weak"], mask=mask)
        queries = self._project(self.projector, s.normed, s.num_prefix)
        with torch.autocast(device_type=queries.device.type, enabled=False):
            loss = conmim_loss(queries.float(), keys.float(), mask, self.cfg["temperature"], self.cfg["dictionary"])
        return loss, {"masked": mask.sum(dim=1).float().mean()}

    def ema_pairs(self):
        return [(self.backbone, self.teacher_backbone), (self.projector, self.teacher_projector)]

    def export(self):
        encoder = self.cfg["export"]
        backbone = self.teacher_backbone if encoder == "teacher" else self.backbone
        return backbone, {"encoder": encoder,
                          "eval": {"feature": self.cfg["eval_feature"], "final_norm": True,
                                   "input_filter": None}}
