#!/usr/bin/python3
"""Tiny random-weight Hugging Face MoE model directories, laid out exactly as the Hub publishes
them, for checking moe.cpp's HF loader against the PyTorch reference (hf_reference.py).

  hf_make_tiny.py --family mixtral|qwen2_moe|qwen3_moe|olmoe --out DIR
                  [--dtype f32|bf16|f16] [--shards N] [--seed S] [size knobs, see --help]
  hf_make_tiny.py --family F --out DIR --bad KIND     (a broken directory; --bad list: the kinds)

DIR gets config.json (that family's real keys and model_type), model.safetensors or
model-0000i-of-0000n.safetensors + model.safetensors.index.json, generation_config.json,
tokenizer_config.json and a tokenizer trained here on data/tinyshakespeare.txt:
  - mixtral: tokenizer.model, SentencePiece BPE with byte fallback and a dummy prefix, unk 0,
    bos 1, eos 2, like Llama/Mixtral (needs python3-sentencepiece); add_bos_token true.
  - qwen2_moe, qwen3_moe: tokenizer.json, byte-level BPE with Qwen2's pre-tokenizer regex; the
    specials (<|endoftext|>, <|im_start|>, <|im_end|>) after the BPE vocabulary and only in
    added_tokens, as Qwen ships them.
  - olmoe: tokenizer.json, byte-level BPE with the GPT-2 pattern (ByteLevel use_regex, as
    GPT-NeoX/OLMo ship it); <|endoftext|> 0 and <|padding|> 1 first, in the vocabulary too.
config.json's vocab_size is the tokenizer's size (mixtral) or padded up to a multiple of 64
(Qwen, OLMoE pad likewise); the extra rows are ordinary random weights.

Weights: N(0, std) with norms 1 + N(0, 0.1) (a misplaced norm weight shows), the routers wider
(--router-std) so that top-k choices are not near-ties and greedy continuations are stable
across implementations, and the LM head wider still (--head-std): peaked predictions, so that a
loss computed on other tokens than the reference's differs by far more than the tolerance. Only numpy (and sentencepiece for mixtral): same seed, same bytes.
"""
import argparse
import io
import json
import os
import re
import shutil
import sys
import unicodedata

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORPUS = os.path.join(ROOT, "data", "tinyshakespeare.txt")
FAMILIES = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe")

# Per family: the defaults of the size knobs (tiny, GQA everywhere, odd-ish widths).
DEFAULTS = {
    "mixtral": dict(hidden=64, layers=2, heads=4, kv_heads=2, head_dim=None, experts=4, topk=2,
                    expert_ff=96, ff=None, shared_ff=None, vocab=384, max_pos=512,
                    rope_theta=1e6, eps=1e-5),
    "qwen2_moe": dict(hidden=64, layers=4, heads=4, kv_heads=2, head_dim=None, experts=6, topk=2,
                      expert_ff=32, ff=80, shared_ff=48, vocab=400, max_pos=512,
                      rope_theta=1e6, eps=1e-6),
    "qwen3_moe": dict(hidden=64, layers=4, heads=4, kv_heads=2, head_dim=24, experts=8, topk=2,
                      expert_ff=40, ff=96, shared_ff=None, vocab=400, max_pos=512,
                      rope_theta=1e6, eps=1e-6),
    "olmoe": dict(hidden=64, layers=2, heads=4, kv_heads=2, head_dim=None, experts=8, topk=2,
                  expert_ff=48, ff=None, shared_ff=None, vocab=400, max_pos=512,
                  rope_theta=1e4, eps=1e-5),
}

# ---------------------------------------------------------------------------------------------
# byte-level BPE (GPT-2 byte map, a tiny trainer, tokenizer.json)


