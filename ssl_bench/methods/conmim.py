"""ConMIM: masked image modelling with denoising contrast (Yi et al., ICLR 2023),
after TencentARC/ConMIM.

One flip + RandomResizedCrop shared by two renderings: the weak one (crop only) is
corrupted by a random mask on a coarse grid (75 %, masked patches replaced by a learnable
mask token); the strong one (+ colour jitter, grayscale, blur, solarisation) is encoded in
full by the momentum teacher. Every token goes through a 3-layer BN projector; the loss is a
per-image patch-level InfoNCE: each masked student token against all teacher tokens of
the same image, the same position being the positive (temperature 0.1).

Backbone: the official one is BEiT-style (timm ``beit_*``: shared relative position bias, layer
scale, no absolute position embedding); any timm ViT works too. Initialisation
``conmim.init: beit`` is the official ``modeling_pretrain.py`` one for either.
"""

from __future__ import annotations

import copy
import math

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


@torch.no_grad()
def beit_init(backbone: Backbone, projector: nn.Module, std: float = 0.02) -> None:
    """modeling_pretrain.py ``VisionTransformerForMaskedImageModeling``: its ``trunc_normal_``
    cuts at +-std (``a=-std, b=std``); cls_token, mask_token and pos_embed drawn so; then
    ``_init_weights`` on every module (the projector included): Linear and Conv2d weights the
    same, biases 0, LayerNorm weight 1 / bias 0; then ``fix_init_weight``: block l's (1-based)
    ``attn.proj`` and ``mlp.fc2`` weights divided by sqrt(2 l)."""
    def trunc(t: Tensor) -> None:
        nn.init.trunc_normal_(t, std=std, a=-std, b=std)

    model = backbone.model
    for tensor in (model.cls_token, backbone.mask_token, model.pos_embed):
        if tensor is not None:
            trunc(tensor)
    for module in [*model.modules(), *projector.modules()]:
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            trunc(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm) and module.elementwise_affine:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    for layer, block in enumerate(model.blocks, start=1):
        block.attn.proj.weight.div_(math.sqrt(2.0 * layer))
        block.mlp.fc2.weight.div_(math.sqrt(2.0 * layer))


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
    essential_heads = ("projector", "teacher_projector")  # the paper's projection of every token (Sec. 3)

    def __init__(self, recipe: dict):
        super().__init__(recipe)
        c, bb = self.cfg, recipe["backbone"]
        shared = c["shared_rel_pos_bias"] and bb["arch"].startswith("beit")
        self.backbone = Backbone(bb["arch"], bb["img_size"], bb["patch_size"], mask_token=True,
                                 drop_path_rate=bb["drop_path_rate"], shared_rel_pos_bias=shared)
        if not self.backbone.is_vit:
            raise ValueError("ConMIM needs a ViT backbone (mask token)")
        self.projector = mlp(self.backbone.embed_dim, c["proj_hidden_dim"], c["proj_output_dim"],
                             c["proj_layers"], bias=False, norm="bn", act="relu", last_norm="bn",
                             last_affine=False)
        if c["init"] == "beit":
            beit_init(self.backbone, self.projector, c["init_std"])
        elif c["init"] == "timm":  # timm's backbone init; the projector truncated at +-2 (not +-std)
            trunc_normal_init(self.projector, c["init_std"])
        else:
            raise ValueError(f"conmim.init must be 'beit' or 'timm', got {c['init']!r}")
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
