"""Run one protocol on one checkpoint and store the result."""

from __future__ import annotations

import os
import time
from pathlib import Path

from .checkpoints import load_spec
from .distributed import pick_device
from .errors import UserError
from .protocols import PROTOCOLS, EvalContext
from .recipes import load_defaults, resolve
from .results import write_evaluation


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
    unknown = protocol_cls.schema.unmatched(records)
    if unknown:
        raise ValueError(f"protocol {protocol} wrote {', '.join(f'{d}/{m}' for d, m in unknown)}, which its "
                         f"schema ({protocol_cls.__module__}) does not declare")
    info = {"label": ckpt.label, "sha256": ckpt.sha256, "method": ckpt.meta.get("method"),
            "arch": ckpt.meta.get("arch"), "encoder": ckpt.meta.get("encoder"),
            "spec": checkpoint, "eval": ckpt.eval}
    if "import" in ckpt.meta:  # the audit of a foreign file's import travels with every result
        info["import"] = ckpt.meta["import"]
    if int(os.environ.get("RANK", 0)) != 0:
        # under torchrun or a Slurm job (RANK set on every rank, whether or not the protocol
        # joins a process group) only rank 0 stores the result
        return records, None
    path = write_evaluation(results_dir, protocol=protocol, checkpoint=info, recipe=resolved,
                            records=records, wall_time_s=wall)
    return records, path