def bytes_to_unicode():
    """GPT-2's map of the 256 bytes onto printable code points: the printable Latin-1 bytes map
    to themselves, the others (controls, space, 0x7f-0xa0, 0xad) to 256, 257, ... in order."""
    keep = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    out, extra = {}, 0
    for b in keep:
        out[b] = chr(b)
    for b in range(256):
        if b not in out:
            out[b] = chr(256 + extra)
            extra += 1
    return out, keep + [b for b in range(256) if b not in keep]


def _unicode_classes():
    """Regex class bodies listing every code point of general category L* and N* (Python's re
    has no \\p{L}; the lists are exact for this Python's Unicode version)."""
    ranges = {"L": [], "N": []}
    start, prev, cur = None, None, None
    for cp in range(0x110001):
        k = unicodedata.category(chr(cp))[0] if cp < 0x110000 else None
        k = k if k in ranges else None
        if k != cur or (cur is not None and cp != prev + 1):
            if cur is not None:
                ranges[cur].append((start, prev))
            start, cur = cp, k
        prev = cp
    esc = lambda c: "\\U%08x" % c  # noqa: E731
    return {k: "".join(esc(a) if a == b else esc(a) + "-" + esc(b) for a, b in r)
            for k, r in ranges.items()}


_PCLASS = {}


def pattern_for_python(pcre):
    """The HF/PCRE pattern with \\p{L} / \\p{N} spelt out for Python's re."""
    if not _PCLASS:
        _PCLASS.update(_unicode_classes())
    out = pcre
    # inside a class: [^\s\p{L}\p{N}] -> [^\s<L><N>]; outside: \p{L}+ -> [<L>]+
    out = re.sub(r"\[(\^?)([^\]]*)\]", lambda m: "[" + m.group(1) + m.group(2)
                 .replace("\\p{L}", _PCLASS["L"]).replace("\\p{N}", _PCLASS["N"]) + "]", out)
    for k in "LN":
        out = out.replace("\\p{%s}" % k, "[" + _PCLASS[k] + "]")
    return re.compile(out)


# Qwen2's pre-tokenizer (tokenizer.json of every Qwen2/2.5/3 model) and GPT-2's (the ByteLevel
# pre-tokenizer's built-in pattern, use_regex true).
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                 r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"


def train_bpe(text, pattern, n_merges):
    """Byte-level BPE merges: pre-tokenise, map bytes through the GPT-2 map, repeatedly merge
    the most frequent adjacent pair (ties: the smallest pair, so the result is deterministic)."""
    b2u, _ = bytes_to_unicode()
    counts = {}
    for piece in pattern_for_python(pattern).findall(text):
        w = tuple(b2u[b] for b in piece.encode("utf-8"))
        counts[w] = counts.get(w, 0) + 1
    words = [(list(w), c) for w, c in sorted(counts.items())]
    merges = []
    for _ in range(n_merges):
        pairs = {}
        for w, c in words:
            for a, b in zip(w, w[1:]):
                pairs[(a, b)] = pairs.get((a, b), 0) + c
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        if pairs[best] < 2:
            break
        merges.append(best)
        a, b = best
        for w, _c in words:
            i = 0
            while i < len(w) - 1:
                if w[i] == a and w[i + 1] == b:
                    w[i:i + 2] = [a + b]
                i += 1
    return merges


def bpe_encode(text, tok):
    """Reference encoder for the tokenizer.json written here (no special tokens in text):
    pre-tokenise, then per piece apply the lowest-ranked merge until none applies."""
    b2u, _ = bytes_to_unicode()
    ranks = {tuple(m.split(" ")): i for i, m in enumerate(tok["model"]["merges"])}
    vocab = tok["model"]["vocab"]
    pre = tok["pre_tokenizer"]
    pattern = (pre["pretokenizers"][0]["pattern"]["Regex"] if pre["type"] == "Sequence"
               else GPT2_PATTERN)
    text = unicodedata.normalize("NFC", text)
    ids = []
    for piece in pattern_for_python(pattern).findall(text):
        w = [b2u[b] for b in piece.encode("utf-8")]
        while len(w) > 1:
            r = [(ranks.get((a, b), 1 << 60), i) for i, (a, b) in enumerate(zip(w, w[1:]))]
            best, i = min(r)
            if best == 1 << 60:
                break
            w[i:i + 2] = [w[i] + w[i + 1]]
        ids += [vocab[s] for s in w]
    return ids


