"""The strict import: a foreign state dict into a ``Backbone`` through a named layout, audited.

A ``Layout`` says where a code base keeps the encoder (container keys of the checkpoint and key
prefixes, for each encoder it holds), how its tensor names map onto timm's, and which of its
tensors are not the encoder (heads, decoders, projectors, the encoder not chosen). The audit
then demands that every source tensor is mapped exactly once or ignored by name, that every
target tensor is filled, and that shapes are equal; the only tensor changed on purpose is a
ViT's position embedding resampled to a requested image size, and that is recorded. Anything
else is a ``UserError`` giving the counts and the first offending keys; ``allow_missing`` /
``allow_unused`` glob patterns are the deliberate exceptions, and they are recorded too.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import math
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from ..atomic import sha256_file
from ..backbones import Backbone
from ..errors import UserError

#: Globals a foreign checkpoint may contain besides tensors: the argparse namespace that
#: MAE-lineage code (MAE, DINO, MSN, ConMIM, SiameseIM) stores under ``args``, and numpy
#: scalars and dtypes that some of them store as metrics.
SAFE_GLOBALS = [argparse.Namespace, np.dtype, np._core.multiarray.scalar,
                type(np.dtype(np.float64)), type(np.dtype(np.float32)), type(np.dtype(np.int64))]

ROOT = ""  # the container name of tensors stored at the top level of the file
SHOWN = 4  # offending keys named in an error line


@dataclass(frozen=True)
class Encoder:
    """Where one encoder of a checkpoint lives: the first of ``containers`` present in the file
    (``ROOT``: top-level tensors), key ``prefixes`` stripped (the first that matches), and the
    keys of that container that belong to something else (the encoder not chosen)."""

    containers: tuple[str, ...]
    prefixes: tuple[str, ...] = ()
    ignore: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Layout:
    """One published key layout.

    ``marks``: regexes that must each match a ``container/key`` name of the file for ``auto``
    to choose this layout, ``unmarks``: regexes none of which may match. ``ignore``: glob
    pattern (on the key inside its container) -> what those tensors are; ``ignore_for`` adds
    patterns that depend on the target (timm's classifier name). ``rename``: (stripped source key,
    target state dict, empty on a first pass that only reads the ViT's image size) -> timm key
    (``None``: no counterpart). ``convert``: changes the renamed tensors together where one
    target needs several sources; returns what it did, for the audit. ``check_arch``: a reason
    the layout refuses an architecture whose shapes fit but whose computation differs.
    ``backbone_options``: ``Backbone`` arguments read from the renamed source (no final norm, a
    shared relative position bias).
    """

    name: str
    source: str
    encoders: dict[str, Encoder]
    default_encoder: str
    why_default: str
    marks: tuple[str, ...] = ()
    unmarks: tuple[str, ...] = ()
    ignore: dict[str, str] = field(default_factory=dict)
    ignore_for: Callable[[Backbone], dict[str, str]] = lambda backbone: {}
    rename: Callable[[str, dict], str | None] = lambda key, target: key
    convert: Callable[[dict[str, Tensor], Backbone], list[str]] | None = None
    eval: dict = field(default_factory=dict)
    check_arch: Callable[[str], str | None] = lambda arch: None
    backbone_options: Callable[[dict[str, Tensor]], dict] = lambda renamed: {}

    def recognises(self, names: list[str]) -> bool:
        if not self.marks:
            return False
        found = all(any(re.search(mark, name) for name in names) for mark in self.marks)
        return found and not any(re.search(mark, name) for mark in self.unmarks for name in names)


@dataclass
class Imported:
    """A filled backbone, the audit that proves it, and the evaluation conventions of its layout."""

    backbone: Backbone
    audit: dict
    eval: dict
    weights_id: str  # identifies these exact weights: source hash + every import choice


def read_foreign(path: Path) -> dict:
    """The top-level object of a foreign ``.pth``, read with ``weights_only=True`` and the
    allow-list: nothing else in an untrusted file is ever unpickled."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint file not found")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else "unsupported content"
        raise UserError(f"{path}: refused to unpickle a foreign checkpoint ({first}); only tensors and "
                        "allow-listed types load; re-save its state_dict with torch.save") from None
    except Exception as err:  # noqa: BLE001 - the restricted unpickler fails on garbage in many ways
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise UserError(f"{path}: unreadable torch checkpoint ({type(err).__name__}: {first}); is it a file "
                        "written by torch.save?") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path}: holds a {type(obj).__name__}, not a dict of tensors; save a state_dict")
    return obj


