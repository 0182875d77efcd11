#!/usr/bin/env python3
"""Writes the fuzzers' seed corpora (tests/fuzz/corpus/<target>/seed-*): small valid inputs and a
few edge cases for every parser. Real files come from a tiny training run (RUN, made with
`moe train --config configs/tiny-test.json --max-steps 10 --out RUN` and a
`moe generate RUN --max-tokens 6 --trace RUN/gen.trace.jsonl`); the rest is built here from the
formats of docs/formats.md and docs/metrics.md. Inputs the fuzzers found crashing are kept beside
the seeds as crash-* files, written by hand, never by this script.

usage: make_corpus.py RUN_DIR [OUT_DIR]   (OUT_DIR: tests/fuzz/corpus)"""
import json
import os
import struct
import sys

run = sys.argv[1]
out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.path.dirname(__file__), "corpus")
root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def put(target, name, data):
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def read(path):
    with open(path, "rb") as f:
        return f.read()


# ---- safetensors: small files of every dtype, and the header of a real model
def safetensors(tensors, metadata=None, pad=True):
    header, blobs, off = {}, b"", 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(raw)]}
        blobs += raw
        off += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    while pad and (8 + len(h)) % 8:
        h += b" "
    return struct.pack("<Q", len(h)) + h + blobs


f32 = struct.pack("<6f", 1, -2, 0.5, 3e38, -0.0, 1e-40)
put("safetensors", "f32", safetensors([("w", "F32", [2, 3], f32)], {"format": "pt"}))
put("safetensors", "all-dtypes", safetensors([
    ("a", "F32", [2], struct.pack("<2f", 1.5, -2)),
    ("b", "F16", [3], struct.pack("<3H", 0x3c00, 0x0001, 0x7c00)),
    ("c", "BF16", [2], struct.pack("<2H", 0x3f80, 0xff80)),
    ("d", "I32", [1], struct.pack("<i", -7)),
    ("e", "I64", [2], struct.pack("<2q", 1 << 40, -1)),
    ("f", "F64", [1], struct.pack("<d", 2.5)),
    ("s", "F32", [], struct.pack("<f", 4)),
    ("z", "F32", [0, 5], b""),
]))
put("safetensors", "empty", safetensors([]))
put("safetensors", "truncated", safetensors([("w", "F32", [2, 3], f32)])[:-4])
model = read(os.path.join(run, "best", "model.safetensors"))
hlen = struct.unpack("<Q", model[:8])[0]
put("safetensors", "real-header-no-data", model[:8 + hlen])
# the real header with only the first tensor's data kept (the others then point outside the data)
put("safetensors", "real-header-some-data", model[:8 + hlen + 256])

# ---- training configs
for c in sorted(os.listdir(os.path.join(root, "configs"))):
    put("train_config", c, read(os.path.join(root, "configs", c)))
put("train_config", "resolved.json", read(os.path.join(run, "train_config.json")))
put("train_config", "empty-object.json", "{}")
put("train_config", "comments.json", '// a note\n{"lr": 2e-3, /* peak */ "n_experts": 8}')
put("train_config", "wrong-type.json", '{"max_steps": "40"}')
put("train_config", "unknown-key.json", '{"n_expert": 4}')

# ---- checkpoint config.json
hf = json.loads(read(os.path.join(run, "best", "config.json")))
put("hf_config", "moe.json", json.dumps(hf, indent=2))
dense = dict(hf, num_local_experts=0, num_experts_per_tok=0)
dense["moe_cpp"] = dict(hf["moe_cpp"], moe_every=0)
put("hf_config", "dense.json", json.dumps(dense))
plain = {k: v for k, v in hf.items() if k != "moe_cpp"}
put("hf_config", "plain-mixtral.json", json.dumps(plain))
put("hf_config", "missing-key.json", json.dumps({k: v for k, v in hf.items() if k != "hidden_size"}))
put("hf_config", "not-object.json", "[1, 2]")

# ---- trainer_state.json
st = read(os.path.join(run, "latest", "trainer_state.json"))
put("trainer_state", "real.json", st)
sj = json.loads(st)
put("trainer_state", "no-loader.json", json.dumps({k: v for k, v in sj.items() if k != "loader"}))
put("trainer_state", "rng-3-words.json",
    json.dumps(dict(sj, loader={"rng": {"s": [1, 2, 3], "has_spare": False, "spare_bits": 0}})))
put("trainer_state", "layer-rngs.json",
    json.dumps(dict(sj, moe_layer_rngs={"1": sj["loader"]["rng"]})))