def _added(i, content):
    return {"id": i, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": True}


_BPE_CACHE = {}


def byte_level_tokenizer(style, text, vocab_target):
    """-> (tokenizer.json object, specials {content: id}, size). style: qwen2 | gpt2."""
    key = (style, text, vocab_target)
    if key not in _BPE_CACHE:
        _BPE_CACHE[key] = _byte_level_tokenizer(style, text, vocab_target)
    return _BPE_CACHE[key]


def _byte_level_tokenizer(style, text, vocab_target):
    _, order = bytes_to_unicode()
    b2u, _ = bytes_to_unicode()
    if style == "qwen2":
        specials_first, specials_last = [], ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        pattern = QWEN2_PATTERN
    else:
        specials_first, specials_last = ["<|endoftext|>", "<|padding|>"], []
        pattern = GPT2_PATTERN
    n_merges = vocab_target - 256 - len(specials_first) - len(specials_last)
    if n_merges < 0:
        raise SystemExit("hf_make_tiny.py: --vocab %d is below 256 bytes + specials" % vocab_target)
    merges = train_bpe(text, pattern, n_merges)
    vocab, specials = {}, {}
    for s in specials_first:
        specials[s] = vocab[s] = len(vocab)
    for b in order:
        vocab[b2u[b]] = len(vocab)
    for a, b in merges:
        if a + b not in vocab:
            vocab[a + b] = len(vocab)
    added = [_added(specials[s], s) for s in specials_first]
    for s in specials_last:  # Qwen: specials only in added_tokens, after the BPE ids
        specials[s] = len(vocab) + len(added)
        added.append(_added(specials[s], s))
    size = len(vocab) + len(specials_last)
    if style == "qwen2":
        bl = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
              "use_regex": False}
        pre = {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_PATTERN}, "behavior": "Isolated",
             "invert": False}, bl]}
    else:
        bl = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
              "use_regex": True}
        pre = bl
    tok = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "NFC"}, "pre_tokenizer": pre, "post_processor": bl,
        "decoder": bl,
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": "", "end_of_word_suffix": "", "fuse_unk": False,
                  "byte_fallback": False, "vocab": vocab,
                  "merges": ["%s %s" % (a, b) for a, b in merges]},
    }
    return tok, specials, size


def sentencepiece_tokenizer(path, text, vocab_size):
    """tokenizer.model like Llama's/Mixtral's: BPE, byte fallback, digits split, dummy prefix,
    no whitespace folding, identity normalisation; <unk> 0, <s> 1, </s> 2."""
    try:
        import sentencepiece as spm
    except ImportError:
        raise SystemExit("hf_make_tiny.py: mixtral needs python3-sentencepiece "
                         "(MOE_WITH_TESTS=1 scripts/setup.sh)")
    # lines through an iterator and the model through a writer: the trainer spec stored in
    # the model then holds no temporary path, so the same text gives the same bytes
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text.splitlines()), model_writer=model, vocab_size=vocab_size,
        model_type="bpe", byte_fallback=True, split_digits=True, add_dummy_prefix=True,
        remove_extra_whitespaces=False, normalization_rule_name="identity",
        allow_whitespace_only_pieces=True, character_coverage=1.0, unk_id=0, bos_id=1,
        eos_id=2, pad_id=-1, num_threads=1, input_sentence_size=0, minloglevel=2)
    with open(path, "wb") as f:
        f.write(model.getvalue())
    sp = spm.SentencePieceProcessor(model_file=path)
    return sp.get_piece_size()


# ---------------------------------------------------------------------------------------------
# config.json and the tensor table