def containers(obj: dict) -> dict[str, dict[str, Tensor]]:
    """Tensor dicts of a checkpoint by container name: ``ROOT`` and every top-level dict of tensors."""
    found = {}
    root = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if root:
        found[ROOT] = root
    for key, value in obj.items():
        if isinstance(value, dict):
            tensors = {k: v for k, v in value.items() if isinstance(v, Tensor)}
            if tensors:
                found[str(key)] = tensors
    return found


def flat_names(found: dict[str, dict[str, Tensor]]) -> list[str]:
    return [f"{name}/{key}" if name else key for name, tensors in found.items() for key in tensors]


def choose_layout(layouts: dict[str, Layout], found: dict[str, dict[str, Tensor]]) -> Layout:
    """The layout ``auto`` picks: the first whose marks all match, else the timm layout when the
    keys are timm's own (decided after the target is built)."""
    names = flat_names(found)
    for layout in layouts.values():
        if layout.recognises(names):
            return layout
    return layouts["timm"]


def select(layout: Layout, encoder: str, found: dict[str, dict[str, Tensor]], path: Path):
    """(container name, its tensors) of the chosen encoder."""
    if encoder not in layout.encoders:
        raise UserError(f"--encoder {encoder}: layout {layout.name} holds {', '.join(layout.encoders)}")
    for name in layout.encoders[encoder].containers:
        if name in found:
            return name, found[name]
    wanted = ", ".join(name or "(top level)" for name in layout.encoders[encoder].containers)
    have = ", ".join(name or "(top level)" for name in found) or "none"
    raise UserError(f"{path}: layout {layout.name} keeps the {encoder} encoder under {wanted}; "
                    f"this file has tensors under {have}; check --layout/--encoder")


def _matches(key: str, patterns) -> str | None:
    return next((p for p in patterns if fnmatch.fnmatchcase(key, p)), None)


def _strip(key: str, prefixes: tuple[str, ...]) -> str:
    for prefix in prefixes:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def _listed(keys) -> str:
    keys = list(keys)
    more = f", ... ({len(keys) - SHOWN} more)" if len(keys) > SHOWN else ""
    return ", ".join(keys[:SHOWN]) + more


def _vit_img_size(renamed: dict[str, Tensor]) -> int | None:
    """Image size the source ViT was trained at: its token grid times its patch size. The grid
    comes from the position embedding (with or without a CLS position) or, for a BEiT, from a
    relative position bias table ((2g - 1)^2 offsets + 3 for the CLS token)."""
    proj = renamed.get("patch_embed.proj.weight")
    pos = renamed.get("pos_embed")
    table = next((v for k, v in renamed.items() if k.endswith("relative_position_bias_table")), None)
    if proj is None:
        return None
    sizes = []
    if pos is not None and pos.dim() == 3:
        sizes = [pos.shape[1] - 1, pos.shape[1]]
    for tokens in sizes:
        grid = math.isqrt(tokens)
        if grid > 0 and grid * grid == tokens:
            return grid * proj.shape[-1]
    if table is not None:
        span = math.isqrt(table.shape[0] - 3)
        if span * span == table.shape[0] - 3 and span % 2 == 1:
            return (span + 1) // 2 * proj.shape[-1]
    return None


