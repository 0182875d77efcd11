#!/usr/bin/env bash
# The main job (README's first command): install the packages, build Release into build/, train
# the Mixtral-style MoE language model configs/shakespeare-char-moe.json on Tiny Shakespeare into
# runs/shakespeare-char-moe, print a generated sample and the figures (val loss, time, tokens/s).
#   ./scripts/demo.sh            a fresh run (the old run folder is replaced)
#   ./scripts/demo.sh --resume   continue the previous run (e.g. after Ctrl-C, or with more steps:
#                                ./scripts/demo.sh --resume --max-steps 5000)
# Any other flag goes to `moe train` (e.g. --max-steps 500 for a quick look).
set -euo pipefail
cd "$(dirname "$0")/.."
RESUME=0
ARGS=()
for a in "$@"; do
  if [ "$a" = "--resume" ]; then RESUME=1; else ARGS+=("$a"); fi
done
RUN=runs/shakespeare-char-moe
CFG=configs/shakespeare-char-moe.json
t_start=$(date +%s)

echo "== 1/4 packages (the main job's only; the tests' come with ./scripts/test.sh)"
./scripts/setup.sh
echo "== 2/4 build (Release, build/)"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DMOE_BUILD_TESTS=OFF > /dev/null
cmake --build build -j"$(nproc)" --target moe 2>&1 | grep -E "error|warning: unused|Built target moe" || true
test -x build/moe || { echo "demo: build failed" >&2; exit 1; }

echo "== 3/4 train $CFG -> $RUN"
if [ "$RESUME" = 1 ] && [ -d "$RUN/latest" ]; then
  build/moe train --resume "$RUN" --json ${ARGS[@]+"${ARGS[@]}"} | tee "$RUN.train.txt"
else
  rm -rf "$RUN"
  mkdir -p runs
  build/moe train --config "$CFG" --out "$RUN" --json ${ARGS[@]+"${ARGS[@]}"} | tee "$RUN.train.txt"
fi
mv "$RUN.train.txt" "$RUN/train_result.txt"

echo "== 4/4 sample and evaluation"
echo "--- sample (moe generate $RUN --prompt \"ROMEO:\" --max-tokens 400 --temperature 0.8 --top-k 40)"
build/moe generate "$RUN" --prompt "ROMEO:" --max-tokens 400 --temperature 0.8 --top-k 40 --seed 1
echo "---"
build/moe eval "$RUN" --json | tee "$RUN/eval.txt"

# Figures, read from the JSON lines the commands printed.
python_bin=/usr/bin/python3
[ -x "$python_bin" ] || python_bin=python3
"$python_bin" - "$RUN/train_result.txt" "$RUN/eval.txt" "$t_start" <<'PY'
import json, sys, time
train = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
ev = json.loads(open(sys.argv[2]).read().strip().splitlines()[-1])
print()
print("== result")
print(f"  steps              {train['step']}")
print(f"  training time      {train['train_time_s']:.1f} s  (excluding set-up, evaluation, checkpoints)")
print(f"  tokens/s           {train['tokens_per_s']:.0f}")
if "gflops" in train:
    print(f"  GFLOP/s            {train['gflops']:.1f}  (GEMMs + attention; `build/moe bench gemm` shows the machine's ceiling)")
print(f"  val loss           {ev['val_loss']:.4f}  (full validation split, best checkpoint; target <= 1.88)")
print(f"  best val (train)   {train['best_val_loss']:.4f} at step {train['best_step']}  (20 fixed val batches)")
print(f"  run folder         {train['run_dir']}  (best/ latest/ metrics.jsonl train_config.json)")
print(f"  demo wall time     {time.time() - float(sys.argv[3]):.0f} s")
PY
echo "  next: build/moe generate $RUN --prompt \"JULIET:\"   |   build/moe eval $RUN"

# ---- moe report (written by the report helper): plots and tables of the run ----
if build/moe report --help > /dev/null 2>&1; then
  build/moe report "$RUN"
fi
