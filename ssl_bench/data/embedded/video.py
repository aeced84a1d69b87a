"""Embedded short videos in the DAVIS-2017 layout.

``DAVIS/JPEGImages/480p/<seq>/%05d.jpg``, ``DAVIS/Annotations/480p/<seq>/%05d.png`` (indexed, VOC palette,
every frame annotated), ``DAVIS/ImageSets/2017/{train,val}.txt``. The folder is named 480p to keep the
layout; frames are ``davis.frame_size`` pixels.

Each sequence: a slowly panning crop of a skimage.data image and 2-3 Fashion-MNIST objects, object id =
z-order (higher in front). Object 1 drifts slowly; object 2 sweeps horizontally at object 1's height, starting
at the frame edge away from it, centred on it (in front, occluding it) at the middle frame, and outside the
frame from two frames before the end; object 3, if any, drifts in front of both. Objects 1 and 2 are fully
inside frame 0.
"""

from __future__ import annotations

import numpy as np

from ..common import fmt_config, write_lines
from ..davis import write_mask
from .compose import paste, rng_for, save_jpeg
from .context import Context, get_context, run_tasks, slug

_FM_SPLIT = {"train": "train", "val": "test"}


def _drift(rng, start, W, H, w, h, T, speed):
    """Positions (top-left) of a slow drift that bounces off the borders, staying fully inside."""
    v = rng.uniform(-speed, speed, size=2)
    pos = [np.array(start, dtype=float)]
    for _ in range(T - 1):
        p = pos[-1] + v
        for ax, lim in ((0, W - w), (1, H - h)):
            if p[ax] < 0 or p[ax] > lim:
                v[ax] = -v[ax]
                p[ax] = min(max(p[ax], 0), lim)
        pos.append(p)
    return [(int(round(x)), int(round(y))) for x, y in pos]


def _render(task) -> dict:
    c = get_context()
    split, i, name, objects = task
    cfg = c.profile["davis"]
    W, H = (int(v) for v in cfg["frame_size"])
    T = int(cfg["frames"])
    rng = rng_for(c.seed, f"davis-{split}", i)
    # background: a crop 25% larger than the frame, panned linearly from one corner region to another
    pw, ph = int(round(W * 1.25)), int(round(H * 1.25))
    big = c.background(rng, pw, ph)
    start = np.array([rng.integers(0, pw - W + 1), rng.integers(0, ph - H + 1)], dtype=float)
    end = np.array([rng.integers(0, pw - W + 1), rng.integers(0, ph - H + 1)], dtype=float)
    sprites, tracks = [], []
    lo, hi = cfg["object_size"]
    for oid, (k, fm_index) in enumerate(objects, start=1):
        sp = c.sprite(_FM_SPLIT[split], fm_index, int(rng.integers(lo, hi + 1)), rng)
        sprites.append(sp)
        if oid == 1:
            x0 = int(rng.integers(0, W - sp.w + 1))
            y0 = int(rng.integers(0, H - sp.h + 1))
            tracks.append(_drift(rng, (x0, y0), W, H, sp.w, sp.h, T, speed=0.01 * W))
        elif oid == 2:
            a, aw, ah = tracks[0], sprites[0].w, sprites[0].h
            t_cross, t_exit = T // 2, max(T // 2 + 1, T - 2)
            cx = a[t_cross][0] + aw / 2 - sp.w / 2          # centred on object 1 at t_cross
            mid_y = a[t_cross][1] + ah / 2
            y = int(round(min(max(mid_y - sp.h / 2 + rng.uniform(-0.2, 0.2) * ah, 0), H - sp.h)))
            if a[0][0] + aw / 2 < W / 2:  # object 1 on the left: start at the right edge, leave on the left
                xs, xe = W - sp.w, -sp.w - 1
            else:
                xs, xe = 0, W + 1
            xs = min(xs, cx) if xe > xs else max(xs, cx)  # never start beyond the crossing point
            track = []
            for t in range(T):  # piecewise linear: start -> crossing (t_cross) -> outside (t_exit)
                if t <= t_cross:
                    x = xs + (cx - xs) * t / max(1, t_cross)
                else:
                    x = cx + (xe - cx) * min(1.0, (t - t_cross) / (t_exit - t_cross))
                track.append((int(round(x)), y))
            tracks.append(track)
        else:  # start where it does not overlap the others in frame 0 (if such a place is found)
            for _ in range(20):
                x0 = int(rng.integers(0, W - sp.w + 1))
                y0 = int(rng.integers(0, H - sp.h + 1))
                if all(x0 + sp.w <= tr[0][0] or tr[0][0] + o.w <= x0 or y0 + sp.h <= tr[0][1]
                       or tr[0][1] + o.h <= y0 for o, tr in zip(sprites, tracks)):
                    break
            tracks.append(_drift(rng, (x0, y0), W, H, sp.w, sp.h, T, speed=0.02 * W))
    root = c.root / fmt_config("davis")["folder"]
    res = fmt_config("davis")["resolution"]
    digits = int(fmt_config("davis")["frame_digits"])
    visible = []
    for t in range(T):
        off = start + (end - start) * (t / max(1, T - 1))
        ox, oy = int(round(off[0])), int(round(off[1]))
        frame = np.ascontiguousarray(big[oy:oy + H, ox:ox + W])
        label = np.zeros((H, W), dtype=np.uint8)
        for oid, (sp, tr) in enumerate(zip(sprites, tracks), start=1):
            covered = paste(frame, sp, *tr[t])
            label[covered] = oid
        visible.append([int(np.count_nonzero(label == oid)) for oid in range(1, len(sprites) + 1)])
        save_jpeg(frame, root / "JPEGImages" / res / name / f"{t:0{digits}d}.jpg", cfg["jpeg_quality"])
        write_mask(root / "Annotations" / res / name / f"{t:0{digits}d}.png", label)
    return {"name": name, "split": split, "objects": [int(k) for k, _ in objects], "visible_pixels": visible}


