"""What a submitit job runs: ``ssl-bench pretrain`` and ``ssl-bench eval`` as picklable callables.

In the job, ``export_distributed_environment`` turns Slurm's variables (or the local executor's)
into the ones torchrun sets, so the engine and the protocols set up ``torch.distributed`` through
the same code path as under torchrun.

Preemption and timeout: Slurm signals USR2 ``signal_delay_s`` (90 s) before the time limit, and
on preemption where the cluster sets ``SlurmctldParameters=preempt_send_user_signal``; submitit
then calls the job's ``checkpoint`` (``submitit.helpers.Checkpointable``), which requeues the same
call. A requeued ``PretrainJob`` resumes from the run folder's last saved
training state, the engine's exact resume (``checkpoint.every_steps`` bounds the lost work); a
requeued ``EvalJob`` runs its evaluation again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from submitit.helpers import Checkpointable, TorchDistributedEnvironment

from .engine import pretrain
from .evaluate import evaluate_many


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

    def __call__(self) -> Path:
        export_distributed_environment()
        return pretrain(self.recipe, self.sets, self.out, device=self.device)


@dataclass
class EvalJob(Checkpointable):
    """``ssl-bench eval`` of one checkpoint with one or more protocols, in one process (the
    sweep's unit of work); ``recipes`` maps each protocol to its recipe file (None: defaults)."""

    recipes: dict[str, Path | None]
    spec: str  # the checkpoint (``checkpoint`` is submitit's requeue hook)
    data: Path
    sets: list[str] = field(default_factory=list)
    results_dir: Path = Path("results")
    device: str = "auto"

    def __call__(self) -> dict[str, tuple[list[dict], Path | None]]:
        export_distributed_environment()
        return evaluate_many(self.recipes, self.spec, self.data, sets=self.sets, results_dir=self.results_dir,
                             device=self.device)

    def __str__(self) -> str:
        return f"{','.join(self.recipes)} on {self.spec}"
