#!/usr/bin/python3
"""moe.cpp's GGUF export and import checked against llama.cpp itself (ctest gguf_vs_llamacpp).

  test_gguf_llamacpp.py MOE_BINARY WORK_DIR        (LLAMA_CPP_DIR: a built llama.cpp checkout)

Skips (exit 77) without LLAMA_CPP_DIR or without its bench peer build/bin/llama_peer
(scripts/build_llama_peer.sh). For each model (tiny random HF folders of the families this
llama.cpp runs, and a moe.cpp-trained checkpoint): `moe convert --to gguf --type f32`, then
llama.cpp (llama_peer, F32 KV cache) and moe.cpp (`moe eval X.gguf --prompt-ids --dump-logits`,
`moe generate --temperature 0`) on the same prompt ids:
  f32:  greedy ids identical; prompt logits within 1e-4 of the largest |logit|;
  f16, bf16, q8_0 exports: llama.cpp's logits on them within 3e-2 / 6e-2 / 6e-2 of moe.cpp's f32,
  and moe.cpp's on the f16 / bf16 files within 2e-3 / 1.5e-2 of llama.cpp's on the same file
  (llama.cpp rounds activations to the weight type before each product, moe.cpp keeps fp32);
  on CPUs with AVX-512 BF16, moe.cpp's opt-in bf16 dot products (MOE_BF16_DOT=1, activations
  rounded as llama.cpp rounds them) within 1e-5 of llama.cpp on the bf16 file;
  files written by llama.cpp's own tools: llama-quantize of our f32 file to F16 and BF16, read by
  moe.cpp (the same bounds), and to Q8_0, whose blocks must equal our own q8_0 export's bit for
  bit (the same quantiser) and which moe.cpp runs within 3e-2 of llama.cpp on the same file
  (llama.cpp quantises the activations to Q8_0 as well, moe.cpp's prefill keeps them fp32).
  q4_0: our export run by llama.cpp and by moe.cpp within 3e-2 of each other (both quantise the
  activations to int8 per 32 values), and llama-quantize --pure Q4_0 of our f32 file equal to
  our q4_0 export bit for bit (the same quantiser), run by moe.cpp within 3e-2 of llama.cpp.
"""
import json
import os
import shutil
import struct
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PROMPT = [1, 5, 9, 20, 33, 7, 2, 40]
N_GEN = 12
fails = []


def run(cmd, **kw):
    # the bounds below are for fp32 activations: MOE_BF16_DOT only where a check sets it
    kw.setdefault("env", {k: v for k, v in os.environ.items() if k != "MOE_BF16_DOT"})
    r = subprocess.run(cmd, capture_output=True, **kw)
    if r.returncode != 0:
        raise SystemExit("FAIL: %s\n%s" % (" ".join(cmd), r.stderr.decode(errors="replace")[-2000:]))
    return r.stdout.decode(errors="replace")  # generated text may end inside a UTF-8 character


def cpu_has_bf16_dot():
    """The CPU flags moe.cpp's opt-in bf16 dot-product kernels need (bf16_gemm.h)."""
    try:
        flags = set(open("/proc/cpuinfo").read().split())
    except OSError:
        return False
    return {"avx512f", "avx512bw", "avx512vl", "avx512_bf16"} <= flags


passed = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if ok:
        passed.append(what)
    if not ok:
        fails.append(what)


