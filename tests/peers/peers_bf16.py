#!/usr/bin/python3
"""The PyTorch peers' bf16 mode (issue 11): bench/peers/torch_layer_bench.py and
bench/peers/torch_lm.py --train-bench with --precision bf16 on tiny shapes.

Checks the JSON each prints: "precision" says bf16, every timing is finite and positive, the bf16
layer output differs from fp32 by a bf16-sized amount (> 0: autocast took effect; < 3%: it is
still the same layer), the bf16 LM's losses are finite, its first loss differs from fp32's (autocast took effect)
and all are within 0.05 of the fp32 run's, a
SentencePiece config trains the peer's own tokenizer and the saved model reloads with
--tokenizer-model to the same ids (equal fp32 validation loss), and a bad --precision fails.
Prints "skipped" and exits 0 only when torch is missing. Exit 1 on any failure.
"""
import json
import math
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PEERS = os.path.join(ROOT, "bench", "peers")

try:
    import torch  # noqa: F401
except ImportError:
    print("peers_bf16: skipped (no torch in /usr/bin/python3)")
    sys.exit(0)

failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)


def run_json(args):
    p = subprocess.run([sys.executable] + args, cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        print(p.stdout + p.stderr)
        raise SystemExit(f"peers_bf16: FAIL: {' '.join(args)} exited {p.returncode}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def finite_pos(v):
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


# ---- layer bench
layer = [os.path.join(PEERS, "torch_layer_bench.py"), "--tokens", "64", "--d", "32", "--ffn", "48",
         "--experts", "4", "--topk", "2", "--reps", "2", "--warmup", "1", "--threads", "1"]
r = run_json(layer + ["--precision", "bf16"])
check(r.get("precision") == "bf16" and r.get("router_precision") == "fp32", "layer: precision bf16, router fp32")
times = [k for k in r if k.endswith("_ms")]
check(len(times) == 8 and all(finite_pos(r[k]) for k in times), f"layer: 8 finite timings {times}")
err = r.get("out_rel_err_vs_fp32")
check(isinstance(err, float) and 0 < err < 0.03, f"layer: bf16 output rel. error vs fp32 {err} in (0, 0.03)")
r32 = run_json(layer)
check(r32.get("precision") == "fp32" and "out_rel_err_vs_fp32" not in r32, "layer: default fp32")
p = subprocess.run([sys.executable] + layer + ["--precision", "fp16"], capture_output=True, text=True)
check(p.returncode != 0 and "--precision" in p.stderr, "layer: --precision fp16 rejected")

# ---- LM train bench: tiny MoE, char and sentencepiece
tiny = ["n_layers=1", "d_model=32", "n_heads=2", "n_kv_heads=2", "n_experts=4", "top_k=2",
        "expert_d_ff=32", "block_size=32", "batch_size=2", "warmup_steps=2"]
lm = [os.path.join(PEERS, "torch_lm.py"), "--train-bench", "--config",
      os.path.join(ROOT, "configs", "shakespeare-char-moe.json"), "--steps", "3", "--warmup", "1",
      "--threads", "1", "--val-windows", "4"]
for kv in tiny:
    lm += ["--set", kv]
a = run_json(lm + ["--precision", "bf16"])
b = run_json(lm + ["--precision", "fp32"])
check(a.get("precision") == "bf16" and b.get("precision") == "fp32", "lm char: precision keys")
check(all(finite_pos(a[k]) for k in ("tokens_per_s", "ms_per_step", "train_loss", "val_loss")),
      f"lm char bf16: finite numbers {a}")
check(a["first_loss"] != b["first_loss"] and abs(a["first_loss"] - b["first_loss"]) < 0.01,
      f"lm char: bf16 first loss {a['first_loss']} differs from fp32 {b['first_loss']}, by < 0.01")
check(abs(a["train_loss"] - b["train_loss"]) < 0.05 and abs(a["val_loss"] - b["val_loss"]) < 0.05,
      f"lm char: bf16 losses {a['train_loss']}/{a['val_loss']} near fp32 {b['train_loss']}/{b['val_loss']}")

with tempfile.TemporaryDirectory() as tmp:
    spm = os.path.join(tmp, "tokenizer.model")
    sp = lm + ["--set", 'tokenizer="sentencepiece"', "--set", "vocab_size=400"]
    c = run_json(sp + ["--precision", "bf16", "--save-tokenizer-model", spm])
    check(c.get("precision") == "bf16" and c.get("tokenizer") == "sentencepiece", "lm sp: keys")
    check(c.get("vocab_size", 0) >= 260 and finite_pos(c["val_loss"]) and finite_pos(c["tokens_per_s"]),
          f"lm sp bf16: vocabulary and finite numbers {c}")
    d1 = run_json(sp + ["--save-tokenizer-model", spm])
    d2 = run_json(sp + ["--tokenizer-model", spm])
    check(d2.get("tokenizer_model") == spm and d2["vocab_size"] == d1["vocab_size"]
          and d2["val_loss"] == d1["val_loss"], f"lm sp: --tokenizer-model gives the same run {d1['val_loss']} {d2['val_loss']}")
p = subprocess.run([sys.executable] + lm + ["--set", 'precision="fp16"'], capture_output=True, text=True)
check(p.returncode != 0 and "precision" in p.stderr, "lm: precision fp16 rejected")

if failures:
    print(f"peers_bf16: {len(failures)} failure(s)")
    sys.exit(1)
print("peers_bf16: all passed")
