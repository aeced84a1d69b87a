"""Run one protocol on one checkpoint and store the result."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from .checkpoints import load_spec
from .errors import UserError
from .protocols import PROTOCOLS, EvalContext
from .recipes import load_defaults, resolve
from .results import write_evaluation


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device here; use --device cpu")
    return torch.device(name)


def resolve_protocol_recipe(protocol: str, recipe: Path | None = None, sets=()) -> dict:
    """Package defaults of ``protocol``, then the recipe file, then ``--set`` overrides."""
    PROTOCOLS.get(protocol)  # unknown names fail here, listing the valid ones
    return resolve(load_defaults(f"protocols/{protocol}"), recipe, sets)


def evaluate(protocol: str, checkpoint: str, data: Path, *, recipe: Path | None = None, sets=(),
             results_dir: Path = Path("results"), device: str = "auto") -> tuple[list[dict], Path]:
    """Evaluate and store; returns the records and the results file written."""
    protocol_cls = PROTOCOLS.get(protocol)
    resolved = resolve_protocol_recipe(protocol, recipe, sets)
    data = Path(data)
    if not data.exists():
        raise UserError(f"--data {data}: no such folder; give a dataset root or a tree made by "
                        "'ssl-bench data prepare'")
    ckpt = load_spec(checkpoint)
    ctx = EvalContext(checkpoint=ckpt, data=data, recipe=resolved, results_dir=Path(results_dir),
                      device=pick_device(device))
    start = time.perf_counter()
    records = protocol_cls().run(ctx)
    wall = time.perf_counter() - start
    info = {"label": ckpt.label, "sha256": ckpt.sha256, "method": ckpt.meta.get("method"),
            "arch": ckpt.meta.get("arch"), "encoder": ckpt.meta.get("encoder"),
            "spec": checkpoint, "eval": ckpt.eval}
    if "import" in ckpt.meta:  # the audit of a foreign file's import travels with every result
        info["import"] = ckpt.meta["import"]
    if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        return records, None  # under torchrun only rank 0 stores the (all-reduced) result
    path = write_evaluation(results_dir, protocol=protocol, checkpoint=info, recipe=resolved,
                            records=records, wall_time_s=wall)
    return records, path
