#!/usr/bin/env bash
# Build llama.cpp's llama-server, llama-quantize, llama-batched-bench and llama-perplexity from the
# PyPI sdist of llama-cpp-python (its vendor/llama.cpp), for side-by-side benchmarks, and convert the
# default model to llama.cpp's F32, BF16, Q8_0 and Q4_0 next to the shipped Q4_1.
# Output: third_party/llama.cpp/bin/ and third_party/models/ (both ignored by git).
# Usage: scripts/build_llama_cpp.sh [python]   (default python: .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${1:-.venv/bin/python}
VERSION=0.3.36
ROOT=third_party/llama.cpp
TOOLS="llama-server llama-quantize llama-batched-bench llama-perplexity"
mkdir -p "$ROOT"
if [ ! -d "$ROOT/src" ]; then
  "$PYTHON" -m pip download --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$ROOT/sdist" --quiet
  tar -xzf "$ROOT"/sdist/llama_cpp_python-$VERSION.tar.gz -C "$ROOT/sdist"
  mv "$ROOT/sdist/llama_cpp_python-$VERSION/vendor/llama.cpp" "$ROOT/src"
fi
# Some VMs list AMX in /proc/cpuinfo and grant its permission, yet fault on tile instructions
# (SIGILL in ggml's AMX int8 matmul for Q4_0/Q8_0). -march=native would turn AMX on; a probe decides.
NO_AMX=""
if grep -qw amx_tile /proc/cpuinfo; then
  probe=$(mktemp -d)
  cat > "$probe/amx.c" <<'EOF_C'
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(void) {
  if (syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */)) return 2;
  unsigned char config[64] = {1};  /* palette 1; tile 0: 16 rows of 64 bytes */
  config[16] = 64; config[48] = 16;
  _tile_loadconfig(config);
  _tile_zero(0);
  _tile_release();
  return 0;
}
EOF_C
  if ! { cc -O1 -mamx-tile -o "$probe/amx" "$probe/amx.c" && "$probe/amx"; } 2>/dev/null; then
    NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    echo "AMX is listed but does not run here: building without it"
  fi
  rm -rf "$probe"
fi
# The web UI build wants a download, so it is off; Release, tuned for this CPU. The tools
# (quantize, batched-bench, perplexity) sit under LLAMA_BUILD_TOOLS, the server under LLAMA_BUILD_SERVER.
cmake -S "$ROOT/src" -B "$ROOT/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
  -DCMAKE_C_FLAGS="$NO_AMX" -DCMAKE_CXX_FLAGS="$NO_AMX" \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON \
  > "$ROOT/cmake.log"
# shellcheck disable=SC2086
cmake --build "$ROOT/build" --config Release -j "$(nproc)" --target $TOOLS > "$ROOT/build.log" 2>&1 \
  || { tail -30 "$ROOT/build.log"; exit 1; }
mkdir -p "$ROOT/bin"
for tool in $TOOLS; do cp "$ROOT/build/bin/$tool" "$ROOT/bin/"; done
echo "built: $(for tool in $TOOLS; do printf '%s ' "$ROOT/bin/$tool"; done)"

# The default model (shipped as Q4_1) in llama.cpp's other formats, for the compression and speed tables.
# Requantizing from Q4_1 cannot restore what Q4_1 lost: every conversion holds Q4_1's values.
MODEL=$("$PYTHON" -c "from polyhead.models.registry import resolve_model_path; print(resolve_model_path(None))")
mkdir -p third_party/models
: > "$ROOT/quantize.log"
for type in F32 BF16 Q8_0 Q4_0; do
  out=third_party/models/SmolLM2-135M-Instruct-$type.gguf
  "$ROOT/bin/llama-quantize" --allow-requantize "$MODEL" "$out" "$type" >> "$ROOT/quantize.log" 2>&1
  echo "converted: $out"
done
ln -sf "$MODEL" third_party/models/SmolLM2-135M-Instruct-Q4_1.gguf
echo "linked: third_party/models/SmolLM2-135M-Instruct-Q4_1.gguf -> $MODEL"
