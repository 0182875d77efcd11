#!/usr/bin/env bash
# Training benchmark of the main job, in one run (the machine's speed drifts: compare only
# figures taken together): moe.cpp on configs/shakespeare-char-moe.json and on its dense twin of
# equal active FLOPs, and the PyTorch peer of the same model (bench/peers/torch_lm.py
# --train-bench: same config, steps, threads; "skipped" when absent or without torch).
# Prints a markdown table (val loss at equal steps, time to 1.88, tokens/s, ratio to the peer)
# and, last, one JSON line.
#   bench/train_shakespeare.sh [MOE_BIN]      env: THREADS (2), STEPS (config's max_steps),
#                                              PEER_STEPS (STEPS), OUT (a temp folder), NO_PEER=1
set -euo pipefail
cd "$(dirname "$0")/.."
# OpenBLAS's AVX-512 kernels for the peer where the CPU has AVX-512 (elsewhere they die with
# "illegal instruction" and OpenBLAS's own choice is right).
CORETYPE=env
grep -qw avx512f /proc/cpuinfo && CORETYPE="env OPENBLAS_CORETYPE=SKYLAKEX"
MOE=${1:-build/moe}
THREADS=${THREADS:-2}
OUT=${OUT:-$(mktemp -d /tmp/moe_train_bench.XXXXXX)}
PY=/usr/bin/python3
[ -x "$MOE" ] || { echo "bench: no $MOE (build it: cmake --build build --target moe)" >&2; exit 1; }
mkdir -p "$OUT"
STEP_FLAG=()
[ -n "${STEPS:-}" ] && STEP_FLAG=(--max-steps "$STEPS")

run_ours() {  # name config
  local name=$1 cfg=$2
  rm -rf "${OUT:?}/$name"
  echo "bench: moe.cpp $name ($cfg, $THREADS threads)..." >&2
  "$MOE" train --config "$cfg" --out "$OUT/$name" --threads "$THREADS" --quiet --json \
      ${STEP_FLAG[@]+"${STEP_FLAG[@]}"} | tail -n 1 > "$OUT/$name.train.json"
  "$MOE" eval "$OUT/$name" --threads "$THREADS" --json | tail -n 1 > "$OUT/$name.eval.json"
}
run_ours moe configs/shakespeare-char-moe.json
run_ours dense configs/shakespeare-char-dense.json

PEER_STATUS=skipped
if [ "${NO_PEER:-0}" != 1 ] && [ -f bench/peers/torch_lm.py ] && [ -x "$PY" ] && "$PY" -c "import torch" 2>/dev/null; then
  PS=${PEER_STEPS:-${STEPS:-}}
  PEER_STEP_FLAG=()
  [ -n "$PS" ] && PEER_STEP_FLAG=(--steps "$PS")
  echo "bench: PyTorch peer (torch_lm.py --train-bench, $THREADS threads)..." >&2
  if $CORETYPE "$PY" bench/peers/torch_lm.py --train-bench \
      --config configs/shakespeare-char-moe.json --threads "$THREADS" ${PEER_STEP_FLAG[@]+"${PEER_STEP_FLAG[@]}"} \
      | tail -n 1 > "$OUT/peer.json"; then PEER_STATUS=ok; else PEER_STATUS="failed"; fi
fi

"$PY" - "$OUT" "$PEER_STATUS" "$THREADS" <<'PYEOF'
import json, os, subprocess, sys
out, peer_status, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
def last(path):
    return json.loads(open(path).read().strip().splitlines()[-1])
def time_to(run, target=1.88):
    for l in open(os.path.join(out, run, "metrics.jsonl")):
        j = json.loads(l)
        if "val_loss" in j and j["val_loss"] <= target:
            return j["elapsed_s"], j["step"]
    return None, None
rows = {}
for run in ("moe", "dense"):
    t, e = last(f"{out}/{run}.train.json"), last(f"{out}/{run}.eval.json")
    tt, ts = time_to(run)
    rows[run] = {"impl": "moe.cpp", "config": f"shakespeare-char-{run}", "steps": t["step"],
                 "val_loss": round(e["val_loss"], 4), "val_loss_fixed_batches": round(t["val_loss"], 4),
                 "time_to_1.88_s": None if tt is None else round(tt, 1), "step_at_1.88": ts,
                 "train_time_s": round(t["train_time_s"], 1), "tokens_per_s": round(t["tokens_per_s"])}
peer = None
if peer_status == "ok":
    p = last(f"{out}/peer.json")
    peer = {"impl": "pytorch " + p.get("torch", ""), "config": "shakespeare-char-moe", "steps": p["steps"],
            "val_loss": p["val_loss"], "tokens_per_s": p["tokens_per_s"]}
    rows["moe"]["speedup_vs_peer"] = round(rows["moe"]["tokens_per_s"] / p["tokens_per_s"], 2)
    rows["moe"]["val_loss_minus_peer"] = round(rows["moe"]["val_loss"] - p["val_loss"], 4)
try:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
except Exception:
    commit = "?"
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(f"\nTraining benchmark: Tiny Shakespeare, char level; {threads} threads; {cpu}; commit {commit}\n")
print("| run | steps | val loss (full split) | val loss (20 fixed batches) | time to val 1.88 | training time | tokens/s | vs PyTorch |")
print("|---|---|---|---|---|---|---|---|")
for k in ("moe", "dense"):
    r = rows[k]
    t188 = "not reached" if r["time_to_1.88_s"] is None else f'{r["time_to_1.88_s"]} s (step {r["step_at_1.88"]})'
    ratio = f'{r["speedup_vs_peer"]}x' if "speedup_vs_peer" in r else "-"
    print(f'| moe.cpp {r["config"]} | {r["steps"]} | {r["val_loss"]} | {r["val_loss_fixed_batches"]} | {t188} | {r["train_time_s"]} s | {r["tokens_per_s"]} | {ratio} |')
if peer:
    print(f'| {peer["impl"]} shakespeare-char-moe | {peer["steps"]} | {peer["val_loss"]} | - | - | - | {peer["tokens_per_s"]} | 1x |')
else:
    print(f"| PyTorch peer | {peer_status} | | | | | | |")
print(f'\nMoE minus dense val loss at {rows["moe"]["steps"]} steps: {rows["moe"]["val_loss"] - rows["dense"]["val_loss"]:+.4f}')
print(json.dumps({"bench": "train_shakespeare", "threads": threads, "commit": commit, "cpu": cpu,
                  "moe": rows["moe"], "dense": rows["dense"], "peer": peer if peer else peer_status}))
PYEOF
