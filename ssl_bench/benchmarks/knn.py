"""``ssl-bench bench knn``: k-NN classification time and peak memory, ours against DINO's
chunked torch search, at several training-set sizes; and feature extraction images/s (our
pipeline vs a bare timm forward), measured in the same run.

Search: for each ``--sizes`` N, random features N x ``--dim`` (default 384, ViT-S) with labels
of ``--classes`` classes, ``--queries`` test features (default 10k), k in ``--ks`` (DINO's 10,
20, 100, 200). **Ours**: ``protocols.knn.knn_predict`` (training features L2-normalised once,
one exact faiss search for the largest k serving every k). **DINO**: its ``eval_knn.py``
algorithm re-written here in torch: features normalised, test features in 100 chunks, each
multiplied by the whole transposed training matrix, ``topk``, one-hot vote weighted by
exp(sim / T), run once per k (its ``for k in args.nb_knn`` loop). Both start from the same
in-memory features; the two alternate per repeat. Peak memory is the rise of the process's
peak resident set (VmHWM, reset before each run through /proc/self/clear_refs) above the
resident set at the start of the run, after Python's garbage and the allocator's free memory
are released (``release_free_memory``): what the search allocates beyond its inputs. The
budget printed for ours is the normalised training copy plus one query chunk's working set
(its queries, faiss's BLAS block of similarities, its top-k results, the vote's class scores).
Both sides run once on a small set first, so one-time library initialisation is not counted.
DINO's time grows with N x k x classes (hours at 1.28M on two cores): ``--dino-chunks M`` times
the first M of its 100 equal test chunks and scales by 100/M.
Extraction: our data-loading + backbone path (``_features.extract`` over an ImageFolder) vs
``timm`` forward of the same architecture on pre-made tensors of the same size, so the ratio
is the data pipeline's overhead. ``--data``: an ImageNet-layout tree (default: synthetic JPEGs
in a temporary folder).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image

from ..backbones import Backbone
from ..data import ImageFolderDataset, resolve
from ..errors import UserError
from ..progress import log
from ..protocols._features import FeatureSpec, eval_transform, extract
from ..protocols.knn import knn_predict

DESCRIPTION = "k-NN time and peak memory (ours vs DINO's chunked torch) and extraction speed"

#: DINO eval_knn.py splits the test features into 100 chunks of equal work
DINO_CHUNKS = 100
#: faiss's BLAS block: database rows per similarity block (faiss ``distance_compute_blas_database_bs``)
FAISS_DATABASE_BLOCK = 1024


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", default="25000,100000,400000",
                        help="training-set sizes, comma-separated (default 25000,100000,400000; "
                             "ImageNet: 1280000)")
    parser.add_argument("--queries", type=int, default=10_000, help="query features (default 10000)")
    parser.add_argument("--dim", type=int, default=384, help="feature dimension (default 384, ViT-S)")
    parser.add_argument("--classes", type=int, default=1000, help="classes (default 1000)")
    parser.add_argument("--ks", default="10,20,100,200", help="k values (default DINO's 10,20,100,200)")
    parser.add_argument("--query-chunk", type=int, default=1024, help="our query chunk (default 1024)")
    parser.add_argument("--dino-chunks", type=int, default=DINO_CHUNKS, metavar="M",
                        help="time DINO on the first M of its 100 equal test chunks and scale its time by "
                             "100/M (default 100: all; its time grows with N x k x classes)")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved repeats, the median is shown (default 1)")
    parser.add_argument("--arch", default="vit_small_patch16_224", help="backbone for the extraction part")
    parser.add_argument("--size", type=int, default=96, help="image side for extraction (default 96)")
    parser.add_argument("--images", type=int, default=256, help="images for extraction (default 256)")
    parser.add_argument("--batch-size", type=int, default=64, help="extraction batch size (default 64)")
    parser.add_argument("--workers", type=int, default=0, help="data-loader workers (default 0)")
    parser.add_argument("--data", type=Path, default=None,
                        help="ImageNet-layout root or prepared tree for extraction (default: synthetic images)")
    parser.add_argument("--skip-extraction", action="store_true", help="only time the k-NN search")


def _median_time(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise UserError(f"/proc/self/status has no {field}; the k-NN memory figures need Linux")


def release_free_memory() -> None:
    """Collect Python garbage and hand memory the allocator keeps free back to the OS (glibc's
    ``malloc_trim``), so that the resident set holds live data only. Without it, memory freed
    by an earlier run but still resident can be trimmed in the middle of the next run and hide
    that run's allocations (a 1.28M run of 2026-12-04 printed a rise of 0 MB for ours at 100k,
    whose normalised training copy alone is 146 MB)."""
    gc.collect()
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)  # the C library this process runs on
    if trim is not None:  # glibc; other C libraries return freed memory on their own terms
        trim(0)


def measured(fn) -> tuple[float, int, object]:
    """(seconds, bytes the peak resident set rose above the start, result) of ``fn()``."""
    release_free_memory()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = _status_kib("VmRSS")
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    return seconds, (_status_kib("VmHWM") - before) * 1024, result


def dino_knn(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor, k: int, temperature: float,
             num_classes: int, chunks: int = DINO_CHUNKS) -> torch.Tensor:
    """DINO eval_knn.py's ``knn_classifier`` (its algorithm, written here): predictions (n, C) sorted,
    for the test features of the first ``chunks`` of its 100 chunks."""
    per_chunk = max(1, len(test) // DINO_CHUNKS)
    train_t = train.t()
    out = []
    for start in range(0, min(len(test), chunks * per_chunk), per_chunk):
        feats = test[start:start + per_chunk]
        sims, idx = (feats @ train_t).topk(k, largest=True, sorted=True)
        neighbours = torch.gather(train_labels.view(1, -1).expand(len(feats), -1), 1, idx)
        one_hot = torch.zeros(len(feats) * k, num_classes).scatter_(1, neighbours.view(-1, 1), 1)
        weights = sims.div(temperature).exp()
        probs = (one_hot.view(len(feats), k, num_classes) * weights.view(len(feats), k, 1)).sum(1)
        out.append(probs.sort(1, True).indices)
    return torch.cat(out)


def _dino_run(train, labels, queries, ks, temperature, num_classes, chunks):
    train_n = torch.nn.functional.normalize(torch.from_numpy(train), dim=1, p=2)  # eval_knn.py, once
    test_n = torch.nn.functional.normalize(torch.from_numpy(queries), dim=1, p=2)
    labels_t = torch.from_numpy(labels)
    return {k: dino_knn(train_n, labels_t, test_n, k, temperature, num_classes, chunks)[:, :5].numpy() for k in ks}


def _bench_search(args) -> None:
    sizes = [int(n) for n in args.sizes.split(",") if n]
    ks = [int(k) for k in args.ks.split(",") if k]
    if not sizes or not ks or min(sizes + ks + [args.queries, args.dim, args.classes, args.query_chunk]) < 1:
        raise UserError("--sizes/--ks/--queries/--dim/--classes/--query-chunk: positive integers")
    if min(sizes) < max(ks) or min(sizes) < args.classes:
        raise UserError(f"--sizes: {min(sizes)} training features are too few for k up to {max(ks)} and "
                        f"{args.classes} classes; give sizes >= both")
    temperature = 0.07
    rng = np.random.default_rng(0)
    queries = rng.standard_normal((args.queries, args.dim), dtype=np.float32)
    print(f"k-NN classification: {args.queries} queries x {args.dim}, {args.classes} classes, k = "
          f"{','.join(map(str, ks))}, T = {temperature}; median of {args.repeats} interleaved repeat(s); CPU, "
          f"{torch.get_num_threads()} torch threads")
    if not 1 <= args.dino_chunks <= DINO_CHUNKS:
        raise UserError(f"--dino-chunks {args.dino_chunks}: must be in 1..{DINO_CHUNKS}")
    scale = DINO_CHUNKS / args.dino_chunks
    if scale != 1:
        print(f"DINO timed on {args.dino_chunks} of its {DINO_CHUNKS} equal test chunks, its time x {scale:g}")
    # one-time initialisation (BLAS buffers, thread pools) before any measurement, both sides; ours
    # with one full query chunk, so its first-use buffers are not counted in the first size's peak
    warm = rng.standard_normal((max(ks) + args.classes, args.dim), dtype=np.float32)
    knn_predict(warm, np.arange(len(warm)) % args.classes, queries[:args.query_chunk], args.classes, ks, temperature,
                query_chunk=args.query_chunk)
    _dino_run(warm, np.arange(len(warm)) % args.classes, queries[:200], ks, temperature, args.classes, 1)
    print("N\tours s\tDINO s\tratio\tours MB\tDINO MB\tfeatures MB\tbudget MB\tagree")
    for n in sizes:
        train = rng.standard_normal((n, args.dim), dtype=np.float32)
        labels = rng.integers(0, args.classes, n)
        qc = min(args.query_chunk, args.queries)
        chunk = (qc * args.dim * 4 + qc * FAISS_DATABASE_BLOCK * 4 + 4 * qc * max(ks) * 12
                 + qc * args.classes * (4 + 8))
        budget = 1.1 * (train.nbytes + chunk)
        ours_t, dino_t, ours_m, dino_m = [], [], [], []
        for repeat in range(max(1, args.repeats)):
            log(f"N={n}: ours, repeat {repeat + 1}")
            t, m, ours = measured(lambda: knn_predict(train, labels, queries, args.classes, ks, temperature,
                                                      query_chunk=args.query_chunk))
            ours_t.append(t)
            ours_m.append(m)
            log(f"N={n}: DINO, repeat {repeat + 1}")
            t, m, dino = measured(lambda: _dino_run(train, labels, queries, ks, temperature, args.classes,
                                                    args.dino_chunks))
            dino_t.append(t * scale)
            dino_m.append(m)
        agree = np.mean([np.mean(ours[k][:len(dino[k]), 0] == dino[k][:, 0]) for k in ks])
        t_ours, t_dino = statistics.median(ours_t), statistics.median(dino_t)
        mb = 2 ** 20
        print(f"{n}\t{t_ours:.2f}\t{t_dino:.2f}\t{t_ours / t_dino:.2f}\t{max(ours_m) / mb:.0f}\t"
              f"{max(dino_m) / mb:.0f}\t{train.nbytes / mb:.0f}\t{budget / mb:.0f}\t{100 * agree:.2f}%")
        if min(ours_m) < train.nbytes:
            print(f"warning\tN = {n}: ours rose by {min(ours_m) / mb:.0f} MB in a repeat, less than the "
                  f"{train.nbytes / mb:.0f} MB normalised training copy it allocates: memory freed during that "
                  "run hid part of its peak; run again")
        del train
    print("ratio: ours / DINO time; MB: peak resident rise (max over repeats); budget: 1.1 x (features + one "
          "query chunk); agree: top-1 predictions equal")


def _synthetic_tree(folder: Path, images: int, size: int) -> Path:
    rng = np.random.default_rng(0)
    for n in range(images):
        wnid = f"n{99000000 + n % 10:08d}"
        target = folder / "train" / wnid
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (size + size // 7, size + size // 7, 3), dtype=np.uint8)).save(
            target / f"{wnid}_{n}.JPEG", quality=90)
    return folder


def _bench_extraction(args) -> None:
    tcfg = {"resize": int(round(args.size / 0.875)), "crop": args.size, "interpolation": "bicubic",
            "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    with tempfile.TemporaryDirectory() as tmp:
        root = resolve(args.data, "imagenet") if args.data else _synthetic_tree(Path(tmp), args.images, args.size)
        dataset = ImageFolderDataset(root / "train", eval_transform(tcfg))
        dataset.samples = dataset.samples[:args.images]
        n = len(dataset)
        torch.manual_seed(0)
        backbone = Backbone(args.arch).eval()
        spec = FeatureSpec("cls" if backbone.is_vit else "avgpool", True)
        out = np.empty((n, backbone.feature_dim(spec.feature)), np.float32)
        device = torch.device("cpu")
        torch.manual_seed(0)
        kwargs = {"dynamic_img_size": True} if backbone.is_vit else {}
        bare = timm.create_model(args.arch, pretrained=False, num_classes=0, **kwargs).eval()
        batches = [torch.randn(min(args.batch_size, n - s), 3, args.size, args.size)
                   for s in range(0, n, args.batch_size)]

        def bare_forward():
            with torch.no_grad():
                for x in batches:
                    bare(x)

        def ours():
            extract(backbone, dataset, spec, out, batch_size=args.batch_size, num_workers=args.workers,
                    device=device, bf16=False, desc="extraction")

        # interleaved repeats, so a change in machine load hits both sides alike
        ours_t, bare_t = [], []
        for _ in range(max(1, args.repeats)):
            ours_t.append(_median_time(ours, 1)[0])
            bare_t.append(_median_time(bare_forward, 1)[0])
        t_ours, t_bare = statistics.median(ours_t), statistics.median(bare_t)
    print(f"feature extraction: {args.arch}, {n} images at {args.size} px, batch {args.batch_size}, "
          f"{args.workers} workers, CPU")
    print(f"  ssl-bench pipeline (decode + transform + forward): {n / t_ours:.1f} images/s")
    print(f"  bare timm forward on ready tensors: {n / t_bare:.1f} images/s")
    print(f"  pipeline overhead: {t_ours / t_bare:.2f}x the bare forward time")


def run(args) -> int:
    _bench_search(args)
    if not args.skip_extraction:
        _bench_extraction(args)
    return 0
