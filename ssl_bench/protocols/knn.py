"""Weighted k-NN classification on frozen features (reference: DINO eval_knn.py).

Features are L2-normalised; for every test sample the k most cosine-similar training
samples vote for their class with weight exp(sim / T) (T = 0.07); the classes are ranked
by their summed weight; top-1 and top-5 (top-5 counts the first min(5, k) classes).

The search is exact: ``faiss.knn`` (inner product, as ``IndexFlatIP``) over chunks of the
training set whose per-chunk top-k are merged in a ``faiss.ResultHeap`` (a training set of one
chunk needs no merge: faiss writes the top-k in place), or with
``search_backend: torch`` a chunked matmul whose per-chunk top-k are merged by another
``topk``; queries are chunked too, so memory stays bounded for millions of training
features. k is capped at the number of training samples. Ties in the class ranking (e.g.
classes with no votes at all) are broken by the lower class index (a stable sort); the
reference leaves that order to ``torch.sort``.
"""

from __future__ import annotations

import faiss
import numpy as np
import torch

from ..errors import UserError
from ..progress import progress
from ..schema import Metric, Schema
from . import PROTOCOLS, EvalContext, Protocol
from ._common import open_classification, records_for
from ._features import eval_transform, feature_spec, split_features


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32; a zero row stays zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]  # unlike np.linalg.norm, no (N, D) temporary
    return x / np.maximum(norms, 1e-12)