MIXTRAL_CHAT = ("{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
                "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == "
                "'assistant' %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}")
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
          "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|im_start|>assistant\\n' }}{% endif %}")
TORCH_DTYPE = {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}


def make_config(fam, a, vocab_size, specials):
    common = {
        "attention_dropout": 0.0, "hidden_act": "silu", "hidden_size": a.hidden,
        "initializer_range": 0.02, "max_position_embeddings": a.max_pos,
        "model_type": fam, "num_attention_heads": a.heads, "num_hidden_layers": a.layers,
        "num_key_value_heads": a.kv_heads, "num_experts_per_tok": a.topk,
        "output_router_logits": False, "rms_norm_eps": a.eps, "rope_theta": a.rope_theta,
        "tie_word_embeddings": a.tie, "torch_dtype": TORCH_DTYPE[a.dtype],
        "use_cache": True, "vocab_size": vocab_size,
    }
    if fam == "mixtral":
        c = dict(common, architectures=["MixtralForCausalLM"], bos_token_id=1, eos_token_id=2,
                 intermediate_size=a.expert_ff, num_local_experts=a.experts,
                 router_aux_loss_coef=0.02, sliding_window=None,
                 transformers_version="4.36.0.dev0")
    elif fam == "qwen2_moe":
        eot = specials["<|endoftext|>"]
        c = dict(common, architectures=["Qwen2MoeForCausalLM"], bos_token_id=eot,
                 eos_token_id=eot, decoder_sparse_step=a.sparse_step,
                 intermediate_size=a.ff, max_window_layers=a.layers,
                 mlp_only_layers=a.mlp_only_layers, moe_intermediate_size=a.expert_ff,
                 norm_topk_prob=a.norm_topk, num_experts=a.experts,
                 router_aux_loss_coef=0.001, shared_expert_intermediate_size=a.shared_ff,
                 # Qwen1.5-MoE ships a window wider than the context, switched off
                 sliding_window=max(4096, a.max_pos * 2), use_sliding_window=False,
                 transformers_version="4.40.0.dev0")
    elif fam == "qwen3_moe":
        c = dict(common, architectures=["Qwen3MoeForCausalLM"], attention_bias=a.attention_bias,
                 bos_token_id=specials["<|endoftext|>"], eos_token_id=specials["<|im_end|>"],
                 decoder_sparse_step=a.sparse_step, head_dim=a.head_dim, intermediate_size=a.ff,
                 max_window_layers=a.layers, mlp_only_layers=a.mlp_only_layers,
                 moe_intermediate_size=a.expert_ff, norm_topk_prob=a.norm_topk,
                 num_experts=a.experts, rope_scaling=None, router_aux_loss_coef=0.001,
                 sliding_window=None, use_sliding_window=False,
                 transformers_version="4.51.0")
    else:
        c = dict(common, architectures=["OlmoeForCausalLM"], attention_bias=a.attention_bias,
                 bos_token_id=None, clip_qkv=a.clip_qkv, eos_token_id=specials["<|endoftext|>"],
                 pad_token_id=specials["<|padding|>"], intermediate_size=a.expert_ff,
                 norm_topk_prob=a.norm_topk, num_experts=a.experts, rope_scaling=None,
                 router_aux_loss_coef=0.01, transformers_version="4.43.0.dev0")
    return dict(sorted(c.items()))


def is_sparse(c, layer):
    """Which layers hold experts (HF Qwen2MoeDecoderLayer's rule; mixtral and olmoe: all)."""
    if c["model_type"] in ("mixtral", "olmoe"):
        return True
    return (layer not in c.get("mlp_only_layers", []) and c["num_experts"] > 0
            and (layer + 1) % c.get("decoder_sparse_step", 1) == 0)


def head_dim(c):
    return c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]


