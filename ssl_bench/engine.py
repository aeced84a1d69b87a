"""The one pretraining engine every method runs on.

``pretrain(recipe, sets, out_dir, device)`` resolves the recipe (package defaults
``pretrain/_engine`` + ``pretrain/<method>``, the recipe file and its ``_base_`` chain,
then ``--set``), builds the method from ``ssl_bench.methods.METHODS`` and trains it:

* data: an ImageFolder of the training split; the method's transform runs in the data
  workers; batches come from a deterministic per-epoch permutation split across ranks
  (DistributedSampler order), and every sample's augmentation RNG is seeded from
  (seed, epoch, index), so a resumed run sees exactly the views an uninterrupted one would;
* optimiser: AdamW or LARS (``timm.optim.Lars``), parameter groups with / without weight
  decay from the method; per-iteration schedules: linear warmup + cosine lr, cosine weight
  decay, both over ``ipe_scale`` x the run (MSN truncation); gradient clipping;
* EMA teachers (``Method.ema_pairs``) with a linear or cosine momentum schedule;
* bf16 autocast (``precision: bf16``) on CPU and GPU; DDP under ``torchrun`` (gloo on CPU,
  nccl on GPU), metrics averaged across ranks;
* full training state every ``checkpoint.every_steps`` / ``every_epochs``: safetensors for
  tensors (model, teachers, optimiser, RNG) + JSON for the rest, atomically; exact resume;
* a non-finite loss stops the run (exit code 3) before the update, the last good state intact;
* ``train_log.jsonl`` and ``recipe.yaml`` in the run folder; the exported encoder is
  ``RUN/checkpoint.{safetensors,json}`` (``ssl_bench.checkpoints`` format).

Fault injection for the resume test: ``SSL_BENCH_KILL_AT_STEP=N`` makes the process
SIGKILL itself right after optimiser step N.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .atomic import atomic_write, atomic_write_json, atomic_write_bytes, sha256_file
from .errors import UserError
from .progress import log, progress
from .recipes import dump, load_defaults, parse_assignment, recipe_layers, resolve

STATE_FORMAT = "ssl-bench-train-state/1"
STATE_JSON = "train_state.json"
LOG_FILE = "train_log.jsonl"


class TrainingDiverged(UserError):
    """The loss became NaN/inf; the run folder keeps its last good state."""

    exit_code = 3


# ----- recipes --------------------------------------------------------------------------------
def method_name(recipe_path: Path | None, sets=()) -> str:
    """The method a recipe names (its ``_base_`` chain, then ``--set method=``)."""
    name = load_defaults("pretrain/_engine")["method"]
    if recipe_path is not None:
        for _, layer in recipe_layers(Path(recipe_path)):
            name = layer.get("method", name)
    for text in sets:
        name = parse_assignment(text).get("method", name)
    return name


def resolve_recipe(recipe_path: Path | None, sets=()) -> dict:
    from .methods import METHODS

    name = method_name(recipe_path, sets)
    if not isinstance(name, str):
        raise UserError(f"{recipe_path}: 'method' must be a method name, got {name!r}")
    METHODS.get(name)  # unknown names fail here, listing the valid ones
    return resolve(load_defaults("pretrain/_engine", f"pretrain/{name}"), recipe_path, sets)


def build_method(recipe: dict):
    from .methods import METHODS

    torch.manual_seed(recipe["seed"])  # the same initial weights on every rank
    return METHODS.get(recipe["method"])(recipe)


# ----- schedules ------------------------------------------------------------------------------
def warmup_cosine(step: float, *, base: float, final: float, warmup_steps: float, total_steps: float,
                  start: float = 0.0, endpoint: bool = False) -> float:
    """Linear warmup from ``start`` to ``base`` over ``warmup_steps``, then a half cosine to
    ``final`` at ``total_steps`` (clamped there: msn src/utils.py WarmupCosineSchedule,
    CosineWDSchedule; BEiT/ConMIM utils.cosine_scheduler). The warmup reaches ``start + (base -
    start) * step / warmup_steps``; with ``endpoint`` it reaches ``base`` at its last step, step /
    (warmup_steps - 1) (BEiT/ConMIM: ``np.linspace(start, base, warmup_iters)``)."""
    if step < warmup_steps:
        span = warmup_steps - 1 if endpoint and warmup_steps > 1 else warmup_steps
        return start + (base - start) * step / span
    progress_ = min(1.0, (step - warmup_steps) / max(1.0, total_steps - warmup_steps))
    value = final + (base - final) * 0.5 * (1.0 + math.cos(math.pi * progress_))
    low, high = min(base, final), max(base, final)
    return min(max(value, low), high)


def momentum_at(step: int, ema: dict, total_steps: int) -> float:
    """EMA momentum for the update after optimiser step ``step`` (0-based).

    linear: ``start + (end - start) * step / (total * ipe_scale)`` (msn_train.py);
    cosine: ``end - (end - start) * (1 + cos(pi * step / (total * ipe_scale))) / 2`` (BEiT
    ``cosine_scheduler`` used by ConMIM); constant: ``start``.
    """
    horizon = total_steps * ema["ipe_scale"]
    if ema["schedule"] == "linear":
        return min(ema["end"], ema["start"] + (ema["end"] - ema["start"]) * step / horizon)
    if ema["schedule"] == "cosine":
        return ema["end"] + 0.5 * (ema["start"] - ema["end"]) * (1.0 + math.cos(math.pi * min(step, horizon) / horizon))
    if ema["schedule"] == "constant":
        return ema["start"]
    raise UserError(f"ema.schedule: unknown schedule {ema['schedule']!r}; valid: linear, cosine, constant")


class Schedules:
    """lr, weight decay and momentum of optimiser step ``step`` (0-based)."""

    def __init__(self, recipe: dict, ipe: int):
        o = recipe["optim"]
        self.optim, self.ema = o, recipe["ema"]
        self.total = o["epochs"] * ipe
        self.horizon = int(o["ipe_scale"] * o["epochs"] * ipe)
        self.warmup = int(o["warmup_epochs"] * ipe)

    def lr(self, step: int) -> float:
        o = self.optim
        return warmup_cosine(step + o["step_offset"], base=o["lr"], final=o["min_lr"], start=o["start_lr"],
                             warmup_steps=self.warmup, total_steps=self.horizon, endpoint=o["warmup_endpoint"])

    def weight_decay(self, step: int) -> float:
        o = self.optim
        return warmup_cosine(step + o["step_offset"], base=o["weight_decay"], final=o["final_weight_decay"],
                             warmup_steps=0, total_steps=self.horizon)

    def momentum(self, step: int) -> float:
        return momentum_at(step, self.ema, self.total)


# ----- optimiser & EMA ------------------------------------------------------------------------
def param_groups(method, weight_decay: float) -> list[dict]:
    extra = method.extra_param_groups()
    taken = {id(p) for group in extra for p in group["params"]}
    decay, no_decay = [], []
    for name, param in method.named_parameters():
        if not param.requires_grad or id(param) in taken:
            continue
        (no_decay if method.no_weight_decay(name, param) else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay, "wd_exclude": False, "lr_scale": 1.0},
              {"params": no_decay, "weight_decay": 0.0, "wd_exclude": True, "lr_scale": 1.0}]
    for group in extra:
        groups.append({"weight_decay": 0.0, "wd_exclude": True, "lr_scale": 1.0, **group})
    return [g for g in groups if g["params"]]


def build_optimizer(method, recipe: dict) -> torch.optim.Optimizer:
    o = recipe["optim"]
    groups = param_groups(method, o["weight_decay"])
    if o["name"] == "adamw":
        return torch.optim.AdamW(groups, lr=o["lr"], betas=tuple(o["betas"]), eps=o["eps"],
                                 weight_decay=o["weight_decay"])
    if o["name"] == "lars":
        from timm.optim import Lars

        return Lars(groups, lr=o["lr"], momentum=o["momentum"], weight_decay=o["weight_decay"],
                    trust_coeff=o["trust_coeff"], eps=o["eps"])
    raise UserError(f"optim.name: unknown optimiser {o['name']!r}; valid: adamw, lars")


def apply_schedules(optimizer, lr: float, wd: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
        if not group.get("wd_exclude", False):
            group["weight_decay"] = wd


@torch.no_grad()
def ema_update(pairs, momentum: float) -> None:
    """teacher = m * teacher + (1 - m) * online, parameters only (buffers are the teacher's own)."""
    for online, teacher in pairs:
        t_params = list(teacher.parameters())
        o_params = list(online.parameters())
        if len(t_params) != len(o_params):
            raise RuntimeError("EMA pair with different parameter lists")
        torch._foreach_mul_(t_params, momentum)
        torch._foreach_add_(t_params, [p.detach() for p in o_params], alpha=1.0 - momentum)


# ----- data ---------------------------------------------------------------------------------
def sample_seed(*keys: int) -> int:
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


@contextlib.contextmanager
def seeded(seed: int):
    """Seed python, numpy and torch (CPU) for the block, restoring the outer states after."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def image_folder_root(root: Path, split: str) -> Path:
    """The class-folder root of ``split`` under a data root (the data helper's layout if
    installed, else ROOT/imagenet/SPLIT, ROOT/SPLIT or ROOT itself)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"data.root {root}: no such folder; create the embedded data with "
                        f"'ssl-bench data prepare --root {root} --profile demo' or set --set data.root=DIR")
    try:
        from .data.resolve import resolve as data_resolve  # the data helper's resolver

        candidate = Path(data_resolve(root, "imagenet")) / split
        if candidate.is_dir():
            return candidate
    except (ImportError, UserError):
        pass  # not a real/embedded ImageNet tree: try the plain layouts below
    for candidate in (root / "imagenet" / split, root / split, root):
        if candidate.is_dir() and any(p.is_dir() for p in candidate.iterdir()):
            return candidate
    raise UserError(f"data.root {root}: no ImageFolder found (looked for imagenet/{split}/<class>/*, "
                    f"{split}/<class>/*, <class>/*)")


