#!/usr/bin/env bash
# Issue 12, experiments 1 and 2 (docs/finetune.md has the results):
#  1. pre-train the main job's MoE model (configs/shakespeare-char-moe.json) and its dense twin of
#     equal active FLOPs (configs/shakespeare-char-dense.json) on Tiny Shakespeare, then fine-tune
#     on the King James Bible (data/kjv.txt, '(' and ')' mapped to ',': the Shakespeare char
#     vocabulary lacks them) for the same budget four ways: MoE full, MoE --freeze non-expert,
#     MoE --freeze moe, dense full. Shakespeare's validation split is evaluated beside KJV's at
#     every evaluation (eval_also), so forgetting shows.
#  2. upcycle the pre-trained dense model to 8 experts (expert_d_ff = the dense d_ff 512, top-2)
#     and continue on Shakespeare; against the same MoE shape trained from scratch (val loss
#     against training time; the upcycled curve starts at the dense model's training time).
# Usage: bench/finetune_experiments.sh [all|pretrain|finetune|upcycle|summary] [MOE_BIN]
#   env: OUT (runs/finetune), THREADS (1), PRE_STEPS (500), FT_STEPS (150), UP_STEPS (150)
#   The four fine-tuning arms run at the same time (one thread each), so their tokens/s are
#   measured under the same load; so do the upcycled run and the MoE from scratch (PRE_STEPS
#   steps, compared by training FLOPs and time: bench/finetune_summary.py).
# Budgets are small because the machine these figures come from was shared (see docs/finetune.md).
# Prints a markdown summary; writes $OUT/summary.json and, with gnuplot, docs/img/finetune-*.png.
set -euo pipefail
cd "$(dirname "$0")/.."
PHASE=${1:-all}
MOE=${2:-build/moe}
OUT=${OUT:-runs/finetune}
THREADS=${THREADS:-1}
PRE_STEPS=${PRE_STEPS:-500}
FT_STEPS=${FT_STEPS:-150}
UP_STEPS=${UP_STEPS:-150}
PY=/usr/bin/python3
[ -x "$MOE" ] || { echo "finetune_experiments: no $MOE (cmake --build build --target moe)" >&2; exit 1; }
mkdir -p "$OUT"

train() {  # name args...: a fresh run folder $OUT/name, the --json line kept
  local name=$1; shift
  rm -rf "${OUT:?}/$name"
  echo "finetune_experiments: $name ..." >&2
  "$MOE" train --out "$OUT/$name" --threads "$THREADS" --quiet --json "$@" | tail -n 1 > "$OUT/$name.json"
}

FT=(--data data/kjv.txt --unknown-symbol , --eval-also data/tinyshakespeare.txt
    --max-steps "$FT_STEPS" --lr 1e-3 --min-lr 1e-4 --warmup-steps 20 --eval-every 25
    --eval-batches 10)

if [ "$PHASE" = all ] || [ "$PHASE" = pretrain ]; then
  train pre-moe --config configs/shakespeare-char-moe.json --max-steps "$PRE_STEPS"
fi
if [ "$PHASE" = all ] || [ "$PHASE" = pretrain ] || [ "$PHASE" = pretrain-dense ]; then
  train pre-dense --config configs/shakespeare-char-dense.json --max-steps "$PRE_STEPS"
fi
if [ "$PHASE" = all ] || [ "$PHASE" = finetune ]; then
  train ft-moe-full --init-from "$OUT/pre-moe" "${FT[@]}" &
  train ft-moe-freeze-non-expert --init-from "$OUT/pre-moe" --freeze non-expert "${FT[@]}" &
  train ft-moe-freeze-moe --init-from "$OUT/pre-moe" --freeze moe "${FT[@]}" &
  train ft-dense-full --init-from "$OUT/pre-dense" "${FT[@]}" &
  wait
fi
if [ "$PHASE" = all ] || [ "$PHASE" = upcycle ]; then
  train upcycled --config configs/shakespeare-char-moe.json --expert-d-ff 512 \
      --upcycle-from "$OUT/pre-dense" --max-steps "$UP_STEPS" --lr 1e-3 --warmup-steps 20 \
      --eval-every 50 &
  [ -d "$OUT/scratch-moe512" ] ||  # (kept when already there: it takes longest)
    train scratch-moe512 --config configs/shakespeare-char-moe.json --expert-d-ff 512 \
        --max-steps "$PRE_STEPS" --eval-every 50 &
  wait
fi
[ "$PHASE" = pretrain ] || [ "$PHASE" = pretrain-dense ] || "$PY" bench/finetune_summary.py "$OUT" || true