def search_topk(train: np.ndarray, queries: np.ndarray, k: int, *, train_chunk: int = 1 << 20,
                query_chunk: int = 4096, backend: str = "faiss",
                desc: str = "k-NN search") -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k of every query row over the training rows.

    Returns (similarities, indices), each (n_queries, k), most similar first. The training
    set is scanned in chunks of ``train_chunk`` rows (read from a memory map as needed) and
    the queries in chunks of ``query_chunk``; ``k`` must not exceed len(train). Cosine
    similarity: L2-normalise both sides first (``knn_predict`` does, the training side once).
    ``backend``: ``faiss`` (``faiss.knn``'s routine, + ``faiss.ResultHeap`` over several chunks)
    or ``torch`` (matmul + ``topk`` per chunk, merged by another ``topk``; ``ssl-bench bench
    knn`` compares them).
    """
    if backend not in ("faiss", "torch"):
        raise UserError(f"recipe key 'search_backend': unknown '{backend}'; valid: faiss, torch")
    n_train, n_query = len(train), len(queries)
    if not 0 < k <= n_train:
        raise ValueError(f"k={k} must be in 1..{n_train} (the number of training features)")
    sims = np.empty((n_query, k), dtype=np.float32)
    idx = np.empty((n_query, k), dtype=np.int64)
    train_chunk, query_chunk = max(1, int(train_chunk)), max(1, int(query_chunk))
    steps = [(q0, t0) for q0 in range(0, n_query, query_chunk) for t0 in range(0, n_train, train_chunk)]
    bar = progress(total=len(steps), desc=desc, unit="chunk")
    single = np.ascontiguousarray(train, dtype=np.float32) if backend == "faiss" and n_train <= train_chunk else None
    for q0 in range(0, n_query, query_chunk):
        q = np.ascontiguousarray(queries[q0:q0 + query_chunk], dtype=np.float32)
        if single is not None:
            # one training block: faiss.knn's own routine writes the top-k into the result rows, with
            # no heap to merge and no copies (one 1024-query chunk over 25k features: 15.9 -> 11.2 MB
            # peak, 2026-12-04)
            faiss.knn_inner_product(faiss.swig_ptr(q), faiss.swig_ptr(single), q.shape[1], len(q), n_train, k,
                                    faiss.swig_ptr(sims[q0:q0 + len(q)]), faiss.swig_ptr(idx[q0:q0 + len(q)]))
            bar.update(1)
            continue
        heap = faiss.ResultHeap(len(q), k, keep_max=True) if backend == "faiss" else None
        best_d = best_i = None
        for t0 in range(0, n_train, train_chunk):
            block = np.ascontiguousarray(train[t0:t0 + train_chunk], dtype=np.float32)
            if heap is None:
                top = (torch.from_numpy(q) @ torch.from_numpy(block).T).topk(min(k, len(block)), dim=1)
                d, i = top.values, top.indices + t0
                if best_d is not None:
                    d, pos = torch.cat([best_d, d], 1).topk(min(k, best_d.shape[1] + d.shape[1]), dim=1)
                    i = torch.gather(torch.cat([best_i, i], 1), 1, pos)
                best_d, best_i = d, i
                bar.update(1)
                continue
            d, i = faiss.knn(q, block, min(k, len(block)), metric=faiss.METRIC_INNER_PRODUCT)
            if d.shape[1] < k:  # a short last chunk: pad with entries that never win
                pad = k - d.shape[1]
                d = np.concatenate([d, np.full((len(q), pad), -np.inf, np.float32)], axis=1)
                i = np.concatenate([i, np.full((len(q), pad), -1, np.int64)], axis=1)
            heap.add_result(np.ascontiguousarray(d, np.float32), np.ascontiguousarray(i + t0, np.int64))
            bar.update(1)
        if heap is None:
            sims[q0:q0 + len(q)], idx[q0:q0 + len(q)] = best_d.numpy(), best_i.numpy()
            continue
        heap.finalize()
        sims[q0:q0 + len(q)], idx[q0:q0 + len(q)] = heap.D, heap.I
    bar.close()
    return sims, idx


def vote(sims: np.ndarray, neighbours: np.ndarray, train_labels: np.ndarray, out: np.ndarray,
         temperature: float) -> np.ndarray:
    """(n, C) class scores, written into the first n rows of the float32 (>= n, C) buffer ``out``
    and returned: sum over the given neighbours of exp(sim / T) per class."""
    weights = torch.from_numpy(np.ascontiguousarray(sims, np.float32)).div(temperature).exp_()
    labels = torch.from_numpy(np.asarray(train_labels, np.int64)[neighbours])
    scores = torch.from_numpy(out[:len(sims)]).zero_()
    scores.scatter_add_(1, labels, weights)
    return scores.numpy()


#: rows of class scores ``rank_classes`` sorts at once
RANK_ROWS = 128


def rank_classes(scores: np.ndarray, top: int) -> np.ndarray:
    """The ``top`` best classes per row, best first; ties go to the lower class index.

    A stable ascending sort of the columns in reverse order, read backwards: descending scores,
    ties in increasing class index. Sorted ``RANK_ROWS`` rows at a time, so the int64 sort order
    never holds more than those rows x classes (8 MB per 1024 queries at 1000 classes otherwise)."""
    last = scores.shape[1] - 1
    out = np.empty((len(scores), top), dtype=np.int64)
    for r0 in range(0, len(scores), RANK_ROWS):
        ascending = np.argsort(scores[r0:r0 + RANK_ROWS, ::-1], axis=1, kind="stable")
        out[r0:r0 + RANK_ROWS] = last - ascending[:, :-top - 1:-1]
    return out


def knn_predict(train: np.ndarray, train_labels: np.ndarray, queries: np.ndarray, num_classes: int,
                ks=(10, 20, 100, 200), temperature: float = 0.07, *, train_chunk: int = 1 << 20,
                query_chunk: int = 4096, normalize: bool = True, backend: str = "faiss") -> dict[int, np.ndarray]:
    """Ranked class predictions per requested k: {k: (n_queries, min(5, C)) class indices}.

    One exact search for the largest k serves every k (the neighbours come sorted). A k
    above the number of training features is capped to it; the result is keyed by the
    requested k. With ``normalize`` (cosine similarity) the training features are
    L2-normalised once, into one float32 copy (the only training-sized allocation), and the
    queries chunk by chunk.
    """
    kmax = min(max(ks), len(train))
    if normalize:
        train = l2_normalize(train)
    top = min(5, num_classes)
    out = {k: np.empty((len(queries), top), dtype=np.int64) for k in ks}
    # one class-score buffer for every k and chunk: a fresh one each time left glibc holding freed
    # copies resident (bench knn at 25k: a peak of 70-73 MB, now 61-63; 2026-12-04)
    scores = np.empty((min(query_chunk, len(queries)), num_classes), dtype=np.float32)
    for q0 in range(0, len(queries), query_chunk):
        q = queries[q0:q0 + query_chunk]
        sims, idx = search_topk(train, l2_normalize(q) if normalize else q, kmax, train_chunk=train_chunk,
                                query_chunk=query_chunk, backend=backend)
        for k in ks:
            kk = min(k, kmax)
            ranked = rank_classes(vote(sims[:, :kk], idx[:, :kk], train_labels, scores, temperature), top)
            out[k][q0:q0 + len(q)] = ranked
    return out


def knn_hits(predictions: dict[int, np.ndarray], labels: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """{k: (top-1 hit, top-5 hit)} per query (bool); top-5 counts the first min(5, k) ranked classes."""
    labels = np.asarray(labels)[:, None]
    return {k: ((ranked[:, :1] == labels).any(1), (ranked[:, :min(5, k)] == labels).any(1))
            for k, ranked in predictions.items()}


def knn_accuracy(predictions: dict[int, np.ndarray], labels: np.ndarray) -> dict[int, tuple[float, float]]:
    """{k: (top-1 %, top-5 %)}."""
    return {k: (100.0 * top1.mean(), 100.0 * top5.mean()) for k, (top1, top5) in knn_hits(predictions, labels).items()}


@PROTOCOLS.register("knn")
class KNN(Protocol):
    """Weighted k-NN (DINO): top-1 / top-5 for every k of the recipe."""

    schema = Schema(datasets=("imagenet",), metrics=(
        Metric("top1_k{k:int}", description="top-1 of the vote of the k nearest training features"),
        Metric("top5_k{k:int}", description="top-5: the first min(5, k) ranked classes")),
        headline=("top1_k20",), order=10)  # DINO reports k = 20

    def run(self, ctx: EvalContext) -> list[dict]:
        recipe = ctx.recipe
        ks = [int(k) for k in recipe["ks"]]
        if not ks or min(ks) < 1:
            raise UserError(f"recipe key 'ks': expected a list of positive integers, got {recipe['ks']!r}")
        spec = feature_spec(ctx.checkpoint, recipe)
        tcfg = recipe["transform"]
        data = open_classification(ctx, recipe, eval_transform(tcfg, spec.input_filter))
        train = split_features(ctx, data.train, split="train", spec=spec, transform_cfg=tcfg, recipe=recipe)
        val = split_features(ctx, data.val, split="val", spec=spec, transform_cfg=tcfg, recipe=recipe)
        predictions = knn_predict(train.features, train.labels, val.features, len(data.classes), ks,
                                  float(recipe["temperature"]), train_chunk=int(recipe["train_chunk"]),
                                  query_chunk=int(recipe["query_chunk"]), backend=recipe["search_backend"])
        hits = knn_hits(predictions, val.labels)
        # the reference reports k = 20 first
        order = sorted(ks, key=lambda k: (k != 20, ks.index(k)))
        records = []
        for k in order:
            top1, top5 = hits[k]
            extra = {"k": k, "k_used": min(k, len(train)), "temperature": float(recipe["temperature"]),
                     "n_train": len(train), "n_val": len(val)}
            records += records_for(data.name, {f"top1_k{k}": 100.0 * top1.mean(), f"top5_k{k}": 100.0 * top5.mean()},
                                   spec, extra, per_sample={f"top1_k{k}": top1, f"top5_k{k}": top5})
        return records