class SeededViews(torch.utils.data.Dataset):
    """ImageFolder images through the method's transform, seeded per (seed, epoch, index)."""

    def __init__(self, folder, transform, seed: int):
        self.folder, self.transform, self.seed = folder, transform, seed

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, key):
        epoch, index = key
        image, _ = self.folder[index]
        with seeded(sample_seed(self.seed, epoch, index)):
            return self.transform(image)


class EpochOrder:
    """DistributedSampler-style order: a permutation seeded by (seed + epoch), the tail that
    does not split evenly dropped, rank r taking every world-th index; whole batches only."""

    def __init__(self, size: int, batch_size: int, world: int, rank: int, seed: int):
        self.size, self.batch_size, self.world, self.rank, self.seed = size, batch_size, world, rank, seed
        self.per_rank = size // world
        self.ipe = self.per_rank // batch_size

    def batches(self, epoch: int, start: int = 0) -> list[list[tuple[int, int]]]:
        gen = torch.Generator()
        gen.manual_seed(self.seed + epoch)
        perm = torch.randperm(self.size, generator=gen)[: self.per_rank * self.world]
        mine = perm[self.rank::self.world].tolist()
        return [[(epoch, i) for i in mine[b * self.batch_size:(b + 1) * self.batch_size]]
                for b in range(start, self.ipe)]


