#!/usr/bin/python3
"""`moe convert --to gguf` and the .gguf reader end to end, without llama.cpp (ctest gguf_e2e).

  gguf_e2e.py MOE_BINARY WORK_DIR

For each family's tiny random folder from bench/peers/hf_make_tiny.py with the family's own
switches (qwen2_moe: a dense layer and the gated shared expert; qwen3_moe: head_dim != hidden /
heads, dense layers; olmoe: clip_qkv and GQA; mixtral: the q/k row permutation), at f32 in one
file and bf16 in 2 shards, the GGUF must give what the folder gives, exactly: greedy ids, the
prompt logits (max |diff| <= 1e-6 of the largest), `moe eval --data` loss, `moe tokenize` ids
(plain and --special), `moe inspect --json` routing; `moe bench generate X.gguf` runs; a GGUF
retyped by `moe convert X.gguf --type bf16` equals the folder converted to bf16.
Back from GGUF to folders: `moe convert X.gguf --to hf` (f32 or bf16 GGUF) gives the GGUF's logits
exactly, its greedy ids and tokenize ids; `moe quantize X.gguf --type int8` equals the int8 folder
quantised from the source folder (logits exactly; within the int8 tolerance of f32), also from a
Q8_0 GGUF (mixtral); an F16 GGUF -> hf f32 gives its logits exactly (mixtral). Skips (77)
without numpy.
"""
import json
import os
import shutil
import struct
import subprocess
import sys

try:
    import numpy as np
except ImportError:
    print("SKIP: no numpy for bench/peers/hf_make_tiny.py")
    sys.exit(77)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
passed, fails = [], []
TEXT = "First Citizen:\nBefore we proceed any further, hear me speak. 漢字 🙂  tabs\tend"


def run(cmd):
    r = subprocess.run(cmd, capture_output=True)
    if r.returncode != 0:
        raise SystemExit("FAIL: %s\n%s" % (" ".join(cmd), r.stderr.decode(errors="replace")))
    return r.stdout.decode(errors="replace")


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    (passed if ok else fails).append(what)


