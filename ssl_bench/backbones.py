"""Backbones over timm with the one feature API every method and protocol uses.

``Backbone`` wraps a timm ViT (tiny/small/base/large, patch 16 or 8, any image size:
position embeddings are interpolated to the input's token grid), a conv-stem ViT
(``vit_*_convstem_patch16_224``, ``ssl_bench.architectures``: a ViT of stride 16 in every
respect), a timm BEiT (``beit_*``: relative position bias, layer scale; ConMIM's official
backbone) or a timm ConvNet such as ResNet-50. Its state dict is timm's own key layout, so an
exported checkpoint loads into ``timm.create_model(arch)`` directly (after
``import ssl_bench`` for the architectures ssl-bench registers).

Feature kinds (``Backbone.features``):
    ``cls``           CLS token after the final norm (DINO k-NN default)
    ``cls_prenorm``   CLS token of the last block without the final norm (MSN)
    ``avgpool``       mean of the patch tokens after the final norm; for a ConvNet the
                      global average pool of the last stage
    ``cls+avgpool``   both, concatenated (DINO's ``--avgpool_patchtokens 1``)
    ``cls_lastN``     CLS tokens of the last N blocks, each through the final norm,
                      concatenated (DINO linear eval, N=4 for ViT-S)

``cls`` and ``cls_prenorm`` run the last block for the CLS token alone (``Backbone.tokens``
``prefix_only``): the same features, with the last block's patch outputs left uncomputed.

BEiT at another token grid than the one it was built for: its relative position bias
tables are read for that grid (a smaller grid takes its offsets from the table exactly, a
larger one resizes the table with timm's ``resize_rel_pos_bias_table``, BEiT's rule), on
every forward and differentiably, so any input size works without changing the weights.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import timm
import torch
from timm.layers import HybridEmbed, resample_abs_pos_embed, resize_rel_pos_bias_table
from timm.models.beit import Beit, gen_relative_position_index
from timm.models.vision_transformer import Attention, Block, VisionTransformer
from torch import Tensor, nn
from torch.nn import functional as F

from . import architectures  # noqa: F401  (registers the conv-stem ViTs and BEiT sizes with timm)
from .conv_layout import conv_input
from .errors import UserError

FEATURE_KINDS = ("cls", "cls_prenorm", "avgpool", "cls+avgpool", "cls_lastN")
_LAST_N = re.compile(r"cls_last(\d+)$")


@dataclass
class Tokens:
    """Token outputs of one ViT forward pass.

    ``prenorm``/``normed`` hold the prefix (CLS) tokens followed by the encoded patch
    tokens, in the order they were given (all patches, or the kept subset under patch
    drop); after a ``prefix_only`` forward, the prefix tokens alone. ``intermediates`` maps a
    0-based block index to that block's output.
    """

    prenorm: Tensor
    normed: Tensor
    grid: tuple[int, int]
    num_prefix: int
    intermediates: dict[int, Tensor] = field(default_factory=dict)
    prefix_only: bool = False

    @property
    def cls(self) -> Tensor:
        return self.normed[:, 0]

    @property
    def cls_prenorm(self) -> Tensor:
        return self.prenorm[:, 0]

    @property
    def patches(self) -> Tensor:
        if self.prefix_only:
            raise ValueError("a prefix_only forward has no patch tokens; encode without prefix_only")
        return self.normed[:, self.num_prefix:]

    def to_grid(self, tokens: Tensor) -> Tensor:
        """(B, prefix + h*w, C) tokens -> (B, C, h, w) patch grid (no patch drop)."""
        h, w = self.grid
        patches = tokens[:, self.num_prefix:]
        if patches.shape[1] != h * w:
            raise ValueError(f"{patches.shape[1]} patch tokens do not fill a {h}x{w} grid "
                             "(a patch-drop forward has no grid)")
        return patches.transpose(1, 2).reshape(patches.shape[0], -1, h, w)


def timm_kwargs(arch: str, *, img_size: int | None = None, patch_size: int | None = None,
                drop_path_rate: float = 0.0) -> dict:
    """``timm.create_model`` arguments for a ssl-bench backbone or classifier of ``arch``: ViTs
    take any input size (``dynamic_img_size``); a BEiT is built for ``img_size`` (its relative
    position tables) and keeps its final norm on every token (``use_fc_norm=False``)."""
    kwargs: dict = {"pretrained": False}
    if drop_path_rate:
        kwargs["drop_path_rate"] = drop_path_rate
    family = arch_family(arch)
    if family == "vit":
        kwargs["dynamic_img_size"] = True
    if family == "beit":
        kwargs["use_fc_norm"] = False
    if family != "convnet":
        if img_size is not None:
            kwargs["img_size"] = img_size
        if patch_size is not None:
            kwargs["patch_size"] = patch_size
    return kwargs


def arch_family(arch: str) -> str:
    """``vit`` (timm ViTs, conv-stem ViTs, DeiT), ``beit`` or ``convnet``, from a timm name."""
    if arch.startswith(("vit_", "deit_")):
        return "vit"
    if arch.startswith(("beit_", "beitv2_")):
        return "beit"
    return "convnet"


class Backbone(nn.Module):
    """A timm encoder plus the token-level controls the methods need.

    ``pos_antialias``: resample the position embedding to another grid with antialiasing
    (timm's default) or without (plain bicubic, as MSN's and ConMIM's ``interpolate_pos_encoding``).
    ``shared_rel_pos_bias``: a BEiT with one relative position bias for all blocks (ConMIM and
    BEiT pretraining); its weights are exported with the table copied into every block, the
    layout timm's BEiT and BEiT/ConMIM fine-tuning load.
    """

    def __init__(self, arch: str, img_size: int | None = None, patch_size: int | None = None, *,
                 final_norm: bool = True, mask_token: bool = False, drop_path_rate: float = 0.0,
                 pos_antialias: bool = True, shared_rel_pos_bias: bool = False):
        super().__init__()
        self.arch = arch
        self.family = arch_family(arch)
        kwargs = timm_kwargs(arch, img_size=img_size, patch_size=patch_size, drop_path_rate=drop_path_rate)
        kwargs["num_classes"] = 0
        if shared_rel_pos_bias:
            if self.family != "beit":
                raise UserError(f"{arch}: a shared relative position bias needs a BEiT backbone (beit_*)")
            kwargs.update(use_rel_pos_bias=False, use_shared_rel_pos_bias=True)
        try:
            self.model = timm.create_model(arch, **kwargs)
        except (RuntimeError, ValueError) as err:
            raise UserError(f"unknown architecture '{arch}': {err}; use a timm model name such as "
                            "vit_small_patch16_224, vit_tiny_convstem_patch16_224, beit_base_patch16_224 "
                            "or resnet50") from None
        expected = {"vit": VisionTransformer, "beit": Beit}.get(self.family)
        if expected is not None and not isinstance(self.model, expected):
            raise UserError(f"{arch}: a {type(self.model).__name__}, not a timm {expected.__name__}; "
                            "this family is not supported")
        self.is_vit = self.family != "convnet"
        self.embed_dim = self.model.num_features
        self.pos_antialias = pos_antialias
        #: patches embedded by a conv stem (``vit_*_convstem_*``) rather than one strided projection
        self.conv_stem = self.is_vit and isinstance(self.model.patch_embed, HybridEmbed)
        if self.is_vit:
            self.patch_size = self.model.patch_embed.feat_ratio()
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
               blocks: tuple[int, ...] | list[int] = (), prefix_only: bool = False) -> Tokens:
        """Encode ``images`` and return the token outputs.

        mask: (B, N) or (B, h, w) bool, True where a patch is replaced by the learnable
            mask token before the position embedding is added (BEiT / SimMIM / ConMIM).
        keep: (K,) or (B, K) indices of the patch tokens to encode (patch drop, MSN /
            MAE style); the prefix (CLS) tokens are always kept.
        blocks: 0-based indices of blocks whose outputs are returned as intermediates.
        prefix_only: the last block computes the prefix (CLS) tokens alone, which still attend
            to every token (``last_block_prefix``): the same CLS outputs for about 1/depth less
            work, for a caller that reads nothing else.
        """
        self._require_vit("token outputs")
        x = self.embed_patches(images)  # (B, h, w, C)
        batch, h, w, dim = x.shape
        if mask is not None:
            if self.mask_token is None:
                raise ValueError("this backbone was built without a mask token (mask_token=True)")
            mask = mask.reshape(batch, h, w, 1).to(x.dtype)
            x = x * (1 - mask) + self.mask_token.reshape(1, 1, 1, dim).to(x.dtype) * mask
        x = self.add_positions(x)
        if keep is not None:
            if self.family == "beit":
                raise UserError(f"{self.arch}: patch drop needs a ViT with absolute positions; a BEiT's "
                                "relative position bias is defined on the full grid")
            x = self._keep_tokens(x, keep)
        if prefix_only and not self.num_prefix:
            raise UserError(f"{self.arch} has no prefix (CLS) token to encode alone")
        wanted = {b % self.depth for b in blocks}
        intermediates: dict[int, Tensor] = {}
        shared = self.shared_bias((h, w))
        for index, block in enumerate(self.model.blocks):
            if prefix_only and index == self.depth - 1:
                x = self.last_block_prefix(block, x, (h, w), shared)
            else:
                x = self.run_block(block, x, (h, w), shared)
            if index in wanted:
                intermediates[index] = x
        return Tokens(prenorm=x, normed=self.model.norm(x), grid=(h, w), num_prefix=self.num_prefix,
                      intermediates=intermediates, prefix_only=prefix_only)

    def embed_patches(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, h, w, C) patch embeddings (patch projection or conv stem)."""
        embed = self.model.patch_embed
        if self.family == "vit":
            return embed(self.conv_input(images))  # NHWC under dynamic_img_size
        return embed.norm(embed.proj(images).permute(0, 2, 3, 1))  # BEiT: its PatchEmbed flattens

    def conv_input(self, images: Tensor) -> Tensor:
        """``images`` in the layout the training step chose for convolutions (``ssl_bench.conv_layout``:
        channels-last on CPU in training), for a ConvNet or a conv stem; a plain patch projection keeps them."""
        return conv_input(images) if self.conv_stem or not self.is_vit else images

    def add_positions(self, x: Tensor) -> Tensor:
        """(B, h, w, C) patch embeddings -> (B, prefix + h*w, C) tokens: prefix tokens, absolute
        position embedding (resampled to the grid), position dropout, pre-norm."""
        model = self.model
        batch, h, w, dim = x.shape
        prefix = [t.expand(batch, -1, -1) for t in (model.cls_token, getattr(model, "reg_token", None))
                  if t is not None]
        x = x.reshape(batch, h * w, dim)
        pos = model.pos_embed
        embed_prefix = not getattr(model, "no_embed_class", False)
        if pos is not None:
            pos = resample_abs_pos_embed(pos, new_size=(h, w), old_size=model.patch_embed.grid_size,
                                         num_prefix_tokens=self.num_prefix if embed_prefix else 0,
                                         antialias=self.pos_antialias)
        if pos is not None and not embed_prefix:
            x = x + pos
        x = torch.cat(prefix + [x], dim=1)
        if pos is not None and embed_prefix:
            x = x + pos
        x = model.pos_drop(x)
        if self.family == "vit":
            x = model.norm_pre(model.patch_drop(x))
        return x

    def run_block(self, block: nn.Module, x: Tensor, grid: tuple[int, int], shared: Tensor | None = None) -> Tensor:
        """One transformer block on (B, [prefix +] h*w, C) tokens of an h x w grid (BEiT: with
        its relative position bias read for that grid, ``shared`` from ``shared_bias``)."""
        if self.family != "beit":
            return block(x)
        attn = block.attn
        prefix = x.shape[1] != grid[0] * grid[1]
        if attn.relative_position_bias_table is None or (tuple(attn.window_size) == tuple(grid) and prefix):
            return block(x, shared_rel_pos_bias=shared)
        bias = relative_position_bias(attn.relative_position_bias_table, tuple(attn.window_size), grid, prefix)[None]
        attn._get_rel_pos_bias = lambda: bias  # timm's BEiT attention reads its own table only through this
        try:
            return block(x, shared_rel_pos_bias=shared)
        finally:
            del attn._get_rel_pos_bias

    def last_block_prefix(self, block: nn.Module, x: Tensor, grid: tuple[int, int],
                          shared: Tensor | None = None) -> Tensor:
        """``run_block(block, x)[:, :num_prefix]``; for a plain timm ViT block, computed for the
        prefix tokens alone: their queries, attention output, projection and MLP, against keys and
        values of every token. timm has no such forward (its attention pooling is a new head), so
        it is written here from the block's own modules; any other block runs whole."""
        n, attn = self.num_prefix, getattr(block, "attn", None)
        if type(block) is not Block or type(attn) is not Attention or getattr(attn, "gate", None) is not None:
            return self.run_block(block, x, grid, shared)[:, :n]
        batch, length, _ = x.shape
        heads, width = attn.num_heads, attn.attn_dim
        y = block.norm1(x)
        weight, bias = attn.qkv.weight, attn.qkv.bias
        q = F.linear(y[:, :n], weight[:width], None if bias is None else bias[:width])
        k, v = F.linear(y, weight[width:], None if bias is None else bias[width:]).reshape(
            batch, length, 2, heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q = attn.q_norm(q.reshape(batch, n, heads, attn.head_dim).transpose(1, 2))
        out = F.scaled_dot_product_attention(q, attn.k_norm(k), v,
                                             dropout_p=attn.attn_drop.p if attn.training else 0.0)
        out = attn.proj_drop(attn.proj(attn.norm(out.transpose(1, 2).reshape(batch, n, width))))
        prefix = x[:, :n] + block.drop_path1(block.ls1(out))
        return prefix + block.drop_path2(block.ls2(block.mlp(block.norm2(prefix))))

    def shared_bias(self, grid: tuple[int, int], prefix: bool = True) -> Tensor | None:
        """A BEiT's shared relative position bias for an h x w grid (with the CLS row and column
        when ``prefix``), or None."""
        shared = getattr(self.model, "rel_pos_bias", None) if self.family == "beit" else None
        if shared is None:
            return None
        return relative_position_bias(shared.relative_position_bias_table, tuple(shared.window_size), grid, prefix)

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
            return self.model.forward_head(self.model.forward_features(self.conv_input(images)), pre_logits=True)
        last_n = _LAST_N.match(kind)
        if last_n:
            n = int(last_n.group(1))
            out = self.tokens(images, blocks=range(self.depth - n, self.depth))
            return torch.cat([self.model.norm(out.intermediates[i])[:, 0]
                              for i in sorted(out.intermediates)], dim=-1)
        if kind in ("cls", "cls_prenorm"):
            out = self.tokens(images, prefix_only=True)
            return out.cls if kind == "cls" else out.cls_prenorm
        out = self.tokens(images)
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
            return self.model.forward_intermediates(self.conv_input(images), indices=indices,
                                                    intermediates_only=True)
        out = self.tokens(images, blocks=blocks)
        if not blocks:
            return [out.to_grid(out.normed)]
        return [out.to_grid(out.intermediates[b % self.depth]) for b in blocks]

    def encoder_state_dict(self) -> dict[str, Tensor]:
        """The weights to export, in timm's key layout (no mask token). A BEiT's shared relative
        position bias is written into every block, as BEiT/ConMIM fine-tuning loads it
        (run_class_finetuning.py), so the weights load into ``timm.create_model(arch)``."""
        state = {k: v.detach().contiguous() for k, v in self.model.state_dict().items()}
        shared = state.pop("rel_pos_bias.relative_position_bias_table", None)
        if shared is not None:
            for i in range(self.depth):
                state[f"blocks.{i}.attn.relative_position_bias_table"] = shared.clone()
        return state

    def _require_vit(self, what: str) -> None:
        if not self.is_vit:
            raise UserError(f"{what} need a ViT backbone; {self.arch} is a ConvNet")


def relative_position_bias(table: Tensor, window: tuple[int, int], grid: tuple[int, int],
                           prefix: bool = True) -> Tensor:
    """(heads, h*w + 1, h*w + 1) BEiT relative position bias of an h x w grid plus CLS (without
    its row and column unless ``prefix``: (heads, h*w, h*w)), from a table learnt for ``window``.

    The table (BEiT layout) holds offset (dy, dx) at row ``(dy + H - 1)(2W - 1) + dx + W - 1``,
    then the cls->token, token->cls and cls->cls entries. A grid within the window reads its
    offsets from the table exactly; a larger one resizes the table with timm's
    ``resize_rel_pos_bias_table`` (BEiT's interpolation rule).
    """
    h, w = grid
    big_h, big_w = window
    heads = table.shape[1]
    if (h, w) != (big_h, big_w):
        if h <= big_h and w <= big_w:
            offsets = table[:-3].reshape(2 * big_h - 1, 2 * big_w - 1, heads)
            offsets = offsets[big_h - h:big_h + h - 1, big_w - w:big_w + w - 1].reshape(-1, heads)
            table = torch.cat([offsets, table[-3:]])
        else:
            table = resize_rel_pos_bias_table(table, new_window_size=(h, w), old_window_size=(big_h, big_w),
                                              new_bias_shape=((2 * h - 1) * (2 * w - 1) + 3, heads))
    index = gen_relative_position_index((h, w), device=table.device)
    if not prefix:
        index = index[1:, 1:]
    tokens = index.shape[0]
    return table[index.reshape(-1)].reshape(tokens, tokens, heads).permute(2, 0, 1)