def _plan(c: Context, split: str, n: int, first: int) -> list[tuple]:
    cfg = c.profile["davis"]
    rng = rng_for(c.seed, f"davis-plan-{split}")
    tasks = []
    for i in range(n):
        n_obj = int(rng.integers(cfg["objects_per_sequence"][0], cfg["objects_per_sequence"][1] + 1))
        ks = [int(k) for k in rng.choice(len(c.classes), n_obj, replace=False)]
        objects = [(k, c.fm_choice(_FM_SPLIT[split], k, rng)) for k in ks]
        name = f"{slug(c.classes[ks[0]], '-')}-{slug(c.classes[ks[1]], '-')}-{first + i:02d}"
        tasks.append((split, first + i, name, objects))
    return tasks


def generate(c: Context, workers: int) -> dict:
    cfg = c.profile["davis"]
    if int(cfg["objects_per_sequence"][0]) < 2:
        raise ValueError("davis.objects_per_sequence must start at 2 (object 2 makes the occlusion and exit)")
    n_train, n_val = int(cfg["train_sequences"]), int(cfg["val_sequences"])
    tasks = _plan(c, "train", n_train, 0) + _plan(c, "val", n_val, n_train)
    records = run_tasks(_render, tasks, workers, desc="davis", unit="seq")
    root = c.root / fmt_config("davis")["folder"] / fmt_config("davis")["image_sets"]
    for split in ("train", "val"):
        write_lines(root / f"{split}.txt", [r["name"] for r in records if r["split"] == split])
    return {
        "format": "davis",
        "subfolder": fmt_config("davis")["folder"],
        "counts": {"train": n_train, "val": n_val, "frames_per_sequence": int(cfg["frames"]),
                   "frame_size": [int(v) for v in cfg["frame_size"]]},
        "sequences": [{"name": r["name"], "split": r["split"],
                       "object_classes": [c.classes[k] for k in r["objects"]]} for r in records],
        "how": ("a panning crop of a skimage.data image; object 1 drifts, object 2 sweeps across at its height "
                "in front of it and leaves the frame before the end, object 3 (if any) drifts in front; "
                "annotations are the exact visible masks, object id = z-order, VOC palette"),
        "sources": ["fashion_mnist", "backgrounds"],
    }
