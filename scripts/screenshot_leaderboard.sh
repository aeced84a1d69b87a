#!/usr/bin/env bash
# Render the leaderboard HTML page in headless Chromium and save a screenshot (1400x1000).
#
# usage: scripts/screenshot_leaderboard.sh [--synthetic] [RESULTS_DIR] [OUT_PNG] [-- LEADERBOARD_ARGS...]
#   RESULTS_DIR   results store (default: results)
#   OUT_PNG       screenshot (default: leaderboards/screenshot.png); the page itself is temporary
#   --synthetic   use a made-up store (ssl_bench.leaderboard.synthetic) instead of RESULTS_DIR;
#                 the page title says so
#   after --      extra options for 'ssl-bench leaderboard' (default: --reported --baseline random)
# Needs Debian's chromium: apt-get update && apt-get install -y chromium
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}

synthetic=0
if [[ "${1:-}" == "--synthetic" ]]; then synthetic=1; shift; fi
results=results
out=leaderboards/screenshot.png
[[ $# -gt 0 && "$1" != "--" ]] && { results=$1; shift; }
[[ $# -gt 0 && "$1" != "--" ]] && { out=$1; shift; }
[[ "${1:-}" == "--" ]] && shift
extra=("$@")
[[ ${#extra[@]} -eq 0 ]] && extra=(--reported --baseline random)

chromium_bin=$(command -v chromium || command -v chromium-browser || true)
if [[ -z "$chromium_bin" ]]; then
    echo "screenshot_leaderboard: chromium not found; install it with:" \
         "apt-get update && apt-get install -y chromium" >&2
    exit 3
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
title="ssl-bench leaderboard"
if (( synthetic )); then
    results="$work/results"
    "$PY" -m ssl_bench.leaderboard.synthetic "$results" >/dev/null
    title="ssl-bench leaderboard - SYNTHETIC numbers (layout check only)"
fi
mkdir -p "$(dirname "$out")"
page="$work/leaderboard.html"
"$PY" -m ssl_bench.cli --quiet leaderboard --results "$results" --format html --out "$page" \
    --title "$title" "${extra[@]}"

out_abs="$(cd "$(dirname "$out")" && pwd)/$(basename "$out")"
rm -f "$out_abs"
"$chromium_bin" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$work/profile" --screenshot="$out_abs" --window-size=1400,1000 \
    "file://$page" >"$work/chromium.log" 2>&1 || { cat "$work/chromium.log" >&2; exit 4; }
if [[ ! -s "$out_abs" ]]; then
    echo "screenshot_leaderboard: chromium wrote no screenshot" >&2
    cat "$work/chromium.log" >&2
    exit 4
fi
echo "$out_abs"
