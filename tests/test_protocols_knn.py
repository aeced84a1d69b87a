"""k-NN protocol: DINO's weighted vote against a plain-numpy oracle, faiss search vs brute force."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ssl_bench.protocols.knn import knn_accuracy, knn_predict, rank_classes, search_topk


def _dino_vote_numpy(train, train_labels, test, num_classes, k, T=0.07):
    """DINO eval_knn.py's weighted vote, written independently: cosine similarity of
    L2-normalised features, full sort, k nearest, one-hot * exp(sim/T) summed per class,
    classes sorted by score (ties to the lower index)."""
    tr = train / np.linalg.norm(train, axis=1, keepdims=True)
    te = test / np.linalg.norm(test, axis=1, keepdims=True)
    sim = te.astype(np.float64) @ tr.astype(np.float64).T
    preds = []
    for row in sim:
        nn = np.argsort(-row, kind="stable")[:k]
        one_hot = np.zeros((k, num_classes))
        one_hot[np.arange(k), train_labels[nn]] = 1.0
        probs = (one_hot * np.exp(row[nn] / T)[:, None]).sum(0)
        preds.append(np.argsort(-probs, kind="stable")[:5])
    return np.array(preds)


@pytest.fixture
def features():
    rng = np.random.default_rng(0)
    num_classes = 7
    centers = rng.normal(size=(num_classes, 32))
    train_labels = rng.integers(0, num_classes, 500)
    test_labels = rng.integers(0, num_classes, 130)
    train = centers[train_labels] + 1.5 * rng.normal(size=(500, 32))
    test = centers[test_labels] + 1.5 * rng.normal(size=(130, 32))
    return train.astype(np.float32), train_labels, test.astype(np.float32), test_labels, num_classes


@pytest.mark.parametrize("train_chunk", [128, 1 << 20])  # several training chunks merged; one chunk
@pytest.mark.parametrize("k", [10, 20])
def test_knn_predictions_match_numpy_dino_vote(features, k, train_chunk):
    train, train_labels, test, test_labels, c = features
    ours = knn_predict(train, train_labels, test, c, ks=[k], train_chunk=train_chunk, query_chunk=50)[k]
    oracle = _dino_vote_numpy(train, train_labels, test, c, k)
    np.testing.assert_array_equal(ours, oracle)
    # and the accuracy it implies
    hits = oracle == test_labels[:, None]
    top1, top5 = knn_accuracy({k: ours}, test_labels)[k]
    assert top1 == pytest.approx(100 * hits[:, 0].mean())
    assert top5 == pytest.approx(100 * hits[:, :5].any(1).mean())
    assert 30 < top1 < 100  # the clusters are separable enough for a non-trivial score


@pytest.mark.parametrize("train_chunk", [97, 1 << 20])  # several training chunks merged; one chunk
@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_topk_equals_exhaustive_search(features, backend, train_chunk):
    train, _, test, _, _ = features
    tr = train / np.linalg.norm(train, axis=1, keepdims=True)
    te = test / np.linalg.norm(test, axis=1, keepdims=True)
    k = 37
    sims, idx = search_topk(tr, te, k, train_chunk=train_chunk, query_chunk=31, backend=backend)
    full = te.astype(np.float64) @ tr.astype(np.float64).T
    want_idx = np.argsort(-full, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_allclose(sims, np.take_along_axis(full, want_idx, 1), rtol=0, atol=1e-5)


def test_top5_uses_min_5_k_and_k_capped_at_n_train():
    # 3 train points, two of class 0 and one of class 1; queries identical to train point 2
    train = np.array([[1, 0], [0.9, 0.1], [0, 1]], np.float32)
    labels = np.array([0, 0, 1])
    test = np.array([[0, 1]], np.float32)
    preds = knn_predict(train, labels, test, num_classes=4, ks=[1, 200])
    # k=1: only the nearest (class 1) votes; top-5 of k=1 looks at min(5, 1) = 1 class
    assert preds[1][0, 0] == 1
    acc = knn_accuracy(preds, np.array([0]))
    assert acc[1] == (0.0, 0.0)  # class 0 ranks second but top-5 is cut at k=1
    # k=200 is capped at 3: class 0 gets exp(cos/T) from two far points, class 1 exp(1/T)
    w1 = np.exp(1 / 0.07)
    w0 = np.exp(np.array([0.0, 0.1 / np.hypot(0.9, 0.1)]) / 0.07).sum()
    assert w1 > w0 and preds[200][0, 0] == 1 and preds[200][0, 1] == 0
    assert acc[200] == (0.0, 100.0)


def test_knn_protocol_on_imagefolder(tmp_path):
    from test_protocols_common import context, make_imagefolder

    from ssl_bench.protocols.knn import KNN

    tree = make_imagefolder(tmp_path / "data")
    ctx = context(tree, tmp_path / "results", "knn")
    records = KNN().run(ctx)
    metrics = {r["metric"]: r for r in records}
    assert [r["metric"] for r in records][:2] == ["top1_k20", "top5_k20"]  # k = 20 first, as DINO
    assert set(metrics) == {f"top{t}_k{k}" for t in (1, 5) for k in (10, 20, 100, 200)}
    # 24 training images: k = 100 and 200 are capped at 24 and vote identically
    assert metrics["top1_k200"]["k_used"] == 24
    assert metrics["top1_k200"]["value"] == metrics["top1_k100"]["value"]
    # recompute k = 10 from the cached features with the numpy oracle
    cache = next((tmp_path / "results" / "features").iterdir()).parent
    entries = {json.loads((d / "key.json").read_text())["n"]: d for d in cache.iterdir()}
    train, val = entries[24], entries[12]
    oracle = _dino_vote_numpy(np.load(train / "features.npy"), np.load(train / "labels.npy"),
                              np.load(val / "features.npy"), 4, 10)
    val_labels = np.load(val / "labels.npy")
    assert metrics["top1_k10"]["value"] == pytest.approx(100 * (oracle[:, 0] == val_labels).mean())
    # per-sample hits for the bootstrap interval: exactly the oracle's, sample by sample
    np.testing.assert_array_equal(metrics["top1_k10"]["per_sample"], (oracle[:, 0] == val_labels).astype(np.float32))
    np.testing.assert_array_equal(metrics["top5_k10"]["per_sample"], np.ones(12, np.float32))
    assert metrics["top5_k10"]["value"] == pytest.approx(100.0)  # 4 classes: top-5 always hits
    assert metrics["top1_k10"]["feature"] == "cls" and metrics["top1_k10"]["dataset"] == "imagenet"


def test_rank_classes_best_first_ties_to_the_lower_class():
    scores = np.array([[0.5, 2.0, 0.5, 2.0, 1.0],
                       [0.0, 0.0, 0.0, 0.0, 0.0],
                       [3.0, 1.0, 2.0, 1.0, 3.0]], dtype=np.float32)
    assert rank_classes(scores, 5).tolist() == [[1, 3, 4, 0, 2], [0, 1, 2, 3, 4], [0, 4, 2, 1, 3]]
    assert rank_classes(scores, 2).tolist() == [[1, 3], [0, 1], [0, 4]]
    assert rank_classes(scores, 1).tolist() == [[1], [0], [0]]
    # more rows than one sorting block: the same order per row
    many = np.tile(scores, (100, 1))
    assert rank_classes(many, 3).tolist() == [[1, 3, 4], [0, 1, 2], [0, 4, 2]] * 100