def import_state(path: Path, arch: str, layouts: dict[str, Layout], *, layout: str = "auto",
                 encoder: str | None = None, allow_missing=(), allow_unused=(),
                 img_size: int | None = None) -> Imported:
    """Map the encoder of the foreign file ``path`` into a seeded ``Backbone(arch)`` and audit it."""
    path = Path(path)
    found = containers(read_foreign(path))
    if not found:
        raise UserError(f"{path}: no tensors found at the top level or in any top-level dict")
    unknown = UserError(f"{path}: no known layout recognised its keys ({_listed(flat_names(found))}) "
                        f"and they are not timm's names for {arch}; pass --layout (one of {', '.join(layouts)})")
    if layout == "auto":
        chosen = choose_layout(layouts, found)
        chosen_by = f"auto ({_why(chosen, found)})"
    elif layout in layouts:
        chosen, chosen_by = layouts[layout], "--layout"
    else:
        raise UserError(f"--layout {layout}: unknown layout; valid: auto, {', '.join(layouts)}")
    problem = chosen.check_arch(arch)
    if problem:
        raise UserError(f"--arch {arch}: {problem}")
    encoder = encoder or chosen.default_encoder
    try:
        where, tensors = select(chosen, encoder, found, path)
    except UserError:
        if layout == "auto":
            raise unknown from None
        raise
    mapping = _Mapping(chosen, chosen.encoders[encoder], tensors)
    with torch.random.fork_rng():
        torch.manual_seed(0)  # whatever an allowed exception leaves unfilled is the same every time
        # names alone give the source ViT's image size (position grid x patch size), so the
        # target needs no resampling unless img_size asks for it
        provisional = mapping.renamed({})
        backbone = Backbone(arch, img_size or _vit_img_size(provisional), **chosen.backbone_options(provisional))
    target_state = backbone.model.state_dict()
    renamed = mapping.map(backbone)
    if layout == "auto" and not chosen.marks and not set(renamed) & set(target_state):
        raise unknown
    filled, resampled = mapping.fill(renamed, backbone)

    defaulted = [k for k in target_state if k not in filled and k.endswith("num_batches_tracked")]
    missing = [k for k in target_state if k not in filled and k not in defaulted]
    allowed_missing = [k for k in missing if _matches(k, allow_missing)]
    allowed_unused = [k for k in mapping.unused if _matches(k, allow_unused)]
    missing = [k for k in missing if k not in allowed_missing]
    unused = [k for k in mapping.unused if k not in allowed_unused]
    if missing or unused or mapping.mismatched or mapping.duplicated:
        raise UserError(_failure(path, chosen, encoder, arch, len(target_state), len(tensors), missing,
                                 unused, mapping.mismatched, mapping.duplicated))
    backbone.model.load_state_dict({**target_state, **filled}, strict=True)

    n_ignored = sum(len(keys) for keys in mapping.ignored.values())
    mapped = len(tensors) - n_ignored - len(allowed_unused)
    audit = {
        "layout": chosen.name, "layout_source": chosen.source, "chosen_by": chosen_by,
        "encoder": encoder, "encoder_is_default": encoder == chosen.default_encoder,
        "encoder_default_because": chosen.why_default,
        "source": {"file": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size,
                   "container": where or "(top level)", "tensors": len(tensors),
                   "not_read": {name or "(top level)": len(other) for name, other in found.items() if name != where}},
        "mapped": mapped,
        "ignored": {pattern: {"what": mapping.ignore[pattern], "count": len(keys)}
                    for pattern, keys in mapping.ignored.items()},
        "allowed_unused": {"patterns": list(allow_unused), "keys": allowed_unused},
        "target": {"arch": arch, "tensors": len(target_state), "filled": len(filled),
                   "img_size": _img_size(backbone)},
        "allowed_missing": {"patterns": list(allow_missing), "keys": allowed_missing},
        "defaulted": {"keys": defaulted, "why": "BatchNorm step counters: unused in evaluation"} if defaulted else {},
        "resampled": resampled, "converted": mapping.notes,
    }
    audit["summary"] = (f"{mapped + n_ignored} of {len(tensors)} source tensors mapped ({mapped}) or ignored "
                        f"({n_ignored}); {len(filled)} of {len(target_state)} target tensors filled")
    if allowed_unused or allowed_missing or defaulted:
        audit["summary"] += (f"; allowed: {len(allowed_unused)} unused, {len(allowed_missing)} missing; "
                             f"{len(defaulted)} BatchNorm counters defaulted")
    choices = {k: audit[k] for k in ("layout", "encoder", "allowed_unused", "allowed_missing", "resampled")}
    weights_id = hashlib.sha256(json.dumps([audit["source"]["sha256"], arch, choices],
                                           sort_keys=True).encode()).hexdigest()
    return Imported(backbone.eval(), audit, dict(chosen.eval), weights_id)


