#!/bin/sh
# The layer against PyTorch over several rounds: `moe bench layer` (which runs the PyTorch peer
# right after moe.cpp in the same process tree) ROUNDS times, then the medians of each side's
# fwd+bwd time and of the per-round ratio. On a VM whose speed drifts by tens of percent between
# minutes (shared/ANCHORS.md) one round's ratio can land anywhere in that band; the median of
# paired rounds is the figure to quote.
#   bench/layer_vs_torch.sh [MOE_BIN] [ROUNDS] [-- moe bench layer flags...]
# e.g. bench/layer_vs_torch.sh build/moe 5
#      bench/layer_vs_torch.sh build/moe 5 -- --tokens 4096 --d 512 --ffn 256 --experts 64 --topk 8
set -eu
MOE=${1:-build/moe}
ROUNDS=${2:-5}
[ $# -ge 2 ] && shift 2 || shift $#
[ "${1:-}" = "--" ] && shift
case "$ROUNDS" in
''|*[!0-9]*|0) echo "layer_vs_torch.sh: ROUNDS '$ROUNDS' must be a positive integer" >&2; exit 2 ;;
esac
OUT=$(mktemp)
ONE=$(mktemp)
trap 'rm -f "$OUT" "$ONE"' EXIT
i=0
while [ "$i" -lt "$ROUNDS" ]; do
  # moe bench layer's own message (a bad flag, say) and its exit status stop the rounds
  "$MOE" bench layer --threads "${THREADS:-2}" --reps "${REPS:-5}" --json "$@" > "$ONE" || exit $?
  tail -n 1 "$ONE" >> "$OUT"
  i=$((i + 1))
done
/usr/bin/python3 - "$OUT" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
med = lambda k: statistics.median(r[k] for r in runs)
s = runs[0]["shape"]
out = {"shape": s, "rounds": len(runs), "precision": runs[0].get("precision"),
       "moe_fwdbwd_ms": round(med("moe_fwdbwd_ms"), 1),
       "dense_fwdbwd_ms": round(med("dense_fwdbwd_ms"), 1),
       "moe_vs_dense_fwdbwd": round(med("moe_vs_dense_fwdbwd"), 3),
       "moe_gflops": round(med("moe_gflops"), 1), "sgemm_gflops": round(med("sgemm_gflops"), 1)}
paired = [r for r in runs if r.get("torch_fwdbwd_ms")]
if paired:
    out["torch_fwdbwd_ms"] = round(statistics.median(r["torch_fwdbwd_ms"] for r in paired), 1)
    ratios = sorted(r["torch_fwdbwd_ms"] / r["moe_fwdbwd_ms"] for r in paired)
    out["speedup_vs_torch_median"] = round(statistics.median(ratios), 2)
    out["speedup_vs_torch_rounds"] = [round(x, 2) for x in ratios]
print(json.dumps(out))
PY
