"""Checkpoints: safetensors weights plus a JSON sidecar, written atomically.

Layout of a checkpoint with stem ``RUN/checkpoint``::

    RUN/checkpoint.safetensors   encoder weights in timm's key layout
    RUN/checkpoint.json          metadata (below), written after the weights

The sidecar holds the method, architecture, image and patch size, which encoder the
weights are (online / target / teacher), the evaluation conventions protocols must
follow (feature kind, final norm, input filter), the resolved recipe, epoch and step,
the code commit, library versions and the sha256 of the weights file, which loading
verifies. Foreign ``.pth`` files go through the strict, audited import of ``imports``
(read with ``weights_only=True`` and an explicit allow-list: nothing from an untrusted file is
ever unpickled); an imported checkpoint carries its audit under ``import``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .atomic import atomic_write, atomic_write_json, sha256_file
from .backbones import Backbone
from .errors import UserError, one_line
from .imports import import_state
from .provenance import code_version, library_versions, utc_now

FORMAT = "ssl-bench-checkpoint/1"

#: Conventions a protocol applies unless its recipe overrides them.
DEFAULT_EVAL = {"feature": "cls", "final_norm": True, "input_filter": None}
#: What a ConvNet's conventions always say: its one global feature, the average pool of the last stage.
CONVNET_EVAL = {"feature": "avgpool", "final_norm": True}

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
        meta = json.loads(sidecar_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(f"{sidecar_path}:{err.lineno}: invalid checkpoint metadata ({err.msg})") from None
    except UnicodeDecodeError as err:
        raise UserError(f"{sidecar_path}: checkpoint metadata is not UTF-8 JSON ({err.reason})") from None
    if not isinstance(meta, dict):
        raise UserError(f"{sidecar_path}: checkpoint metadata must be a JSON object, got a {type(meta).__name__}")
    if meta.get("format") != FORMAT:
        raise UserError(f"{sidecar_path}: not an ssl-bench checkpoint (format {meta.get('format')!r}, "
                        f"expected {FORMAT!r})")
    for key, kind in (("arch", str), ("weights", dict), ("method", str)):
        if not isinstance(meta.get(key), kind):
            raise UserError(f"{sidecar_path}: key '{key}' missing or not a {kind.__name__}; the metadata is damaged, "
                            "re-export the checkpoint")
    if not isinstance(meta["weights"].get("sha256"), str):
        raise UserError(f"{sidecar_path}: key 'weights.sha256' missing; the metadata is damaged, re-export the "
                        "checkpoint")
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
    _, sidecar_path = checkpoint_paths(spec)
    try:
        backbone = Backbone(meta["arch"], meta.get("img_size"), meta.get("patch_size"),
                            final_norm=meta.get("eval", {}).get("final_norm", True))
    except (UserError, TypeError, ValueError) as err:  # timm refuses an unknown arch or a bad size
        raise UserError(f"{sidecar_path}: {one_line(err)}") from None
    load_weights(backbone.model, state, f"{weights_path} (arch {meta['arch']} in {sidecar_path.name})")
    meta.setdefault("label", Path(spec).name if Path(spec).is_dir() else weights_path.stem)
    return Checkpoint(backbone.eval(), meta)


def load_weights(model: torch.nn.Module, state: dict, source: str) -> None:
    """``model.load_state_dict(state)`` strictly; keys or shapes that differ are one ``UserError``
    naming ``source`` and the first differing keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in state and state[k].shape != v.shape]
    parts = [f"{what}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
             for what, keys in (("missing", missing), ("unexpected", unexpected), ("shape differs", shapes)) if keys]
    if parts:
        raise UserError(f"{source}: the weights do not fit the architecture ({'; '.join(parts)}); the checkpoint "
                        "is damaged or its metadata names the wrong architecture")
    model.load_state_dict(state)


def _random_backbone(arch: str) -> Checkpoint:
    torch.manual_seed(0)  # the random baseline is the same network every time
    backbone = Backbone(arch)
    meta = {"method": "random", "arch": arch, "encoder": "random-init", "label": f"random:{arch}",
            "img_size": _img_size(backbone), "patch_size": backbone.patch_size,
            "eval": dict(DEFAULT_EVAL), "weights": {"sha256": weights_sha256(f"random:{arch}")}}
    return Checkpoint(backbone.eval(), meta)


