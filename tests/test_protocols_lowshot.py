"""Low-shot logistic regression: MSN's lambda/n regularisation, preprocessing, split files."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from test_protocols_common import context, make_imagefolder

from ssl_bench.data.imagefolder import ImageFolderDataset
from ssl_bench.protocols.lowshot import LowShot, center_normalize, fit_logistic


def _softmax_objective_grad(W, x, y, lambd_msn):
    """Gradient of cyanure's objective as MSN calls it: (1/n) sum CE + (lambda/n)/2 ||W||^2."""
    n = len(y)
    logits = x @ W.T
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(n), y] -= 1
    return p.T @ x / n + (lambd_msn / n) * W


def _data(num_classes, n=60, d=10, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % num_classes
    x = rng.normal(size=(n, d)) + 1.5 * rng.normal(size=(num_classes, d))[y]
    return center_normalize(x), y


@pytest.mark.parametrize("lambd", [0.05, 0.5])
def test_regularisation_is_msn_lambda_over_n(lambd):
    x, y = _data(4)
    clf = fit_logistic(x, y, lambd, max_iter=5000, tol=1e-10)
    W = clf.coef_
    grad = _softmax_objective_grad(W, x, y, lambd)
    assert np.abs(grad).max() < 1e-6 * max(1.0, np.abs(W).max())
    # the same classifier as scikit-learn configured by hand with C = 1/lambda ...
    hand = LogisticRegression(C=1 / lambd, fit_intercept=False, max_iter=5000, tol=1e-10).fit(x, y)
    np.testing.assert_allclose(W, hand.coef_, atol=1e-5)
    # ... and not the naive C = n/lambda, which misses the optimum of MSN's objective
    naive = LogisticRegression(C=len(y) / lambd, fit_intercept=False, max_iter=5000, tol=1e-10).fit(x, y)
    assert np.abs(_softmax_objective_grad(naive.coef_, x, y, lambd)).max() > 1e-3


def test_two_classes_map_to_the_softmax_pair():
    x, y = _data(2)
    lambd = 0.2
    w = fit_logistic(x, y, lambd, max_iter=5000, tol=1e-10).coef_[0]
    # sklearn's binary w = W1 - W0; the softmax optimum is W1 = -W0 = w/2
    W = np.stack([-w / 2, w / 2])
    assert np.abs(_softmax_objective_grad(W, x, y, lambd)).max() < 1e-6


def test_center_normalize_rows():
    x = np.array([[1.0, 2.0, 3.0], [4.0, 4.0, 10.0]])
    want = np.array([[-1.0, 0.0, 1.0], [-2.0, -2.0, 4.0]])
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(center_normalize(x), want)


def test_lowshot_protocol_split_files_and_scores(tmp_path):
    tree = make_imagefolder(tmp_path / "data")
    # the split files hold exactly k images of every class
    for s in (1, 2, 3):
        for k in (1, 2, 5):
            subset = ImageFolderDataset.from_split_file(tree / "train", tree / f"imagenet_subsets{s}" / f"{k}imgs_class.txt")
            assert Counter(label for _, label in subset.samples) == {c: k for c in range(4)}
    ctx = context(tree, tmp_path / "results", "lowshot", lambd=0.1)
    records = {r["metric"]: r for r in LowShot().run(ctx)}
    assert set(records) == {f"top1_{k}shot_{s}" for k in (1, 2, 5) for s in ("mean", "std")} | {"top1_1pct"}
    per_split = records["top1_5shot_mean"]["per_split"]
    assert records["top1_5shot_mean"]["value"] == pytest.approx(np.mean(per_split["5shot"]))
    assert records["top1_5shot_std"]["value"] == pytest.approx(np.std(per_split["5shot"]))
    # recompute the 1% score from the backbone directly, with scikit-learn configured by hand
    from ssl_bench.protocols._features import eval_transform

    tf = eval_transform(ctx.recipe["transform"])
    train = ImageFolderDataset.from_subset_file(tree / "train", tree / "1percent.txt", tf)
    val = ImageFolderDataset(tree / "val", tf)
    import torch

    def feats(ds):
        with torch.no_grad():
            return ctx.checkpoint.backbone.features(torch.stack([ds[i][0] for i in range(len(ds))]), "cls").numpy()

    def prep(z):
        z = z - z.mean(1, keepdims=True)
        return z / np.linalg.norm(z, axis=1, keepdims=True)

    y = np.array([label for _, label in train.samples])
    clf = LogisticRegression(C=1 / 0.1, fit_intercept=False, max_iter=1000, tol=1e-6).fit(prep(feats(train)), y)
    acc = 100 * np.mean(clf.predict(prep(feats(val))) == np.array([label for _, label in val.samples]))
    assert records["top1_1pct"]["value"] == pytest.approx(acc)
    # per val image: whether the 1% classifier got it right (the bootstrap's per-sample score)
    labels = np.array([label for _, label in val.samples])
    np.testing.assert_array_equal(records["top1_1pct"]["per_sample"],
                                  (clf.predict(prep(feats(val))) == labels).astype(np.float32))
    # over the 3 splits of k shots: the fraction of splits right, whose mean is the reported mean
    fractions = records["top1_5shot_mean"]["per_sample"]
    assert set(np.round(3 * fractions, 6)) <= {0.0, 1.0, 2.0, 3.0}
    assert 100 * fractions.mean() == pytest.approx(records["top1_5shot_mean"]["value"], rel=1e-6)
    assert "per_sample" not in records["top1_5shot_std"]
