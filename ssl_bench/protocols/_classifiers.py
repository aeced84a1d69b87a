"""Trained classifiers stored per checkpoint, for the robustness protocol to pick up.

The linear probe's best head and the fine-tuning protocols' best network are written as
safetensors + JSON under ``<results>/heads/<checkpoint sha256>/<name>.{safetensors,json}``
(``save_classifier``); the JSON says what the weights are (``kind``: ``linear`` or
``finetuned``) and how inputs were prepared (``feature_spec``, ``transform``), and
``robustness.load_classifier`` rebuilds the module from it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn

from ..atomic import atomic_write, atomic_write_json
from ..errors import UserError


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


def read_classifier(results_dir: Path, sha256: str, name: str | None = None) -> tuple[dict, dict]:
    """(weights, metadata) of a saved classifier of the checkpoint with this sha256.

    ``name`` e.g. ``linear-mae`` or ``finetune``; None picks the only one, else fails listing
    the choices.
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
    return load_file(str(stem.with_suffix(".safetensors"))), json.loads(stem.with_suffix(".json").read_text())
