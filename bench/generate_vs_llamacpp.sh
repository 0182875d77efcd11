#!/usr/bin/env bash
# Prefill (pp) and decode (tg) of moe.cpp beside llama.cpp on the same GGUF files, back to back,
# alternated ROUNDS times (the machine's memory bandwidth swings by 2x between minutes, so only
# alternated pairs mean anything). Prints one markdown row per precision with the medians of the
# rounds and the ratios.
#
#   bench/generate_vs_llamacpp.sh LLAMA_BIN_DIR MODEL_PREFIX [ROUNDS] [THREADS]
#
# LLAMA_BIN_DIR holds llama-bench (a llama.cpp built outside this repository, see
# scripts/build_llama_peer.sh). MODEL_PREFIX.{f32,f16,q8_0,q4_0}.gguf are the files (from
# `moe convert DIR --to gguf --type T --out MODEL_PREFIX.T.gguf`); a missing one is skipped.
# moe.cpp runs each file as it is (f16 as f16); with MODEL_PREFIX.bf16.gguf present it also runs
# bf16 beside llama.cpp's f16 (the issue's "bf16 vs f16").
set -euo pipefail
BIN=${1:?llama.cpp bin dir}
PREFIX=${2:?model prefix}
ROUNDS=${3:-3}
THREADS=${4:-2}
MOE=${MOE:-build/moe}
PP=${PP:-128}
TG=${TG:-64}
LB="$BIN/llama-bench"
[ -x "$LB" ] || { echo "generate_vs_llamacpp: $LB not found; build llama.cpp's llama-bench" >&2; exit 1; }
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

for r in $(seq 1 "$ROUNDS"); do
  for t in f32 f16 q8_0 q4_0; do
    f="$PREFIX.$t.gguf"
    [ -f "$f" ] || continue
    "$LB" -m "$f" -p "$PP" -n "$TG" -t "$THREADS" -r 1 -o json > "$OUT/llama.$t.$r.json" 2>/dev/null
    "$MOE" bench generate "$f" --prefill "$PP" --decode "$TG" --threads "$THREADS" --reps 1 --json \
      | tail -1 > "$OUT/moe.$t.$r.json"
    if [ "$t" = f16 ] && [ -f "$PREFIX.bf16.gguf" ]; then
      "$MOE" bench generate "$PREFIX.bf16.gguf" --prefill "$PP" --decode "$TG" --threads "$THREADS" \
        --reps 1 --json | tail -1 > "$OUT/moe.bf16.$r.json"
    fi
  done
done

/usr/bin/python3 - "$OUT" "$ROUNDS" "$PP" "$TG" <<'EOF'
import json, os, statistics, sys
out, rounds, pp, tg = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def med(xs):
    return statistics.median(xs) if xs else float("nan")
def llama(t):
    p, d = [], []
    for r in range(1, rounds + 1):
        f = os.path.join(out, "llama.%s.%d.json" % (t, r))
        if not os.path.exists(f):
            continue
        for row in json.load(open(f)):
            (p if row["n_prompt"] > 0 else d).append(row["avg_ts"])
    return med(p), med(d)
def ours(t):
    p, d, bw = [], [], []
    for r in range(1, rounds + 1):
        f = os.path.join(out, "moe.%s.%d.json" % (t, r))
        if not os.path.exists(f):
            continue
        j = json.load(open(f))
        p.append(j["prefill_tok_s"]); d.append(j["decode_tok_s"]); bw.append(j["bound_tok_s"])
    return med(p), med(d), med(bw)
print("| precision (moe.cpp / llama.cpp) | moe pp%d | llama pp%d | ratio | moe tg%d | llama tg%d | ratio | moe tg / bound |" % (pp, pp, tg, tg))
print("|---|---|---|---|---|---|---|---|")
for mine, theirs in (("f32", "f32"), ("f16", "f16"), ("bf16", "f16"), ("q8_0", "q8_0"), ("q4_0", "q4_0")):
    mp, md, mb = ours(mine)
    lp, ld = llama(theirs)
    if mp != mp or lp != lp:
        continue
    print("| %s / %s | %.1f | %.1f | %.2fx | %.1f | %.1f | %.2fx | %.0f%% |" % (
        mine, theirs, mp, lp, mp / lp, md, ld, md / ld, 100 * md / mb))
print("(medians of %d alternated rounds)" % rounds)
EOF
