#!/usr/bin/env bash
# Optional OpenMMLab stack for `--set backend=mmseg` / `--set backend=mmdet`:
# mmcv 2.1.0 built from its source release, then mmengine, mmsegmentation and mmdet.
#
# Usage: scripts/install_openmmlab.sh [PYTHON]     (default: .venv/bin/python)
#
# Why a source build: mmseg 1.2.2 and mmdet 3.3.0 accept only
# mmcv >= 2.0.0rc4, < 2.2.0; full mmcv 2.x (with the compiled ops mmseg/mmdet import) exists
# only as a source release, and mmcv-lite lacks mmcv._ext. Two build conditions:
#   1. --no-build-isolation in an environment holding torch and setuptools<81 (mmcv's
#      setup.py imports pkg_resources; mmengine's config loading needs it at run time too);
#   2. its hard-coded -std=c++17 becomes -std=c++20 (torch 2.14's headers need C++20).
# The wheel is built once and cached under .cache/openmmlab/<python tag>-torch<version>/
# (gitignored): a wheel is only valid for the exact torch it was built against, so a new
# torch gets a new cache folder, and a rerun with the same torch installs from the cache
# in seconds. The build takes ~7-10 minutes on 2 cores; set MAX_JOBS to change its
# parallelism (default: all cores).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${1:-.venv/bin/python}
MMCV_VERSION=2.1.0
MMENGINE_VERSION=0.10.7
MMSEG_VERSION=1.2.2
MMDET_VERSION=3.3.0
PIP=("$PY" -m pip --disable-pip-version-check)

"$PY" -c 'import torch' 2>/dev/null || {
    echo "install_openmmlab: $PY has no torch; install ssl-bench first (make install)" >&2; exit 2; }
TAG=$("$PY" -c 'import sys, torch; print(f"cp{sys.version_info[0]}{sys.version_info[1]}-torch{torch.__version__}")')
CACHE=.cache/openmmlab/$TAG
mkdir -p "$CACHE"

echo "install_openmmlab: setuptools<81 and ninja into $PY"
"${PIP[@]}" install --quiet 'setuptools<81' ninja

WHEEL=$(ls "$CACHE"/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -n1 || true)
if [[ -z "$WHEEL" ]]; then
    WORK=$(mktemp -d)
    trap 'rm -rf "$WORK"' EXIT
    echo "install_openmmlab: building mmcv $MMCV_VERSION from source for $TAG (7-10 min on 2 cores)"
    "${PIP[@]}" download --quiet --no-deps --no-binary :all: --no-build-isolation \
        "mmcv==$MMCV_VERSION" -d "$WORK"
    tar -xzf "$WORK/mmcv-$MMCV_VERSION.tar.gz" -C "$WORK"
    SRC=$WORK/mmcv-$MMCV_VERSION
    sed -i "s/'-std=c++17'/'-std=c++20'/g" "$SRC/setup.py"
    if grep -q "'-std=c++17'" "$SRC/setup.py" || ! grep -q "'-std=c++20'" "$SRC/setup.py"; then
        echo "install_openmmlab: could not switch mmcv's C++ standard to c++20 in $SRC/setup.py" >&2
        exit 1
    fi
    MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS=${MAX_JOBS:-$(nproc)} \
        "${PIP[@]}" wheel --no-build-isolation --no-deps -w "$WORK/dist" "$SRC"
    # move into the cache only when complete, so an interrupted build is never reused
    mv "$WORK"/dist/mmcv-"$MMCV_VERSION"-*.whl "$CACHE"/
    WHEEL=$(ls "$CACHE"/mmcv-"$MMCV_VERSION"-*.whl | head -n1)
else
    echo "install_openmmlab: using cached $WHEEL"
fi

echo "install_openmmlab: installing $(basename "$WHEEL"), mmengine, mmsegmentation, mmdet"
# ftfy and regex: mmseg.utils imports its text tokenizer (ftfy) unconditionally, though they are
# listed only among mmseg's multimodal requirements
"${PIP[@]}" install --quiet "$WHEEL" "mmengine==$MMENGINE_VERSION" \
    "mmsegmentation==$MMSEG_VERSION" "mmdet==$MMDET_VERSION" 'setuptools<81' ftfy regex
"$PY" - <<'PY'
import mmcv, mmdet, mmengine, mmseg
from mmcv.ops import RoIAlign, nms  # noqa: F401  (the compiled ops)
import mmseg.models, mmdet.models  # noqa: F401
print(f"install_openmmlab: ok: mmcv {mmcv.__version__}, mmengine {mmengine.__version__}, "
      f"mmseg {mmseg.__version__}, mmdet {mmdet.__version__}")
PY
