"""Layered YAML recipes: package defaults, then the recipe file, then ``--set`` overrides.

Every key a recipe may set exists in the package defaults (``ssl_bench/defaults``), which
fixes its type; an unknown key or a value of the wrong type is a ``UserError`` naming the
key and the file (or the ``--set`` argument) it came from. A recipe file may start from
another one with ``_base_: other.yaml`` (a path relative to the file), as the small
recipes do from the full-scale ones. A mapping that is empty in the defaults is open:
any sub-key is accepted there, from any layer (a recipe file may fill it and ``--set`` add
more keys to it), merged without type checks (its consumer checks them).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable

import yaml

from .errors import UserError

DEFAULTS_DIR = Path(__file__).resolve().parent / "defaults"
BASE_KEY = "_base_"


def read_yaml(path: Path) -> dict:
    """Read one YAML mapping, with a one-line error naming the file (and line) on failure."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: recipe file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason}); save the recipe as UTF-8") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise UserError(f"{where}: {problem}; fix the YAML syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: a recipe must be a YAML mapping of keys, got {type(data).__name__}")
    return data


def recipe_layers(path: Path, _children: tuple[Path, ...] = ()) -> list[tuple[str, dict]]:
    """The chain of (source, mapping) a recipe file stands for, its ``_base_`` files first."""
    path = Path(path)
    if path.resolve() in _children:
        chain = " -> ".join(str(p) for p in (*_children, path.resolve()))
        raise UserError(f"{path}: '{BASE_KEY}' chain is a cycle ({chain}); point {BASE_KEY} at a recipe that "
                        "does not lead back to this one")
    data = read_yaml(path)
    layers: list[tuple[str, dict]] = []
    base = data.pop(BASE_KEY, None)
    if base is not None:
        if not isinstance(base, str):
            raise UserError(f"{path}: '{BASE_KEY}' must be a file name, got {base!r}")
        layers = recipe_layers(path.parent / base, (*_children, path.resolve()))
    layers.append((str(path), data))
    return layers


def _describe(kind: type) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a mapping"}[kind]


def _coerce(default: Any, value: Any, key: str, source: str) -> Any:
    """Check ``value`` against the type of ``default`` (None accepts anything)."""
    if default is None or value is None:
        return value
    kind = type(default)
    if kind is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            return float(value)  # YAML reads '1e-3' as a string
        except ValueError:
            pass
    elif kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif kind is int and isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    elif isinstance(value, kind) and not (kind is not bool and isinstance(value, bool)):
        return value
    raise UserError(f"{source}: key '{key}' must be {_describe(kind)}, got {value!r}")


def open_mappings(defaults: dict, prefix: str = "") -> frozenset[str]:
    """Dotted paths of the mappings ``defaults`` leaves empty (open: any sub-key accepted)."""
    paths: set[str] = set()
    for key, value in defaults.items():
        if isinstance(value, dict):
            paths |= {f"{prefix}{key}"} if not value else open_mappings(value, f"{prefix}{key}.")
    return frozenset(paths)


def merge(base: dict, override: dict, source: str, prefix: str = "",
          open_paths: frozenset[str] = frozenset()) -> dict:
    """``base`` updated by ``override``, refusing keys that ``base`` does not have, except in an
    open mapping: an empty ``base`` or one of ``open_paths`` (``open_mappings`` of the defaults)."""
    if prefix and (base == {} or any(prefix.startswith(f"{path}.") for path in open_paths)):
        return deep_update(base, override)
    result = copy.deepcopy(base)
    for key, value in override.items():
        dotted = f"{prefix}{key}"
        if key not in base:
            valid = ", ".join(sorted(base)) or "(none)"
            where = f"under '{prefix[:-1]}'" if prefix else "at the top level"
            raise UserError(f"{source}: unknown key '{dotted}'; valid keys {where}: {valid}")
        default = base[key]
        if isinstance(default, dict) and isinstance(value, dict):
            result[key] = merge(default, value, source, f"{dotted}.", open_paths)
        else:
            result[key] = _coerce(default, value, dotted, source)
    return result


def parse_assignment(text: str) -> dict:
    """``'optim.lr=0.1'`` -> ``{'optim': {'lr': 0.1}}`` (the value is read as YAML)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {text}: expected KEY.SUB=VALUE, e.g. --set optim.lr=0.001")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    nested: dict = value
    for part in reversed(key.strip().split(".")):
        nested = {part: nested}
    return nested


def load_defaults(*names: str) -> dict:
    """Deep-merge package default files such as ``'pretrain/_engine'`` and ``'pretrain/msn'``."""
    result: dict = {}
    for name in names:
        path = DEFAULTS_DIR / f"{name}.yaml"
        result = deep_update(result, read_yaml(path))
    return result


def deep_update(base: dict, override: dict) -> dict:
    """``base`` with ``override`` merged in, mapping by mapping (no key checks: defaults files)."""
    result = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = deep_update(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def resolve(defaults: dict, recipe: Path | None = None, sets: Iterable[str] = ()) -> dict:
    """The fully resolved recipe: defaults, then each recipe layer, then each ``--set``."""
    resolved = copy.deepcopy(defaults)
    open_paths = open_mappings(defaults)
    if recipe is not None:
        for source, layer in recipe_layers(recipe):
            resolved = merge(resolved, layer, source, open_paths=open_paths)
    for text in sets:
        resolved = merge(resolved, parse_assignment(text), f"--set {text}", open_paths=open_paths)
    return resolved


def dump(recipe: dict) -> str:
    """The YAML text saved beside every run."""
    return yaml.safe_dump(recipe, sort_keys=False)
