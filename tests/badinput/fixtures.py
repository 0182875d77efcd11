"""Small valid fixtures for the bad-input suite, made by the test itself with the moe binary:
a tiny text corpus, a training config, a trained run (a few steps: best/, latest/, metrics.jsonl,
data/*.tok), a routing trace, and a `moe layer --load` file. Every case copies what it needs and
mutates one thing (tests/badinput/cases.py)."""
import json
import os
import shutil
import importlib.util
import struct
import subprocess
import sys

# The Hugging Face folder is written by bench/peers/hf_make_tiny.py, which needs numpy (a test
# dependency, scripts/setup.sh MOE_WITH_TESTS); without it its cases are left out (cases.py).
HF_FIXTURE = importlib.util.find_spec("numpy") is not None

TINY_CONFIG = {
    "data": "corpus.txt",
    "tokenizer": "char",
    "n_layers": 2,
    "n_heads": 2,
    "n_kv_heads": 1,
    "d_model": 16,
    "d_ff": 32,
    "block_size": 16,
    "tie_embeddings": True,
    "moe_every": 1,
    "n_experts": 4,
    "top_k": 2,
    "expert_d_ff": 16,
    "router": "topk",
    "w_switch": 0.01,
    "batch_size": 4,
    "max_steps": 4,
    "lr": 3e-3,
    "min_lr": 3e-4,
    "warmup_steps": 1,
    "eval_every": 2,
    "eval_batches": 2,
    "log_every": 1,
    "save_every": 2,
    "threads": 1,
    "seed": 7,
}


def write_safetensors(path, tensors, metadata=None):
    """tensors: list of (name, dtype, shape, raw bytes). Plain struct, no numpy."""
    header, off, blobs = {}, 0, []
    if metadata:
        header["__metadata__"] = metadata
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(raw)]}
        off += len(raw)
        blobs.append(raw)
    h = json.dumps(header).encode()
    h += b" " * ((8 - (8 + len(h)) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def read_safetensors(path):
    """-> (header dict, data bytes)."""
    b = open(path, "rb").read()
    (n,) = struct.unpack("<Q", b[:8])
    return json.loads(b[8 : 8 + n]), b[8 + n :]


def rewrite_safetensors(path, header, data):
    h = json.dumps(header).encode()
    h += b" " * ((8 - (8 + len(h)) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + data)


def f32(values):
    return struct.pack("<%df" % len(values), *values)


def make(moe, src_dir, root):
    """Builds the fixtures under root/fx; returns its path."""
    fx = os.path.join(root, "fx")
    os.makedirs(fx)
    text = open(os.path.join(src_dir, "data", "tinyshakespeare.txt"), encoding="utf-8").read()
    with open(os.path.join(fx, "corpus.txt"), "w", encoding="utf-8") as f:
        f.write(text[:12000])
    with open(os.path.join(fx, "train.json"), "w") as f:
        json.dump(TINY_CONFIG, f, indent=1)
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def run(*args):
        r = subprocess.run([moe, *args], cwd=fx, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError("fixture step failed: moe %s\n%s%s" % (" ".join(args), r.stdout, r.stderr))

    run("train", "--config", "train.json", "--out", "run", "--quiet")
    run("generate", "run", "--max-tokens", "6", "--prompt", "ROMEO:", "--trace", "trace.jsonl",
        "--threads", "1")
    # The trained checkpoint as GGUF (arch llama, char vocabulary), for the gguf/ cases.
    run("convert", "run/best", "--to", "gguf", "--type", "f32", "--out", "model.gguf")
    # moe layer --load input: x, dy and the parameters of a topk layer E=4 d=8 f=8 T=6 (swiglu)
    T, d, E, f = 6, 8, 4, 8
    ts = [("x", "F32", [T, d], f32([((i * 7) % 11) / 11 - 0.5 for i in range(T * d)])),
          ("dy", "F32", [T, d], f32([0.1] * (T * d))),
          ("router.weight", "F32", [E, d], f32([((i * 3) % 5) / 10 - 0.2 for i in range(E * d)]))]
    for e in range(E):
        for w, shape in (("w1", [f, d]), ("w3", [f, d]), ("w2", [d, f])):
            n = shape[0] * shape[1]
            ts.append(("experts.%d.%s" % (e, w), "F32", shape,
                       f32([((i * (e + 2)) % 9) / 30 - 0.15 for i in range(n)])))
    write_safetensors(os.path.join(fx, "layer_in.safetensors"), ts)
    run("layer", "--load", "layer_in.safetensors", "--router", "topk", "--topk", "2", "--threads", "1")
    if HF_FIXTURE:  # a Hugging Face folder (issue 8): qwen2_moe, 3 shards + index, random weights
        sys.path.insert(0, os.path.join(src_dir, "bench", "peers"))
        import hf_make_tiny
        hf_make_tiny.make(os.path.join(fx, "hfmodel"), "qwen2_moe", shards=3, tokenizer_chars=4000)
        # its int8 form (issue 9): I8 matrices + F16 <name>_scale, one model.safetensors
        run("quantize", "hfmodel", "hfq8", "--type", "int8", "--threads", "1")
    return fx


def copy_into(fx, case_dir):
    shutil.copytree(fx, case_dir)
