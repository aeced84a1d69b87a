"""``ssl-bench bench knn``: k-NN search time (faiss vs a chunked torch matmul) and feature
extraction images/s (our pipeline vs a bare timm forward), measured in the same run.

Search: random L2-normalised features, ``--train`` x ``--dim`` (default 100k x 384, ViT-S)
against ``--queries`` (default 10k); both methods return the top-``--k`` neighbours and the
benchmark checks they agree. Extraction: our data-loading + backbone path
(``_features.extract`` over an ImageFolder) vs ``timm`` forward of the same architecture on
pre-made tensors of the same size, so the ratio is the data pipeline's overhead. Use
``--data`` for an ImageNet-layout tree (default: synthetic JPEGs written to a temporary folder).
"""

from __future__ import annotations

import argparse
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
from ..protocols._features import FeatureSpec, eval_transform, extract
from ..protocols.knn import l2_normalize, search_topk

DESCRIPTION = "k-NN search (faiss vs torch) and feature extraction (pipeline vs bare timm) speed"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train", type=int, default=100_000, help="training features (default 100000)")
    parser.add_argument("--queries", type=int, default=10_000, help="query features (default 10000)")
    parser.add_argument("--dim", type=int, default=384, help="feature dimension (default 384, ViT-S)")
    parser.add_argument("--k", type=int, default=200, help="neighbours (default 200)")
    parser.add_argument("--chunk", type=int, default=4096, help="query chunk of the torch matmul (default 4096)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats, the median is shown (default 3)")
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


def torch_topk(train, queries, k: int, chunk: int):
    """Exhaustive top-k by chunked matmul in torch (the baseline)."""
    train_t = torch.from_numpy(train)
    sims, idx = [], []
    for s in range(0, len(queries), chunk):
        out = torch.from_numpy(queries[s:s + chunk]) @ train_t.T
        top = out.topk(k, dim=1)
        sims.append(top.values)
        idx.append(top.indices)
    return torch.cat(sims).numpy(), torch.cat(idx).numpy()


def _synthetic_tree(folder: Path, images: int, size: int) -> Path:
    rng = np.random.default_rng(0)
    for n in range(images):
        wnid = f"n{99000000 + n % 10:08d}"
        target = folder / "train" / wnid
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (size + size // 7, size + size // 7, 3), dtype=np.uint8)).save(
            target / f"{wnid}_{n}.JPEG", quality=90)
    return folder


def _bench_search(args) -> None:
    if min(args.train, args.queries, args.dim, args.k) < 1 or args.k > args.train:
        raise UserError("--train/--queries/--dim/--k: must be >= 1 with k <= train")
    rng = np.random.default_rng(0)
    train = l2_normalize(rng.standard_normal((args.train, args.dim), dtype=np.float32))
    queries = l2_normalize(rng.standard_normal((args.queries, args.dim), dtype=np.float32))
    print(f"k-NN search: {args.train} x {args.dim} train features, {args.queries} queries, k={args.k}, "
          f"median of {args.repeats}")
    t_faiss, (d_f, i_f) = _median_time(lambda: search_topk(train, queries, args.k, query_chunk=args.chunk),
                                       args.repeats)
    t_torch, (d_t, i_t) = _median_time(lambda: torch_topk(train, queries, args.k, args.chunk), args.repeats)
    t_ours_torch, _ = _median_time(lambda: search_topk(train, queries, args.k, query_chunk=args.chunk,
                                                       backend="torch"), args.repeats)
    agree = float(np.mean(np.sort(i_f, 1) == np.sort(i_t, 1)))
    print(f"  faiss (IndexFlatIP, chunked): {t_faiss:.3f} s  ({args.queries / t_faiss:.0f} queries/s)")
    print(f"  torch matmul + topk (chunk {args.chunk}): {t_torch:.3f} s  ({args.queries / t_torch:.0f} queries/s)")
    print(f"  ssl-bench search_backend torch (chunked, merged): {t_ours_torch:.3f} s")
    print(f"  ratio torch / faiss: {t_torch / t_faiss:.2f}x; neighbour sets agree on {100 * agree:.2f}% "
          f"(max |sim diff| {float(np.abs(d_f - d_t).max()):.2e})")


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