def read_logits(path):
    """The tensor 'logits' of a safetensors file written by moe eval --dump-logits."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        h = json.loads(f.read(n))
        data = f.read()
    t = h["logits"]
    a, b = t["data_offsets"]
    return np.frombuffer(data[a:b], dtype=np.float32).reshape(t["shape"])


def gguf_tensors(path):
    """name -> (ggml type, bytes) of a GGUF file, parsed here independently of moe.cpp."""
    buf = open(path, "rb").read()
    at = 0

    def u(fmt):
        nonlocal at
        v = struct.unpack_from("<" + fmt, buf, at)
        at += struct.calcsize("<" + fmt)
        return v[0]

    def s():
        nonlocal at
        n = u("Q")
        v = buf[at:at + n]
        at += n
        return v.decode()
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

    def skip(t):
        nonlocal at
        if t == 8:
            s()
        elif t == 9:
            et, n = u("I"), u("Q")
            for _ in range(n):
                skip(et)
        else:
            at += sizes[t]
    assert buf[:4] == b"GGUF"
    at = 8
    nt, nkv = u("Q"), u("Q")
    align = 32
    for _ in range(nkv):
        k, t = s(), u("I")
        if k == "general.alignment":
            align = u("I")
        else:
            skip(t)
    infos = []
    for _ in range(nt):
        name, nd = s(), u("I")
        ne = [u("Q") for _ in range(nd)]
        infos.append((name, ne, u("I"), u("Q")))
    start = (at + align - 1) // align * align
    out = {}
    for name, ne, t, off in infos:
        n = int(np.prod(ne))
        nb = {0: 4 * n, 1: 2 * n, 30: 2 * n, 8: n // 32 * 34, 2: n // 32 * 18}[t]
        out[name] = (t, buf[start + off:start + off + nb])
    return out


def main():
    moe, work = sys.argv[1], sys.argv[2]
    llama = os.environ.get("LLAMA_CPP_DIR", "")
    peer = os.path.join(llama, "build", "bin", "llama_peer")
    quant = os.path.join(llama, "build", "bin", "llama-quantize")
    if not llama or not os.path.exists(peer):
        print("SKIP: no LLAMA_CPP_DIR with build/bin/llama_peer (scripts/build_llama_peer.sh)")
        return 77
    os.makedirs(work, exist_ok=True)
    py = sys.executable
    models = {}
    # The tiny folders, with only what this llama.cpp's graphs compute (Feb 2025: qwen2moe has
    # no dense layers, olmoe no GQA and no clip_qkv; qwen3moe is not in it yet).
    for name, args in [("mixtral", ["--family", "mixtral"]),
                       ("qwen2_moe", ["--family", "qwen2_moe", "--mlp-only-layers", "",
                                     "--shared-ff", "64"]),
                       ("olmoe", ["--family", "olmoe", "--kv-heads", "4", "--clip-qkv", "0",
                                 "--expert-ff", "64"])]:
        d = os.path.join(work, name)
        run([py, os.path.join(HERE, "hf_make_tiny.py"), "--out", d] + args)
        models[name] = d
    # A moe.cpp-trained checkpoint (char vocabulary, Mixtral family).
    run_dir = os.path.join(work, "trained")
    if os.path.isdir(run_dir):
        shutil.rmtree(run_dir)
    run([moe, "train", "--config", os.path.join(ROOT, "configs", "tiny-test.json"), "--quiet",
         "--out", run_dir, "--moe-every", "1", "--tie-embeddings", "false",
         "--data", os.path.join(ROOT, "data", "tinyshakespeare.txt")], cwd=ROOT)
    models["moe_trained"] = os.path.join(run_dir, "best")

    for name, src in models.items():
        prompt = PROMPT if name != "moe_trained" else [18, 27, 39, 13]
        ids = ",".join(map(str, prompt))
        g = {}
        for t in ("f32", "f16", "bf16", "q8_0", "q4_0"):
            g[t] = os.path.join(work, "%s.%s.gguf" % (name, t))
            run([moe, "convert", src, "--to", "gguf", "--type", t, "--out", g[t]])

        def peer_run(path):
            return json.loads(run([peer, path, "--prompt-ids", ids, "--n", str(N_GEN)]))

        def moe_logits(path, tag):
            out = os.path.join(work, "%s.%s.logits.safetensors" % (name, tag))
            run([moe, "eval", path, "--prompt-ids", ids, "--dump-logits", out])
            return read_logits(out)

        ref = peer_run(g["f32"])
        ours = json.loads(run([moe, "generate", g["f32"], "--prompt-ids", ids, "--max-tokens",
                               str(N_GEN), "--temperature", "0", "--ignore-eos", "--json"]
                              ).strip().splitlines()[-1])
        check(ours["token_ids"] == ref["token_ids"],
              "%s f32: greedy %s (llama.cpp %s)" % (name, ours["token_ids"], ref["token_ids"]))
        lf = moe_logits(g["f32"], "f32")
        scale = float(np.abs(lf).max())
        e = float(np.abs(lf - np.array(ref["prompt_logits"])).max()) / scale
        check(e <= 1e-4, "%s f32: logits vs llama.cpp rel %.2e (<= 1e-4)" % (name, e))
        if name != "moe_trained":
            e = float(np.abs(lf - moe_logits(src, "src")).max()) / scale
            check(e <= 1e-6, "%s f32: GGUF vs source folder in moe.cpp rel %.2e (<= 1e-6)"
                  % (name, e))
        else:  # moe.cpp's own checkpoint runs in the training model: its greedy ids
            own = json.loads(run([moe, "generate", src, "--prompt-ids", ids, "--max-tokens",
                                  str(N_GEN), "--temperature", "0", "--json"]
                                 ).strip().splitlines()[-1])
            check(own["token_ids"] == ours["token_ids"], "%s: checkpoint greedy %s == GGUF's"
                  % (name, own["token_ids"]))
        for t, tol in (("f16", 3e-2), ("bf16", 6e-2), ("q8_0", 6e-2)):
            p = peer_run(g[t])
            e = float(np.abs(np.array(p["prompt_logits"]) - lf).max()) / scale
            check(e <= tol, "%s %s: llama.cpp on our export vs moe f32 rel %.2e (<= %g)"
                  % (name, t, e, tol))
            if t == "q8_0":
                # moe.cpp runs the same Q8_0 blocks: prompt logits by the prefill path (inputs
                # quantised per 32 values as decode does, weights widened), as llama.cpp
                # quantises its activations to Q8_0 too.
                e2 = float(np.abs(moe_logits(g[t], t) - np.array(p["prompt_logits"])).max()) / scale
                check(e2 <= 3e-2, "%s q8_0: moe.cpp vs llama.cpp on the same file rel %.2e (<= 3e-2)"
                      % (name, e2))
            if t != "q8_0":
                # llama.cpp rounds the activations to the weights' type before each product
                # (ggml's vec_dot_type), moe.cpp keeps them fp32: f16 ~5e-4, bf16 ~4e-3 apart.
                e2 = float(np.abs(moe_logits(g[t], t) - np.array(p["prompt_logits"])).max()) / scale
                tol2 = 2e-3 if t == "f16" else 1.5e-2
                check(e2 <= tol2, "%s %s: moe.cpp vs llama.cpp on the same file rel %.2e (<= %g)"
                      % (name, t, e2, tol2))
            if t == "bf16" and cpu_has_bf16_dot():
                # MOE_BF16_DOT=1: moe.cpp's vdpbf16ps kernels round the activations to bf16
                # too, as llama.cpp does: the same arithmetic, fp32 summation order apart
                # (measured 7.5e-8 .. 1.4e-7 on an Intel AVX-512 BF16 machine)
                out = os.path.join(work, "%s.bf16dot.logits.safetensors" % name)
                run([moe, "eval", g[t], "--prompt-ids", ids, "--dump-logits", out],
                    env=dict(os.environ, MOE_BF16_DOT="1"))
                e3 = float(np.abs(read_logits(out) - np.array(p["prompt_logits"])).max()) / scale
                check(e3 <= 1e-5, "%s bf16 with MOE_BF16_DOT=1 (bf16 activations): moe.cpp vs "
                      "llama.cpp on the same file rel %.2e (<= 1e-5)" % (name, e3))
        # Q4_0: the same blocks in both engines, the activations quantised per 32 values in both
        # (llama.cpp's vec_dot_type for Q4_0 is Q8_0); far from f32 on these random weights.
        p = peer_run(g["q4_0"])
        e = float(np.abs(moe_logits(g["q4_0"], "q4_0") - np.array(p["prompt_logits"])).max()) / scale
        check(e <= 3e-2, "%s q4_0: moe.cpp vs llama.cpp on the same file rel %.2e (<= 3e-2)"
              % (name, e))
        # Files written by llama.cpp's tools.
        if os.path.exists(quant):
            q = os.path.join(work, "%s.lq.Q4_0.gguf" % name)
            run([quant, "--pure", g["f32"], q, "Q4_0"])
            a, b = gguf_tensors(q), gguf_tensors(g["q4_0"])
            same = [k for k in a if a[k][0] == 2 and b.get(k, (0,))[0] == 2]
            diff = [k for k in same if a[k][1] != b[k][1]]
            check(len(same) > 0 and not diff and len(same) == sum(v[0] == 2 for v in b.values()),
                  "%s: llama-quantize --pure Q4_0 == moe convert q4_0 on %d tensors (differ: %s)"
                  % (name, len(same), diff[:3]))
            p = peer_run(q)
            e = float(np.abs(moe_logits(q, "lqQ4_0") - np.array(p["prompt_logits"])).max()) / scale
            check(e <= 3e-2, "%s: llama-quantize Q4_0 read by moe.cpp vs llama.cpp rel %.2e "
                  "(<= 3e-2)" % (name, e))
            for qt in ("F16", "BF16", "Q8_0"):
                q = os.path.join(work, "%s.lq.%s.gguf" % (name, qt))
                run([quant, g["f32"], q, qt])
                if qt == "Q8_0":
                    a, b = gguf_tensors(q), gguf_tensors(g["q8_0"])
                    same = [k for k in a if a[k][0] == 8 and b.get(k, (0,))[0] == 8]
                    diff = [k for k in same if a[k][1] != b[k][1]]
                    check(len(same) > 0 and not diff,
                          "%s: llama-quantize Q8_0 == moe convert q8_0 on %d tensors (differ: %s)"
                          % (name, len(same), diff[:3]))
                    p = peer_run(q)
                    e = float(np.abs(moe_logits(q, "lqQ8_0") - np.array(p["prompt_logits"])).max()) / scale
                    check(e <= 3e-2, "%s: llama-quantize Q8_0 read by moe.cpp vs llama.cpp rel %.2e "
                          "(<= 3e-2)" % (name, e))
                    continue
                p = peer_run(q)
                e = float(np.abs(moe_logits(q, "lq" + qt) - np.array(p["prompt_logits"])).max()) / scale
                tol2 = 2e-3 if qt == "F16" else 1.5e-2
                check(e <= tol2, "%s: llama-quantize %s read by moe.cpp vs llama.cpp rel %.2e (<= %g)"
                      % (name, qt, e, tol2))
            # llama.cpp's files as moe.cpp folders: F16/BF16 -> an HF f32 folder (the same
            # values), Q8_0 -> an int8 folder (the same blocks); each runs like the .gguf.
            for qt, how in (("F16", ["convert", "--to", "hf", "--out"]),
                            ("BF16", ["convert", "--to", "hf", "--out"]),
                            ("Q8_0", ["quantize", "--type", "int8"])):
                q = os.path.join(work, "%s.lq.%s.gguf" % (name, qt))
                d = os.path.join(work, "%s.lq.%s.folder" % (name, qt))
                shutil.rmtree(d, ignore_errors=True)
                if how[0] == "convert":
                    run([moe, "convert", q] + how[1:] + [d])
                else:
                    run([moe, "quantize", q, d] + how[1:])
                lq = moe_logits(q, "lq%s.again" % qt)
                e = float(np.abs(moe_logits(d, "lq%s.folder" % qt) - lq).max()) / scale
                check(e <= 1e-5, "%s: llama-quantize %s -> moe %s folder runs as the .gguf rel "
                      "%.2e (<= 1e-5)" % (name, qt, how[0], e))
        else:
            print("skip: no llama-quantize in %s" % quant)
    print("%d passed, %d failed" % (len(passed), len(fails)))
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