class _Mapping:
    """The source tensors of one encoder on their way to timm names, with what went wrong."""

    def __init__(self, layout: Layout, encoder: Encoder, tensors: dict[str, Tensor]):
        self.layout, self.encoder, self.tensors = layout, encoder, tensors
        self.ignore = {**layout.ignore, **encoder.ignore}
        self.ignored: dict[str, list[str]] = {}
        self.unused: list[str] = []
        self.duplicated: list[str] = []
        self.mismatched: list[str] = []
        self.origin: dict[str, str] = {}
        self.notes: list[str] = []

    def renamed(self, target_state: dict) -> dict[str, Tensor]:
        """Target name -> tensor for the source keys not ignored and renamed (a first look: no
        bookkeeping)."""
        names = {key: self.layout.rename(_strip(key, self.encoder.prefixes), target_state)
                 for key in self.tensors if not _matches(key, self.ignore)}
        return {name: self.tensors[key] for key, name in names.items() if name is not None}

    def map(self, backbone: Backbone) -> dict[str, Tensor]:
        """Every source tensor ignored by name, renamed once, or recorded as unused / duplicated."""
        target_state = backbone.model.state_dict()
        self.ignore.update(self.layout.ignore_for(backbone))
        renamed: dict[str, Tensor] = {}
        for key, value in self.tensors.items():
            pattern = _matches(key, self.ignore)
            if pattern:
                self.ignored.setdefault(pattern, []).append(key)
                continue
            target = self.layout.rename(_strip(key, self.encoder.prefixes), target_state)
            if target is None:
                self.unused.append(key)
            elif target in renamed:
                self.duplicated.append(f"{key} and {self.origin[target]} -> {target}")
            else:
                renamed[target], self.origin[target] = value, key
        if self.layout.convert:
            self.notes = self.layout.convert(renamed, backbone)
        return renamed

    def fill(self, renamed: dict[str, Tensor], backbone: Backbone) -> tuple[dict[str, Tensor], list[dict]]:
        """The target tensors with equal shapes (a ViT's position embedding resampled on purpose)."""
        target_state = backbone.model.state_dict()
        filled, resampled = {}, []
        for target, value in renamed.items():
            source = self.origin.get(target, target)
            if target not in target_state:
                self.unused.append(source)
                continue
            want = target_state[target].shape
            if value.shape != want and target == "pos_embed" and backbone.is_vit:
                value, note = _resample_pos_embed(value, backbone)
                resampled.append(note)
            if value.shape != want:
                self.mismatched.append(f"{source} {tuple(value.shape)} vs {target} {tuple(want)}")
                continue
            filled[target] = value.to(target_state[target].dtype)
        return filled, resampled


def _resample_pos_embed(value: Tensor, backbone: Backbone) -> tuple[Tensor, dict]:
    from timm.layers import resample_abs_pos_embed

    vit = backbone.model
    prefix = 0 if getattr(vit, "no_embed_class", False) else vit.num_prefix_tokens
    old = math.isqrt(value.shape[1] - prefix)
    new = vit.patch_embed.grid_size
    out = resample_abs_pos_embed(value, new_size=list(new), old_size=[old, old], num_prefix_tokens=prefix)
    return out, {"key": "pos_embed", "from_grid": [old, old], "to_grid": list(new), "how": "bicubic (timm)"}


def _why(layout: Layout, found) -> str:
    if not layout.marks:
        return "no published layout recognised; the keys are timm's own names"
    names = flat_names(found)
    hits = [next(name for name in names if re.search(mark, name)) for mark in layout.marks]
    return "recognised by " + ", ".join(hits)


def _failure(path, layout, encoder, arch, n_target, n_source, missing, unused, mismatched, duplicated) -> str:
    parts = []
    if missing:
        parts.append(f"{len(missing)} of {n_target} target tensors missing ({_listed(missing)})")
    if unused:
        parts.append(f"{len(unused)} of {n_source} source tensors unused ({_listed(unused)})")
    if mismatched:
        parts.append(f"{len(mismatched)} shape mismatches ({_listed(mismatched)})")
    if duplicated:
        parts.append(f"{len(duplicated)} targets filled twice ({_listed(duplicated)})")
    return (f"{path}: import into {arch} with layout {layout.name} ({encoder} encoder) failed: "
            + "; ".join(parts) + "; check --arch and --layout, or allow deliberate exceptions with "
            "--allow-missing/--allow-unused PATTERN")


def _img_size(backbone: Backbone) -> int | None:
    return backbone.model.patch_embed.img_size[0] if backbone.is_vit else None
