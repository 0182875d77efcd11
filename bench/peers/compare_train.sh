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
# moe train's own one-line message and exit status stop the script (bad steps, config, ...)
"$MOE" train --config "$CFG" --out "$OUT/run" --max-steps "$STEPS" --threads "$TH" $MOE_PREC \
       --json --quiet > "$OUT/ours.txt" || exit $?
ours=$(tail -n 1 "$OUT/ours.txt")
SPM=$(find "$OUT/run" -name tokenizer.model 2>/dev/null | head -n 1)
peer=$($CORETYPE /usr/bin/python3 bench/peers/torch_lm.py --train-bench \
       --config "$CFG" --steps "$STEPS" --threads "$TH" --precision "$PREC" \
       ${SPM:+--tokenizer-model "$SPM"} | tail -n 1)
# The engine's ceiling for this precision on this machine now: the 2048^3 product of
# `moe bench gemm` (the engine gemm() picks), beside both runs' GFLOP/s. Both sides train the
# same model, so the peer's GFLOP/s is its tokens/s times our FLOPs per token.
ceil=$("$MOE" bench gemm --tokens 64 --d 64 --ffn 64 --experts 1 --topk 1 --threads "$TH" --reps 3 \
       --json 2> /dev/null | tail -n 1 || echo '{}')
echo "moe.cpp: $ours"
echo "pytorch: $peer"
/usr/bin/python3 - "$ours" "$peer" "$ceil" "$PREC" <<'PY'
import json, sys
o, p = json.loads(sys.argv[1]), json.loads(sys.argv[2])
try:
    rows = json.loads(sys.argv[3]).get("rows", [])
except ValueError:
    rows = []
ceiling = [r for r in rows if r.get("product", "").startswith("ceiling")]
out = {"precision": p["precision"], "ours_precision": o.get("precision", "fp32"),
       "ours_tokens_per_s": o["tokens_per_s"], "peer_tokens_per_s": p["tokens_per_s"],
       "speedup": round(o["tokens_per_s"] / p["tokens_per_s"], 2),
       "ours_val_loss": o.get("val_loss"), "peer_val_loss": p["val_loss"]}
if o.get("flops_per_token"):
    out["ours_gflops"] = round(o["gflops"], 1)
    out["peer_gflops"] = round(p["tokens_per_s"] * o["flops_per_token"] / 1e9, 1)
if ceiling:
    engine = ceiling[0][sys.argv[4] + "_choice"]
    out["ceiling_gflops"] = round(ceiling[0][engine], 1)
    out["ceiling_engine"] = engine + " 2048^3"
print(json.dumps(out))
PY
