"""The device and the process group, asked in one place by pretraining and evaluation.

Under ``torchrun`` (``WORLD_SIZE`` > 1) ``init_distributed`` joins the process group (nccl on
GPU, gloo on CPU); every other question (am I distributed, which rank, am I the main process)
reads the initialised group, so a single process answers 'rank 0 of 1'.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from .errors import UserError


def pick_device(name: str) -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` (this process's ``LOCAL_RANK``) or ``cuda:N``."""
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
    """(world size, rank): joins the process group under ``torchrun``, else (1, 0)."""
    if is_distributed():
        return dist.get_world_size(), dist.get_rank()
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return 1, 0
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return dist.get_world_size(), dist.get_rank()


def is_distributed() -> bool:
    """Whether this process belongs to an initialised group of more than one."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if is_distributed() else (0, 1)


def is_main_process() -> bool:
    return rank_and_world()[0] == 0


def reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """The mean of each value across ranks (the values themselves in a single process)."""
    if not values:
        return {}
    keys = sorted(values)
    tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    if is_distributed():
        dist.all_reduce(tensor)
        tensor /= dist.get_world_size()
    return dict(zip(keys, tensor.tolist()))
