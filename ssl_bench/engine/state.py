"""The full training state of a run, saved and restored exactly.

``train_state-<step>.safetensors`` holds every tensor (model with teachers and heads,
optimiser state, each rank's RNG states); ``train_state.json`` the rest and the weights'
sha256. The JSON is written last and the previous tensors file removed after it, so a run
killed at any moment keeps one complete state to resume from.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..atomic import atomic_write, atomic_write_bytes, atomic_write_json, sha256_file
from ..errors import UserError
from ..progress import log
from ..seeding import seed_everything

STATE_FORMAT = "ssl-bench-train-state/1"
STATE_JSON = "train_state.json"


def rng_state() -> dict:
    """This process's Python, NumPy and torch (CPU, and CUDA once used) generator states."""
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (np_state[0], np_state[1].astype(np.int64), int(np_state[2]), int(np_state[3]),
                       float(np_state[4]))}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what ``rng_state`` captured."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_state(run: Path, method, optimizer, step: int, epoch: int, rngs: list[dict], recipe: dict) -> Path:
    """Write ``train_state-<step>.safetensors`` then ``train_state.json`` pointing at it; the
    previous tensors file is removed only after the new JSON is in place."""
    tensors = {f"model.{k}": v.detach().cpu().clone().contiguous() for k, v in method.state_dict().items()}
    opt = optimizer.state_dict()
    opt_other: dict = {}
    for pid, entries in opt["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{key}"] = value.detach().cpu().clone().contiguous()
            else:
                opt_other.setdefault(str(pid), {})[key] = value
    rng_json = []
    for rank, state in enumerate(rngs):
        tensors[f"rng.{rank}.torch"] = state["torch"].clone()
        tensors[f"rng.{rank}.numpy"] = torch.from_numpy(state["numpy"][1].copy())
        if "cuda" in state:
            tensors[f"rng.{rank}.cuda"] = state["cuda"].clone()
        version, internal, gauss = state["python"]
        rng_json.append({"python": [version, list(internal), gauss],
                         "numpy": [state["numpy"][0], state["numpy"][2], state["numpy"][3], state["numpy"][4]],
                         "cuda": "cuda" in state})
    weights = run / f"train_state-{step:09d}.safetensors"
    atomic_write(weights, lambda tmp: save_file(tensors, str(tmp)))
    previous = read_state_json(run)
    meta = {"format": STATE_FORMAT, "step": step, "epoch": epoch, "method": recipe["method"],
            "recipe_sha256": recipe_digest(recipe), "world_size": len(rngs),
            "optimizer": {"param_groups": opt["param_groups"], "other": opt_other},
            "rng": rng_json, "weights": {"file": weights.name, "sha256": sha256_file(weights)}}
    atomic_write_json(run / STATE_JSON, meta)
    if previous and previous["weights"]["file"] != weights.name:
        (run / previous["weights"]["file"]).unlink(missing_ok=True)
    return weights


def read_state_json(run: Path) -> dict | None:
    path = run / STATE_JSON
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: unreadable training state ({err.msg}); delete the run folder to restart") from None


def load_state(run: Path, method, optimizer, world: int, rank: int) -> tuple[int, int] | None:
    """Restore model, teachers, optimiser and this rank's RNG; returns (step, epoch)."""
    meta = read_state_json(run)
    if meta is None:
        return None
    weights = run / meta["weights"]["file"]
    if not weights.is_file() or sha256_file(weights) != meta["weights"]["sha256"]:
        raise UserError(f"{weights}: training state missing or altered (sha256 mismatch with {STATE_JSON}); "
                        "delete the run folder to restart")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError) as err:
        raise UserError(f"{weights}: unreadable training state ({err})") from None
    model = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    method.load_state_dict(model)
    state: dict = {int(pid): dict(other) for pid, other in meta["optimizer"]["other"].items()}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer"]["param_groups"]})
    if meta["world_size"] == world:
        info = meta["rng"][rank]
        version, internal, gauss = info["python"]
        name, pos, has_gauss, cached = info["numpy"]
        set_rng_state({"torch": tensors[f"rng.{rank}.torch"], "python": (version, internal, gauss),
                       "numpy": (name, tensors[f"rng.{rank}.numpy"].numpy(), pos, has_gauss, cached),
                       **({"cuda": tensors[f"rng.{rank}.cuda"]} if info["cuda"] else {})})
    else:
        log(f"resuming with {world} ranks from a state saved with {meta['world_size']}: "
            "RNG streams re-seeded, data order continues")
        seed_everything(meta["step"] + rank)
    return meta["step"], meta["epoch"]


def recipe_digest(recipe: dict) -> str:
    """sha256 of a resolved recipe: two runs are the same run when their digests match."""
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def truncate_log(path: Path, step: int) -> None:
    """Drop the log rows after ``step`` (a resumed run writes them again)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    atomic_write_bytes(path, ("\n".join(kept) + "\n").encode() if kept else b"")