def _pil(image):
    return image


def build_folder(recipe: dict):
    """(PIL image, label) dataset of the training split (the data helper's ImageFolderDataset)."""
    d = recipe["data"]
    root = image_folder_root(Path(d["root"]), d["split"])
    try:
        from .data.imagefolder import ImageFolderDataset
    except ImportError:
        from torchvision.datasets import ImageFolder

        try:
            return ImageFolder(str(root))
        except (FileNotFoundError, RuntimeError) as err:
            raise UserError(f"data.root {d['root']}: {err}") from None
    return ImageFolderDataset(root, transform=_pil)


def make_loader(dataset, order: EpochOrder, epoch: int, start: int, recipe: dict, device) -> torch.utils.data.DataLoader:
    d = recipe["data"]
    gen = torch.Generator()  # keeps the loader from drawing on the global RNG
    gen.manual_seed(sample_seed(recipe["seed"], epoch, 7))
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=order.batches(epoch, start), num_workers=d["num_workers"],
        pin_memory=d["pin_memory"] and device.type == "cuda", generator=gen,
        prefetch_factor=2 if d["num_workers"] > 0 else None)


def to_device(batch, device):
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


# ----- distributed -----------------------------------------------------------------------
def pick_device(name: str) -> torch.device:
    local = int(os.environ.get("LOCAL_RANK", 0))
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: no CUDA device here; use --device cpu")
        return torch.device(name if ":" in name else f"cuda:{local}")
    if name != "cpu":
        raise UserError(f"--device {name}: valid devices are auto, cpu, cuda, cuda:N")
    return torch.device("cpu")


