"""Per-step schedules shared by pretraining and the protocols: warmup + cosine (lr, weight
decay), EMA momentum, and the iteration schedules of the dense protocols (warmup then poly
or multi-step). Each is a plain function of the step; the callers set the values."""

from __future__ import annotations

import math

from .errors import UserError


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


def warmup_factor(it: int, warmup_iters: int, warmup_ratio: float) -> float:
    """Linear warmup from ``warmup_ratio`` to 1 over ``warmup_iters`` (mmengine LinearLR,
    detectron2 WarmupParamScheduler 'linear')."""
    if warmup_iters <= 0 or it >= warmup_iters:
        return 1.0
    alpha = it / warmup_iters
    return warmup_ratio * (1 - alpha) + alpha


def poly_factor(it: int, total: int, power: float = 1.0, min_ratio: float = 0.0) -> float:
    """mmengine PolyLR: (1 - it / total) ** power, floored at ``min_ratio`` (eta_min / lr)."""
    progress_ = min(it, total) / max(total, 1)
    return (1 - min_ratio) * (1 - progress_) ** power + min_ratio


def multistep_factor(it: int, milestones: list[int], values: list[float]) -> float:
    """fvcore MultiStepParamScheduler: values[k] after the k-th milestone."""
    k = sum(1 for m in milestones if it >= m)
    return float(values[min(k, len(values) - 1)])


def lr_factor(it: int, sched: dict, total: int) -> float:
    """The lr multiplier at iteration ``it`` of a recipe's ``schedule`` mapping: ``kind`` poly
    (``power``, ``min_ratio``) or multistep (``milestones`` as iterations or fractions of
    ``total``, ``values``), after a linear warmup (``warmup_iters``, ``warmup_ratio``)."""
    kind = sched.get("kind", "poly")
    warm = warmup_factor(it, int(sched.get("warmup_iters", 0)), float(sched.get("warmup_ratio", 1e-6)))
    if kind == "poly":
        return warm * poly_factor(it, total, float(sched.get("power", 1.0)), float(sched.get("min_ratio", 0.0)))
    if kind == "multistep":
        milestones = [int(round(float(m) * total)) if float(m) < 1 else int(m) for m in sched["milestones"]]
        return warm * multistep_factor(it, milestones, [float(v) for v in sched["values"]])
    raise UserError(f"recipe key 'schedule.kind': {kind!r}; valid: poly, multistep")
