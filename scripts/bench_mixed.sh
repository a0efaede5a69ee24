#!/usr/bin/env bash
# Mixed workload, one run, same machine, same load: polyhead serve --tasks default (chat, classify and
# embed on one server) vs the two-system set-up a user would otherwise deploy on the same cores:
# llama-server (BF16, --parallel = chat streams) for chat + scripts/two_system_server.py
# (transformers + sentence-transformers) for classify and embeddings, both running at once.
# Needs scripts/build_llama_cpp.sh first. Results: bench-results/mixed-*.json, mixed.png.
# Usage: scripts/bench_mixed.sh [duration s] [chat streams] [classify/s] [embed/s]
set -uo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-60}
STREAMS=${2:-8}
CLASSIFY_RATE=${3:-2}
EMBED_RATE=${4:-4}
PY=${PY:-.venv/bin/python}
LLAMA_SERVER=${LLAMA_SERVER:-third_party/llama.cpp/bin/llama-server}
BF16=${BF16:-third_party/models/SmolLM2-135M-Instruct-BF16.gguf}
OUT=bench-results
mkdir -p "$OUT"
P1=18441
P2=18442
LOAD=(--duration "$DURATION" --chat-streams "$STREAMS" --classify-rate "$CLASSIFY_RATE" --embed-rate "$EMBED_RATE")

wait_healthy() {  # url, seconds
  for _ in $(seq 1 "$2"); do curl -sf "$1/health" > /dev/null && return 0; sleep 1; done
  echo "server at $1 did not become healthy" >&2; return 1
}

stop() { for pid in "$@"; do kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done; }

# (a) polyhead: one process, two backbones (SmolLM2 for chat + zero-shot classify, MiniLM for embed)
"$PY" -m polyhead.cli serve --tasks default --port $P1 > "$OUT/mixed-polyhead.log" 2>&1 &
POLY=$!
if wait_healthy "http://127.0.0.1:$P1" 300; then
  "$PY" -m polyhead.cli bench mixed --url "http://127.0.0.1:$P1" --label polyhead "${LOAD[@]}" \
    --json "$OUT/mixed-polyhead.json"
fi
stop $POLY

# (b) two systems on the same cores: llama-server for chat, transformers for classify/embed; once
# each with every core (what each does by default: they contend) and once with the cores split
two_system() {  # label, llama-server threads, transformers threads
  "$LLAMA_SERVER" -m "$BF16" --port $P1 --parallel "$STREAMS" -c $((STREAMS * 512)) -t "$2" --no-webui \
    > "$OUT/mixed-llama-server-$2.log" 2>&1 &
  local llama=$!
  "$PY" scripts/two_system_server.py --port $P2 --threads "$3" > "$OUT/mixed-transformers-$3.log" 2>&1 &
  local transformers=$!
  if wait_healthy "http://127.0.0.1:$P1" 180 && wait_healthy "http://127.0.0.1:$P2" 300; then
    "$PY" -m polyhead.cli bench mixed --chat-url "http://127.0.0.1:$P1" --task-url "http://127.0.0.1:$P2" \
      --label "$1" "${LOAD[@]}" --json "$OUT/mixed-two-system-$2-$3.json"
  fi
  stop $llama $transformers
}
CORES=$(nproc)
two_system "llama-server + transformers ($CORES+$CORES threads)" "$CORES" "$CORES"
HALF=$((CORES / 2 > 0 ? CORES / 2 : 1))
two_system "llama-server + transformers ($HALF+$HALF threads)" "$HALF" "$HALF"

"$PY" -m polyhead.cli bench mixed --compare "$OUT/mixed-polyhead.json" "$OUT/mixed-two-system-$CORES-$CORES.json" \
  "$OUT/mixed-two-system-$HALF-$HALF.json" --plot "$OUT/mixed.png"
