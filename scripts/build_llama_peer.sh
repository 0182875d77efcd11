#!/bin/bash
# Builds bench/peers/llama_peer (llama.cpp as the inference peer) against a llama.cpp checkout
# that lives OUTSIDE this repository and is already built (its build/bin/libllama.so):
#   scripts/build_llama_peer.sh /path/to/llama.cpp [OUT_DIR]
# Build llama.cpp itself first, e.g.
#   cmake -S LLAMA -B LLAMA/build -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
#         -DGGML_OPENMP=ON && cmake --build LLAMA/build -j2 --target llama llama-quantize
# Nothing is downloaded. Without a checkout (no argument, no LLAMA_CPP_DIR) it says so and
# exits 0: the peer is optional and the test gguf_vs_llamacpp skips.
set -euo pipefail
LLAMA="${1:-${LLAMA_CPP_DIR:-}}"
HERE="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${2:-$LLAMA/build/bin}"
if [ -z "$LLAMA" ] || [ ! -f "$LLAMA/include/llama.h" ]; then
    echo "build_llama_peer: no llama.cpp checkout (give its path or set LLAMA_CPP_DIR); skipped"
    exit 0
fi
LIB="$(dirname "$(find "$LLAMA/build" -name 'libllama.so' -print -quit 2>/dev/null || true)")"
if [ -z "$LIB" ] || [ ! -f "$LIB/libllama.so" ]; then
    echo "build_llama_peer: $LLAMA is not built (no libllama.so under build/); build it first"
    exit 1
fi
mkdir -p "$OUT"
c++ -O2 -std=c++17 "$HERE/bench/peers/llama_peer.cpp" -I"$LLAMA/include" -I"$LLAMA/ggml/include" \
    -L"$LIB" -lllama -lggml -lggml-base -Wl,-rpath,"$LIB" -o "$OUT/llama_peer"
echo "build_llama_peer: $OUT/llama_peer"
