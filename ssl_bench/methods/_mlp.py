"""The MLP heads (projectors, predictors) the methods build, and their initialisation."""

from __future__ import annotations

from collections import OrderedDict

from timm.layers import DropPath
from torch import nn


def mlp(in_dim: int, hidden_dim: int, out_dim: int, layers: int = 3, *, bias: bool = True,
        norm: str | None = "bn", act: str = "gelu", last_norm: str | None = None,
        last_affine: bool = True) -> nn.Sequential:
    """Linear(-BN-act) x (layers-1) then Linear(-lastBN): ``fc1, bn1, act1, fc2, ...``.

    Names follow MSN's head (``fc1``/``bn1``/``gelu1``...), so parameter-group rules that
    look for ``bn`` in a name behave as in the official code.
    """
    acts = {"gelu": nn.GELU, "relu": lambda: nn.ReLU(inplace=True)}
    modules: OrderedDict[str, nn.Module] = OrderedDict()
    for i in range(layers):
        d_in = in_dim if i == 0 else hidden_dim
        d_out = out_dim if i == layers - 1 else hidden_dim
        modules[f"fc{i + 1}"] = nn.Linear(d_in, d_out, bias=bias)
        if i < layers - 1:
            if norm == "bn":
                modules[f"bn{i + 1}"] = nn.BatchNorm1d(d_out)
            modules[f"{act}{i + 1}"] = acts[act]()
        elif last_norm == "bn":
            modules[f"bn{i + 1}"] = nn.BatchNorm1d(d_out, affine=last_affine)
    return nn.Sequential(modules)


def trunc_normal_init(module: nn.Module, std: float = 0.02) -> None:
    """Linear weights ~ truncated normal(std), biases 0 (MSN ``init_model``, BEiT ``_init_weights``)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def without_drop_path(module: nn.Module) -> nn.Module:
    """``module`` with every stochastic-depth layer (timm ``DropPath``) replaced by an identity, in
    place: the momentum teachers of DINO-lineage methods and SiameseIM's target are built with
    drop_path_rate 0 while their student uses it (models_sim.py ``build_momentum_target``)."""
    for name, child in module.named_children():
        if isinstance(child, DropPath):
            setattr(module, name, nn.Identity())
        else:
            without_drop_path(child)
    return module
