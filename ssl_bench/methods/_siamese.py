"""Parts shared by SiameseIM, MMC and MSCN only: cross-rank gathers, the joint-embedding
losses (SimCLR NT-Xent, MoCo-style InfoNCE over gathered keys, BYOL regression) and
noise filling of masked pixels. MSN / ConMIM parts live in ``_mlp``, ``_masks``, ``_views``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.nn.functional import all_gather
from torch.nn import functional as F

from ..distributed import is_distributed, rank_and_world


@torch.no_grad()
def gather_no_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` from every rank along dim 0, without gradient (MoCo ``concat_all_gather``)."""
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` from every rank along dim 0; gradients flow back to each rank's part
    (SimCLR's cross-replica negatives)."""
    if not is_distributed():
        return x

    return torch.cat(all_gather(x.contiguous()))


def nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """SimCLR NT-Xent over the pair (z1[i], z2[i]).

    The 2B (global: 2*world*B) embeddings are L2-normalised; for each one the positive is
    its partner and the negatives are the other 2*B_global - 2; self-similarity is excluded;
    the loss is the mean cross-entropy over all 2*B local anchors (both directions).
    """
    rank, _ = rank_and_world()
    z1, z2 = F.normalize(z1.float(), dim=-1), F.normalize(z2.float(), dim=-1)
    k1, k2 = gather_with_grad(z1), gather_with_grad(z2)
    batch, total = z1.shape[0], k1.shape[0]
    keys = torch.cat([k1, k2])  # (2T, D)
    queries = torch.cat([z1, z2])  # (2B, D)
    local = torch.arange(batch, device=z1.device) + rank * batch
    self_index = torch.cat([local, local + total])
    positive = torch.cat([local + total, local])
    logits = queries @ keys.T / temperature
    logits[torch.arange(2 * batch, device=z1.device), self_index] = float("-inf")
    return F.cross_entropy(logits, positive)


def moco_info_nce(queries: Tensor, keys: Tensor, temperature: float) -> Tensor:
    """InfoNCE of local ``queries`` (B, D) against ``keys`` (B, D) gathered from all ranks
    (no gradient through keys); the positive of query i is key i of this rank (MoCo v3
    ``contrastive_loss`` without its 2*tau factor)."""
    rank, _ = rank_and_world()
    q = F.normalize(queries.float(), dim=-1)
    k = F.normalize(gather_no_grad(keys.detach().float()), dim=-1)
    labels = torch.arange(q.shape[0], device=q.device) + rank * q.shape[0]
    return F.cross_entropy(q @ k.T / temperature, labels)


def byol_regression(prediction: Tensor, target: Tensor) -> Tensor:
    """BYOL loss ``2 - 2 cos(p, z')`` averaged over the batch (target without gradient)."""
    p = F.normalize(prediction.float(), dim=-1)
    z = F.normalize(target.detach().float(), dim=-1)
    return (2 - 2 * (p * z).sum(dim=-1)).mean()


def fill_noise(images: Tensor, mask: Tensor, std: float, generator: torch.Generator | None = None) -> Tensor:
    """``images`` with masked entries (``mask`` True, broadcastable) replaced by N(0, std^2) noise."""
    noise = torch.randn(images.shape, generator=generator, dtype=images.dtype, device=images.device) * std
    return torch.where(mask, noise, images)