def init_distributed(device: torch.device) -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world <= 1:
        return 1, 0
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return dist.get_world_size(), dist.get_rank()


def reduce_mean(values: dict[str, float], world: int, device) -> dict[str, float]:
    if not values:
        return {}
    keys = sorted(values)
    tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    if world > 1:
        dist.all_reduce(tensor)
        tensor /= world
    return dict(zip(keys, tensor.tolist()))


# ----- training state -------------------------------------------------------------------
def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (np_state[0], np_state[1].astype(np.int64), int(np_state[2]), int(np_state[3]),
                       float(np_state[4]))}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
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
    previous = _read_state_json(run)
    meta = {"format": STATE_FORMAT, "step": step, "epoch": epoch, "method": recipe["method"],
            "recipe_sha256": recipe_digest(recipe), "world_size": len(rngs),
            "optimizer": {"param_groups": opt["param_groups"], "other": opt_other},
            "rng": rng_json, "weights": {"file": weights.name, "sha256": sha256_file(weights)}}
    atomic_write_json(run / STATE_JSON, meta)
    if previous and previous["weights"]["file"] != weights.name:
        (run / previous["weights"]["file"]).unlink(missing_ok=True)
    return weights


def _read_state_json(run: Path) -> dict | None:
    path = run / STATE_JSON
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: unreadable training state ({err.msg}); delete the run folder to restart") from None


def load_state(run: Path, method, optimizer, world: int, rank: int) -> tuple[int, int] | None:
    """Restore model, teachers, optimiser and this rank's RNG; returns (step, epoch)."""
    meta = _read_state_json(run)
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
    import hashlib

    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _truncate_log(path: Path, step: int) -> None:
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    atomic_write_bytes(path, ("\n".join(kept) + "\n").encode() if kept else b"")


# ----- the run ------------------------------------------------------------------------------
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
        import yaml

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


def export(run: Path, method, recipe: dict, step: int, epoch: int, stem: str = "checkpoint", final: bool = True) -> Path:
    from .checkpoints import save_checkpoint

    backbone, meta = method.export()
    meta = {"method": recipe["method"], "recipe": recipe, "epoch": epoch, "step": step, "final": final, **meta}
    return save_checkpoint(run / stem, backbone, meta)


