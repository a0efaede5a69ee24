#!/usr/bin/env bash
# Side-by-side serving benchmark, one run, same machine, same prompts: polyhead vs llama.cpp's
# llama-server (BF16 and the shipped Q4_1, --parallel 32) vs `transformers serve` where it runs.
# Needs scripts/build_llama_cpp.sh first. Results: bench-results/serve-*.json and .png.
# Usage: scripts/bench_serving.sh [concurrency list] [num requests per level]   (PYTHON=... picks the venv)
# llama-server's flags are its best of a sweep at 32 clients (BENCHMARKS.md): 32 slots of 512 tokens,
# flash attention auto, per-slot KV (-kvu halved its throughput), default batch 2048 / ubatch 512.
set -uo pipefail
cd "$(dirname "$0")/.."
CONCURRENCY=${1:-1,4,16,32}
NUM=${2:-64}
PY=${PYTHON:-.venv/bin/python}
BIN=$(dirname "$PY")
OUT=bench-results
mkdir -p "$OUT"
Q4=$("$PY" -c "from polyhead.models.registry import resolve_model_path; print(resolve_model_path(None))")
BF16=third_party/models/SmolLM2-135M-Instruct-BF16.gguf
PORT=${PORT:-18431}  # a free local port; set PORT when another server holds this one

wait_healthy() {  # url, seconds
  for _ in $(seq 1 "$2"); do curl -sf "$1/health" > /dev/null && return 0; sleep 1; done
  echo "server at $1 did not become healthy" >&2; return 1
}

run() {  # label, then the server command
  local label=$1; shift
  "$@" > "$OUT/serve-$label.log" 2>&1 &
  local pid=$!
  if wait_healthy "http://127.0.0.1:$PORT" 180; then
    "$PY" -m polyhead.cli bench serve --url "http://127.0.0.1:$PORT" --label "$label" --concurrency "$CONCURRENCY" \
      --num-requests "$NUM" --input-len 32 --output-len 128 \
      --json "$OUT/serve-$label.json" --plot "$OUT/serve-$label.png"
  fi
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
}

run polyhead "$PY" -m polyhead.cli serve --port $PORT  # the engine in a child process (--engine-mode process)
run llama-server-bf16-p32 third_party/llama.cpp/bin/llama-server -m "$BF16" --port $PORT --parallel 32 \
  -c $((32 * 512)) -t "$(nproc)" --no-webui
run llama-server-q4_1-p32 third_party/llama.cpp/bin/llama-server -m "$Q4" --port $PORT --parallel 32 \
  -c $((32 * 512)) -t "$(nproc)" --no-webui
# transformers serve needs an HF folder with `architectures`: polyhead's cached conversion of the GGUF.
HF_FOLDER=$("$PY" -c "from polyhead.models.loader import gguf_to_hf_folder; from polyhead.models.registry \
import resolve_model_path; print(gguf_to_hf_folder(resolve_model_path(None)))")
run transformers-serve-cb "$BIN/transformers" serve "$HF_FOLDER" --port $PORT --host 127.0.0.1 \
  --continuous-batching --dtype bfloat16 --device cpu
