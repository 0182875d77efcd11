#!/bin/sh
# Training speed of moe.cpp against the PyTorch peer, same config, steps and threads, back to back
# in one run (the machine's speed drifts: shared/ANCHORS.md). Prints both JSON lines and the ratio.
#   bench/peers/compare_train.sh [MOE_BIN] [CONFIG] [STEPS] [THREADS] [PRECISION]
# e.g. bench/peers/compare_train.sh build/moe configs/shakespeare-char-moe.json 300 2
#      bench/peers/compare_train.sh build/moe configs/shakespeare-sp-realistic.json 40 2 bf16
# PRECISION (fp32 | bf16, default fp32) goes to both sides as --precision; the peer runs bf16 as
# torch.autocast (bench/peers/torch_lm.py). moe train gets the flag only when it is not fp32, so
# the script also works with a moe binary built before `moe train --precision` existed.
# A SentencePiece config: the peer reads the tokenizer.model moe train wrote (identical ids).
set -eu
cd "$(dirname "$0")/../.."
# OpenBLAS's AVX-512 kernels for the peer where the CPU has AVX-512 (elsewhere they die with
# "illegal instruction" and OpenBLAS's own choice is right).
CORETYPE=env
grep -qw avx512f /proc/cpuinfo && CORETYPE="env OPENBLAS_CORETYPE=SKYLAKEX"
MOE=${1:-build/moe}
CFG=${2:-configs/shakespeare-char-moe.json}
STEPS=${3:-300}
TH=${4:-2}
PREC=${5:-fp32}
case "$PREC" in
fp32) MOE_PREC="" ;;
bf16) MOE_PREC="--precision bf16" ;;
*) echo "compare_train.sh: PRECISION '$PREC' (fp32 or bf16)" >&2; exit 2 ;;
esac
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
# shellcheck disable=SC2086 # MOE_PREC is empty or two words
ours=$("$MOE" train --config "$CFG" --out "$OUT/run" --max-steps "$STEPS" --threads "$TH" $MOE_PREC \
       --json --quiet | tail -n 1)
SPM=$(find "$OUT/run" -name tokenizer.model 2>/dev/null | head -n 1)
peer=$($CORETYPE /usr/bin/python3 bench/peers/torch_lm.py --train-bench \
       --config "$CFG" --steps "$STEPS" --threads "$TH" --precision "$PREC" \
       ${SPM:+--tokenizer-model "$SPM"} | tail -n 1)
echo "moe.cpp: $ours"
echo "pytorch: $peer"
/usr/bin/python3 - "$ours" "$peer" <<'PY'
import json, sys
o, p = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(json.dumps({"precision": p["precision"], "ours_precision": o.get("precision", "fp32"),
                  "ours_tokens_per_s": o["tokens_per_s"], "peer_tokens_per_s": p["tokens_per_s"],
                  "speedup": round(o["tokens_per_s"] / p["tokens_per_s"], 2),
                  "ours_val_loss": o.get("val_loss"), "peer_val_loss": p["val_loss"]}))
PY
