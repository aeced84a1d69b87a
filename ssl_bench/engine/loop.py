"""The run: a run folder trained (or resumed, or found finished) step by step, its state saved,
its log written and its encoder exported."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from torch import nn

from ..atomic import atomic_write_bytes, check_writable, remove_stale_temporaries
from ..checkpoints import save_checkpoint
from ..distributed import init_distributed, pick_device, reduce_mean
from ..errors import UserError
from ..progress import log, progress
from ..provenance import run_machine
from ..recipes import dump
from ..seeding import seed_everything
from .data import EpochOrder, SeededViews, epoch_loader, to_device, training_images
from .recipe import build_method, resolve_precision, resolve_recipe
from .state import STATE_JSON, load_state, read_state_json, recipe_digest, rng_state, save_state, truncate_log
from .step import Schedules, TrainingDiverged, TrainStep, build_optimizer

LOG_FILE = "train_log.jsonl"


def pretrain(recipe_path: Path | None, sets=(), out_dir: Path = Path("run"), device: str = "auto") -> Path:
    """Train (or resume, or skip when finished) and return the exported checkpoint's sidecar."""
    dev = pick_device(device)
    recipe = resolve_precision(resolve_recipe(Path(recipe_path) if recipe_path else None, list(sets)), dev)
    run = Path(out_dir)
    done = _finished(run, recipe)
    if done is not None:
        log(f"{run}: finished run with this recipe found; nothing to do")
        return done
    world, rank = init_distributed(dev)
    try:
        return _train(recipe, run, dev, world, rank)
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def export(run: Path, method, recipe: dict, step: int, epoch: int, stem: str = "checkpoint", final: bool = True) -> Path:
    """The method's encoder as an ssl-bench checkpoint ``RUN/<stem>.{safetensors,json}``."""
    backbone, meta = method.export()
    meta = {"method": recipe["method"], "recipe": recipe, "epoch": epoch, "step": step, "final": final,
            "machine": run_machine(), **meta}
    return save_checkpoint(run / stem, backbone, meta)


def _finished(run: Path, recipe: dict) -> Path | None:
    sidecar = run / "checkpoint.json"
    if not sidecar.is_file():
        return None
    try:
        meta = json.loads(sidecar.read_text())
    except json.JSONDecodeError:
        return None
    if recipe_digest(meta.get("recipe", {})) == recipe_digest(recipe) and meta.get("final"):
        return sidecar
    return None


def _check_run_folder(run: Path, recipe: dict) -> None:
    saved = run / "recipe.yaml"
    if saved.is_file() and (run / STATE_JSON).is_file():
        old = yaml.safe_load(saved.read_text())
        if recipe_digest(old) != recipe_digest(recipe):
            diff = sorted(_diff_keys(old, recipe))
            raise UserError(f"{run}: holds a run with a different recipe (keys differ: {', '.join(diff[:6])}); "
                            "use another --out folder or delete this one")


def _diff_keys(a, b, prefix=""):
    if isinstance(a, dict) and isinstance(b, dict):
        for key in set(a) | set(b):
            yield from _diff_keys(a.get(key), b.get(key), f"{prefix}{key}.")
    elif a != b:
        yield prefix[:-1]


