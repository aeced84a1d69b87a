"""A synthetic results store, for looking at leaderboard pages before real results exist.

``python -m ssl_bench.leaderboard.synthetic OUT_DIR`` writes evaluations of made-up
checkpoints (labels start with ``synthetic-``) through ``write_evaluation``, with per-sample
predictions and seeds, so every feature of the page shows. Records and recipes use the names the
protocols write (their schemas); the numbers mean nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ..results import write_evaluation

METHODS = [("msn", "vit_tiny_patch16_224", 0.62), ("siameseim", "vit_tiny_patch16_224", 0.66),
           ("conmim", "vit_tiny_patch16_224", 0.58), ("mmc", "vit_tiny_patch16_224", 0.64),
           ("mscn", "resnet50", 0.55), ("random", "vit_tiny_patch16_224", 0.15)]


def write_synthetic_store(out: Path, *, n_test: int = 500, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    out = Path(out)
    for method, arch, skill in METHODS:
        label = f"random:{arch}" if method == "random" else f"synthetic-{method}"
        ckpt = {"label": label, "sha256": f"synthetic-{method}", "method": method, "arch": arch}
        for eval_seed in range(2):  # two evaluation seeds: mean +- std and a pooled interval
            correct = (rng.random(n_test) < skill + rng.normal(0, 0.01)).astype(np.uint8)
            top1 = 100 * correct.mean()
            write_evaluation(out, protocol="knn", checkpoint=ckpt, recipe={"ks": [20]}, wall_time_s=1.0,
                             records=[{"dataset": "embedded-imagenet", "metric": "top1_k20",
                                       "value": top1, "seed": eval_seed}],
                             predictions={"embedded-imagenet": {"correct": correct}})
        correct = (rng.random(n_test) < min(0.95, skill + 0.07)).astype(np.uint8)
        write_evaluation(out, protocol="linear", checkpoint=ckpt, recipe={}, wall_time_s=1.0,
                         records=[{"dataset": "embedded-imagenet", "metric": "top1",
                                   "value": 100 * correct.mean(), "per_sample": correct}])
        records = []
        for shots, gain in ((1, -0.25), (5, -0.1)):  # as lowshot: per image, the fraction of 3 splits right
            splits = rng.random((3, 200)) < max(0.02, skill + gain)
            fraction, per_split = splits.mean(axis=0), 100 * splits.mean(axis=1)
            records += [{"dataset": "embedded-imagenet", "metric": f"top1_{shots}shot_mean",
                         "value": 100 * fraction.mean(), "per_sample": fraction},
                        {"dataset": "embedded-imagenet", "metric": f"top1_{shots}shot_std",
                         "value": float(per_split.std())}]
        write_evaluation(out, protocol="lowshot", checkpoint=ckpt, recipe={}, wall_time_s=1.0,
                         records=records)
        write_evaluation(out, protocol="davis", checkpoint=ckpt, recipe={}, wall_time_s=1.0,
                         records=[{"dataset": "embedded-davis", "metric": "J&F-Mean",
                                   "value": 100 * (skill * 0.8 + rng.normal(0, 0.02))}])
        write_evaluation(out, protocol="segmentation", checkpoint=ckpt, recipe={}, wall_time_s=1.0,
                         records=[{"dataset": "embedded-ade20k", "metric": "mIoU",
                                   "value": 100 * (skill * 0.5 + rng.normal(0, 0.02))}])
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m ssl_bench.leaderboard.synthetic OUT_DIR")
    print(write_synthetic_store(Path(sys.argv[1])))
