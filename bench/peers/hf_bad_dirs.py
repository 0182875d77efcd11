"""Broken Hugging Face model directories for the bad-input tests: each kind mutates one thing
of a directory written by hf_make_tiny.py (which calls apply() for `--bad KIND`).

  hf_make_tiny.py --family qwen2_moe --shards 3 --out DIR --bad shard-missing
  hf_make_tiny.py --family mixtral --out DIR --bad list        (the kinds)

KINDS: kind -> (what it breaks, what a loader must name in its message, mutation). Kinds
marked "(shards)" need --shards 2 or more. Only the standard library: the bad-input suite runs
without numpy or torch."""
import json
import os
import struct

INDEX = "model.safetensors.index.json"


def _read_json(d, rel):
    with open(os.path.join(d, rel), encoding="utf-8") as f:
        return json.load(f)


def _write_json(d, rel, obj):
    with open(os.path.join(d, rel), "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)


def _shards(d):
    """Weight files in order: the index's shards, else model.safetensors."""
    if os.path.exists(os.path.join(d, INDEX)):
        return sorted(set(_read_json(d, INDEX)["weight_map"].values()))
    return ["model.safetensors"]


def _need_index(d):
    if not os.path.exists(os.path.join(d, INDEX)):
        raise SystemExit("hf_bad_dirs: this kind needs a sharded directory (--shards 2 or more)")
    return _read_json(d, INDEX)


def _st_header(path):
    with open(path, "rb") as f:
        b = f.read()
    (n,) = struct.unpack("<Q", b[:8])
    return json.loads(b[8:8 + n]), b[8 + n:]


def _st_rewrite(path, header, data):
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + data)


def _edit_tensor(d, pick, fn):
    """fn(entry) edits the header entry of the first tensor for which pick(name) holds."""
    for shard in _shards(d):
        p = os.path.join(d, shard)
        h, data = _st_header(p)
        for name in sorted(h):
            if name != "__metadata__" and pick(name):
                fn(h[name])
                _st_rewrite(p, h, data)
                return name
    raise SystemExit("hf_bad_dirs: no tensor to edit")


def _experts_key(c):
    return "num_local_experts" if c["model_type"] == "mixtral" else "num_experts"


def _config(fn):
    def f(d):
        c = _read_json(d, "config.json")
        fn(c)
        _write_json(d, "config.json", c)
    return f


def _truncate(d, n):
    p = os.path.join(d, _shards(d)[-1])
    with open(p, "rb") as f:
        b = f.read()
    with open(p, "wb") as f:
        f.write(b[:n] if n >= 0 else b[:len(b) + n])


def _shard_missing(d):
    _need_index(d)
    os.remove(os.path.join(d, _shards(d)[1]))


def _shard_not_indexed(d):
    ix = _need_index(d)
    second = _shards(d)[1]
    ix["weight_map"] = {n: s for n, s in ix["weight_map"].items() if s != second}
    _write_json(d, INDEX, ix)


def _index_extra(d):
    ix = _need_index(d)
    ix["weight_map"]["model.layers.0.self_attn.extra_proj.weight"] = _shards(d)[0]
    _write_json(d, INDEX, ix)


def _index_wrong_file(d):
    ix = _need_index(d)
    shards = _shards(d)
    ix["weight_map"]["model.embed_tokens.weight"] = shards[-1]  # it lives in the first
    _write_json(d, INDEX, ix)


def _index_escape(d):
    ix = _need_index(d)
    ix["weight_map"]["model.norm.weight"] = "../outside.safetensors"
    _write_json(d, INDEX, ix)


def _transpose(e):
    e["shape"] = e["shape"][::-1]


def _i32(e):
    if e["dtype"] == "F32":
        e["dtype"] = "I32"
    else:  # 2-byte types: I16 keeps the byte count right, so only the dtype is wrong
        e["dtype"] = "I16"


def _nan_router(d):
    for shard in _shards(d):
        p = os.path.join(d, shard)
        h, data = _st_header(p)
        for name in sorted(h):
            if name.endswith("gate.weight") and "experts" not in name and "shared" not in name:
                e = h[name]
                b = e["data_offsets"][0]
                nan = struct.pack("<f", float("nan")) if e["dtype"] == "F32" else b"\xc0\x7f"
                data = data[:b] + nan + data[b + len(nan):]
                _st_rewrite(p, h, data)
                return
    raise SystemExit("hf_bad_dirs: no router weight")


def _sliding(c):
    c["sliding_window"] = 16
    if c["model_type"] in ("qwen2_moe", "qwen3_moe"):
        c["use_sliding_window"] = True
        c["max_window_layers"] = c["num_hidden_layers"]


