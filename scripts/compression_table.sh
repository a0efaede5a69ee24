#!/usr/bin/env bash
# The compression table: size, speed, perplexity and greedy agreement of polyhead's weight formats next
# to llama.cpp's, on this machine, in one run. Writes bench-results/compression.md (the per-run JSON and
# logs beside it in bench-results/compression/). Needs scripts/build_llama_cpp.sh run first for the
# llama.cpp rows.
#
# Usage: scripts/compression_table.sh [PRUNED_FOLDER ...]   (each folder adds a row, measured as stored)
# Env:   PYTHON      interpreter with polyhead installed (default: .venv/bin/python)
#        THREADS     threads for every run (default: 2)
#        ROWS        polyhead rows (default: "fp32 bf16 int8 int4-g32 int4-g128 auto"; bf16 is skipped on
#                    a CPU without native bf16; auto = the shipped Q4_1 kept quantized; also int8-channel,
#                    and int8-fp32 / auto-fp32: float32 activations, for agreement without bf16's rounding)
#        LLAMA_ROWS  llama.cpp conversions (default: "Q4_0 Q8_0 Q4_1"; F32 and BF16 exist too)
#        OUT         the markdown file (default: bench-results/compression.md)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
THREADS=${THREADS:-2}
ROWS=${ROWS:-fp32 bf16 int8 int4-g32 int4-g128 auto}
LLAMA_ROWS=${LLAMA_ROWS:-Q4_0 Q8_0 Q4_1}
OUT=${OUT:-bench-results/compression.md}
RAW=$(dirname "$OUT")/compression
LLAMA=third_party/llama.cpp/bin
MODELS=third_party/models
TEXT=polyhead/bench/data/heldout.txt
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
PH="$PYTHON -m polyhead.cli"
mkdir -p "$RAW"
rm -f "$RAW"/*.json "$RAW"/*.log "$RAW"/*.size
: > "$RAW/commands.txt"
uptime > "$RAW/load-start.txt"

run() {  # run LOG COMMAND...: record the command, run it, keep its output in LOG
  local log=$1
  shift
  echo "$*" >> "$RAW/commands.txt"
  echo "+ $*" >&2
  if ! "$@" > "$log" 2>&1; then
    echo "failed: $* (output: $log)" >&2
    tail -20 "$log" >&2
    return 1
  fi
}

options() {  # the engine options of a polyhead row
  case $1 in
    fp32) echo "--dtype float32 --quantization none" ;;
    bf16) echo "--dtype bfloat16 --quantization none" ;;
    int8) echo "--dtype auto --quantization int8 --group-size 32" ;;
    int8-channel) echo "--dtype auto --quantization int8 --group-size channel" ;;
    int8-fp32) echo "--dtype float32 --quantization int8 --group-size 32" ;;
    auto-fp32) echo "--dtype float32 --quantization auto" ;;
    int4-g32) echo "--dtype auto --quantization int4 --group-size 32" ;;
    int4-g128) echo "--dtype auto --quantization int4 --group-size 128" ;;
    auto) echo "--dtype auto --quantization auto" ;;
    *) echo "unknown row $1 (rows: fp32 bf16 int8 int8-channel int8-fp32 int4-g32 int4-g128 auto auto-fp32)" >&2
       return 1 ;;
  esac
}

measure_polyhead() {  # measure_polyhead NAME OPTIONS...
  local name=$1
  shift
  # shellcheck disable=SC2086
  run "$RAW/$name-offline.log" $PH bench offline "$@" --concurrency 1,8,32 --input-len 32 --output-len 128 \
    --kv-cache-memory 512MiB --threads "$THREADS" --skip-transformers --json "$RAW/$name-offline.json"
  # shellcheck disable=SC2086
  run "$RAW/$name-perplexity.log" $PH bench perplexity "$@" --ctx 512 --threads "$THREADS" \
    --json "$RAW/$name-perplexity.json"
  # shellcheck disable=SC2086
  run "$RAW/$name-agreement.log" $PH bench agreement "$@" --prompts 20 --tokens 64 --threads "$THREADS" \
    --json "$RAW/$name-agreement.json"
}

has_bf16=$(grep -qwE 'avx512_bf16|amx_bf16' /proc/cpuinfo && echo 1 || echo 0)
for row in $ROWS; do
  if [ "$row" = bf16 ] && [ "$has_bf16" = 0 ]; then
    echo "skipping bf16: this CPU has no native bf16" >&2
    continue
  fi
  # shellcheck disable=SC2046
  measure_polyhead "$row" $(options "$row")
  if [ "$row" = auto ]; then  # the only polyhead row stored as it runs: the shipped GGUF
    model=$("$PYTHON" -c "from polyhead.models.registry import resolve_model_path; print(resolve_model_path(None))")
    stat -L -c %s "$model" > "$RAW/$row.size"
  fi
done
for folder in "$@"; do
  name=pruned-$(basename "$folder")
  measure_polyhead "$name" --model "$folder" --dtype auto --quantization auto --reference-model SmolLM2-135M-Instruct
  du -sbL "$folder" | cut -f1 > "$RAW/$name.size"
done

for quant in $LLAMA_ROWS; do
  gguf=$MODELS/SmolLM2-135M-Instruct-$quant.gguf
  [ -e "$gguf" ] || { echo "$gguf is missing: run scripts/build_llama_cpp.sh" >&2; exit 1; }
  # 32 sequences x (32 + 128) tokens fit in -c 8192; generated tokens / total time, as bench offline counts
  run "$RAW/llama-$quant-batched.log" "$LLAMA/llama-batched-bench" -m "$gguf" -c 8192 -b 2048 -ub 512 \
    -npp 32 -ntg 128 -npl 1,8,32 -t "$THREADS" --output-format jsonl
  run "$RAW/llama-$quant-perplexity.log" "$LLAMA/llama-perplexity" -m "$gguf" -f "$TEXT" -c 512 -t "$THREADS"
  stat -L -c %s "$gguf" > "$RAW/llama-$quant.size"
done
uptime > "$RAW/load-end.txt"

"$PYTHON" - "$RAW" "$OUT" "$ROWS" "$LLAMA_ROWS" "$@" <<'EOF'
import json, os, re, subprocess, sys
from datetime import date
from pathlib import Path

import torch

raw, out, rows, llama_rows, pruned = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3].split(), sys.argv[4].split(), sys.argv[5:]
names = [r for r in rows if (raw / f"{r}-offline.json").exists()] + [f"pruned-{Path(p).name}" for p in pruned]


def load(name):
    path = raw / name
    return json.loads(path.read_text()) if path.exists() else None


def size_mb(name):
    path = raw / f"{name}.size"
    return f"{int(path.read_text()) / 1e6:.1f}" if path.exists() else "-"


lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
cpu = re.search(r"Model name:\s*(.+)", lscpu).group(1).strip()
flags = set(re.search(r"Flags:\s*(.+)", lscpu).group(1).split())
simd = [f for f in ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8") if f in flags]
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
lines = [
    "# Compression table",
    "",
    f"- Machine: {cpu}, {os.cpu_count()} cores"
    f" ({', '.join(simd) or 'no AVX2'}); torch {torch.__version__}; llama.cpp from the llama-cpp-python 0.3.36 sdist.",
    f"- Date: {date.today()}; polyhead {commit}. Load average at the start: "
    f"{(raw / 'load-start.txt').read_text().split('load average:')[1].strip()}, at the end: "
    f"{(raw / 'load-end.txt').read_text().split('load average:')[1].strip()} (the machine may be shared).",
    "- tok/s: N sequences of 32 prompt tokens each generating 128 (EOS ignored), all at once; generated tokens"
    " / wall time, prefill included (llama-batched-bench: pl * tg / t).",
    "- Perplexity: polyhead/bench/data/heldout.txt (~5,100 tokens of English written for the project), chunks of"
    " 512 tokens, second half of each scored (llama-perplexity's method; `polyhead bench perplexity` follows it).",
    "- Agreement: mean common prefix (min / median) of 64 greedy tokens against polyhead float32, 20 prompts.",
    "- File: the stored model (the shipped GGUF, a conversion, a pruned folder); rows quantized at load have none."
    " Tensors: bytes the served model holds (oneDNN-packed copies included). RSS: the process after bench offline"
    " (512 MiB KV cache, allocated up front).",
    "",
    "| row | engine options | file MB | tensors MB | RSS MB | tok/s @1 | @8 | @32 | perplexity | agreement (of 64) |",
    "|---|---|---|---|---|---|---|---|---|---|",
]
for name in names:
    offline, ppl, agree = load(f"{name}-offline.json"), load(f"{name}-perplexity.json"), load(f"{name}-agreement.json")
    a = offline["args"]
    opts = f"{a['dtype']}, {a['quantization']}" + (f" G{a['group_size']}" if a["quantization"] == "int4" else "")
    speeds = {r["concurrency"]: f"{r['polyhead_tok_s']:.1f}" for r in offline["rows"]}
    lines.append(f"| polyhead {name} | {opts} | {size_mb(name)} | {ppl['weight_bytes'] / 1e6:.1f} | "
                 f"{offline['rss_bytes'] / 2**20:.0f} | {speeds.get(1, '-')} | {speeds.get(8, '-')} | {speeds.get(32, '-')} | "
                 f"{ppl['perplexity']:.4f} | {agree['mean']:.1f} ({agree['min']} / {agree['median']:g}) |")
for quant in llama_rows:
    bench = [json.loads(line) for line in (raw / f"llama-{quant}-batched.log").read_text().splitlines()
             if line.startswith("{")]
    speeds = {b["pl"]: f"{b['pl'] * b['tg'] / b['t']:.1f}" for b in bench}
    match = re.search(r"Final estimate: PPL = ([\d.]+) \+/- ([\d.]+)", (raw / f"llama-{quant}-perplexity.log").read_text())
    ppl = f"{float(match.group(1)):.4f} ± {float(match.group(2)):.2f}" if match else "-"
    lines.append(f"| llama.cpp {quant} | -t {bench[0]['n_threads'] if bench else '-'} | {size_mb(f'llama-{quant}')} | - | - | "
                 f"{speeds.get(1, '-')} | {speeds.get(8, '-')} | {speeds.get(32, '-')} | {ppl} | - |")
lines += ["", "Commands, in the order they ran:", "", "```", *(raw / "commands.txt").read_text().splitlines(), "```", ""]
out.write_text("\n".join(lines))
print(f"wrote {out}")
EOF