def tensor_table(c):
    """[(name, shape, kind)] in the order HF's state dict lists them; kind picks the init."""
    fam, d, V = c["model_type"], c["hidden_size"], c["vocab_size"]
    H, KV, hd = c["num_attention_heads"], c["num_key_value_heads"], head_dim(c)
    E = c.get("num_local_experts", c.get("num_experts"))
    out = [("model.embed_tokens.weight", (V, d), "head" if c["tie_word_embeddings"] else "w")]
    for layer in range(c["num_hidden_layers"]):
        p = "model.layers.%d." % layer
        out.append((p + "input_layernorm.weight", (d,), "norm"))
        a = p + "self_attn."
        out += [(a + "q_proj.weight", (H * hd, d), "w"), (a + "k_proj.weight", (KV * hd, d), "w"),
                (a + "v_proj.weight", (KV * hd, d), "w"), (a + "o_proj.weight", (d, H * hd), "w")]
        if fam == "qwen2_moe" or c.get("attention_bias"):
            out += [(a + "q_proj.bias", (H * hd,), "bias"), (a + "k_proj.bias", (KV * hd,), "bias"),
                    (a + "v_proj.bias", (KV * hd,), "bias")]
        if c.get("attention_bias"):  # qwen3_moe, olmoe: o_proj too
            out.append((a + "o_proj.bias", (d,), "bias"))
        if fam == "qwen3_moe":
            out += [(a + "q_norm.weight", (hd,), "norm"), (a + "k_norm.weight", (hd,), "norm")]
        if fam == "olmoe":
            out += [(a + "q_norm.weight", (H * hd,), "norm"),
                    (a + "k_norm.weight", (KV * hd,), "norm")]
        out.append((p + "post_attention_layernorm.weight", (d,), "norm"))
        if fam == "mixtral":
            m, f = p + "block_sparse_moe.", c["intermediate_size"]
            out.append((m + "gate.weight", (E, d), "router"))
            for j in range(E):
                out += [(m + "experts.%d.w1.weight" % j, (f, d), "w"),
                        (m + "experts.%d.w2.weight" % j, (d, f), "w"),
                        (m + "experts.%d.w3.weight" % j, (f, d), "w")]
        elif is_sparse(c, layer):
            m = p + "mlp."
            f = c["intermediate_size"] if fam == "olmoe" else c["moe_intermediate_size"]
            out.append((m + "gate.weight", (E, d), "router"))
            for j in range(E):
                e = m + "experts.%d." % j
                out += [(e + "gate_proj.weight", (f, d), "w"), (e + "up_proj.weight", (f, d), "w"),
                        (e + "down_proj.weight", (d, f), "w")]
            if fam == "qwen2_moe":
                fs = c["shared_expert_intermediate_size"]
                out += [(m + "shared_expert.gate_proj.weight", (fs, d), "w"),
                        (m + "shared_expert.up_proj.weight", (fs, d), "w"),
                        (m + "shared_expert.down_proj.weight", (d, fs), "w"),
                        (m + "shared_expert_gate.weight", (1, d), "router")]
        else:
            m, f = p + "mlp.", c["intermediate_size"]
            out += [(m + "gate_proj.weight", (f, d), "w"), (m + "up_proj.weight", (f, d), "w"),
                    (m + "down_proj.weight", (d, f), "w")]
    out.append(("model.norm.weight", (d,), "norm"))
    if not c["tie_word_embeddings"]:
        out.append(("lm_head.weight", (V, d), "head"))
    return out


def random_weights(c, seed, std, router_std, head_std):
    rng = np.random.default_rng(seed)
    W = {}
    for name, shape, kind in tensor_table(c):
        if kind == "norm":
            a = 1.0 + 0.1 * rng.standard_normal(shape)
        elif kind == "router":
            a = router_std * rng.standard_normal(shape)
        elif kind == "head":
            a = head_std * rng.standard_normal(shape)
        else:
            a = std * rng.standard_normal(shape)
        W[name] = a.astype(np.float32)
    return W


# ---------------------------------------------------------------------------------------------
# writing the directory

