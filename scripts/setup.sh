#!/usr/bin/env bash
# Installs what moe.cpp needs from Debian's packages (non-interactive, idempotent), in groups:
#   ./scripts/setup.sh                       the main job: build, train, generate, report
#   MOE_WITH_TESTS=1 ./scripts/setup.sh      + what only the tests need (GoogleTest, the PyTorch
#                                            peers: python3-torch, numpy, python3-sentencepiece
#                                            for the tiny HF Mixtral tokenizer, libjemalloc2 for
#                                            the layer peer's allocator; the fuzzers: clang-14,
#                                            libclang-rt-14-dev, libomp-14-dev; OpenMPI:
#                                            openmpi-bin, libopenmpi-dev for the multi-process
#                                            build and its tests, docs/distributed.md)
#   MOE_WITH_BROWSER=1 (with MOE_WITH_TESTS) + chromium for the report's headless-browser test
set -euo pipefail
PKGS=(build-essential cmake pkg-config libopenblas-openmp-dev libopenblas0-openmp libcli11-dev
      nlohmann-json3-dev libfmt-dev libsentencepiece-dev sentencepiece python3 gnuplot-nox
      libpcre2-dev libicu-dev  # these two: Hugging Face tokenizers (docs/tokenizers.md)
      libdnnl-dev)  # oneDNN: bf16 GEMMs on CPUs with AVX-512 BF16 (docs/precision.md)
if [ "${MOE_WITH_TESTS:-0}" = 1 ]; then
  PKGS+=(libgtest-dev libgmock-dev libbenchmark-dev python3-torch python3-numpy python3-sentencepiece
        libjemalloc2  # the PyTorch layer peer's best environment (shared/ANCHORS.md; moe bench layer)
        clang-14 libclang-rt-14-dev libomp-14-dev  # these three: the fuzzers
        openmpi-bin libopenmpi-dev)  # MPI: optional for the build, needed by the mpi tests
fi
if [ "${MOE_WITH_BROWSER:-0}" = 1 ]; then PKGS+=(chromium); fi
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
