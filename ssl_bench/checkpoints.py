"""Checkpoints: safetensors weights plus a JSON sidecar, written atomically.

Layout of a checkpoint with stem ``RUN/checkpoint``::

    RUN/checkpoint.safetensors   encoder weights in timm's key layout
    RUN/checkpoint.json          metadata (below), written after the weights

The sidecar holds the method, architecture, image and patch size, which encoder the
weights are (online / target / teacher), the evaluation conventions protocols must
follow (feature kind, final norm, input filter), the resolved recipe, epoch and step,
the code commit, library versions and the sha256 of the weights file, which loading
verifies. Foreign ``.pth`` files are read with ``weights_only=True`` and an explicit
allow-list of safe globals: nothing from an untrusted file is ever unpickled.
"""

from __future__ import annotations

import argparse
import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import timm
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from timm.models.vision_transformer import checkpoint_filter_fn

from .atomic import atomic_write, atomic_write_json, sha256_file
from .backbones import Backbone
from .errors import UserError
from .provenance import code_version, library_versions, utc_now

FORMAT = "ssl-bench-checkpoint/1"

#: Conventions a protocol applies unless its recipe overrides them.
DEFAULT_EVAL = {"feature": "cls", "final_norm": True, "input_filter": None}
#: What a ConvNet's conventions always say: its one global feature, the average pool of the last stage.
CONVNET_EVAL = {"feature": "avgpool", "final_norm": True}

#: Globals a foreign checkpoint may contain besides tensors: the argparse namespace that
#: MAE-lineage code (MAE, DINO, MSN, ConMIM, SiameseIM) stores under ``args``, and numpy
#: scalars and dtypes that some of them store as metrics.
FOREIGN_SAFE_GLOBALS = [argparse.Namespace, np.dtype, np._core.multiarray.scalar,
                        type(np.dtype(np.float64)), type(np.dtype(np.float32)),
                        type(np.dtype(np.int64))]

#: Where foreign checkpoints keep the encoder, tried in order.
FOREIGN_STATE_KEYS = ("target_encoder", "teacher", "model", "state_dict", "encoder")
FOREIGN_PREFIXES = ("module.", "backbone.", "encoder.", "base_encoder.")


@dataclass
class Checkpoint:
    """A backbone ready for evaluation plus the metadata that describes it."""

    backbone: Backbone
    meta: dict

    @property
    def label(self) -> str:
        return self.meta.get("label") or f"{self.meta['method']}:{self.meta['arch']}"

    @property
    def sha256(self) -> str:
        return self.meta["weights"]["sha256"]

    @property
    def eval(self) -> dict:
        return eval_conventions(self.backbone, self.meta.get("eval", {}))


def eval_conventions(backbone: Backbone, given: dict) -> dict:
    """``given`` over the defaults; a ConvNet's feature is its average pool whatever was given."""
    return {**DEFAULT_EVAL, **given, **({} if backbone.is_vit else CONVNET_EVAL)}


def checkpoint_paths(spec: Path) -> tuple[Path, Path]:
    """(weights, sidecar) for a checkpoint given as a folder, its .safetensors or its .json."""
    spec = Path(spec)
    if spec.is_dir():
        spec = spec / "checkpoint.json"
    stem = spec.with_suffix("") if spec.suffix in (".json", ".safetensors") else spec
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def save_checkpoint(stem: Path, backbone: Backbone, meta: dict) -> Path:
    """Write ``stem.safetensors`` then ``stem.json``; returns the sidecar path.

    ``meta`` must hold at least ``method`` and ``encoder``; architecture, sizes,
    provenance and the weights hash are filled in here.
    """
    weights_path, sidecar_path = checkpoint_paths(Path(stem))
    state = backbone.encoder_state_dict()
    atomic_write(weights_path, lambda tmp: save_file(state, str(tmp)))
    full = {
        "format": FORMAT,
        "arch": backbone.arch,
        "img_size": _img_size(backbone),
        "patch_size": backbone.patch_size,
        "eval": eval_conventions(backbone, {"final_norm": backbone.final_norm}),
        **meta,
        "code": code_version(),
        "versions": library_versions(),
        "created": utc_now(),
        "weights": {"file": weights_path.name, "sha256": sha256_file(weights_path),
                    "bytes": weights_path.stat().st_size},
    }
    atomic_write_json(sidecar_path, full)
    return sidecar_path


def read_metadata(spec: Path) -> dict:
    """The sidecar of one of our checkpoints, checked against its weights file."""
    weights_path, sidecar_path = checkpoint_paths(spec)
    if not sidecar_path.is_file():
        hint = (" (the weights exist but the write was interrupted before the metadata)"
                if weights_path.is_file() else "")
        raise UserError(f"{sidecar_path}: checkpoint metadata not found{hint}; give a folder holding "
                        "checkpoint.json, a .json/.safetensors checkpoint, random:ARCH or timm:NAME")
    try:
        meta = json.loads(sidecar_path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{sidecar_path}:{err.lineno}: invalid checkpoint metadata ({err.msg})") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"{sidecar_path}: not an ssl-bench checkpoint (format {meta.get('format')!r}, "
                        f"expected {FORMAT!r})")
    if not weights_path.is_file():
        raise UserError(f"{weights_path}: checkpoint weights missing next to {sidecar_path.name}")
    actual = sha256_file(weights_path)
    if actual != meta["weights"]["sha256"]:
        raise UserError(f"{weights_path}: sha256 {actual[:12]}... does not match the "
                        f"{meta['weights']['sha256'][:12]}... recorded in {sidecar_path.name}: the file is "
                        "truncated or altered; re-copy it or re-export the checkpoint")
    return meta


def load_checkpoint(spec: Path) -> Checkpoint:
    """Load one of our checkpoints after verifying its hash."""
    meta = read_metadata(spec)
    weights_path, _ = checkpoint_paths(spec)
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError) as err:
        raise UserError(f"{weights_path}: unreadable safetensors file ({err})") from None
    backbone = Backbone(meta["arch"], meta.get("img_size"), meta.get("patch_size"),
                        final_norm=meta.get("eval", {}).get("final_norm", True))
    backbone.model.load_state_dict(state)
    meta.setdefault("label", Path(spec).name if Path(spec).is_dir() else weights_path.stem)
    return Checkpoint(backbone.eval(), meta)