SHARD = "model-%05d-of-%05d.safetensors"


def write_weights(out, c, W, dtype, shards):
    """model.safetensors, or N shards in state-dict order + model.safetensors.index.json."""
    names = [n for n, _, _ in tensor_table(c)]
    conv = {"f32": lambda a: a.astype(np.float32), "f16": lambda a: a.astype(np.float16),
            "bf16": lambda a: a.astype(np.float32)}[dtype]
    bf16 = set(names) if dtype == "bf16" else set()
    nbytes = {n: W[n].size * (4 if dtype == "f32" else 2) for n in names}
    meta = {"format": "pt"}
    if shards <= 1:
        safetensors_np.save(os.path.join(out, "model.safetensors"),
                            {n: conv(W[n]) for n in names}, meta, bf16=bf16)
        return
    total = sum(nbytes.values())
    groups, cur, acc = [], [], 0
    for i, n in enumerate(names):  # contiguous groups of about total/shards bytes, none empty
        cur.append(n)
        acc += nbytes[n]
        left = len(names) - i - 1
        if len(groups) < shards - 1 and (acc >= total * (len(groups) + 1) / shards
                                         or left == shards - 1 - len(groups)):
            groups.append(cur)
            cur = []
    groups.append(cur)
    if len(groups) != shards or not all(groups):
        raise SystemExit("hf_make_tiny.py: cannot cut %d tensors into %d shards"
                         % (len(names), shards))
    weight_map = {}
    for i, g in enumerate(groups):
        fn = SHARD % (i + 1, shards)
        safetensors_np.save(os.path.join(out, fn), {n: conv(W[n]) for n in g}, meta,
                            bf16=bf16 & set(g))
        for n in g:
            weight_map[n] = fn
    write_json(os.path.join(out, "model.safetensors.index.json"),
               {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))})


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def corpus_text(n_chars):
    with open(CORPUS, encoding="utf-8") as f:
        return f.read(n_chars)


def write_tokenizer(out, fam, a):
    """-> (tokenizer size, specials {content: id}). Writes the tokenizer files."""
    text = corpus_text(a.tokenizer_chars)
    if fam == "mixtral":
        n = sentencepiece_tokenizer(os.path.join(out, "tokenizer.model"), text, a.vocab)
        sp = {"<unk>": 0, "<s>": 1, "</s>": 2}
        dec = {str(i): dict(_added(i, s), normalized=False) for s, i in sp.items()}
        for v in dec.values():
            v.pop("id")
        write_json(os.path.join(out, "tokenizer_config.json"), {
            "add_bos_token": True, "add_eos_token": False, "added_tokens_decoder": dec,
            "bos_token": "<s>", "chat_template": MIXTRAL_CHAT,
            "clean_up_tokenization_spaces": False, "eos_token": "</s>", "legacy": True,
            "model_max_length": 1000000000000000019884624838656, "pad_token": None,
            "sp_model_kwargs": {}, "spaces_between_special_tokens": False,
            "tokenizer_class": "LlamaTokenizer", "unk_token": "<unk>",
            "use_default_system_prompt": False})
        return n, sp
    style = "gpt2" if fam == "olmoe" else "qwen2"
    tok, specials, n = byte_level_tokenizer(style, text, a.vocab)
    write_json(os.path.join(out, "tokenizer.json"), tok)
    dec = {}
    for t in tok["added_tokens"]:
        e = dict(t)
        dec[str(e.pop("id"))] = e
    if style == "qwen2":
        cfg = {"add_prefix_space": False, "added_tokens_decoder": dec, "bos_token": None,
               "chat_template": CHATML, "clean_up_tokenization_spaces": False,
               "eos_token": "<|im_end|>" if fam == "qwen3_moe" else "<|endoftext|>",
               "errors": "replace", "model_max_length": a.max_pos, "pad_token": "<|endoftext|>",
               "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer",
               "unk_token": None}
    else:
        cfg = {"add_bos_token": False, "add_eos_token": False, "added_tokens_decoder": dec,
               "bos_token": None, "clean_up_tokenization_spaces": True,
               "eos_token": "<|endoftext|>", "model_max_length": a.max_pos,
               "pad_token": "<|padding|>", "tokenizer_class": "GPTNeoXTokenizer",
               "unk_token": None}
    write_json(os.path.join(out, "tokenizer_config.json"), cfg)
    return n, specials