def logits(moe, m, ids, out):
    run([moe, "eval", m, "--prompt-ids", ids, "--dump-logits", out])
    with open(out, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        h = json.loads(f.read(n))
        data = f.read()
    a, b = h["logits"]["data_offsets"]
    return np.frombuffer(data[a:b], dtype=np.float32)


def last_json(s):
    return json.loads(s.strip().splitlines()[-1])


def greedy(moe, m, ids):
    return last_json(run([moe, "generate", m, "--prompt-ids", ids, "--max-tokens", "12",
                          "--temperature", "0", "--ignore-eos", "--json"]))["token_ids"]


def back_from_gguf(moe, d, g, a, ids, gtype, tag):
    """GGUF -> folders (convert --to hf, quantize): d the source folder, g its GGUF of type
    gtype, a the folder's prompt logits."""
    h = g + ".hf"
    run([moe, "convert", g, "--to", "hf", "--out", h, "--dtype", gtype])
    lg, lh = logits(moe, g, ids, h + ".g.st"), logits(moe, h, ids, h + ".h.st")
    check(np.array_equal(lg, lh), "%s: GGUF -> hf %s: logits identical to the GGUF's (max diff %.2e)"
          % (tag, gtype, float(np.abs(lg - lh).max())))
    check(greedy(moe, h, ids) == greedy(moe, g, ids), "%s: GGUF -> hf: greedy ids identical" % tag)
    for extra in ([], ["--special"]):
        ta = last_json(run([moe, "tokenize", d, "--text", TEXT, "--json"] + extra))["ids"]
        th = last_json(run([moe, "tokenize", h, "--text", TEXT, "--json"] + extra))["ids"]
        check(ta == th, "%s: GGUF -> hf: tokenize %s as the source folder" % (tag, " ".join(extra)))
    if gtype != "f32":
        return
    qg, qd = g + ".int8", d + ".int8"
    run([moe, "quantize", g, qg, "--type", "int8"])
    run([moe, "quantize", d, qd, "--type", "int8"])
    a8, b8 = logits(moe, qd, ids, qd + ".st"), logits(moe, qg, ids, qg + ".st")
    check(np.array_equal(a8, b8), "%s: quantize GGUF int8 == quantize folder int8 (max diff %.2e)"
          % (tag, float(np.abs(a8 - b8).max())))
    check(greedy(moe, qg, ids) == greedy(moe, qd, ids), "%s: int8 from GGUF: greedy ids as from "
          "the folder" % tag)
    e = float(np.abs(b8 - a).max() / np.abs(a).max())
    check(0 < e < 0.3, "%s: int8 from GGUF within the int8 tolerance of f32 (rel %.2e < 0.3)"
          % (tag, e))
    if tag.startswith("mixtral"):  # every width a multiple of 32: the whole model fits Q8_0
        g8, q8 = g + ".q8_0.gguf", g + ".q8_0.int8"
        run([moe, "convert", d, "--to", "gguf", "--type", "q8_0", "--out", g8])
        run([moe, "quantize", g8, q8, "--type", "int8"])
        c8 = logits(moe, q8, ids, q8 + ".st")
        check(np.array_equal(c8, a8), "%s: quantize Q8_0 GGUF int8 == quantize folder int8 "
              "(max diff %.2e)" % (tag, float(np.abs(c8 - a8).max())))
        g16, h16 = g + ".f16.gguf", g + ".f16.hf"  # F16 widens exactly: the same numbers
        run([moe, "convert", d, "--to", "gguf", "--type", "f16", "--out", g16])
        run([moe, "convert", g16, "--to", "hf", "--out", h16])
        x, y = logits(moe, g16, ids, g16 + ".st"), logits(moe, h16, ids, h16 + ".st")
        check(np.array_equal(x, y), "%s: F16 GGUF -> hf f32: logits identical (max diff %.2e)"
              % (tag, float(np.abs(x - y).max())))
        # Q4_0: requantising its own dequantised values gives the same blocks (each block's
        # largest |x| is stored exactly as -8 d, the rest land on their nibbles again), so
        # GGUF q4_0 -> hf f32 -> GGUF q4_0 runs identically; the f32 folder in between holds the
        # same weights, run without the activation quantisation (a few % apart).
        g4, h4, g4b = g + ".q4_0.gguf", g + ".q4_0.hf", g + ".q4_0.again.gguf"
        run([moe, "convert", d, "--to", "gguf", "--type", "q4_0", "--out", g4])
        run([moe, "convert", g4, "--to", "hf", "--out", h4])
        run([moe, "convert", h4, "--to", "gguf", "--type", "q4_0", "--out", g4b])
        x, y = logits(moe, g4, ids, g4 + ".st"), logits(moe, g4b, ids, g4b + ".st")
        check(np.array_equal(x, y), "%s: Q4_0 GGUF -> hf -> Q4_0 GGUF: logits identical (max "
              "diff %.2e)" % (tag, float(np.abs(x - y).max())))
        z = logits(moe, h4, ids, h4 + ".st")
        e = float(np.abs(x - z).max() / np.abs(z).max())
        check(e < 5e-2, "%s: Q4_0 GGUF vs its f32 folder rel %.2e (< 5e-2)" % (tag, e))
        e = float(np.abs(x - a).max() / np.abs(a).max())
        check(0 < e < 0.5, "%s: Q4_0 GGUF within the int4 tolerance of f32 (rel %.2e < 0.5)"
              % (tag, e))


def main():
    moe, work = sys.argv[1], sys.argv[2]
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    text_file = os.path.join(work, "text.txt")
    with open(text_file, "w", encoding="utf-8") as f:
        f.write(open(os.path.join(ROOT, "data", "tinyshakespeare.txt"), encoding="utf-8").read()[:3000])
    ids = "1,5,9,20,33,7,2,40,11"
    for fam in ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe"):
        for dtype, shards, gtype in (("f32", 1, "f32"), ("bf16", 2, "bf16")):
            d = os.path.join(work, "%s_%s" % (fam, dtype))
            run([sys.executable, os.path.join(ROOT, "bench", "peers", "hf_make_tiny.py"),
                 "--family", fam, "--out", d, "--dtype", dtype, "--shards", str(shards)])
            g = d + ".gguf"
            run([moe, "convert", d, "--to", "gguf", "--type", gtype, "--out", g])
            tag = "%s %s" % (fam, dtype)
            a, b = logits(moe, d, ids, d + ".a.st"), logits(moe, g, ids, d + ".b.st")
            e = float(np.abs(a - b).max() / np.abs(a).max())
            check(e <= 1e-6, "%s: prompt logits GGUF vs folder rel %.2e (<= 1e-6)" % (tag, e))
            gen = [moe, "generate", None, "--prompt-ids", ids, "--max-tokens", "12",
                   "--temperature", "0", "--ignore-eos", "--json"]
            ga = last_json(run(gen[:2] + [d] + gen[3:]))["token_ids"]
            gb = last_json(run(gen[:2] + [g] + gen[3:]))["token_ids"]
            check(ga == gb, "%s: greedy ids %s" % (tag, gb))
            for extra in ([], ["--special"]):
                ta = last_json(run([moe, "tokenize", d, "--text", TEXT, "--json"] + extra))["ids"]
                tb = last_json(run([moe, "tokenize", g, "--text", TEXT, "--json"] + extra))["ids"]
                check(ta == tb, "%s: tokenize %s identical (%d ids)" % (tag, " ".join(extra), len(ta)))
            ev = [moe, "eval", None, "--data", text_file, "--block", "32", "--json"]
            la = last_json(run(ev[:2] + [d] + ev[3:]))["val_loss"]
            lb = last_json(run(ev[:2] + [g] + ev[3:]))["val_loss"]
            check(abs(la - lb) <= 1e-6 * abs(la), "%s: eval --data loss %.8f vs %.8f" % (tag, lb, la))
            ia = last_json(run([moe, "inspect", d, "--text", "To be or not", "--json"]))
            ib = last_json(run([moe, "inspect", g, "--text", "To be or not", "--json"]))
            ia.pop("title", None), ib.pop("title", None)
            ra = json.dumps(ia.get("tokens", ia), sort_keys=True)
            rb = json.dumps(ib.get("tokens", ib), sort_keys=True)
            check(ra == rb, "%s: inspect routing identical" % tag)
            back_from_gguf(moe, d, g, a, ids, gtype, tag)
            if dtype == "f32":
                bj = last_json(run([moe, "bench", "generate", g, "--prefill", "8", "--decode", "4",
                                    "--reps", "1", "--json"]))
                check(bj.get("decode_tok_s", 0) > 0, "%s: bench generate on the GGUF runs" % tag)
                # the KV cache a decoded token reads: fp32 keys and values of the positions so
                # far in every layer, the mean over positions 8 .. 11 (9 .. 12 of them)
                with open(os.path.join(d, "config.json")) as f:
                    cfg = json.load(f)
                hd = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
                kv = cfg["num_hidden_layers"] * 2 * cfg["num_key_value_heads"] * hd * 4 * 10.5
                check(abs(bj.get("kv_bytes_per_token", 0) - kv) <= 1e-9 * kv and
                      bj["bytes_per_token"] == bj["weight_bytes_per_token"] + bj["kv_bytes_per_token"],
                      "%s: bench generate counts the KV cache's bytes (%s vs %.0f)" %
                      (tag, bj.get("kv_bytes_per_token"), kv))
                check(0 < bj.get("bandwidth_median_gb_s", 0) <= bj["bandwidth_gb_s"],
                      "%s: bench generate's probe median (%s) within (0, best %s]" %
                      (tag, bj.get("bandwidth_median_gb_s"), bj["bandwidth_gb_s"]))
                g2 = d + ".retyped.gguf"
                run([moe, "convert", g, "--to", "gguf", "--type", "bf16", "--out", g2])
                g3 = d + ".direct-bf16.gguf"
                run([moe, "convert", d, "--to", "gguf", "--type", "bf16", "--out", g3])
                e = float(np.abs(logits(moe, g3, ids, g3 + ".a.st") - logits(moe, g2, ids, g2 + ".b.st")).max())
                check(e == 0.0, "%s: GGUF f32 -> bf16 == folder -> bf16 (max diff %.2e)" % (fam, e))
                e = float(np.abs(logits(moe, g3, ids, g3 + ".a.st") - a).max() / np.abs(a).max())
                check(0 < e < 0.2, "%s: the bf16 GGUF differs from f32 by bf16 rounding (rel %.2e)"
                      % (fam, e))
    print("%d passed, %d failed" % (len(passed), len(fails)))
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
