"""Backbones over timm with the one feature API every method and protocol uses.

``Backbone`` wraps a timm ViT (tiny/small/base/large, patch 16 or 8, any image size:
position embeddings are interpolated by timm's ``dynamic_img_size``) or a timm ConvNet
such as ResNet-50. Its state dict is timm's own key layout, so an exported checkpoint
loads into ``timm.create_model(arch)`` directly.

Feature kinds (``Backbone.features``):
    ``cls``           CLS token after the final norm (DINO k-NN default)
    ``cls_prenorm``   CLS token of the last block without the final norm (MSN)
    ``avgpool``       mean of the patch tokens after the final norm; for a ConvNet the
                      global average pool of the last stage
    ``cls+avgpool``   both, concatenated (DINO's ``--avgpool_patchtokens 1``)
    ``cls_lastN``     CLS tokens of the last N blocks, each through the final norm,
                      concatenated (DINO linear eval, N=4 for ViT-S)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import timm
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from .errors import UserError

FEATURE_KINDS = ("cls", "cls_prenorm", "avgpool", "cls+avgpool", "cls_lastN")
_LAST_N = re.compile(r"cls_last(\d+)$")


@dataclass
class Tokens:
    """Token outputs of one ViT forward pass.

    ``prenorm``/``normed`` hold the prefix (CLS) tokens followed by the encoded patch
    tokens, in the order they were given (all patches, or the kept subset under patch
    drop). ``intermediates`` maps a 0-based block index to that block's output.
    """

    prenorm: Tensor
    normed: Tensor
    grid: tuple[int, int]
    num_prefix: int
    intermediates: dict[int, Tensor] = field(default_factory=dict)

    @property
    def cls(self) -> Tensor:
        return self.normed[:, 0]

    @property
    def cls_prenorm(self) -> Tensor:
        return self.prenorm[:, 0]

    @property
    def patches(self) -> Tensor:
        return self.normed[:, self.num_prefix:]

    def to_grid(self, tokens: Tensor) -> Tensor:
        """(B, prefix + h*w, C) tokens -> (B, C, h, w) patch grid (no patch drop)."""
        h, w = self.grid
        patches = tokens[:, self.num_prefix:]
        if patches.shape[1] != h * w:
            raise ValueError(f"{patches.shape[1]} patch tokens do not fill a {h}x{w} grid "
                             "(a patch-drop forward has no grid)")
        return patches.transpose(1, 2).reshape(patches.shape[0], -1, h, w)


class Backbone(nn.Module):
    """A timm encoder plus the token-level controls the methods need."""

    def __init__(self, arch: str, img_size: int | None = None, patch_size: int | None = None, *,
                 final_norm: bool = True, mask_token: bool = False, drop_path_rate: float = 0.0):
        super().__init__()
        self.arch = arch
        kwargs: dict = {"pretrained": False, "num_classes": 0}
        if drop_path_rate:
            kwargs["drop_path_rate"] = drop_path_rate
        if _is_vit_name(arch):
            kwargs["dynamic_img_size"] = True
            if img_size is not None:
                kwargs["img_size"] = img_size
            if patch_size is not None:
                kwargs["patch_size"] = patch_size
        try:
            self.model = timm.create_model(arch, **kwargs)
        except RuntimeError as err:
            raise UserError(f"unknown architecture '{arch}': {err}; use a timm model name such as "
                            "vit_small_patch16_224 or resnet50") from None
        self.is_vit = isinstance(self.model, VisionTransformer)
        self.embed_dim = self.model.num_features
        if self.is_vit:
            self.patch_size = self.model.patch_embed.patch_size[0]
            self.num_prefix = self.model.num_prefix_tokens
            self.depth = len(self.model.blocks)
            if not final_norm:
                self.model.norm = nn.Identity()
            self.mask_token = nn.Parameter(torch.zeros(1, 1, self.embed_dim)) if mask_token else None
            if self.mask_token is not None:
                nn.init.trunc_normal_(self.mask_token, std=0.02)
        else:
            if mask_token:
                raise UserError(f"{arch}: a learnable mask token needs a ViT backbone")
            self.patch_size = None
            self.num_prefix = 0
            self.depth = len(self.model.feature_info)
            self.mask_token = None
        self.final_norm = final_norm

    # ----- ViT token API -------------------------------------------------------------
    def tokens(self, images: Tensor, *, mask: Tensor | None = None, keep: Tensor | None = None,
               blocks: tuple[int, ...] | list[int] = ()) -> Tokens:
        """Encode ``images`` and return the token outputs.

        mask: (B, N) or (B, h, w) bool, True where a patch is replaced by the learnable
            mask token before the position embedding is added (BEiT / SimMIM / ConMIM).
        keep: (K,) or (B, K) indices of the patch tokens to encode (patch drop, MSN /
            MAE style); the prefix (CLS) tokens are always kept.
        blocks: 0-based indices of blocks whose outputs are returned as intermediates.
        """
        self._require_vit("token outputs")
        vit = self.model
        x = vit.patch_embed(images)  # (B, h, w, C) under dynamic_img_size
        batch, h, w, dim = x.shape
        if mask is not None:
            if self.mask_token is None:
                raise ValueError("this backbone was built without a mask token (mask_token=True)")
            mask = mask.reshape(batch, h, w, 1).to(x.dtype)
            x = x * (1 - mask) + self.mask_token.reshape(1, 1, 1, dim).to(x.dtype) * mask
        x = vit._pos_embed(x)
        x = vit.patch_drop(x)
        x = vit.norm_pre(x)
        if keep is not None:
            x = self._keep_tokens(x, keep)
        wanted = {b % self.depth for b in blocks}
        intermediates: dict[int, Tensor] = {}
        for index, block in enumerate(vit.blocks):
            x = block(x)
            if index in wanted:
                intermediates[index] = x
        return Tokens(prenorm=x, normed=vit.norm(x), grid=(h, w), num_prefix=self.num_prefix,
                      intermediates=intermediates)

    def _keep_tokens(self, x: Tensor, keep: Tensor) -> Tensor:
        prefix, patches = x[:, :self.num_prefix], x[:, self.num_prefix:]
        if keep.dim() == 1:
            kept = patches.index_select(1, keep)
        else:
            kept = torch.gather(patches, 1, keep.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
        return torch.cat([prefix, kept], dim=1)

    # ----- the feature API protocols use -------------------------------------------------
    def features(self, images: Tensor, kind: str = "cls") -> Tensor:
        """One (B, D) feature vector per image; ``kind`` is one of ``FEATURE_KINDS``."""
        if not self.is_vit:
            if kind != "avgpool":
                raise UserError(f"feature '{kind}' needs a ViT; {self.arch} has only 'avgpool'")
            return self.model.forward_head(self.model.forward_features(images), pre_logits=True)
        last_n = _LAST_N.match(kind)
        if last_n:
            n = int(last_n.group(1))
            out = self.tokens(images, blocks=range(self.depth - n, self.depth))
            return torch.cat([self.model.norm(out.intermediates[i])[:, 0]
                              for i in sorted(out.intermediates)], dim=-1)
        out = self.tokens(images)
        if kind == "cls":
            return out.cls
        if kind == "cls_prenorm":
            return out.cls_prenorm
        if kind == "avgpool":
            return out.patches.mean(dim=1)
        if kind == "cls+avgpool":
            return torch.cat([out.cls, out.patches.mean(dim=1)], dim=-1)
        raise UserError(f"unknown feature '{kind}'; valid: {', '.join(FEATURE_KINDS)}")

    def feature_dim(self, kind: str) -> int:
        last_n = _LAST_N.match(kind)
        if last_n:
            return self.embed_dim * int(last_n.group(1))
        return self.embed_dim * (2 if kind == "cls+avgpool" else 1)

    def patch_grid(self, images: Tensor, blocks: tuple[int, ...] | list[int] = ()) -> list[Tensor]:
        """(B, C, h, w) maps: the final normed patch tokens (ViT) or last stage (ConvNet)
        when ``blocks`` is empty, else the outputs of those 0-based blocks (ViT: tokens
        before the final norm; ConvNet: the stages)."""
        if not self.is_vit:
            indices = list(blocks) or [self.depth - 1]
            return self.model.forward_intermediates(images, indices=indices, intermediates_only=True)
        out = self.tokens(images, blocks=blocks)
        if not blocks:
            return [out.to_grid(out.normed)]
        return [out.to_grid(out.intermediates[b % self.depth]) for b in blocks]

    def encoder_state_dict(self) -> dict[str, Tensor]:
        """The weights to export, in timm's key layout (no mask token)."""
        return {k: v.detach().contiguous() for k, v in self.model.state_dict().items()}

    def _require_vit(self, what: str) -> None:
        if not self.is_vit:
            raise UserError(f"{what} need a ViT backbone; {self.arch} is a ConvNet")


def _is_vit_name(arch: str) -> bool:
    return arch.startswith(("vit_", "deit_"))
