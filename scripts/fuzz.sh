#!/usr/bin/env bash
# Runs the libFuzzer targets (docs/fuzzing.md) built in build-fuzz (MOE_FUZZ=ON):
#   scripts/fuzz.sh SECONDS [TARGET...]      (default: every target, one after the other)
# Each target starts from its seed corpus (tests/fuzz/corpus/<target>, copied: new inputs go to
# build-fuzz/corpus/<target>, the source tree is not touched) with a fixed seed, and fails on a
# crash, a sanitizer report, an exception other than moe::Error, a 10 s input, more than 2 GB of
# memory or one allocation over 512 MB. Findings land in build-fuzz/artifacts/<target>/.
# Every target reads JSON (safetensors and token files have a JSON header), so all share one
# dictionary of keys and values, tests/fuzz/json.dict. Prints one summary line per target: runs,
# coverage (cov), features (ft), corpus size.
set -uo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-15}
shift || true
ALL=(safetensors train_config hf_config trainer_state token_file trace metrics vocab tokenizer_json hf_index hf_family gguf)
[ $# -gt 0 ] && TARGETS=("$@") || TARGETS=("${ALL[@]}")
BUILD=${MOE_FUZZ_BUILD:-build-fuzz}
status=0
for t in "${TARGETS[@]}"; do
  bin=$BUILD/fuzz_$t
  [ -x "$bin" ] || { echo "fuzz: $bin not built (cmake --build $BUILD --target fuzzers)"; exit 2; }
  mkdir -p "$BUILD/corpus/$t" "$BUILD/artifacts/$t" "$BUILD/logs"
  cp -n tests/fuzz/corpus/$t/* "$BUILD/corpus/$t/" 2>/dev/null || true
  log=$BUILD/logs/$t.log
  maxlen=${MOE_FUZZ_MAX_LEN:-16384}
  [ "$t" = gguf ] && maxlen=${MOE_FUZZ_MAX_LEN:-65536}  # a whole tiny model with its vocabulary
  ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=0 UBSAN_OPTIONS=print_stacktrace=1 \
    "$bin" "$BUILD/corpus/$t" -dict=tests/fuzz/json.dict -seed=${MOE_FUZZ_SEED:-1} -max_total_time="$SECS" \
    -max_len=$maxlen -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=512 \
    -artifact_prefix="$BUILD/artifacts/$t/" -print_final_stats=1 > "$log" 2>&1
  rc=$?
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$')
  last=$(grep -E '^#[0-9]+' "$log" | tail -n 1)
  cov=$(echo "$last" | grep -o 'cov: [0-9]*' | grep -o '[0-9]*')
  ft=$(echo "$last" | grep -o 'ft: [0-9]*' | grep -o '[0-9]*')
  corp=$(echo "$last" | grep -o 'corp: [0-9]*/[0-9]*[a-zA-Z]*')
  if [ $rc = 0 ]; then
    echo "fuzz: $t: ${SECS}s, ${runs:-?} runs, cov ${cov:-?}, ft ${ft:-?}, corpus ${corp:-?}, 0 findings"
  else
    status=1
    echo "fuzz: $t: FINDING (exit $rc) after ${runs:-?} runs; log $log, input in $BUILD/artifacts/$t/:"
    grep -E 'ERROR|fuzz: |runtime error|SUMMARY|Test unit written' "$log" | head -n 8 | sed 's/^/  /'
  fi
done
exit $status