def load_foreign_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a foreign ``.pth``, read with ``weights_only=True`` and the allow-list."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint file not found")
    try:
        with torch.serialization.safe_globals(FOREIGN_SAFE_GLOBALS):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else "unsupported content"
        raise UserError(f"{path}: refused to unpickle a foreign checkpoint ({first}); only tensors and "
                        "allow-listed types load; re-save its state_dict with torch.save") from None
    except (RuntimeError, EOFError, OSError) as err:
        raise UserError(f"{path}: unreadable torch checkpoint ({err})") from None
    for key in FOREIGN_STATE_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path}: no state dict found (looked under {', '.join(FOREIGN_STATE_KEYS)})")
    state = {}
    for key, value in obj.items():
        if isinstance(value, torch.Tensor):
            for prefix in FOREIGN_PREFIXES:
                key = key.removeprefix(prefix)
            state[key] = value
    return state


def _random_backbone(arch: str) -> Checkpoint:
    torch.manual_seed(0)  # the random baseline is the same network every time
    backbone = Backbone(arch)
    meta = {"method": "random", "arch": arch, "encoder": "random-init", "label": f"random:{arch}",
            "img_size": _img_size(backbone), "patch_size": backbone.patch_size,
            "eval": dict(DEFAULT_EVAL), "weights": {"sha256": weights_sha256(f"random:{arch}")}}
    return Checkpoint(backbone.eval(), meta)


def _timm_pretrained(name: str) -> Checkpoint:
    try:
        model = timm.create_model(name, pretrained=True, num_classes=0)
    except Exception as err:  # noqa: BLE001 - timm raises many kinds when the hub is unreachable
        raise UserError(f"timm:{name}: could not load timm's pretrained weights ({type(err).__name__}); "
                        f"offline, save them to a file and use foreign:{name}:PATH") from None
    backbone = Backbone(name)
    backbone.model.load_state_dict(model.state_dict())
    meta = {"method": "timm", "arch": name, "encoder": "timm-pretrained", "label": f"timm:{name}",
            "img_size": _img_size(backbone), "patch_size": backbone.patch_size,
            "eval": dict(DEFAULT_EVAL), "weights": {"sha256": weights_sha256(f"timm:{name}")}}
    return Checkpoint(backbone.eval(), meta)


def _foreign(arch: str, path: str) -> Checkpoint:
    state = load_foreign_state_dict(Path(path))
    backbone = Backbone(arch)
    if backbone.is_vit:  # timm's own converter resamples position embeddings to this model

        state = checkpoint_filter_fn(state, backbone.model)
    missing, unexpected = backbone.model.load_state_dict(state, strict=False)
    if len(missing) == len(backbone.model.state_dict()):
        raise UserError(f"{path}: none of its keys match {arch} (first keys: "
                        f"{', '.join(list(state)[:3])}); check the architecture name")
    meta = {"method": "foreign", "arch": arch, "encoder": "foreign", "label": f"foreign:{Path(path).name}",
            "img_size": _img_size(backbone), "patch_size": backbone.patch_size,
            "eval": dict(DEFAULT_EVAL), "weights": {"sha256": sha256_file(Path(path))},
            "foreign": {"path": str(path), "missing_keys": sorted(missing),
                        "unexpected_keys": sorted(unexpected)}}
    return Checkpoint(backbone.eval(), meta)


def weights_sha256(spec: str) -> str:
    """What a SPEC's results are stored under (``Checkpoint.sha256``), without building the model:
    the sha256 of our weights file (as recorded in the sidecar, verified) or of a foreign file,
    or the name of the weights (``random:ARCH:seed0``, ``timm:NAME``)."""
    kind, sep, rest = spec.partition(":")
    if sep and kind == "random":
        return f"random:{rest}:seed0"
    if sep and kind == "timm":
        return f"timm:{rest}"
    if sep and kind == "foreign":
        path = Path(rest.partition(":")[2])
        if not path.is_file():
            raise UserError(f"{path}: checkpoint file not found")
        return sha256_file(path)
    return read_metadata(Path(spec))["weights"]["sha256"]


def load_spec(spec: str) -> Checkpoint:
    """Resolve a checkpoint SPEC: a path to one of ours, ``random:ARCH``, ``timm:NAME``
    or ``foreign:ARCH:PATH`` (a ``.pth`` from another code base)."""
    kind, sep, rest = spec.partition(":")
    if sep and kind == "random":
        return _random_backbone(rest)
    if sep and kind == "timm":
        return _timm_pretrained(rest)
    if sep and kind == "foreign":
        arch, sep2, path = rest.partition(":")
        if not sep2:
            raise UserError(f"--checkpoint {spec}: expected foreign:ARCH:PATH")
        return _foreign(arch, path)
    return load_checkpoint(Path(spec))


def _img_size(backbone: Backbone) -> int | None:
    if not backbone.is_vit:
        return None
    return backbone.model.patch_embed.img_size[0]
