#!/usr/bin/env bash
# Soak test (not in CI): `polyhead serve --tasks default` under mixed chat / classify / embed load at
# ~70% of capacity, with random client disconnects, for HOURS; every minute the RSS of every process,
# the KV-cache use and each kind's p99 go to bench-results/soak.csv, and the series to soak.png.
# Usage: scripts/soak.sh [HOURS] [extra scripts/soak.py flags]
set -uo pipefail
cd "$(dirname "$0")/.."
HOURS=${1:-1}
shift || true
PY=${PY:-.venv/bin/python}
PORT=${PORT:-18450}
OUT=bench-results
mkdir -p "$OUT"
"$PY" -m polyhead.cli serve --tasks default --port "$PORT" > "$OUT/soak-server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null' EXIT
for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$PORT/health" > /dev/null && break; sleep 1; done
"$PY" scripts/soak.py --url "http://127.0.0.1:$PORT" --server-pid "$SERVER" --hours "$HOURS" \
  --csv "$OUT/soak.csv" --plot "$OUT/soak.png" "$@"
