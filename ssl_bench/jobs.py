"""What a submitit job runs: ``ssl-bench pretrain`` and ``ssl-bench eval`` as picklable callables.

In the job, ``export_distributed_environment`` turns Slurm's variables (or the local executor's)
into the ones torchrun sets, so the engine and the protocols set up ``torch.distributed`` through
the same code path as under torchrun; then the job sets torch's threads as a command started on
that node would (``ssl_bench.threads``: the ``--threads`` it was submitted with, else
``OMP_NUM_THREADS``, else the task's cores minus its loader workers), and its results record them.

Preemption and timeout: Slurm signals USR2 ``signal_delay_s`` (90 s) before the time limit, and
on preemption where the cluster sets ``SlurmctldParameters=preempt_send_user_signal``; submitit
then calls the job's ``checkpoint`` (``submitit.helpers.Checkpointable``), which requeues the same
call. A requeued ``PretrainJob`` resumes from the run folder's last saved
training state, the engine's exact resume (``checkpoint.every_steps`` bounds the lost work); a
requeued ``EvalJob`` runs its evaluation again, a requeued ``SweepJob`` the protocols it had not
finished.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path

from submitit.core.utils import UncompletedJobError
from submitit.helpers import Checkpointable, DelayedSubmission, TorchDistributedEnvironment

from .engine import pretrain, resolve_recipe
from .errors import NotApplicable, one_line
from .evaluate import Evaluation, evaluate_many, loader_workers, resolve_recipes
from .progress import log
from .threads import apply_threads, choose_threads


def export_distributed_environment() -> None:
    """Set RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT from the job
    (first node's host name, a port derived from the job id). CUDA_VISIBLE_DEVICES is left alone:
    each rank takes ``cuda:LOCAL_RANK`` as under torchrun."""
    TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)


@dataclass
class PretrainJob(Checkpointable):
    """``ssl-bench pretrain --recipe RECIPE --out OUT``; requeued, it resumes."""

    recipe: Path | None
    out: Path
    sets: list[str] = field(default_factory=list)
    device: str = "auto"
    threads: int | None = None  # ``--threads`` as submitted; None: chosen on the job's node

    def __call__(self) -> Path:
        export_distributed_environment()
        workers = int(resolve_recipe(self.recipe, self.sets)["data"]["num_workers"])
        apply_threads(choose_threads(self.threads, workers))
        return pretrain(self.recipe, self.sets, self.out, device=self.device)


@dataclass
class EvalJob(Checkpointable):
    """``ssl-bench eval`` of one checkpoint with one or more protocols, in one process;
    ``recipes`` maps each protocol to its recipe file (None: defaults)."""

    recipes: dict[str, Path | None]
    spec: str  # the checkpoint (``checkpoint`` is submitit's requeue hook)
    data: Path
    sets: list[str] = field(default_factory=list)
    results_dir: Path = Path("results")
    device: str = "auto"
    threads: int | None = None  # ``--threads`` as submitted; None: chosen on the job's node

    def start(self) -> dict[str, dict]:
        """Set up the job's process (torchrun variables, threads); returns the resolved recipes."""
        export_distributed_environment()
        resolved = resolve_recipes(self.recipes, self.sets)
        apply_threads(choose_threads(self.threads, loader_workers(resolved)))
        return resolved

    def __call__(self) -> dict[str, tuple[list[dict], Path | None]]:
        self.start()
        return evaluate_many(self.recipes, self.spec, self.data, sets=self.sets, results_dir=self.results_dir,
                             device=self.device)

    def __str__(self) -> str:
        return f"{','.join(self.recipes)} on {self.spec}"


@dataclass
class SweepJob(EvalJob):
    """The sweep's unit of work: one checkpoint with the protocols it still lacks, evaluated as
    ``ssl-bench eval --protocol p1,p2,...`` does (one ``Evaluation``: the checkpoint loaded once,
    each (split, transform) extracted once), except that a failing protocol does not stop the
    next one. Returns {protocol: None (stored) or its failure's exception line}; the traceback of
    a failure goes to the job's log.

    Requeued (preemption, time limit), it runs only the protocols it had not finished, and carries
    the outcomes of the others (``finished``)."""

    finished: dict[str, str | None] = field(default_factory=dict)

    def __call__(self) -> dict[str, str | None]:
        resolved = self.start()
        session = Evaluation(self.spec, self.data, results_dir=self.results_dir, device=self.device)
        for protocol, recipe in resolved.items():
            self.finished[protocol] = _failure(session, protocol, recipe)
        return dict(self.finished)

    def checkpoint(self, *args, **kwargs) -> DelayedSubmission:
        """submitit's requeue hook (rank 0, in the process running ``__call__``): the same job
        with the finished protocols taken out of ``recipes`` and their outcomes carried."""
        left = {protocol: recipe for protocol, recipe in self.recipes.items() if protocol not in self.finished}
        return DelayedSubmission(replace(self, recipes=left, finished=dict(self.finished)))


def _failure(session: Evaluation, protocol: str, recipe: dict) -> str | None:
    """Run and store one protocol: None, or its exception as a traceback's last line shows it
    (``module.Type: message``)."""
    try:
        session.run(protocol, recipe)
    except UncompletedJobError:  # submitit's signal handler ending a job it cannot requeue: not this protocol's
        raise
    except Exception as err:  # noqa: BLE001 - any failure belongs to this protocol; the next one runs
        kind = type(err)
        name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
        if isinstance(err, NotApplicable):
            log(f"{protocol}: not applicable: {one_line(err)}")
        else:
            traceback.print_exc()
        return f"{name}: {one_line(err)}"
    return None
