#!/usr/bin/env bash
# The test command: install dependencies, build Release, run every test (PyTorch peers included),
# then build with AddressSanitizer + UndefinedBehaviorSanitizer and run the unit tests again.
# MOE_SKIP_SANITIZE=1 skips the sanitizer pass (for quick local runs).
set -euo pipefail
cd "$(dirname "$0")/.."
MOE_WITH_TESTS=1 MOE_WITH_BROWSER=1 ./scripts/setup.sh
JOBS=$(nproc)
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DMOE_BUILD_TESTS=ON > /dev/null
cmake --build build -j"$JOBS"
(cd build && ctest --output-on-failure -j"$JOBS" --timeout 900)
if [ "${MOE_SKIP_SANITIZE:-0}" != 1 ]; then
  cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMOE_SANITIZE=ON -DMOE_BUILD_TESTS=ON > /dev/null
  cmake --build build-asan -j"$JOBS"
  # label unit includes the bad-input suite (tests/badinput): every case under ASan + UBSan
  (cd build-asan && ASAN_OPTIONS=detect_leaks=0 ctest --output-on-failure -j"$JOBS" -L unit --timeout 900)
fi