def _train(recipe: dict, run: Path, device: torch.device, world: int, rank: int) -> Path:
    main = rank == 0
    if main:
        check_writable(run, "run folder")
        _check_run_folder(run, recipe)
        run.mkdir(parents=True, exist_ok=True)
        for path in remove_stale_temporaries(run):
            log(f"removed the stale temporary {path} of an interrupted write")
    method = build_method(recipe).to(device)
    images = training_images(recipe, method.transform())
    d = recipe["data"]
    order = EpochOrder(len(images), d["batch_size"], world, rank, recipe["seed"])
    if order.ipe == 0:
        raise UserError(f"data.batch_size {d['batch_size']} x {world} rank(s) exceeds the {len(images)} "
                        f"training images in {d['root']}; lower data.batch_size")
    dataset = SeededViews(images, recipe["seed"])
    optimizer = build_optimizer(method, recipe)
    sched = Schedules(recipe, order.ipe)
    total = sched.total
    seed_everything(recipe["seed"] * 1000 + rank)
    resumed = load_state(run, method, optimizer, world, rank)
    step, _ = resumed if resumed else (0, 0)
    if main and resumed:
        log(f"{run}: resuming at step {step}/{total}")
        truncate_log(run / LOG_FILE, step)
    model = method
    if world > 1:
        if device.type == "cuda" and getattr(method, "sync_batchnorm", False):
            method = sync_batchnorm(method)
        model = nn.parallel.DistributedDataParallel(method, device_ids=[device] if device.type == "cuda" else None)
    method.train()
    train_step = TrainStep(method, optimizer, sched, recipe, device, model)
    ck = recipe["checkpoint"]
    every_steps = ck["every_steps"]
    every_epoch_steps = ck["every_epochs"] * order.ipe if ck["every_epochs"] else 0
    kill_at = int(os.environ.get("SSL_BENCH_KILL_AT_STEP", 0))
    pause_at = int(os.environ.get("SSL_BENCH_PAUSE_AT_STEP", 0))
    images_per_step = d["batch_size"] * world
    bar = progress(total=total, initial=step, desc=f"pretrain {recipe['method']}", unit="step") if main else None
    log_path = run / LOG_FILE
    start_time = time.perf_counter()
    try:
        budget = float(recipe["max_train_seconds"])
        out_of_time = False
        while step < total and not out_of_time:
            epoch, first = divmod(step, order.ipe)
            loader = epoch_loader(dataset, order, epoch, first, recipe, device)
            tick = time.perf_counter()
            for batch in loader:
                batch = to_device(batch, device)
                data_time = time.perf_counter() - tick
                try:
                    result = train_step(batch, step)
                except TrainingDiverged as err:
                    last = read_state_json(run)
                    where = (f"the last good state (step {last['step']}) is intact in {run}"
                             if last else "no state had been saved yet")
                    raise TrainingDiverged(f"{err} (epoch {epoch}); training stopped before the update; {where}; "
                                           "lower optim.lr, raise optim.warmup_epochs or set optim.clip_grad") from None
                step += 1
                if kill_at and step == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
                step_time = time.perf_counter() - tick
                tick = time.perf_counter()
                values = reduce_mean({"loss": result.loss.item(), **{k: float(v) for k, v in result.logs.items()}},
                                     device)
                if main:
                    record = {"step": step, "epoch": epoch, "lr": result.lr, "wd": result.weight_decay,
                              "momentum": result.momentum, "img_s": images_per_step / max(step_time, 1e-9),
                              "data_s": data_time, "grad_norm": result.grad_norm, **values}
                    if recipe["log"]["every_steps"] and step % recipe["log"]["every_steps"] == 0:
                        with open(log_path, "a") as handle:
                            handle.write(json.dumps(record) + "\n")
                    bar.update(1)
                    bar.set_postfix(loss=f"{values['loss']:.4f}", img_s=f"{record['img_s']:.1f}")
                end_of_epoch = step % order.ipe == 0
                if (every_steps and step % every_steps == 0) or step == total \
                        or (every_epoch_steps and step % every_epoch_steps == 0):
                    _save(run, method, optimizer, step, step // order.ipe if end_of_epoch else epoch,
                          recipe, world, main)
                if main and end_of_epoch and ck["export_every_epochs"] and (step // order.ipe) % ck["export_every_epochs"] == 0 \
                        and step != total:
                    export(run, method, recipe, step, step // order.ipe, stem=f"checkpoints/epoch_{step // order.ipe:04d}",
                           final=False)
                if pause_at and step == pause_at:
                    log(f"paused after step {step} (SSL_BENCH_PAUSE_AT_STEP): waiting for a signal")
                    while True:
                        signal.pause()
                if budget > 0:
                    flag = torch.tensor([float(time.perf_counter() - start_time >= budget)], device=device)
                    if world > 1:
                        dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # every rank stops at the same step
                    out_of_time = bool(flag.item())
                if out_of_time and step < total:
                    log(f"{run}: max_train_seconds {budget:g} reached at step {step}/{total}")
                    _save(run, method, optimizer, step, epoch, recipe, world, main)
                if step >= total or out_of_time:
                    break
    finally:
        if bar is not None:
            bar.close()
    sidecar = run / "checkpoint.json"
    if main:
        sidecar = export(run, method, recipe, step, recipe["optim"]["epochs"])
        wall = time.perf_counter() - start_time
        log(f"{run}: {recipe['method']} done, {step} steps, {wall:.0f} s ({recipe['precision']}, "
            f"{torch.get_num_threads()} threads); exported {sidecar}")
    if world > 1:
        dist.barrier()
    return sidecar


def sync_batchnorm(module: nn.Module) -> nn.Module:
    """Every BatchNorm of ``module`` as SyncBatchNorm (batch statistics over all ranks; in place
    for nested modules). Methods opt in with ``sync_batchnorm = True``; NCCL only."""
    return nn.SyncBatchNorm.convert_sync_batchnorm(module)


def _save(run, method, optimizer, step, epoch, recipe, world, main) -> None:
    state = rng_state()
    if world > 1:
        gathered: list = [None] * world
        dist.all_gather_object(gathered, state)
    else:
        gathered = [state]
    if main:
        if not (run / "recipe.yaml").is_file():  # with the first state: a run that fails before has no files
            atomic_write_bytes(run / "recipe.yaml", dump(recipe).encode())
        save_state(run, method, optimizer, step, epoch, gathered, recipe)
    if world > 1:
        dist.barrier()
