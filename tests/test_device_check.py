"""scripts/device_check.sh on CPU with a tiny budget: it runs the device tests, trains the four ViT
methods for the budget, scores each and the random baseline with k-NN and prints one table whose
numbers are the stored results."""

from __future__ import annotations

import json
import subprocess
import sys

from test_engine import ENV, REPO
from test_protocols_common import make_imagefolder

from ssl_bench.results import load_results


def test_device_check_script_on_cpu(tmp_path):
    data = make_imagefolder(tmp_path / "data", classes=2, train=4, val=2, size=40)
    out = tmp_path / "check"
    run = subprocess.run(
        ["bash", str(REPO / "scripts" / "device_check.sh"), "--device", "cpu", "--seconds", "1", "--data", str(data),
         "--out", str(out), "--arch", "vit_tiny_patch16_224", "--img-size", "64", "--batch-size", "4",
         "--epochs", "1", "--workers", "0", "--python", sys.executable, "--tests", "vit_tiny_patch16_224"],
        env=ENV, capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "1 passed" in run.stdout  # the device test selected by --tests, on the CPU
    rows = [line for line in run.stdout.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| method | steps") and len(rows) == 2 + 4
    knn = load_results(out / "results")
    knn = knn[knn.metric == "top1_k20"]
    # the random baseline as stored: read its own way (cls) and as each method reads (MSN cls_prenorm,
    # ConMIM and MMC avgpool, SiameseIM avgpool without the final norm)
    reads = {}
    for path in (out / "results" / "knn").glob("*.json"):
        payload = json.loads(path.read_text())
        if payload["checkpoint"]["method"] == "random":
            record = next(r for r in payload["records"] if r["metric"] == "top1_k20")
            reads[(record["feature"], record["final_norm"])] = record["value"]
    assert sorted(reads) == [("avgpool", False), ("avgpool", True), ("cls", True), ("cls_prenorm", True)]
    for row, method in zip(rows[2:], ("msn", "conmim", "siameseim", "mmc")):
        cells = [c.strip() for c in row.strip("|").split("|")]
        meta = json.loads((out / method / "checkpoint.json").read_text())
        value = float(knn[knn.checkpoint_sha256 == meta["weights"]["sha256"]].value.iloc[0])
        base = reads[(meta["eval"]["feature"], meta["eval"]["final_norm"])]
        assert cells[0] == method and int(cells[1]) == meta["step"] >= 1
        assert float(cells[4]) == round(value, 1) and float(cells[5]) == round(base, 1)
        assert meta["recipe"]["max_train_seconds"] == 1 and meta["recipe"]["precision"] == "bf16"
