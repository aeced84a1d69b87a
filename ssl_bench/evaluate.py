"""Run protocols on one checkpoint and store each result.

``Evaluation`` (and ``evaluate_many``, which uses it) runs several protocols in one process: the
checkpoint is loaded once and each (split, transform, feature) is extracted once, the protocols
sharing it through ``EvalContext.shared`` in memory (and the on-disk feature cache when enabled).
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path

from .atomic import check_writable, remove_stale_temporaries
from .checkpoints import Checkpoint, load_spec
from .distributed import pick_device
from .errors import UserError
from .progress import log
from .protocols import PROTOCOLS, EvalContext
from .recipes import load_defaults, resolve
from .results import write_evaluation


def resolve_protocol_recipe(protocol: str, recipe: Path | None = None, sets=()) -> dict:
    """Package defaults of ``protocol``, then the recipe file, then ``--set`` overrides."""
    PROTOCOLS.get(protocol)  # unknown names fail here, listing the valid ones
    return resolve(load_defaults(f"protocols/{protocol}"), recipe, sets)


def resolve_recipes(recipes: dict[str, Path | None], sets=()) -> dict[str, dict]:
    """Every protocol of ``recipes`` ({name: recipe file or None}) resolved, in order: a bad recipe
    fails here, before any work."""
    return {name: resolve_protocol_recipe(name, recipe, sets) for name, recipe in recipes.items()}


def loader_workers(resolved: dict[str, dict]) -> int:
    """The most data-loader workers any of the ``resolved`` protocol recipes starts (the protocols
    of one evaluation run one after the other)."""
    return max((int(recipe.get("num_workers", 0)) for recipe in resolved.values()), default=0)


def recipe_files(protocols: list[str], items) -> dict[str, Path | None]:
    """``--recipe-for P=FILE`` items as {protocol: recipe file or None}, in ``protocols`` order."""
    recipes: dict[str, Path | None] = dict.fromkeys(protocols)
    for item in items:
        name, sep, file = item.partition("=")
        if not sep or name not in recipes:
            raise UserError(f"--recipe-for {item}: expected P=FILE with P one of the protocols "
                            f"({', '.join(protocols)})")
        if not Path(file).is_file():
            raise UserError(f"--recipe-for {item}: no such file {file}")
        recipes[name] = Path(file)
    return recipes


def evaluate(protocol: str, checkpoint: str, data: Path, *, recipe: Path | None = None, sets=(),
             results_dir: Path = Path("results"), device: str = "auto") -> tuple[list[dict], Path | None]:
    """Evaluate and store; returns the records and the results file written."""
    return evaluate_many({protocol: recipe}, checkpoint, data, sets=sets, results_dir=results_dir,
                         device=device)[protocol]


def evaluate_many(recipes: dict[str, Path | None], checkpoint: str, data: Path, *, sets=(),
                  results_dir: Path = Path("results"),
                  device: str = "auto") -> dict[str, tuple[list[dict], Path | None]]:
    """Every protocol of ``recipes`` ({name: recipe file or None}) on one checkpoint, in order.

    Every recipe is resolved before any work, so a bad one fails first. Returns {protocol:
    (records, results file)}; the file is None on ranks other than 0.
    """
    resolved = resolve_recipes(recipes, sets)
    session = Evaluation(checkpoint, data, results_dir=results_dir, device=device)
    return {name: session.run(name, recipe) for name, recipe in resolved.items()}


@functools.cache
def _prepare_store(results_dir: Path) -> None:
    """Once per process and store (the demo opens one ``Evaluation`` per checkpoint): probe that it is
    writable, and remove the temporaries of writers that died."""
    check_writable(results_dir, "results store")
    for path in remove_stale_temporaries(results_dir):
        log(f"removed the stale temporary {path} of an interrupted write")


class Evaluation:
    """One checkpoint, loaded once, evaluated with any number of protocols; they share the
    dataset manifests and the features they extract (``EvalContext.shared``)."""

    def __init__(self, checkpoint: str, data: Path, *, results_dir: Path = Path("results"), device: str = "auto"):
        self.data = Path(data)
        if not self.data.exists():
            raise UserError(f"--data {data}: no such folder; give a dataset root or a tree made by "
                            "'ssl-bench data prepare'")
        _prepare_store(Path(results_dir).absolute())
        self.spec = checkpoint
        self.checkpoint: Checkpoint = load_spec(checkpoint)
        self.results_dir = Path(results_dir)
        self.device = pick_device(device)
        self.shared: dict = {}

    def run(self, protocol: str, resolved: dict) -> tuple[list[dict], Path | None]:
        """Run ``protocol`` with its resolved recipe and store the result (rank 0 only)."""
        protocol_cls = PROTOCOLS.get(protocol)
        ckpt = self.checkpoint
        ctx = EvalContext(checkpoint=ckpt, data=self.data, recipe=resolved, results_dir=self.results_dir,
                          device=self.device, shared=self.shared)
        start = time.perf_counter()
        records = protocol_cls().run(ctx)
        wall = time.perf_counter() - start
        unknown = protocol_cls.schema.unmatched(records)
        if unknown:
            raise ValueError(f"protocol {protocol} wrote {', '.join(f'{d}/{m}' for d, m in unknown)}, which its "
                             f"schema ({protocol_cls.__module__}) does not declare")
        info = {"label": ckpt.label, "sha256": ckpt.sha256, "method": ckpt.meta.get("method"),
                "arch": ckpt.meta.get("arch"), "encoder": ckpt.meta.get("encoder"),
                "spec": self.spec, "eval": ckpt.eval}
        if "import" in ckpt.meta:  # the audit of a foreign file's import travels with every result
            info["import"] = ckpt.meta["import"]
        if int(os.environ.get("RANK", 0)) != 0:
            # under torchrun or a Slurm job (RANK set on every rank, whether or not the protocol
            # joins a process group) only rank 0 stores the result
            return records, None
        path = write_evaluation(self.results_dir, protocol=protocol, checkpoint=info, recipe=resolved,
                                records=records, wall_time_s=wall)
        return records, path