# ---- token files
def token_file(ids, vocab, dtype=None, count=None, tokenizer="char"):
    dtype = dtype or ("uint16" if vocab <= 65536 else "uint32")
    h = json.dumps({"version": 1, "vocab": vocab, "count": len(ids) if count is None else count,
                    "dtype": dtype, "tokenizer": tokenizer})
    while (16 + len(h)) % 8:
        h += " "
    fmt = "<%d%s" % (len(ids), "H" if dtype == "uint16" else "I")
    return b"MOETOK01" + struct.pack("<Q", len(h)) + h.encode() + struct.pack(fmt, *ids)

put("token_file", "u16.tok", token_file([0, 1, 64, 3, 3], 65))
put("token_file", "u32.tok", token_file([70000, 5, 0], 100000))
put("token_file", "empty.tok", token_file([], 65))
put("token_file", "id-outside-vocab.tok", token_file([0, 65], 65))
put("token_file", "count-mismatch.tok", token_file([1, 2], 65, count=3))
put("token_file", "real-head.tok", token_file(
    list(struct.unpack("<64H", read(os.path.join(run, "data", "val.tok"))[-128:])), 65))

# ---- routing traces
tr = read(os.path.join(run, "gen.trace.jsonl"))
put("trace", "real.jsonl", tr)
lines = tr.split(b"\n")
put("trace", "truncated-last-line.jsonl", b"\n".join(lines[:2]) + b"\n" + lines[2][:20])
put("trace", "minimal.jsonl", '{"layers":[{"experts":[1,0],"weights":[0.6,0.4]}]}\n')
put("trace", "no-layers.jsonl", '{"pos":0,"token":3,"text":"a"}\n')

# ---- metrics.jsonl
m = read(os.path.join(run, "metrics.jsonl"))
put("metrics", "real.jsonl", m)
put("metrics", "truncated.jsonl", m[: len(m) // 2])
put("metrics", "eval-only.jsonl", '{"step": 10, "val_loss": 3.2}\n')
put("metrics", "garbage.jsonl", "not json\n[1]\n{\"step\": \"x\"}\n")

# ---- vocab.json
v = read(os.path.join(run, "best", "vocab.json"))
put("vocab", "real.json", v)
put("vocab", "utf8.json", json.dumps(["a", "é", "€", "𝄞", "\n"], ensure_ascii=False))
put("vocab", "duplicate.json", '["a", "b", "a"]')
put("vocab", "empty-symbol.json", '["a", ""]')
put("vocab", "not-array.json", '{"a": 0}')


# ---- Hugging Face folders: config.json of each family, model.safetensors.index.json
def hf_family_seeds():
    base = {"vocab_size": 97, "hidden_size": 32, "num_hidden_layers": 3,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
            "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": False,
            "hidden_act": "silu", "num_experts_per_tok": 2, "bos_token_id": 1, "eos_token_id": 2}
    fams = {
        "mixtral": {"num_local_experts": 4, "intermediate_size": 24, "sliding_window": None},
        "qwen2_moe": {"num_experts": 4, "moe_intermediate_size": 24, "intermediate_size": 40,
                      "shared_expert_intermediate_size": 36, "mlp_only_layers": [1],
                      "decoder_sparse_step": 1, "norm_topk_prob": False,
                      "use_sliding_window": False, "sliding_window": 4096},
        "qwen3_moe": {"num_experts": 4, "moe_intermediate_size": 24, "intermediate_size": 40,
                      "head_dim": 12, "decoder_sparse_step": 2, "mlp_only_layers": [],
                      "norm_topk_prob": True, "eos_token_id": [2, 3]},
        "olmoe": {"num_experts": 4, "intermediate_size": 24, "clip_qkv": 0.6,
                  "norm_topk_prob": False},
    }
    for fam, extra in fams.items():
        c = dict(base, model_type=fam, **extra)
        put("hf_family", fam, json.dumps(c, indent=2))
    put("hf_family", "rope-scaling", json.dumps(dict(base, model_type="olmoe", num_experts=4,
        intermediate_size=8, rope_scaling={"type": "yarn", "factor": 4.0})))
    put("hf_family", "deepseek", json.dumps(dict(base, model_type="deepseek_v3")))
    idx = {"metadata": {"total_size": 1234}, "weight_map": {
        "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
        "model.norm.weight": "model-00002-of-00002.safetensors",
        "lm_head.weight": "model-00002-of-00002.safetensors"}}
    put("hf_index", "two-shards", json.dumps(idx, indent=2))
    put("hf_index", "path", json.dumps({"weight_map": {"a": "../a.safetensors"}}))
    put("hf_index", "empty", json.dumps({"weight_map": {}}))


hf_family_seeds()

# ---- tokenizer.json (Hugging Face byte-level BPE): built from the formats, no run needed
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tokenizer_seeds  # noqa: E402
tokenizer_seeds.write_seeds(lambda name, text: put("tokenizer_json", name, text))
