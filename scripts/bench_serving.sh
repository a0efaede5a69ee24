#!/usr/bin/env bash
# Side-by-side serving benchmark, one run, same machine, same prompts: polyhead vs llama.cpp's
# llama-server (BF16 and the shipped Q4_1, --parallel 32) vs `transformers serve` where it runs.
# Needs scripts/build_llama_cpp.sh first. Results: bench-results/serve-*.json and .png.
# Usage: scripts/bench_serving.sh [concurrency list] [num requests per level]   (PYTHON=... picks the venv)
# SERVERS picks the servers (default: "polyhead llama-server-bf16-p32 llama-server-q4_1-p32 transformers-serve-cb";
# also polyhead-float: polyhead with --quantization none, llama-server-q4_0-p32 and -q8_0-p32, which need the
# conversions scripts/build_llama_cpp.sh writes; polyhead-ray2: polyhead on Ray Serve, 2 replicas x 1 thread).
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

SERVERS=${SERVERS:-polyhead llama-server-bf16-p32 llama-server-q4_1-p32 transformers-serve-cb}
llama_server() {  # label, gguf
  run "$1" third_party/llama.cpp/bin/llama-server -m "$2" --port $PORT --parallel 32 -c $((32 * 512)) -t "$(nproc)" \
    --no-webui
}
for server in $SERVERS; do
  case $server in
    polyhead) run polyhead "$PY" -m polyhead.cli serve --port $PORT ;;  # the engine in a child process
    polyhead-float) run polyhead-float "$PY" -m polyhead.cli serve --port $PORT --quantization none ;;
    # Ray Serve: two replicas of one thread each behind polyhead's router (docs/scale-out.md)
    polyhead-ray2) RAY_USAGE_STATS_ENABLED=0 run polyhead-ray2 "$PY" -m polyhead.cli serve --port $PORT --replicas 2 \
      --threads 1 ;;
    llama-server-bf16-p32) llama_server "$server" "$BF16" ;;
    llama-server-q4_1-p32) llama_server "$server" "$Q4" ;;
    llama-server-q4_0-p32) llama_server "$server" third_party/models/SmolLM2-135M-Instruct-Q4_0.gguf ;;
    llama-server-q8_0-p32) llama_server "$server" third_party/models/SmolLM2-135M-Instruct-Q8_0.gguf ;;
    transformers-serve-cb)
      # transformers serve needs an HF folder with `architectures`: polyhead's cached conversion of the GGUF.
      HF_FOLDER=$("$PY" -c "from polyhead.models.loader import gguf_to_hf_folder; from polyhead.models.registry \
import resolve_model_path; print(gguf_to_hf_folder(resolve_model_path(None)))")
      run transformers-serve-cb "$BIN/transformers" serve "$HF_FOLDER" --port $PORT --host 127.0.0.1 \
        --continuous-batching --dtype bfloat16 --device cpu ;;
    *) echo "unknown server $server" >&2 ;;
  esac
done
