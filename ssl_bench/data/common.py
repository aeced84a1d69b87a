"""Shared helpers of the dataset loaders, validators and the embedded generator.

Nothing here imports torch, so ``ssl-bench data check`` and ``data prepare`` start quickly.
"""

from __future__ import annotations

import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

import yaml

from ..errors import UserError
from ..threads import available_cores

#: File name of the manifest at the root of a tree written by ``ssl-bench data prepare``.
MANIFEST_NAME = "ssl-bench-data.json"

_FORMATS_YAML = Path(__file__).with_name("formats.yaml")

#: The embedded data's profiles: ``base.yaml`` and one file per profile merged over it.
PROFILE_DIR = Path(__file__).with_name("profiles")


@lru_cache(maxsize=None)
def formats_config() -> dict:
    """The layout constants of every real format (``ssl_bench/data/formats.yaml``)."""
    with open(_FORMATS_YAML, encoding="utf-8") as f:
        return yaml.safe_load(f)


def fmt_config(fmt: str) -> dict:
    return formats_config()[fmt]


def profile_names() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml") if p.stem != "base")


def default_workers() -> int:
    """Worker processes by default: the CPU cores this process may use."""
    return available_cores()


def image_extensions() -> tuple[str, ...]:
    return tuple(formats_config()["image_extensions"])


def is_image_file(name: str) -> bool:
    return name.lower().endswith(image_extensions())


@lru_cache(maxsize=None)
def _wnid_re() -> re.Pattern:
    return re.compile(formats_config()["wnid_pattern"])


def is_wnid(name: str) -> bool:
    return bool(_wnid_re().match(name))


def sorted_subdirs(path: Path) -> list[str]:
    """Names of the sub-folders of ``path``, sorted; [] when it is not a folder."""
    try:
        with os.scandir(path) as it:
            return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))
    except (FileNotFoundError, NotADirectoryError):
        return []


def sorted_files(path: Path) -> list[str]:
    """Names of the plain files in ``path``, sorted; [] when it is not a folder."""
    try:
        with os.scandir(path) as it:
            return sorted(e.name for e in it if e.is_file() and not e.name.startswith("."))
    except (FileNotFoundError, NotADirectoryError):
        return []


def write_json(path: Path, obj: Any) -> None:
    """Write JSON deterministically: sorted keys, compact, UTF-8, trailing newline."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    path.write_text(text + "\n", encoding="utf-8")


def write_lines(path: Path, lines: Iterable[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def load_json(path: Path, problems: list[str] | None = None) -> Any:
    """Load a JSON file; a missing or broken file is a problem (returned None) or a UserError."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        msg = f"{path}: missing"
    except json.JSONDecodeError as e:
        msg = f"{path}:{e.lineno}: invalid JSON: {e.msg} (column {e.colno})"
    except UnicodeDecodeError as e:
        msg = f"{path}: not UTF-8 text ({e.reason})"
    if problems is None:
        raise UserError(msg)
    problems.append(msg)
    return None


def read_manifest(root: Path) -> dict | None:
    """The embedded-data manifest at ``root`` (None when there is none)."""
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        return None
    data = load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("sets"), dict):
        raise UserError(f"{path}: not an ssl-bench data manifest (expected an object with a 'sets' object)")
    return data


def embedded_set(path: Path) -> dict | None:
    """The manifest entry of the embedded set stored at ``path`` (None for a real dataset).

    A prepared tree keeps every set in a sub-folder of the root that holds the manifest,
    so the manifest is looked up in ``path.parent``.
    """
    path = Path(path)
    try:
        manifest = read_manifest(path.parent)
    except UserError:
        return None
    if manifest is None:
        return None
    for entry in manifest["sets"].values():
        if entry.get("subfolder") == path.name:
            return entry
    return None


def first_problems(problems: list[str], limit: int = 1) -> str:
    """One line for a UserError built from validator problems."""
    head = "; ".join(problems[:limit])
    more = len(problems) - limit
    if more > 0:
        head += f" (and {more} more problem{'s' if more > 1 else ''}; run `ssl-bench data check` for all)"
    return head
