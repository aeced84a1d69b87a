"""Linear classification heads: one head, a grid of heads trained in one pass, saving/loading.

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
K linear maps in one batched matmul. Trained heads are stored as safetensors + JSON under
``<results>/heads/<checkpoint sha256>/`` (``save_classifier`` / ``load_classifier``), where
robustness evaluation picks them up.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from ..atomic import atomic_write, atomic_write_json
from ..errors import UserError

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


# ----- saving / loading ---------------------------------------------------------------------
def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def classifier_dir(results_dir: Path, sha256: str) -> Path:
    return Path(results_dir) / "heads" / _safe(sha256)


def save_classifier(results_dir: Path, sha256: str, name: str, module: nn.Module, meta: dict) -> Path:
    """Write ``<results>/heads/<sha256>/<name>.safetensors`` then ``<name>.json``; returns the JSON path."""
    folder = classifier_dir(results_dir, sha256)
    stem = folder / _safe(name)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    atomic_write(stem.with_suffix(".safetensors"), lambda tmp: save_file(state, str(tmp)))
    return atomic_write_json(stem.with_suffix(".json"), {"checkpoint_sha256": sha256, "name": name, **meta})


def list_classifiers(results_dir: Path, sha256: str) -> list[str]:
    folder = classifier_dir(results_dir, sha256)
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def load_classifier(results_dir: Path, sha256: str, name: str | None = None) -> tuple[nn.Module, dict]:
    """A saved classifier of the checkpoint with this sha256 and its metadata.

    ``name`` e.g. ``linear-mae`` or ``finetune``; None picks the only one, else fails
    listing the choices. Linear heads come back as ``LinearHead`` (input: features as
    described by ``meta['feature_spec']`` and ``meta['transform']``); fine-tuned networks as
    the timm classifier (input: images).
    """
    names = list_classifiers(results_dir, sha256)
    if name is None:
        if len(names) != 1:
            raise UserError(f"{classifier_dir(results_dir, sha256)}: {len(names)} saved classifiers "
                            f"({', '.join(names) or 'none'}); name one (run the linear or finetune protocol first)")
        name = names[0]
    stem = classifier_dir(results_dir, sha256) / _safe(name)
    if not stem.with_suffix(".json").is_file():
        raise UserError(f"{stem}.json: no saved classifier '{name}' for checkpoint {sha256[:16]}; "
                        f"saved: {', '.join(names) or 'none'}")
    meta = json.loads(stem.with_suffix(".json").read_text())
    state = load_file(str(stem.with_suffix(".safetensors")))
    if meta.get("kind") == "linear":
        module = LinearHead(meta["dim"], meta["num_classes"], meta["norm"], meta["l2_normalize"])
    elif meta.get("kind") == "finetuned":
        from ._finetuning import build_classifier

        module = build_classifier(meta["arch"], meta["num_classes"], **meta["model_kwargs"])
    else:
        raise UserError(f"{stem}.json: unknown classifier kind {meta.get('kind')!r}")
    module.load_state_dict(state)
    return module.eval(), meta


def load_linear_head(results_dir: Path, sha256: str, variant: str | None = None) -> tuple[LinearHead, dict]:
    """The linear-probe head saved for this checkpoint (``variant`` e.g. 'mae'; None = the only one)."""
    names = [n for n in list_classifiers(results_dir, sha256) if n.startswith("linear")]
    if variant is not None:
        return load_classifier(results_dir, sha256, f"linear-{variant}")
    if len(names) != 1:
        raise UserError(f"{classifier_dir(results_dir, sha256)}: linear heads saved: {', '.join(names) or 'none'}; "
                        "name the variant")
    return load_classifier(results_dir, sha256, names[0])