def _tok_unigram(d):
    p = os.path.join(d, "tokenizer.json")
    if not os.path.exists(p):
        raise SystemExit("hf_bad_dirs: this kind needs a tokenizer.json family (qwen, olmoe)")
    t = _read_json(d, "tokenizer.json")
    t["model"] = {"type": "Unigram", "unk_id": 0, "vocab": [["<unk>", 0.0], ["a", -1.0]]}
    _write_json(d, "tokenizer.json", t)


def _remove_tokenizer(d):
    for f in ("tokenizer.json", "tokenizer.model"):
        if os.path.exists(os.path.join(d, f)):
            os.remove(os.path.join(d, f))


# kind: (what is broken, the word a loader's message should name, mutation of the folder)
KINDS = {
    "truncated-shard": ("the last weight file lost its last 100 bytes", "truncated",
                        lambda d: _truncate(d, -100)),
    "truncated-header": ("the last weight file cut inside its JSON header", "safetensors",
                         lambda d: _truncate(d, 40)),
    "shard-missing": ("(shards) the second shard file deleted", "model-00002-of-00003.safetensors",
                      _shard_missing),
    "shard-not-indexed": ("(shards) the index lacks every tensor of the second shard, so they "
                          "are missing", "missing", _shard_not_indexed),
    "index-extra-tensor": ("(shards) the index names a tensor no shard has",
                           "extra_proj", _index_extra),
    "index-wrong-file": ("(shards) the index sends model.embed_tokens.weight to a shard without "
                         "it", "model.embed_tokens.weight", _index_wrong_file),
    "index-path-escape": ("(shards) the index names ../outside.safetensors", "outside.safetensors",
                          _index_escape),
    "index-not-json": ("(shards) the index is not JSON", INDEX,
                       lambda d: (_need_index(d), open(os.path.join(d, INDEX), "w").write("{"))),
    "wrong-shape": ("k_proj of layer 0 stored transposed", "k_proj",
                    lambda d: _edit_tensor(d, lambda n: n.endswith("0.self_attn.k_proj.weight"),
                                           _transpose)),
    "wrong-dtype": ("model.norm.weight stored as I32 (I16 in a 2-byte model)", "model.norm.weight",
                    lambda d: _edit_tensor(d, lambda n: n == "model.norm.weight", _i32)),
    "nan-router": ("a NaN in the first router weight", "gate.weight", _nan_router),
    "config-missing-hidden": ("config.json without hidden_size", "hidden_size",
                              _config(lambda c: c.pop("hidden_size"))),
    "config-missing-experts": ("config.json without the expert count", "num_",
                               _config(lambda c: c.pop(_experts_key(c)))),
    "config-topk-over-experts": ("num_experts_per_tok greater than the experts",
                                 "num_experts_per_tok",
                                 _config(lambda c: c.update(
                                     num_experts_per_tok=c[_experts_key(c)] + 1))),
    "config-kv-heads": ("num_key_value_heads does not divide num_attention_heads",
                        "num_key_value_heads", _config(lambda c: c.update(num_key_value_heads=3))),
    "config-eps-negative": ("rms_norm_eps -1e-6", "rms_norm_eps",
                            _config(lambda c: c.update(rms_norm_eps=-1e-6))),
    "config-hidden-float": ("hidden_size 64.5", "hidden_size",
                            _config(lambda c: c.update(hidden_size=64.5))),
    "config-vocab-mismatch": ("vocab_size 8 smaller than the embedding rows (or than bos/eos ids)",
                              "config.json",
                              _config(lambda c: c.update(vocab_size=8))),
    "unknown-model-type": ("model_type dbrx", "dbrx",
                           _config(lambda c: c.update(model_type="dbrx"))),
    "rope-scaling": ("rope_scaling yarn factor 4", "rope_scaling",
                     _config(lambda c: c.update(rope_scaling={
                         "type": "yarn", "rope_type": "yarn", "factor": 4.0,
                         "original_max_position_embeddings": c["max_position_embeddings"]}))),
    "sliding-window-short": ("(mixtral, qwen) sliding_window 16 < max_position_embeddings (qwen: "
                             "with use_sliding_window true; olmoe has no window)", "sliding_window",
                             _config(_sliding)),
    "config-not-json": ("config.json is not JSON", "config.json",
                        lambda d: open(os.path.join(d, "config.json"), "w").write('{"a": ')),
    "tokenizer-unigram": ("(qwen, olmoe) tokenizer.json of the Unigram kind", "Unigram",
                          _tok_unigram),
    "tokenizer-missing": ("no tokenizer.json / tokenizer.model", "tokenizer", _remove_tokenizer),
}


def apply(kind, d):
    if kind not in KINDS:
        raise SystemExit("hf_bad_dirs: unknown kind %r (one of: %s)" % (kind, ", ".join(KINDS)))
    KINDS[kind][2](d)
