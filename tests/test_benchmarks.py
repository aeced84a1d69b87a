"""Benchmarks refuse too little data with one line and exit 2; the k-NN benchmark's DINO baseline
(eval_knn.py's algorithm) and our k-NN predict the same classes; a memory rise too small to be
true is flagged."""

import numpy as np
import torch
from test_protocols_common import make_imagefolder

from ssl_bench.benchmarks import knn as bench_knn
from ssl_bench.benchmarks.knn import dino_knn
from ssl_bench.cli import main
from ssl_bench.protocols.knn import knn_predict


def test_bench_data_refuses_data_smaller_than_its_batches(tmp_path, capsys):
    data = make_imagefolder(tmp_path / "d", classes=2, train=3, val=1)  # 6 training images
    assert main(["bench", "data", "--data", str(data), "--batches", "2", "--batch-size", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "6 images, but this benchmark needs at least 16" in err[0]


def test_bench_eval_refuses_tiny_data(tmp_path, capsys):
    data = make_imagefolder(tmp_path / "d", classes=2, train=3, val=1)
    assert main(["bench", "eval", "--checkpoint", "random:vit_tiny_patch16_224", "--data", str(data)]) == 2
    assert "6 images, but this benchmark needs at least 256" in capsys.readouterr().err


def test_dino_baseline_and_ours_predict_the_same_classes():
    rng = np.random.default_rng(0)
    train = rng.standard_normal((300, 16)).astype(np.float32)
    labels = rng.integers(0, 7, 300)
    test = rng.standard_normal((200, 16)).astype(np.float32)
    ours = knn_predict(train, labels, test, 7, ks=[5, 20], temperature=0.07)
    norm = torch.nn.functional.normalize
    for k in (5, 20):
        dino = dino_knn(norm(torch.from_numpy(train), dim=1), torch.from_numpy(labels),
                        norm(torch.from_numpy(test), dim=1), k, 0.07, 7)
        np.testing.assert_array_equal(ours[k][:, 0], dino[:, 0].numpy())


def test_bench_knn_flags_a_rise_below_the_normalised_training_copy(monkeypatch, capsys):
    # every run reports a rise of 0 bytes, as when memory freed during a run hides its peak
    monkeypatch.setattr(bench_knn, "measured", lambda fn: (1.0, 0, fn()))
    assert main(["bench", "knn", "--sizes", "500", "--queries", "50", "--dim", "1024", "--classes", "5",
                 "--ks", "5", "--skip-extraction"]) == 0
    out = capsys.readouterr().out
    # 500 x 1024 float32 = 2,048,000 bytes, 2 MB when rounded
    assert "warning\tN = 500: ours rose by 0 MB in a repeat, less than the 2 MB normalised training copy" in out


def test_bench_knn_memory_rise_counts_allocations_that_reuse_memory_an_earlier_run_freed():
    # 64 MB in 64 KB blocks from the allocator's heap, freed below a block still in use, so the
    # freed memory stays resident; the measured run then allocates 8 MB in blocks of that size,
    # which glibc would place in the freed, still resident memory: a rise of 0 without the release
    blocks = [np.ones(16384, np.float32) for _ in range(1000)]
    pinned = np.ones(16384, np.float32)
    del blocks
    _, rise, _ = bench_knn.measured(lambda: [np.ones(16384, np.float32) for _ in range(128)])
    assert rise >= 6 * 2 ** 20  # about 8 MB; a few pages may already be resident
    assert pinned.sum() == 16384
