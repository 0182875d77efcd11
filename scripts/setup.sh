#!/usr/bin/env bash
# Installs what moe.cpp needs from Debian's packages (non-interactive, idempotent).
set -euo pipefail
PKGS=(build-essential cmake pkg-config libopenblas-openmp-dev libopenblas0-openmp libgtest-dev
      libgmock-dev libbenchmark-dev libcli11-dev nlohmann-json3-dev libfmt-dev libsentencepiece-dev
      sentencepiece python3 python3-torch python3-numpy gnuplot-nox
      clang-14 libclang-rt-14-dev libomp-14-dev)  # the last three: the fuzzers (tests only)
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
