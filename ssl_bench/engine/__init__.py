"""The one pretraining engine every method runs on.

``pretrain(recipe, sets, out_dir, device)`` resolves the recipe (package defaults
``pretrain/_engine`` + ``pretrain/<method>``, the recipe file and its ``_base_`` chain,
then ``--set``), builds the method from ``ssl_bench.methods.METHODS`` and trains it:

* data (``engine.data``): an ImageFolder of the training split; the method's transform runs
  in the data workers; batches come from a deterministic per-epoch permutation split across
  ranks (DistributedSampler order), and every sample's augmentation RNG is seeded from
  (seed, epoch, index), so a resumed run sees exactly the views an uninterrupted one would;
* one step (``engine.step``, shared with ``ssl-bench bench pretrain``): AdamW or LARS
  (``timm.optim.Lars``), parameter groups with / without weight decay from the method;
  per-iteration schedules (``ssl_bench.schedules``): linear warmup + cosine lr, cosine weight
  decay, both over ``ipe_scale`` x the run (MSN truncation); gradient clipping; EMA teachers
  (``Method.ema_pairs``) with a linear or cosine momentum schedule; bf16 autocast
  (``precision: bf16``) on CPU and GPU (``precision: auto``, the default, is made bf16 or fp32
  once the device is chosen: ``engine.recipe.resolve_precision``); a non-finite loss stops the
  run (exit code 3) before the update, the last good state intact;
* the run (``engine.loop``): DDP under ``torchrun`` (gloo on CPU, nccl on GPU), metrics
  averaged across ranks; ``train_log.jsonl`` and ``recipe.yaml`` in the run folder; the
  exported encoder is ``RUN/checkpoint.{safetensors,json}`` (``ssl_bench.checkpoints`` format);
* training state (``engine.state``) every ``checkpoint.every_steps`` / ``every_epochs``:
  safetensors for tensors (model, teachers, optimiser, RNG) + JSON for the rest, atomically;
  exact resume.

Multi-process: ``torchrun --nproc_per_node N -m ssl_bench.cli pretrain ...``. Fault injection
for the resume tests: ``SSL_BENCH_KILL_AT_STEP=N`` makes the process SIGKILL itself right after
optimiser step N; ``SSL_BENCH_PAUSE_AT_STEP=N`` makes it wait for a signal once the state of step N
is saved (the preemption test signals it there, as Slurm would).
"""

from .loop import pretrain
from .recipe import resolve_recipe
from .step import TrainingDiverged

__all__ = ["pretrain", "resolve_recipe", "TrainingDiverged"]
