#!/usr/bin/env bash
# End-to-end checks of `moe train/eval/generate` on configs/tiny-test.json (a few seconds):
# determinism, resume bit-identical (stop + resume, and kill -9 during a checkpoint write), NaN
# loss, full disk while saving, bad data and bad config. Exits non-zero on the first failure.
set -uo pipefail
MOE=${MOE_BIN:?set MOE_BIN to the moe binary}
SRC=${MOE_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
cd "$SRC"
W=$(mktemp -d /tmp/moe_e2e_train.XXXXXX)
trap 'rm -rf "$W"' EXIT
CFG=configs/tiny-test.json
fails=0
ok() { echo "ok   $*"; }
bad() { echo "FAIL $*"; fails=$((fails + 1)); }
check() { local what=$1; shift; if "$@"; then ok "$what"; else bad "$what"; fi; }
# Steps and training losses of a metrics file (timings differ between runs, losses must not).
losses() { /usr/bin/python3 -c '
import json, sys
for l in open(sys.argv[1]):
    j = json.loads(l); print(j["step"], repr(j["train_loss"]), repr(j.get("val_loss")), j["lr"])' "$1"; }
state_step() { /usr/bin/python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["step"])' "$1/trainer_state.json"; }
expect_fail() {  # expect_fail NAME PATTERN CMD...: non-zero exit and stderr matching PATTERN
    local name=$1 pat=$2; shift 2
    "$@" > "$W/out.txt" 2> "$W/err.txt"; local rc=$?
    if [ $rc -ne 0 ] && grep -qE "$pat" "$W/err.txt"; then ok "$name: $(tail -1 "$W/err.txt")"
    else bad "$name (rc=$rc): $(tail -3 "$W/err.txt")"; fi
}
T="$MOE train --config $CFG --quiet"

# 1. The reference run, and determinism: the same run twice gives the same bits.
$T --out "$W/a" --json > "$W/a.json" || bad "run a"
check "--json: GFLOP/s = FLOPs per token x tokens/s" /usr/bin/python3 -c '
import json,sys; j=json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
f, g, t = j["flops_per_token"], j["gflops"], j["tokens_per_s"]
sys.exit(0 if f > 0 and g > 0 and abs(g - f * t / 1e9) <= 0.01 * g else 1)' "$W/a.json"
$T --out "$W/a2" > /dev/null || bad "run a2"
check "same seed, same bits" cmp -s "$W/a/latest/model.safetensors" "$W/a2/latest/model.safetensors"
check "loss falls" /usr/bin/python3 -c '
import json,sys; L=[json.loads(l) for l in open(sys.argv[1])]; sys.exit(0 if L[-1]["train_loss"] < L[0]["train_loss"] - 0.3 else 1)' "$W/a/metrics.jsonl"

# 2. Stop at 20, resume to 40: identical to the uninterrupted run.
$T --out "$W/b" --stop-after 20 > /dev/null || bad "run b (stop at 20)"
check "stopped run saved step 20" test "$(state_step "$W/b/latest")" = 20
cp -r "$W/b" "$W/b_copy"
$MOE train --resume "$W/b" --quiet > /dev/null || bad "resume b"
check "resume: model bit-identical" cmp -s "$W/a/latest/model.safetensors" "$W/b/latest/model.safetensors"
check "resume: optimizer bit-identical" cmp -s "$W/a/latest/optimizer.safetensors" "$W/b/latest/optimizer.safetensors"
check "resume: same losses and lr at every logged step" diff <(losses "$W/a/metrics.jsonl") <(losses "$W/b/metrics.jsonl")
check "resume: best checkpoint identical" cmp -s "$W/a/best/model.safetensors" "$W/b/best/model.safetensors"

# 3. kill -9 in the middle of writing the step-20 checkpoint: latest/ is still step 10, loads,
#    and resuming from it ends bit-identical to the uninterrupted run.
MOE_TEST_CKPT_PAUSE_AT_STEP=20 $T --out "$W/c" > /dev/null 2> "$W/c.err" &
pid=$!
for _ in $(seq 1 200); do grep -q "test pause" "$W/c.err" 2>/dev/null && break; sleep 0.05; done
if grep -q "test pause" "$W/c.err"; then kill -9 $pid; wait $pid 2>/dev/null; ok "killed during checkpoint write"
else bad "checkpoint pause not reached"; kill -9 $pid 2>/dev/null; fi
check "after kill: a half-written latest.tmp folder exists" test -n "$(compgen -G "$W/c/latest.tmp-*")"
check "after kill: best (written before latest) is step 20" test "$(state_step "$W/c/best")" = 20
check "after kill: latest is the previous checkpoint (step 10)" test "$(state_step "$W/c/latest")" = 10
check "after kill: latest evaluates" $MOE eval "$W/c/latest" --json --threads 1 > /dev/null
$MOE train --resume "$W/c" --quiet > /dev/null || bad "resume c after kill"
check "after kill: resumed run bit-identical" cmp -s "$W/a/latest/model.safetensors" "$W/c/latest/model.safetensors"
check "after kill: temp folder cleaned up" test -z "$(compgen -G "$W/c/*.tmp-*")"
check "after kill: metrics identical" diff <(losses "$W/a/metrics.jsonl") <(losses "$W/c/metrics.jsonl")

# 4. A full disk while saving: the error names the cause, latest/ stays at step 20 and loads.
MOE_TEST_CKPT_FAIL_AFTER_BYTES=50000 expect_fail "disk full" "No space left on device" \
    $MOE train --resume "$W/b_copy" --quiet
check "disk full: latest still step 20" test "$(state_step "$W/b_copy/latest")" = 20
check "disk full: latest still loads" $MOE eval "$W/b_copy" --json --threads 1
check "disk full: no temp folder left" test -z "$(compgen -G "$W/b_copy/*.tmp-*")"

# 5. NaN: a huge learning rate is refused by its range; an injected NaN at step 15 (latest from step 10 survives).
expect_fail "lr 1e30 refused by its range" "lr: 1e\+?30 is not allowed" $T --out "$W/n1" --lr 1e30 --warmup-steps 0
MOE_TEST_NAN_AT_STEP=15 expect_fail "injected NaN names step 15 and the learning rate" "step 15: .*learning rate" $T --out "$W/n2"
check "NaN: last good checkpoint kept (step 10)" test "$(state_step "$W/n2/latest")" = 10
check "NaN: last good checkpoint evaluates" $MOE eval "$W/n2/latest" --json --threads 1

# 6. Bad data and bad config.
expect_fail "missing data file" "nope.txt: cannot open: No such file" $T --out "$W/d1" --data "$W/nope.txt"
: > "$W/empty.txt"
expect_fail "empty data file" "is empty" $T --out "$W/d2" --data "$W/empty.txt"
printf 'short' > "$W/short.txt"
expect_fail "data shorter than a window" "fewer than block_size" $T --out "$W/d3" --data "$W/short.txt"
expect_fail "fresh run into an existing run" "already holds a run" $T --out "$W/a"
expect_fail "unknown flag" "n-layer: unknown option" $T --out "$W/d4" --n-layer 3
echo '{"n_layers": 2, "learning_rate": 1}' > "$W/badkey.json"
expect_fail "unknown config key" "unknown config key 'learning_rate'" $MOE train --config "$W/badkey.json" --out "$W/d5"
expect_fail "heads do not divide d" "n_heads=3 does not divide d_model=32" $T --out "$W/d6" --n-heads 3
expect_fail "k > E" "top_k=5 > n_experts=4" $T --out "$W/d7" --top-k 5
mkdir -p "$W/emptyrun"
expect_fail "resume nothing" "nothing to resume" $MOE train --resume "$W/emptyrun"

# 7. eval and generate on the run folder.
$MOE eval "$W/a" --json --threads 1 > "$W/eval.txt" || bad "eval"
check "eval --json ends with val_loss" /usr/bin/python3 -c '
import json,sys; j=json.loads(open(sys.argv[1]).read().strip().splitlines()[-1]); sys.exit(0 if 0 < j["val_loss"] < 10 else 1)' "$W/eval.txt"
$MOE eval "$W/a" --data data/tinyshakespeare.txt --json --threads 1 > "$W/eval2.txt" || bad "eval --data text"
check "eval: run's val.tok == text's val split" test "$(tail -1 "$W/eval.txt" | cut -d, -f5-)" != ""
check "eval: same loss from both sources" /usr/bin/python3 -c '
import json,sys; a,b=[json.loads(open(f).read().strip().splitlines()[-1])["val_loss"] for f in sys.argv[1:]]; sys.exit(0 if a == b else 1)' "$W/eval.txt" "$W/eval2.txt"
$MOE generate "$W/a" --threads 1 --prompt "ROMEO:" --max-tokens 30 --temperature 0 --trace "$W/trace.jsonl" --json > "$W/gen.txt" || bad "generate"
check "generate: prompt echoed" grep -q "^ROMEO:" "$W/gen.txt"
check "generate: trace has 6 + 30 lines" test "$(wc -l < "$W/trace.jsonl")" = 36
expect_fail "generate: symbol outside vocab" "symbol '§' at byte 2" $MOE generate "$W/a" --prompt "ab§"
expect_fail "eval: not a checkpoint" "not a checkpoint folder" $MOE eval "$W/emptyrun"

# 8. SentencePiece: trained on the training split, saved as tokenizer.model, resumable.
head -c 120000 data/tinyshakespeare.txt > "$W/small.txt"
SP=(--data "$W/small.txt" --tokenizer sentencepiece --vocab-size 400 --max-steps 20)
$T --out "$W/sp" "${SP[@]}" > /dev/null || bad "sentencepiece run"
check "sentencepiece: tokenizer.model saved" test -f "$W/sp/best/tokenizer.model"
check "sentencepiece: eval" $MOE eval "$W/sp" --json --threads 1
$T --out "$W/sp2" "${SP[@]}" --stop-after 10 > /dev/null || bad "sentencepiece stop"
$MOE train --resume "$W/sp2" --quiet > /dev/null || bad "sentencepiece resume"
check "sentencepiece: resume bit-identical" cmp -s "$W/sp/latest/model.safetensors" "$W/sp2/latest/model.safetensors"

# 9. A noisy router (noise, jitter, gate dropout drawn in training): the layers' random streams are
# saved in trainer_state.json, so stop + resume is still bit-identical.
NZ=(--router noisy-topk --w-load 0.01 --max-steps 20)
$T --out "$W/nz" "${NZ[@]}" > /dev/null || bad "noisy run"
$T --out "$W/nz2" "${NZ[@]}" --stop-after 10 > /dev/null || bad "noisy stop"
$MOE train --resume "$W/nz2" --quiet > /dev/null || bad "noisy resume"
check "noisy router: resume bit-identical" cmp -s "$W/nz/latest/model.safetensors" "$W/nz2/latest/model.safetensors"

# 10. Fine-tuning from the command line (issue 12): --init-from without --config, --freeze, a
# second domain with symbols outside the char vocabulary, resume keeping the freeze (bit-identical
# to the uninterrupted frozen run), upcycling, and the bad inputs.
head -c 60000 data/kjv.txt > "$W/kjv.txt"
FT=(--init-from "$W/a" --data "$W/kjv.txt" --unknown-symbol , --eval-also data/tinyshakespeare.txt
    --max-steps 10 --eval-every 5 --quiet)
$MOE train --out "$W/ft" "${FT[@]}" --freeze non-expert > /dev/null || bad "fine-tune run"
check "fine-tune: frozen.json records the freeze" grep -q '"freeze": "non-expert"' "$W/ft/frozen.json"
check "fine-tune: eval_also in metrics" grep -q eval_also_loss "$W/ft/metrics.jsonl"
if command -v gnuplot > /dev/null; then
  $MOE report "$W/ft" > /dev/null 2>&1 || bad "fine-tune: report"
  check "fine-tune: report draws eval_also" grep -q "eval_also corpus" "$W/ft/report/report.html"
  check "fine-tune: report names the freeze" grep -q "non-expert: " "$W/ft/report/report.html"
fi
$MOE train --out "$W/ft2" "${FT[@]}" --freeze non-expert --stop-after 5 > /dev/null || bad "fine-tune stop"
$MOE train --resume "$W/ft2" --quiet > /dev/null || bad "fine-tune resume"
check "fine-tune: resume keeps the freeze, bit-identical" cmp -s "$W/ft/latest/model.safetensors" "$W/ft2/latest/model.safetensors"
expect_fail "fine-tune: unknown symbol" "kjv.txt: symbol '\(' at byte" \
    $MOE train --out "$W/ft3" --init-from "$W/a" --data "$W/kjv.txt" --quiet
expect_fail "fine-tune: shape key conflict" "n_layers: 3 but the checkpoint" \
    $MOE train --out "$W/ft4" "${FT[@]}" --n-layers 3
expect_fail "fine-tune: unknown freeze group" "unknown group 'expert'; groups: experts, router" \
    $MOE train --out "$W/ft5" "${FT[@]}" --freeze expert
expect_fail "fine-tune: freeze everything" "freezes every tensor" \
    $MOE train --out "$W/ft6" "${FT[@]}" --freeze non-expert,moe
expect_fail "fine-tune: no --out without --config" "give --out DIR" \
    $MOE train --init-from "$W/a" --quiet
$T --out "$W/dense" --moe-every 0 --max-steps 10 > /dev/null || bad "dense run"
$T --out "$W/up" --moe-every 1 --expert-d-ff 64 --upcycle-from "$W/dense" --max-steps 5 > /dev/null || bad "upcycle run"
check "upcycle: step-0 line" grep -q '"step":0' "$W/up/metrics.jsonl"
expect_fail "upcycle: expert width" "expert_d_ff must equal the dense d_ff" \
    $T --out "$W/up2" --moe-every 1 --upcycle-from "$W/dense" --max-steps 5

# 11. bf16 mixed precision (issue 11, docs/precision.md): same steps as run a, deterministic, the
# loss within bf16 noise of fp32, stop + resume bit-identical, and the bad values refused.
$T --out "$W/bf" --precision bf16 > /dev/null || bad "bf16 run"
$T --out "$W/bf2" --precision bf16 > /dev/null || bad "bf16 run 2"
check "bf16: same seed, same bits" cmp -s "$W/bf/latest/model.safetensors" "$W/bf2/latest/model.safetensors"
check "bf16: differs from fp32 (the operands were rounded)" bash -c "! cmp -s '$W/bf/latest/model.safetensors' '$W/a/latest/model.safetensors'"
check "bf16: final val loss within 0.05 of fp32" /usr/bin/python3 -c '
import json,sys
def last(p): return [json.loads(l) for l in open(p) if "val_loss" in json.loads(l)][-1]["val_loss"]
a, b = last(sys.argv[1]), last(sys.argv[2]); print("fp32", a, "bf16", b); sys.exit(0 if abs(a - b) < 0.05 else 1)' "$W/a/metrics.jsonl" "$W/bf/metrics.jsonl"
$T --out "$W/bfs" --precision bf16 --stop-after 20 > /dev/null || bad "bf16 stop at 20"
$MOE train --resume "$W/bfs" --quiet > /dev/null || bad "bf16 resume"
check "bf16: resume bit-identical" cmp -s "$W/bfs/latest/model.safetensors" "$W/bf/latest/model.safetensors"
$T --out "$W/bfr" --precision bf16 --router-precision bf16 --max-steps 10 > /dev/null || bad "bf16 router run"
expect_fail "precision fp16 refused" "precision: 'fp16' is not allowed|precision.*fp16" $T --out "$W/p1" --precision fp16
expect_fail "router precision refused" "router_precision|router-precision" $T --out "$W/p2" --router-precision int8

if [ $fails -ne 0 ]; then echo "$fails e2e check(s) failed"; exit 1; fi
echo "all e2e train checks passed"