def generation_config(c):
    g = {"_from_model_config": True, "eos_token_id": c["eos_token_id"],
         "transformers_version": c["transformers_version"]}
    if c.get("bos_token_id") is not None:
        g["bos_token_id"] = c["bos_token_id"]
    if c.get("pad_token_id") is not None:
        g["pad_token_id"] = c["pad_token_id"]
    return dict(sorted(g.items()))


def make(out, family, **knobs):
    """Writes a model directory (the programmatic entry point; knobs as the flags, '_' for
    '-'). Returns (config dict, {name: float32 weights as stored, i.e. after dtype rounding})."""
    a = parse_args(["--family", family, "--out", out] + [
        x for k, v in knobs.items() for x in (_flag(k, v))])
    return build(a)


def _flag(k, v):
    f = "--" + k.replace("_", "-")
    if isinstance(v, bool):
        if k in ("norm_topk",):
            return [f if v else "--no-" + k.replace("_", "-")]
        return [f] if v else []
    if isinstance(v, (list, tuple)):
        return [f, ",".join(str(x) for x in v)]
    return [f, str(v)]


def build(a):
    fam = a.family
    if os.path.exists(a.out):
        shutil.rmtree(a.out)
    os.makedirs(a.out)
    n_tok, specials = write_tokenizer(a.out, fam, a)
    vocab_size = n_tok if fam == "mixtral" else -(-n_tok // 64) * 64
    if a.vocab_size:  # a benchmark shape: the embedding padded past the tokenizer
        if a.vocab_size < vocab_size:
            raise SystemExit("hf_make_tiny.py: --vocab-size %d is below the tokenizer's %d ids"
                             % (a.vocab_size, vocab_size))
        vocab_size = a.vocab_size
    c = make_config(fam, a, vocab_size, specials)
    write_json(os.path.join(a.out, "config.json"), c)
    write_json(os.path.join(a.out, "generation_config.json"), generation_config(c))
    W = random_weights(c, a.seed, a.std, a.router_std, a.head_std)
    # The rows past the tokenizer (vocab_size padded up) were never trained in a real model:
    # tiny, so that greedy decoding does not pick ids the tokenizer cannot print
    for n in ("model.embed_tokens.weight", "lm_head.weight"):
        if n in W:
            W[n][n_tok:] *= 0.01
    write_weights(a.out, c, W, a.dtype, a.shards)
    if a.dtype == "bf16":
        W = {n: safetensors_np.bf16_round(w) for n, w in W.items()}
    elif a.dtype == "f16":
        W = {n: w.astype(np.float16).astype(np.float32) for n, w in W.items()}
    if a.bad:
        import hf_bad_dirs
        hf_bad_dirs.apply(a.bad, a.out)
    return c, W


def _ints(s):
    return [int(x) for x in s.split(",") if x.strip() != ""]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", choices=FAMILIES, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtype", choices=("f32", "bf16", "f16"), default="f32")
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bad", default=None, help="write a broken directory (--bad list: the kinds)")
    g = ap.add_argument_group("size knobs (defaults per family)")
    for k in ("hidden", "layers", "heads", "kv_heads", "head_dim", "experts", "topk", "expert_ff",
              "ff", "shared_ff", "vocab", "max_pos"):
        g.add_argument("--" + k.replace("_", "-"), dest=k, type=int, default=None)
    g.add_argument("--rope-theta", dest="rope_theta", type=float, default=None)
    g.add_argument("--eps", type=float, default=None)
    g.add_argument("--tie", action="store_true", help="tie_word_embeddings (no lm_head.weight)")
    g.add_argument("--attention-bias", dest="attention_bias", action="store_true",
                   help="qwen3_moe, olmoe: q/k/v/o biases (attention_bias true)")
    g.add_argument("--norm-topk", dest="norm_topk", action="store_true", default=None)
    g.add_argument("--no-norm-topk", dest="norm_topk", action="store_false")
    g.add_argument("--clip-qkv", dest="clip_qkv", type=float, default=None,
                   help="olmoe (default 1.5 so that clipping engages; 0: null)")
    g.add_argument("--mlp-only-layers", dest="mlp_only_layers", type=_ints, default=None,
                   help="qwen: dense layers (default qwen2_moe 1, qwen3_moe none)")
    g.add_argument("--sparse-step", dest="sparse_step", type=int, default=None,
                   help="qwen decoder_sparse_step (default qwen2_moe 1, qwen3_moe 2: layers "
                   "1 and 3 sparse, 0 and 2 dense)")
    g.add_argument("--std", type=float, default=0.08, help="weight std")
    g.add_argument("--router-std", dest="router_std", type=float, default=0.3)
    g.add_argument("--head-std", dest="head_std", type=float, default=0.5,
                   help="LM head (the embedding when tied): logits of std ~4, so that the loss "
                   "depends on which tokens are scored, not only on the vocabulary size")
    g.add_argument("--vocab-size", dest="vocab_size", type=int, default=None,
                   help="config.json's vocab_size, padded past the tokenizer (benchmark shapes)")
    g.add_argument("--tokenizer-chars", dest="tokenizer_chars", type=int, default=30000,
                   help="train the tokenizer on this many characters of tinyshakespeare")
    a = ap.parse_args(argv)
    if a.bad == "list":
        import hf_bad_dirs
        print("\n".join("%-26s %s (message names: %s)" % (k, why, frag)
                        for k, (why, frag, _) in hf_bad_dirs.KINDS.items()))
        sys.exit(0)
    for k, v in DEFAULTS[a.family].items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    fam = a.family
    if a.head_dim is None:
        a.head_dim = a.hidden // a.heads
    if a.attention_bias and fam not in ("qwen3_moe", "olmoe"):
        ap.error("--attention-bias: only qwen3_moe and olmoe have the key (qwen2_moe always has "
                 "q/k/v biases)")
    if fam != "qwen3_moe" and a.head_dim * a.heads != a.hidden:
        ap.error("--head-dim: only qwen3_moe has a head_dim other than hidden/heads")
    if a.heads % a.kv_heads or a.head_dim % 2:
        ap.error("--heads must be a multiple of --kv-heads and --head-dim even")
    if a.norm_topk is None:
        a.norm_topk = fam in ("qwen3_moe",)
    if a.clip_qkv is None:
        a.clip_qkv = 1.5 if fam == "olmoe" else None
    elif a.clip_qkv == 0:
        a.clip_qkv = None
    if a.mlp_only_layers is None:
        a.mlp_only_layers = [1] if fam == "qwen2_moe" else []
    if a.sparse_step is None:
        a.sparse_step = 2 if fam == "qwen3_moe" else 1
    if a.ff is None:
        a.ff = a.expert_ff
    if a.shards < 1 or a.topk > a.experts:
        ap.error("--shards >= 1 and --topk <= --experts")
    return a


def main():
    a = parse_args()
    c, _ = build(a)
    files = sorted(os.listdir(a.out))
    print("hf_make_tiny: %s %s d=%d L=%d E=%d k=%d V=%d %s, %d shard(s) -> %s: %s" % (
        a.family, a.dtype, c["hidden_size"], c["num_hidden_layers"], a.experts, a.topk,
        c["vocab_size"], "bad=" + a.bad if a.bad else "", a.shards, a.out, " ".join(files)))


if __name__ == "__main__":
    main()
