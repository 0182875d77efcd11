#!/usr/bin/env bash
# End-to-end check of `moe quantize` and `moe convert --to hf` on a small trained model (about
# 10 s): a Mixtral-style moe.cpp run (every layer MoE, top-2, widths multiples of 32 so that
# every matrix but the router is int8) trained briefly, then
#   - convert --to hf (f32): the engine's loss equals the training code's on the same windows;
#   - quantize --type int8 / bf16: losses within 1% / 0.2% of f32 (the main job's model measured
#     -0.006% and -0.0002%: docs/formats.md), 3.5x / 2x smaller, and generating from them works;
#   - quantize --type int4: loss within 2% of f32 (0.07% measured), 5x smaller, and the same
#     loss as the run's Q4_0 GGUF (the same quantiser, the same kernels on the other layout);
#   - convert --to hf --dtype bf16 --shard-size: shards + index, the same loss as quantize bf16;
#   - the run as a .gguf, then convert --to hf / quantize --type int8 from it: the same losses and
#     greedy text as the folders made from the run.
set -uo pipefail
MOE=${MOE_BIN:?set MOE_BIN to the moe binary}
SRC=${MOE_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
W=$(mktemp -d /tmp/moe_e2e_quantize.XXXXXX)
trap 'rm -rf "$W"' EXIT
fails=0
ok() { echo "ok   $*"; }
bad() { echo "FAIL $*"; fails=$((fails + 1)); }
head -c 300000 "$SRC/data/tinyshakespeare.txt" > "$W/text.txt"
head -c 30000 "$SRC/data/tinyshakespeare.txt" | tail -c 8000 > "$W/eval.txt"
cat > "$W/cfg.json" <<JSON
{"data": "text.txt", "tokenizer": "char", "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
 "d_model": 64, "block_size": 32, "tie_embeddings": false, "moe_every": 1, "n_experts": 4,
 "top_k": 2, "expert_d_ff": 64, "activation": "swiglu", "router": "topk", "dropless": true,
 "batch_size": 8, "max_steps": 100, "lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 10,
 "eval_every": 100, "eval_batches": 2, "log_every": 50, "threads": 1, "seed": 3}
JSON
export OMP_NUM_THREADS=1
$MOE train --config "$W/cfg.json" --out "$W/run" --quiet > /dev/null || { echo "FAIL train"; exit 1; }
loss() { /usr/bin/python3 -c 'import json,sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])["val_loss"])'; }
ref=$($MOE eval "$W/run" --data "$W/eval.txt" --split all --json 2>/dev/null | loss)
$MOE convert "$W/run" --to hf --out "$W/f32" 2>/dev/null || bad "convert --to hf"
$MOE quantize "$W/run" "$W/q8" --type int8 > /dev/null || bad "quantize int8"
$MOE quantize "$W/run" "$W/bf16" --type bf16 > /dev/null || bad "quantize bf16"
$MOE quantize "$W/run" "$W/q4" --type int4 > /dev/null || bad "quantize int4"
$MOE convert "$W/run" --to hf --out "$W/bf16s" --dtype bf16 --shard-size 30KB 2>/dev/null \
  || bad "convert --dtype bf16 --shard-size"
ev() { $MOE eval "$1" --data "$W/eval.txt" --split all --block 32 --json 2>/dev/null | loss; }
f32=$(ev "$W/f32"); q8=$(ev "$W/q8"); bf=$(ev "$W/bf16"); bfs=$(ev "$W/bf16s"); q4=$(ev "$W/q4")
echo "val loss: training code $ref, engine f32 $f32, int8 $q8, int4 $q4, bf16 $bf, bf16 shards $bfs"
rel() { /usr/bin/python3 -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); print(abs(a-b)/abs(b))" "$1" "$2"; }
lt() { /usr/bin/python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) < float(sys.argv[2]) else 1)" "$1" "$2"; }
r=$(rel "$f32" "$ref"); lt "$r" 1e-5 && ok "engine f32 = training code ($r)" || bad "engine f32 vs training code: $r"
r=$(rel "$q8" "$f32"); lt "$r" 0.01 && ok "int8 within 1% of f32 ($r)" || bad "int8 vs f32: $r"
r=$(rel "$q8" "$f32"); lt 1e-7 "$r" && ok "int8 differs from f32 at all ($r)" || bad "int8 equals f32: not quantised?"
r=$(rel "$q4" "$f32"); lt "$r" 0.02 && ok "int4 within 2% of f32 ($r)" || bad "int4 vs f32: $r"
r=$(rel "$q4" "$q8"); lt 1e-7 "$r" && ok "int4 differs from int8 ($r)" || bad "int4 equals int8: not 4-bit?"
r=$(rel "$bf" "$f32"); lt "$r" 0.002 && ok "bf16 within 0.2% of f32 ($r)" || bad "bf16 vs f32: $r"
[ "$bf" = "$bfs" ] && ok "bf16 shards = bf16 one file" || bad "bf16 shards $bfs vs $bf"
n=$(ls "$W/bf16s"/model-*-of-*.safetensors 2>/dev/null | wc -l)
[ "$n" -gt 1 ] && [ -f "$W/bf16s/model.safetensors.index.json" ] && ok "$n shards + index" || bad "shards: $n"
size() { du -cb "$1"/*.safetensors | tail -1 | cut -f1; }
s32=$(size "$W/f32"); s8=$(size "$W/q8"); s16=$(size "$W/bf16")
lt $((s8 * 35)) $((s32 * 10)) && ok "int8 $s8 bytes < 0.35 x f32 $s32" || bad "int8 size $s8 vs f32 $s32"
lt $((s16 * 10)) $((s32 * 6)) && ok "bf16 $s16 bytes < 0.6 x f32" || bad "bf16 size $s16 vs f32 $s32"
s4=$(size "$W/q4")
lt $((s4 * 5)) $s32 && ok "int4 $s4 bytes < 0.2 x f32" || bad "int4 size $s4 vs f32 $s32"
out=$($MOE generate "$W/q8" --prompt "ROMEO:" --max-tokens 20 --temperature 0 --json 2>/dev/null | tail -1)
echo "$out" | grep -q '"token_ids"' && ok "generate from the int8 folder" || bad "generate int8: $out"
# The run as a GGUF (arch llama: q/k rows permuted, char vocabulary) and back to folders: the
# same model as the folders made from the run directly.
$MOE convert "$W/run/best" --to gguf --type f32 --out "$W/m.gguf" 2>/dev/null || bad "convert --to gguf"
# a run folder stands for its best/ checkpoint (as for --to hf and quantize)
$MOE convert "$W/run" --to gguf --type f32 --out "$W/m_run.gguf" 2>/dev/null || bad "convert RUN --to gguf"
cmp -s "$W/m.gguf" "$W/m_run.gguf" && ok "convert RUN --to gguf = RUN/best's file" ||
  bad "convert RUN --to gguf differs from RUN/best's file"
$MOE convert "$W/m.gguf" --to hf --out "$W/f32g" 2>/dev/null || bad "convert GGUF --to hf"
$MOE quantize "$W/m.gguf" "$W/q8g" --type int8 > /dev/null || bad "quantize GGUF int8"
$MOE convert "$W/run" --to gguf --type q4_0 --out "$W/q4.gguf" 2>/dev/null || bad "convert --to gguf --type q4_0"
f32g=$(ev "$W/f32g"); q8g=$(ev "$W/q8g"); q4g=$(ev "$W/q4.gguf")
[ "$q4g" = "$q4" ] && ok "Q4_0 GGUF: loss $q4g = the int4 folder's" || bad "Q4_0 GGUF $q4g vs int4 folder $q4"
[ "$f32g" = "$f32" ] && ok "GGUF -> hf f32: loss $f32g = the run's folder" || bad "GGUF -> hf f32: $f32g vs $f32"
[ "$q8g" = "$q8" ] && ok "GGUF -> int8: loss $q8g = the run's int8 folder" || bad "GGUF -> int8: $q8g vs $q8"
gen() { $MOE generate "$1" --prompt "ROMEO:" --max-tokens 20 --temperature 0 --json 2>/dev/null | tail -1 |
        /usr/bin/python3 -c 'import json,sys; j=json.loads(sys.stdin.read()); print(j["token_ids"], j["text"])'; }
a=$(gen "$W/q8"); b=$(gen "$W/q8g")
[ -n "$a" ] && [ "$a" = "$b" ] && ok "GGUF -> int8: the same greedy text" || bad "GGUF -> int8 greedy: $b vs $a"
a=$(gen "$W/m.gguf"); b=$(gen "$W/f32g")
[ -n "$a" ] && [ "$a" = "$b" ] && ok "GGUF -> hf f32: the GGUF's greedy text" || bad "GGUF -> hf greedy: $b vs $a"
exit $fails
