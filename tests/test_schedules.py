"""Schedules against their references' formulas, written out."""

import math

import pytest

from ssl_bench.engine.step import Schedules
from ssl_bench.schedules import lr_factor, momentum_at, poly_factor, warmup_cosine, warmup_factor


def test_cosine_momentum_golden():
    ema = {"schedule": "cosine", "start": 0.996, "end": 1.0, "ipe_scale": 1.0}
    assert momentum_at(0, ema, 1000) == pytest.approx(0.996)
    assert momentum_at(250, ema, 1000) == pytest.approx(1 - 0.002 * (1 + math.sqrt(0.5)))  # 0.99658579
    assert momentum_at(500, ema, 1000) == pytest.approx(0.998)
    assert momentum_at(1000, ema, 1000) == pytest.approx(1.0)


def test_warmup_cosine_golden():
    kw = {"base": 1.0, "final": 0.0, "warmup_steps": 10, "total_steps": 110, "start": 0.0}
    assert warmup_cosine(5, **kw) == pytest.approx(0.5)
    assert warmup_cosine(10, **kw) == pytest.approx(1.0)
    assert warmup_cosine(60, **kw) == pytest.approx(0.5)
    assert warmup_cosine(85, **kw) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.75)))
    assert warmup_cosine(200, **kw) == pytest.approx(0.0)  # clamped after the horizon


def test_dense_schedules():
    assert warmup_factor(0, 10, 1e-6) == pytest.approx(1e-6) and warmup_factor(10, 10, 1e-6) == 1.0
    assert warmup_factor(5, 10, 0.001) == pytest.approx(0.001 * 0.5 + 0.5)
    assert poly_factor(25, 100, 1.0) == pytest.approx(0.75) and poly_factor(100, 100) == 0.0
    sched = {"kind": "multistep", "warmup_iters": 0, "milestones": [0.5, 0.75], "values": [1.0, 0.1, 0.01]}
    assert [lr_factor(i, sched, 100) for i in (0, 49, 50, 74, 75, 99)] == [1.0, 1.0, 0.1, 0.1, 0.01, 0.01]


def test_warmup_then_poly():
    """mmseg LinearLR (from warmup_ratio) times PolyLR to 0, as the linear segmentation protocol uses it."""
    def sched(power):
        return {"kind": "poly", "warmup_iters": 10, "warmup_ratio": 1e-6, "power": power}

    assert lr_factor(0, sched(1.0), 100) == pytest.approx(1e-6)
    assert lr_factor(5, sched(1.0), 100) == pytest.approx((1 - 0.05) * (1e-6 + (1 - 1e-6) * 0.5))
    assert lr_factor(10, sched(1.0), 100) == pytest.approx(0.9)
    assert lr_factor(75, sched(2.0), 100) == pytest.approx(0.25 ** 2)


def test_fraction_of_an_epoch_runs_whole_steps():
    """optim.epochs 1.5 at 156 iterations per epoch: 234 whole steps, over which the schedules run."""
    optim = {"lr": 1.0, "min_lr": 0.0, "start_lr": 0.0, "warmup_epochs": 0.5, "epochs": 1.5, "ipe_scale": 1.0,
             "step_offset": 0, "warmup_endpoint": False, "weight_decay": 0.05, "final_weight_decay": 0.05}
    ema = {"schedule": "cosine", "start": 0.99, "end": 1.0, "ipe_scale": 1.0}
    sched = Schedules({"optim": optim, "ema": ema}, ipe=156)
    assert sched.total == 234 and isinstance(sched.total, int)
    assert sched.lr(39) == pytest.approx(39 / 78)  # warmup: int(0.5 x 156) = 78 steps
    assert sched.lr(156) == pytest.approx(0.5 * (1 + math.cos(math.pi * 78 / 156)))  # half-way through the cosine
    assert sched.momentum(117) == pytest.approx(0.995)  # half of 234
