#!/usr/bin/env bash
# Build llama.cpp's llama-server and llama-quantize from the PyPI sdist of llama-cpp-python
# (its vendor/llama.cpp), for side-by-side benchmarks. Output: third_party/llama.cpp/bin/ (ignored by git).
# Usage: scripts/build_llama_cpp.sh [python]   (default python: .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${1:-.venv/bin/python}
VERSION=0.3.36
ROOT=third_party/llama.cpp
mkdir -p "$ROOT"
if [ ! -d "$ROOT/src" ]; then
  "$PYTHON" -m pip download --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$ROOT/sdist" --quiet
  tar -xzf "$ROOT"/sdist/llama_cpp_python-$VERSION.tar.gz -C "$ROOT/sdist"
  mv "$ROOT/sdist/llama_cpp_python-$VERSION/vendor/llama.cpp" "$ROOT/src"
fi
# The web UI build wants a download, so it is off; Release, tuned for this CPU.
cmake -S "$ROOT/src" -B "$ROOT/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON > "$ROOT/cmake.log"
cmake --build "$ROOT/build" --config Release -j "$(nproc)" --target llama-server llama-quantize
mkdir -p "$ROOT/bin"
cp "$ROOT"/build/bin/llama-server "$ROOT"/build/bin/llama-quantize "$ROOT/bin/"
echo "built: $ROOT/bin/llama-server $ROOT/bin/llama-quantize"

# The default model as llama.cpp's BF16 (its fastest at 16-32 sequences after Q4_0), for fair comparisons.
MODEL=$("$PYTHON" -c "from polyhead.models.registry import resolve_model_path; print(resolve_model_path(None))")
mkdir -p third_party/models
"$ROOT/bin/llama-quantize" --allow-requantize "$MODEL" third_party/models/SmolLM2-135M-Instruct-BF16.gguf BF16 \
  > "$ROOT/quantize.log" 2>&1
echo "converted: third_party/models/SmolLM2-135M-Instruct-BF16.gguf"
