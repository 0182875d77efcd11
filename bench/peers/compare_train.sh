#!/bin/sh
# Training speed of moe.cpp against the PyTorch peer, same config, steps and threads, back to back
# in one run (the machine's speed drifts: shared/ANCHORS.md). Prints both JSON lines and the ratio.
#   bench/peers/compare_train.sh [MOE_BIN] [CONFIG] [STEPS] [THREADS]
# e.g. bench/peers/compare_train.sh build/moe configs/shakespeare-char-moe.json 300 2
set -eu
cd "$(dirname "$0")/../.."
MOE=${1:-build/moe}
CFG=${2:-configs/shakespeare-char-moe.json}
STEPS=${3:-300}
TH=${4:-2}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
ours=$("$MOE" train --config "$CFG" --out "$OUT/run" --max-steps "$STEPS" --threads "$TH" --json --quiet | tail -n 1)
peer=$(OPENBLAS_CORETYPE=SKYLAKEX /usr/bin/python3 bench/peers/torch_lm.py --train-bench \
       --config "$CFG" --steps "$STEPS" --threads "$TH" | tail -n 1)
echo "moe.cpp: $ours"
echo "pytorch: $peer"
/usr/bin/python3 - "$ours" "$peer" <<'PY'
import json, sys
o, p = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(json.dumps({"ours_tokens_per_s": o["tokens_per_s"], "peer_tokens_per_s": p["tokens_per_s"],
                  "speedup": round(o["tokens_per_s"] / p["tokens_per_s"], 2),
                  "ours_val_loss": o.get("val_loss"), "peer_val_loss": p["val_loss"]}))
PY