def pretrain(recipe_path: Path | None, sets=(), out_dir: Path = Path("run"), device: str = "auto") -> Path:
    """Train (or resume, or skip when finished) and return the exported checkpoint's sidecar."""
    recipe = resolve_recipe(Path(recipe_path) if recipe_path else None, list(sets))
    run = Path(out_dir)
    done = _finished(run, recipe)
    if done is not None:
        log(f"{run}: finished run with this recipe found; nothing to do")
        return done
    dev = pick_device(device)
    world, rank = init_distributed(dev)
    try:
        return _train(recipe, run, dev, world, rank)
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _train(recipe: dict, run: Path, device: torch.device, world: int, rank: int) -> Path:
    main = rank == 0
    if main:
        _check_run_folder(run, recipe)
        run.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(run / "recipe.yaml", dump(recipe).encode())
    folder = build_folder(recipe)
    method = build_method(recipe).to(device)
    d = recipe["data"]
    order = EpochOrder(len(folder), d["batch_size"], world, rank, recipe["seed"])
    if order.ipe == 0:
        raise UserError(f"data.batch_size {d['batch_size']} x {world} rank(s) exceeds the {len(folder)} "
                        f"training images in {d['root']}; lower data.batch_size")
    dataset = SeededViews(folder, method.transform(), recipe["seed"])
    optimizer = build_optimizer(method, recipe)
    sched = Schedules(recipe, order.ipe)
    total = sched.total
    seed_everything(recipe["seed"] * 1000 + rank)
    resumed = load_state(run, method, optimizer, world, rank)
    step, _ = resumed if resumed else (0, 0)
    if main and resumed:
        log(f"{run}: resuming at step {step}/{total}")
        _truncate_log(run / LOG_FILE, step)
    model = method
    if world > 1:
        if device.type == "cuda" and getattr(method, "sync_batchnorm", False):
            method = sync_batchnorm(method)
        model = nn.parallel.DistributedDataParallel(method, device_ids=[device] if device.type == "cuda" else None)
    method.train()
    pairs = method.ema_pairs()
    ck = recipe["checkpoint"]
    every_steps = ck["every_steps"]
    every_epoch_steps = ck["every_epochs"] * order.ipe if ck["every_epochs"] else 0
    kill_at = int(os.environ.get("SSL_BENCH_KILL_AT_STEP", 0))
    use_bf16 = recipe["precision"] == "bf16"
    if recipe["precision"] not in ("fp32", "bf16"):
        raise UserError(f"precision: {recipe['precision']!r} is not valid; use fp32 or bf16")
    images_per_step = d["batch_size"] * world
    bar = progress(total=total, initial=step, desc=f"pretrain {recipe['method']}", unit="step") if main else None
    log_path = run / LOG_FILE
    start_time = time.perf_counter()
    try:
        budget = float(recipe["max_train_seconds"])
        out_of_time = False
        while step < total and not out_of_time:
            epoch, first = divmod(step, order.ipe)
            loader = make_loader(dataset, order, epoch, first, recipe, device)
            tick = time.perf_counter()
            for batch in loader:
                batch = to_device(batch, device)
                data_time = time.perf_counter() - tick
                lr, wd = sched.lr(step), sched.weight_decay(step)
                apply_schedules(optimizer, lr, wd)
                method.step, method.total_steps = step, total
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
                    loss, logs = model(batch)
                loss = loss.float()
                bad = torch.tensor([0.0 if torch.isfinite(loss).item() else 1.0], device=device)
                if world > 1:
                    dist.all_reduce(bad, op=dist.ReduceOp.MAX)
                if bad.item():
                    last = _read_state_json(run)
                    where = (f"the last good state (step {last['step']}) is intact in {run}"
                             if last else "no state had been saved yet")
                    raise TrainingDiverged(f"non-finite loss ({loss.item()}) at step {step} (epoch {epoch}); "
                                           f"training stopped before the update; {where}; lower optim.lr, "
                                           "raise optim.warmup_epochs or set optim.clip_grad")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = float("nan")
                if recipe["optim"]["clip_grad"] > 0:
                    grad_norm = float(torch.nn.utils.clip_grad_norm_(list(method.clip_parameters()),
                                                                     recipe["optim"]["clip_grad"]))
                optimizer.step()
                m = sched.momentum(step)
                if pairs:
                    ema_update(pairs, m)
                step += 1
                if kill_at and step == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
                step_time = time.perf_counter() - tick
                tick = time.perf_counter()
                values = reduce_mean({"loss": loss.item(), **{k: float(v) for k, v in logs.items()}}, world, device)
                if main:
                    record = {"step": step, "epoch": epoch, "lr": lr, "wd": wd, "momentum": m,
                              "img_s": images_per_step / max(step_time, 1e-9), "data_s": data_time,
                              "grad_norm": grad_norm, **values}
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
        log(f"{run}: {recipe['method']} done, {step} steps, {wall:.0f} s; exported {sidecar}")
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
        save_state(run, method, optimizer, step, epoch, gathered, recipe)
    if world > 1:
        dist.barrier()


def main(argv: list[str] | None = None) -> int:
    """``python -m ssl_bench.engine --recipe R --out D [--set k=v] [--device cpu]`` (for torchrun)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m ssl_bench.engine")
    parser.add_argument("--recipe", type=Path, required=True)
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    try:
        print(pretrain(args.recipe, args.set, args.out, device=args.device))
    except UserError as err:
        print(f"ssl-bench: error: {' '.join(str(err).split())}", file=sys.stderr)
        return err.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
