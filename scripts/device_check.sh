#!/usr/bin/env bash
# One-accelerator check: the device tests (pytest -m device), then each ViT method (MSN, ConMIM,
# SiameseIM, MMC) trained for a time budget on the embedded data at ViT-S/16 (plain patch
# embedding, 96 px, bf16), each followed by k-NN (protocols/knn_dino_tiny.yaml at the same size)
# against random init of the same architecture read as the method reads its checkpoint (feature,
# final norm, input filter); prints one Markdown table.
#
# Usage: scripts/device_check.sh [--seconds 60] [--device cuda] [--data sb-data] [--out runs/device_check]
#            [--arch vit_small_patch16_224] [--img-size 96] [--batch-size 128] [--epochs 5] [--workers 8]
#            [--python .venv/bin/python] [--tests PYTEST_K_EXPRESSION]
# --seconds is each method's training budget (engine key max_train_seconds); --epochs sets the length
# the lr / momentum schedules span. With the defaults one GPU needs about 7-8 minutes: the tests, four
# times (model start-up + 60 s + k-NN), the random baselines. Tested on CPU with a tiny budget
# (tests/test_device_check.py).
set -euo pipefail

seconds=60 device=cuda data=sb-data out=runs/device_check arch=vit_small_patch16_224
img=96 batch=128 epochs=5 workers=8 python=.venv/bin/python tests=""
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds=$2 ;; --device) device=$2 ;; --data) data=$2 ;; --out) out=$2 ;;
    --arch) arch=$2 ;; --img-size) img=$2 ;; --batch-size) batch=$2 ;; --epochs) epochs=$2 ;;
    --workers) workers=$2 ;; --python) python=$2 ;; --tests) tests=$2 ;;
    *) echo "device_check.sh: unknown option $1 (see the header of this script)" >&2; exit 2 ;;
  esac
  shift 2
done
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
sb() { "$python" -m ssl_bench.cli --quiet "$@"; }

if [ ! -e "$data" ]; then
  sb data prepare --root "$data" --profile demo
fi
echo "== device tests on $device"
SSL_BENCH_TEST_DEVICE="$device" "$python" -m pytest -q -p no:cacheprovider -m device tests/test_device.py ${tests:+-k "$tests"}

results="$out/results"
grid=$((img / 16))
half=$((img / 2))
knn=(--protocol knn --recipe protocols/knn_dino_tiny.yaml --data "$data" --results "$results" --device "$device"
     --set "transform.resize=$((img * 8 / 7))" --set "transform.crop=$img")
for method in msn conmim siameseim mmc; do
  case $method in  # sizes the tiny recipes give at 64 px, scaled to $img
    msn) extra=(--set "msn.rand_size=$img" --set "msn.focal_size=$half") ;;
    siameseim) extra=(--set "siameseim.num_masking_patches=$(( (grid * grid * 118 + 98) / 196 ))") ;;
    mmc) extra=(--set "mmc.local_size=$half") ;;
    *) extra=() ;;
  esac
  echo "== $method: $seconds s of pretraining at $arch, $img px, bf16"
  sb pretrain --recipe "pretrain/${method}_tiny.yaml" --out "$out/$method" --device "$device" \
    --set "backbone.arch=$arch" --set "backbone.img_size=$img" --set "data.root=$data" \
    --set "data.batch_size=$batch" --set "data.num_workers=$workers" --set precision=bf16 \
    --set "optim.epochs=$epochs" --set "max_train_seconds=$seconds" --set checkpoint.every_steps=0 \
    --set log.every_steps=1 "${extra[@]}" >/dev/null
  sb eval "${knn[@]}" --checkpoint "$out/$method" >/dev/null
done
sb eval "${knn[@]}" --checkpoint "random:$arch" >/dev/null
# the baseline also read as each method reads its checkpoint (feature, final norm, input filter),
# as make demo does: a method is compared with random weights and nothing else
"$python" - "$out" > "$out/matched_baselines.txt" <<'EOF'
import sys
from pathlib import Path
from ssl_bench.checkpoints import load_spec
from ssl_bench.demo import matched_baselines

runs = [str(Path(sys.argv[1]) / method) for method in ("msn", "conmim", "siameseim", "mmc")]
for _, sets in matched_baselines(runs, lambda spec: load_spec(spec).eval):
    print(" ".join(f"--set {item}" for item in sets))
EOF
while read -r -a sets; do
  sb eval "${knn[@]}" --checkpoint "random:$arch" "${sets[@]}" >/dev/null
done < "$out/matched_baselines.txt"

"$python" - "$out" "$results" "$arch" <<'EOF'
import json, statistics, sys
from pathlib import Path
from ssl_bench.checkpoints import load_spec
from ssl_bench.results import feature_variant, load_results

out, results, arch = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
table = load_results(results)
knn = table[(table.protocol == "knn") & (table.metric == "top1_k20")]

def top1(sha256, features=""):
    rows = knn[(knn.checkpoint_sha256 == sha256) & (knn.features == features)].sort_values("timestamp")
    return float(rows.value.iloc[-1]) if len(rows) else float("nan")

random_reads = load_spec(f"random:{arch}").eval
print(f"\n| method | steps | train s | img/s (median) | k-NN top-1 (k=20) | random:{arch}, read alike | delta |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for method in ("msn", "conmim", "siameseim", "mmc"):
    meta = json.loads((out / method / "checkpoint.json").read_text())
    log = [json.loads(line) for line in (out / method / "train_log.jsonl").read_text().splitlines() if line.strip()]
    batch = meta["recipe"]["data"]["batch_size"]
    seconds = sum(batch / row["img_s"] for row in log)
    value = top1(meta["weights"]["sha256"])
    base = top1(f"random:{arch}:seed0", feature_variant(meta["eval"], random_reads))
    print(f"| {method} | {meta['step']} | {seconds:.0f} | {statistics.median(r['img_s'] for r in log):.0f} "
          f"| {value:.1f} | {base:.1f} | {value - base:+.1f} |")
EOF