def _timm_pretrained(name: str) -> Checkpoint:
    """``timm:NAME``: timm's pretrained weights from the local cache, else from the hub; unreachable
    and not cached, one line at once (timm itself retries the hub for most of a minute)."""
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise UserError(f"timm:{name}: timm knows no pretrained weights by that name; use a name "
                        "listed by timm.list_pretrained()")
    cached = _timm_cached_file(cfg)
    if cached is None and not _reachable(cfg):
        raise UserError(f"timm:{name}: timm's pretrained weights are not in the local cache and their hub "
                        f"is unreachable (offline?); save the weights to a file and use foreign:{name}:PATH")
    overlay = {"file": str(cached)} if cached else None
    try:
        model = timm.create_model(name, pretrained=True, num_classes=0, pretrained_cfg_overlay=overlay)
    except Exception as err:  # noqa: BLE001 - timm raises many kinds when a download fails
        raise UserError(f"timm:{name}: could not load timm's pretrained weights ({type(err).__name__}); "
                        f"save them to a file and use foreign:{name}:PATH") from None
    backbone = Backbone(name)
    backbone.model.load_state_dict(model.state_dict())
    meta = {"method": "timm", "arch": name, "encoder": "timm-pretrained", "label": f"timm:{name}",
            "img_size": _img_size(backbone), "patch_size": backbone.patch_size,
            "eval": dict(DEFAULT_EVAL), "weights": {"sha256": weights_sha256(f"timm:{name}")}}
    return Checkpoint(backbone.eval(), meta)


def _timm_cached_file(cfg) -> Path | None:
    """The weights file of a timm pretrained config already in the Hugging Face or torch hub cache."""
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        for filename in ([cfg.hf_hub_filename] if getattr(cfg, "hf_hub_filename", None) else
                         ["model.safetensors", "pytorch_model.bin"]):
            found = try_to_load_from_cache(cfg.hf_hub_id, filename)
            if isinstance(found, str):
                return Path(found)
    if cfg.url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(cfg.url.split("?")[0]).name
        if path.is_file():
            return path
    return None


def _reachable(cfg) -> bool:
    """Whether the weights' host answers within 1.5 s (False at once with HF_HUB_OFFLINE=1)."""
    from urllib.parse import urlsplit

    from huggingface_hub import constants, get_session

    if constants.HF_HUB_OFFLINE:
        return False
    parts = urlsplit(constants.ENDPOINT if cfg.hf_hub_id else cfg.url)
    try:
        get_session().head(f"{parts.scheme}://{parts.netloc}", timeout=1.5)
    except Exception:  # noqa: BLE001 - any failure to connect means unreachable
        return False
    return True


def _foreign(arch: str, path: str) -> Checkpoint:
    """``foreign:ARCH:PATH``: the audited import with the layout recognised from the keys."""
    imported = import_state(Path(path), arch)
    backbone = imported.backbone
    meta = {"method": "foreign", "arch": arch, "encoder": imported.audit["encoder"],
            "label": f"foreign:{Path(path).name}", "img_size": _img_size(backbone),
            "patch_size": backbone.patch_size,
            "eval": {**DEFAULT_EVAL, **imported.eval, "final_norm": backbone.final_norm},
            "weights": {"sha256": imported.weights_id}, "import": imported.audit}
    return Checkpoint(backbone, meta)


def weights_sha256(spec: str) -> str:
    """What a SPEC's results are stored under (``Checkpoint.sha256``), without building the model
    where that can be known without it: the sha256 of our weights file (as recorded in the sidecar,
    verified) or the name of the weights (``random:ARCH:seed0``, ``timm:NAME``). A foreign file's
    identity includes the import's choices (layout, encoder, exceptions), so it is imported."""
    kind, sep, rest = spec.partition(":")
    if sep and kind == "random":
        return f"random:{rest}:seed0"
    if sep and kind == "timm":
        return f"timm:{rest}"
    if sep and kind == "foreign":
        return load_spec(spec).sha256
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
