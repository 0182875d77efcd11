#!/usr/bin/python3
"""PyTorch peer of moe.cpp's Transformer LM (src/model/model.cpp, docs/model.md).

Same model, Mixtral style: embed -> L x (RMSNorm -> causal GQA attention with RoPE (HF
rotate-half) -> residual -> RMSNorm -> FFN (dense SwiGLU or top-k MoE) -> residual) -> RMSNorm ->
LM head (tied or not). Tensor names are Hugging Face Mixtral's.

  --check IN.safetensors OUT.safetensors
      IN holds the weights (HF names), "tokens" and "targets" [B,S], and in its metadata "config"
      (JSON, keys below). Computes in float64 and writes OUT: "loss" (mean CE), "aux_loss"
      (weighted balancing losses), "logits" [B,S,V] and "grad.<name>" for every weight: the
      gradient of loss + aux_loss.
  --train-bench --config configs/<name>.json --steps N --threads 2 [--precision fp32|bf16]
      Trains the same model with AdamW on the config's "data" (default data/tinyshakespeare.txt;
      the text split as moe train splits it: the first 1 - val_fraction of its bytes train, the
      rest validation) and prints one JSON line with tokens_per_s and val_loss.

      Tokenizer ("tokenizer" key): "char" builds the vocabulary over the whole text (nanoGPT, as
      moe train). "sentencepiece": --tokenizer-model PATH loads a model (e.g. the tokenizer.model
      that `moe train` writes into its run's checkpoints, for identical ids); without it the peer
      trains one with python3-sentencepiece on the training split's non-empty lines with exactly
      the options of moe's train_sentencepiece (src/data/tokenizer.cpp: vocab_size, sp_model_type,
      byte fallback, identity normalisation, no dummy prefix, split digits, soft vocabulary limit,
      1 thread). Debian ships the same libsentencepiece 0.1.97 to both, so the model is the same:
      checked on configs/shakespeare-sp-realistic.json, the same 4096 pieces and scores and the
      same train/val ids as the run's data/*.tok (the files differ only in an empty model_prefix
      field that moe stores in the trainer spec). Lines are encoded one by one and each
      newline is the byte piece <0x0A>, as moe's tokenizer does; the model's vocabulary is the
      SentencePiece model's piece count (it may be below vocab_size: soft limit).

      Precision ("precision" key, --precision overrides): bf16 runs forward and loss under
      torch.autocast("cpu", dtype=torch.bfloat16): bf16 GEMM operands (projections, experts, LM
      head, attention's two matmuls) with fp32 master weights, gradients and AdamW state, like
      moe.cpp's bf16 mode. What moe.cpp keeps in fp32 the peer keeps in fp32 too, explicitly where
      PyTorch 1.13's CPU autocast would not: the router (logits, softmax, top-k, balancing losses;
      "router_precision": "bf16" / --router-precision bf16 leaves it to autocast, for the stability
      experiment) and attention's softmax; RMSNorm (the residual stream is fp32) and cross-entropy
      are fp32 under autocast already. Validation runs under the same precision.

Config keys (HF Mixtral plus moe.cpp's own): vocab_size, hidden_size, num_hidden_layers,
num_attention_heads, num_key_value_heads, intermediate_size, max_position_embeddings,
rms_norm_eps, rope_theta, tie_word_embeddings, moe_every, num_local_experts,
num_experts_per_tok, expert_intermediate_size, router ("topk"; "switch" = topk with k=1 and no
renormalisation), renormalize, router_aux_loss_coef / w_switch, router_z_loss_coef / w_zloss,
w_importance. Training: learning_rate, min_lr, warmup_steps, max_steps, weight_decay, beta1,
beta2, grad_clip, batch_size, block_size, seed. Data: data, val_fraction, tokenizer, vocab_size,
sp_model_type; precision, router_precision.
"""
import argparse
import json
import math
import os
import struct
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

# ---------------------------------------------------------------- safetensors (minimal, no deps)

_DT = {"F32": np.float32, "F64": np.float64, "I32": np.int32, "I64": np.int64}


def st_read(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop("__metadata__", {}) or {}
    out = {}
    for name, h in header.items():
        a, b = h["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype=_DT[h["dtype"]]).reshape(h["shape"]).copy()
    return out, meta


def st_write(path, tensors):
    header, blobs, off = {}, [], 0
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        b = arr.tobytes()
        header[name] = {"dtype": "F32", "shape": list(arr.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


# ---------------------------------------------------------------- config


class Cfg:
    def __init__(self, j):
        g = lambda *ks, default=None: next((j[k] for k in ks if k in j), default)
        self.V = int(g("vocab_size", default=65))
        self.d = int(g("hidden_size", "d_model", default=128))
        self.L = int(g("num_hidden_layers", "n_layers", default=4))
        self.H = int(g("num_attention_heads", "n_heads", default=4))
        self.Hkv = int(g("num_key_value_heads", "n_kv_heads", default=self.H))
        self.f = int(g("intermediate_size", "d_ff", default=4 * self.d))
        self.block = int(g("block_size", "max_position_embeddings", default=64))
        self.eps = float(g("rms_norm_eps", "rms_eps", default=1e-5))
        self.theta = float(g("rope_theta", default=10000.0))
        self.tie = bool(g("tie_word_embeddings", "tie_embeddings", default=True))
        E = int(g("num_local_experts", "n_experts", default=0))
        self.E = E
        self.moe_every = int(g("moe_every", default=1 if E > 0 else 0))
        self.k = int(g("num_experts_per_tok", "top_k", default=2))
        self.fe = int(g("expert_intermediate_size", "expert_d_ff", "moe_d_ff", default=self.f))
        self.router = str(g("router", default="topk"))
        self.renorm = bool(g("renormalize", default=True))
        if self.router == "switch":
            self.k, self.renorm = 1, False
        elif self.router != "topk" and E > 0:
            raise SystemExit(f"torch_lm.py: router '{self.router}' not in the peer (topk, switch)")
        self.w_switch = float(g("w_switch", "router_aux_loss_coef", default=0.0))
        self.w_zloss = float(g("w_zloss", "router_z_loss_coef", default=0.0))
        self.w_importance = float(g("w_importance", default=0.0))
        if str(g("activation", default="swiglu")) != "swiglu":
            raise SystemExit("torch_lm.py: only the swiglu activation is in the peer")
        if E > 0 and not bool(g("dropless", default=True)):
            raise SystemExit("torch_lm.py: capacity (dropless = false) is not in the peer")
        if float(g("w_load", default=0.0)) != 0.0:
            raise SystemExit("torch_lm.py: the load loss (noisy top-k) is not in the peer")
        self.init_std = float(g("init_std", default=0.02))
        # training
        self.lr = float(g("learning_rate", "lr", default=1e-3))
        self.min_lr = float(g("min_lr", default=self.lr / 10))
        self.warmup = int(g("warmup_steps", "warmup_iters", default=100))
        self.max_steps = int(g("max_steps", "max_iters", default=2000))
        self.wd = float(g("weight_decay", default=0.1))
        self.beta1 = float(g("beta1", default=0.9))
        self.beta2 = float(g("beta2", default=0.99))
        self.clip = float(g("grad_clip", default=1.0))
        self.batch = int(g("batch_size", default=12))
        self.seed = int(g("seed", default=1337))
        # data, tokenizer and precision (--train-bench)
        self.data = g("data", default=None)
        self.val_fraction = float(g("val_fraction", default=0.1))
        self.tokenizer = str(g("tokenizer", default="char"))
        if self.tokenizer not in ("char", "sentencepiece"):
            raise SystemExit(f"torch_lm.py: tokenizer '{self.tokenizer}' not in the peer (char, sentencepiece)")
        self.sp_model_type = str(g("sp_model_type", default="bpe"))
        self.precision = str(g("precision", default="fp32"))
        self.router_precision = str(g("router_precision", default="fp32"))
        for key, v in (("precision", self.precision), ("router_precision", self.router_precision)):
            if v not in ("fp32", "bf16"):
                raise SystemExit(f"torch_lm.py: {key} '{v}' (fp32 or bf16)")

    def is_moe(self, l):
        return self.moe_every > 0 and (l + 1) % self.moe_every == 0


def param_shapes(c):
    """HF names and shapes, in moe.cpp's table order."""
    hd = c.d // c.H
    out = [("model.embed_tokens.weight", (c.V, c.d))]
    for l in range(c.L):
        p = f"model.layers.{l}."
        out += [(p + "input_layernorm.weight", (c.d,)),
                (p + "self_attn.q_proj.weight", (c.H * hd, c.d)),
                (p + "self_attn.k_proj.weight", (c.Hkv * hd, c.d)),
                (p + "self_attn.v_proj.weight", (c.Hkv * hd, c.d)),
                (p + "self_attn.o_proj.weight", (c.d, c.H * hd)),
                (p + "post_attention_layernorm.weight", (c.d,))]
        if c.is_moe(l):
            m = p + "block_sparse_moe."
            out.append((m + "gate.weight", (c.E, c.d)))
            for j in range(c.E):
                out += [(m + f"experts.{j}.w1.weight", (c.fe, c.d)),
                        (m + f"experts.{j}.w3.weight", (c.fe, c.d)),
                        (m + f"experts.{j}.w2.weight", (c.d, c.fe))]
        else:
            out += [(p + "mlp.gate_proj.weight", (c.f, c.d)), (p + "mlp.up_proj.weight", (c.f, c.d)),
                    (p + "mlp.down_proj.weight", (c.d, c.f))]
    out.append(("model.norm.weight", (c.d,)))
    if not c.tie:
        out.append(("lm_head.weight", (c.V, c.d)))
    return out


# ---------------------------------------------------------------- model


def rmsnorm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope_tables(c, S, dtype):
    hd = c.d // c.H
    inv_freq = 1.0 / (c.theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    ang = torch.arange(S, dtype=torch.float32)[:, None] * inv_freq[None, :]  # [S, hd/2]
    ang = torch.cat([ang, ang], -1).to(torch.float64)
    return ang.cos().to(dtype), ang.sin().to(dtype)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], -1)


def attention(x, W, p, c, cos, sin):
    B, S, _ = x.shape
    hd = c.d // c.H
    q = F.linear(x, W[p + "self_attn.q_proj.weight"]).view(B, S, c.H, hd).transpose(1, 2)
    k = F.linear(x, W[p + "self_attn.k_proj.weight"]).view(B, S, c.Hkv, hd).transpose(1, 2)
    v = F.linear(x, W[p + "self_attn.v_proj.weight"]).view(B, S, c.Hkv, hd).transpose(1, 2)
    q = q * cos + rotate_half(q) * sin
    k = k * cos + rotate_half(k) * sin
    G = c.H // c.Hkv
    if G > 1:  # HF repeat_kv: kv head g serves query heads g*G .. g*G+G-1
        k = k.repeat_interleave(G, dim=1)
        v = v.repeat_interleave(G, dim=1)
    att = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
    if torch.is_autocast_cpu_enabled():
        att = att.float()  # softmax in fp32, as moe.cpp's bf16 mode (autocast would keep bf16)
    mask = torch.ones(S, S, dtype=torch.bool).triu(1)
    att = att.masked_fill(mask, float("-inf")).softmax(-1)
    y = (att @ v).transpose(1, 2).reshape(B, S, c.H * hd)
    return F.linear(y, W[p + "self_attn.o_proj.weight"])


def moe_ffn(x, W, m, c):
    """Top-k MoE (Mixtral), dropless. The efficient PyTorch way: sort slots by expert, one
    index_select, split per expert, per-expert matmuls, index_add_ back."""
    if torch.is_autocast_cpu_enabled() and c.router_precision == "fp32":
        # Selective precision (ST-MoE, moe.cpp's bf16 mode): the router outside autocast, the
        # experts inside it.
        with torch.autocast("cpu", enabled=False):
            r = route(x.float(), W, m, c)
    else:
        r = route(x, W, m, c)
    return moe_ffn_routed(x, W, m, c, *r)


def route(x, W, m, c):
    logits = F.linear(x, W[m + "gate.weight"])  # [T,E]
    p = logits.softmax(-1)
    topv, topi = p.topk(c.k, dim=-1)  # descending, like select_topk
    w = topv / topv.sum(-1, keepdim=True) if c.renorm else topv
    return logits, p, topi, w


def moe_ffn_routed(x, W, m, c, logits, p, topi, w):
    flat_e = topi.reshape(-1)
    order = torch.argsort(flat_e, stable=True)
    tok = torch.div(order, c.k, rounding_mode="floor")
    counts = torch.bincount(flat_e, minlength=c.E).tolist()
    xs = x.index_select(0, tok)
    outs = []
    for j, xj in enumerate(torch.split(xs, counts)):
        if xj.shape[0] == 0:
            continue
        e = m + f"experts.{j}."
        h = F.silu(F.linear(xj, W[e + "w1.weight"])) * F.linear(xj, W[e + "w3.weight"])
        outs.append(F.linear(h, W[e + "w2.weight"]))
    ys = torch.cat(outs) * w.reshape(-1)[order][:, None]
    y = torch.zeros_like(x).index_add_(0, tok, ys.to(x.dtype))  # combine summed in fp32
    aux = x.new_zeros(())
    if c.w_switch:
        f = torch.bincount(flat_e, minlength=c.E).to(x.dtype) / flat_e.numel()
        aux = aux + c.w_switch * c.E * (f * p.mean(0)).sum()
    if c.w_zloss:
        aux = aux + c.w_zloss * torch.logsumexp(logits, -1).pow(2).mean()
    if c.w_importance:
        imp = x.new_zeros(c.E).index_add_(0, flat_e, w.reshape(-1))
        aux = aux + c.w_importance * imp.var(unbiased=False) / (imp.mean() ** 2 + 1e-10)
    return y, aux


def forward(W, c, tokens, targets):
    B, S = tokens.shape
    dtype = W["model.embed_tokens.weight"].dtype
    cos, sin = rope_tables(c, S, dtype)
    x = W["model.embed_tokens.weight"][tokens]
    aux = x.new_zeros(())
    for l in range(c.L):
        p = f"model.layers.{l}."
        x = x + attention(rmsnorm(x, W[p + "input_layernorm.weight"], c.eps), W, p, c, cos, sin)
        h = rmsnorm(x, W[p + "post_attention_layernorm.weight"], c.eps)
        if c.is_moe(l):
            y, a = moe_ffn(h.reshape(B * S, c.d), W, p + "block_sparse_moe.", c)
            x = x + y.view(B, S, c.d)
            aux = aux + a
        else:
            g = F.linear(h, W[p + "mlp.gate_proj.weight"])
            u = F.linear(h, W[p + "mlp.up_proj.weight"])
            x = x + F.linear(F.silu(g) * u, W[p + "mlp.down_proj.weight"])
    x = rmsnorm(x, W["model.norm.weight"], c.eps)
    head = W["model.embed_tokens.weight"] if c.tie else W["lm_head.weight"]
    logits = F.linear(x, head)
    loss = None if targets is None else F.cross_entropy(logits.view(B * S, c.V), targets.reshape(-1))
    return logits, loss, aux


# ---------------------------------------------------------------- modes


def run_check(inp, outp):
    T, meta = st_read(inp)
    c = Cfg(json.loads(meta["config"]))
    W = {}
    for name, shape in param_shapes(c):
        if name not in T:
            raise SystemExit(f"torch_lm.py: {inp}: missing tensor {name}")
        if tuple(T[name].shape) != shape:
            raise SystemExit(f"torch_lm.py: {name}: shape {T[name].shape}, expected {shape}")
        W[name] = torch.tensor(T[name], dtype=torch.float64, requires_grad=True)
    tokens = torch.tensor(T["tokens"]).long()
    targets = torch.tensor(T["targets"]).long()
    logits, loss, aux = forward(W, c, tokens, targets)
    (loss + aux).backward()
    out = {"loss": np.array([loss.item()]), "aux_loss": np.array([aux.item()]),
           "logits": logits.detach().numpy()}
    for name, w in W.items():
        out["grad." + name] = w.grad.numpy()
    st_write(outp, out)


def lr_at(c, step):
    if step < c.warmup:
        return c.lr * (step + 1) / c.warmup
    if step >= c.max_steps:
        return c.min_lr
    r = (step - c.warmup) / max(1, c.max_steps - c.warmup)
    return c.min_lr + 0.5 * (1 + math.cos(math.pi * r)) * (c.lr - c.min_lr)


def split_text(text, val_fraction):
    """moe's split_text (src/train/corpus.cpp): cut at int(bytes * (1 - val_fraction)), moved back
    to the start of a UTF-8 character."""
    raw = text.encode("utf-8")
    cut = int(len(raw) * (1.0 - val_fraction))
    while 0 < cut < len(raw) and (raw[cut] >> 6) == 0x2:
        cut -= 1
    return raw[:cut].decode("utf-8"), raw[cut:].decode("utf-8")


def sp_train(train_text, c):
    """The SentencePiece model moe's train_sentencepiece makes (same options, same library)."""
    import io
    import sentencepiece as spm
    if c.V < 260:
        raise SystemExit(f"torch_lm.py: vocab_size={c.V} too small for sentencepiece (>= 260)")
    model = io.BytesIO()
    lines = [ln for ln in train_text.split("\n") if ln]
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_writer=model, model_type=c.sp_model_type,
            vocab_size=c.V, character_coverage=1.0, byte_fallback=True,
            normalization_rule_name="identity", remove_extra_whitespaces=False,
            add_dummy_prefix=False, split_digits=True, hard_vocab_limit=False, num_threads=1,
            minloglevel=2)
    except RuntimeError as e:
        raise SystemExit(f"torch_lm.py: SentencePiece training failed (vocab_size={c.V}): "
                         + str(e).strip().splitlines()[0])
    return model.getvalue()


def sp_encode(sp, text):
    """moe's SpTokenizer::encode for its own models: line by line, newline = <0x0A>."""
    nl = sp.piece_to_id("<0x0A>")
    if nl == sp.unk_id():
        raise SystemExit("torch_lm.py: SentencePiece model has no byte piece <0x0A> (byte_fallback)")
    parts = text.split("\n")
    ids = sp.encode([ln for ln in parts if ln])
    out, it = [], iter(ids)
    for i, ln in enumerate(parts):
        if ln:
            e = next(it)
            if sp.unk_id() in e:
                raise SystemExit(f"torch_lm.py: SentencePiece: unknown symbol in line {i + 1}")
            out += e
        if i + 1 < len(parts):
            out.append(nl)
    return out


def load_data(c, args):
    """Train and validation token ids as moe train makes them; sets c.V to the tokenizer's size."""
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
    path = args.data or c.data or "data/tinyshakespeare.txt"
    if not os.path.isabs(path) and not os.path.exists(path):
        path = os.path.join(root, path)  # a config's "data" is relative to the repository root
    text = open(path, encoding="utf-8").read()
    tr, va = split_text(text, c.val_fraction)
    info = {"tokenizer": c.tokenizer}
    if c.tokenizer == "char":
        chars = sorted(set(text))  # code point order = moe's byte order of UTF-8
        stoi = {ch: i for i, ch in enumerate(chars)}
        enc = lambda t: [stoi[ch] for ch in t]
        c.V = len(chars)
    else:
        import sentencepiece as spm
        if args.tokenizer_model:
            with open(args.tokenizer_model, "rb") as f:
                proto = f.read()
            info["tokenizer_model"] = args.tokenizer_model
        else:
            t0 = time.perf_counter()
            proto = sp_train(tr, c)
            info["sp_train_s"] = round(time.perf_counter() - t0, 1)
        sp = spm.SentencePieceProcessor(model_proto=proto)
        enc = lambda t: sp_encode(sp, t)
        c.V = sp.get_piece_size()
        if args.save_tokenizer_model:
            with open(args.save_tokenizer_model, "wb") as f:
                f.write(proto)
    info["vocab_size"] = c.V
    train = torch.tensor(enc(tr), dtype=torch.long)
    val = torch.tensor(enc(va), dtype=torch.long)
    if len(train) < c.block + 1 or len(val) < c.block + 1:
        raise SystemExit(f"torch_lm.py: {path}: {len(train)} / {len(val)} train / validation tokens, "
                         f"fewer than block_size + 1 = {c.block + 1}")
    return train, val, info


def run_train_bench(args):
    torch.set_num_threads(args.threads)
    j = {}
    if args.config:
        with open(args.config) as f:
            j = json.load(f)
    for kv in args.set or []:
        k, v = kv.split("=", 1)
        j[k] = json.loads(v)
    c = Cfg(j)
    if args.steps:
        steps = args.steps
    else:
        steps = c.max_steps
    if args.precision:
        c.precision = args.precision
    if args.router_precision:
        c.router_precision = args.router_precision
    if c.router_precision == "bf16" and c.precision != "bf16":
        raise SystemExit("torch_lm.py: router_precision bf16 needs precision bf16")
    train, val, tok_info = load_data(c, args)
    torch.manual_seed(c.seed)
    W = {}
    res_std = c.init_std / math.sqrt(2 * c.L)
    for name, shape in param_shapes(c):
        if name.endswith("norm.weight"):
            W[name] = torch.ones(shape)
        else:
            std = res_std if name.endswith(("o_proj.weight", "down_proj.weight", ".w2.weight")) else c.init_std
            W[name] = torch.randn(shape) * std
        W[name].requires_grad_(True)
    decay = [w for nme, w in W.items() if w.dim() >= 2]
    no_decay = [w for nme, w in W.items() if w.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": c.wd},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=c.lr, betas=(c.beta1, c.beta2), eps=1e-8)
    g = torch.Generator().manual_seed(c.seed)
    B, S = c.batch, c.block

    def batch(src):
        ix = torch.randint(len(src) - S - 1, (B,), generator=g)
        x = torch.stack([src[i:i + S] for i in ix])
        y = torch.stack([src[i + 1:i + 1 + S] for i in ix])
        return x, y

    bf16 = c.precision == "bf16"

    def cast():  # forward and loss under autocast; backward and AdamW outside (fp32 masters)
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)

    warm = min(args.warmup, max(0, steps - 1))
    t0 = None
    losses = []
    for step in range(steps):
        if step == warm:
            t0 = time.perf_counter()
        for grp in opt.param_groups:
            grp["lr"] = lr_at(c, step)
        x, y = batch(train)
        with cast():
            _, loss, aux = forward(W, c, x, y)
        opt.zero_grad(set_to_none=True)
        (loss + aux).backward()
        if c.clip > 0:
            torch.nn.utils.clip_grad_norm_(list(W.values()), c.clip)
        opt.step()
        losses.append(loss.item())
    elapsed = time.perf_counter() - t0
    timed = steps - warm
    # validation: consecutive non-overlapping windows of S+1 tokens (as `moe eval`)
    with torch.no_grad():
        nw = (len(val) - 1) // S
        if args.val_windows:
            nw = min(nw, args.val_windows)
        tot, cnt = 0.0, 0
        for i0 in range(0, nw, 64):
            idx = range(i0, min(nw, i0 + 64))
            x = torch.stack([val[i * S:i * S + S] for i in idx])
            y = torch.stack([val[i * S + 1:i * S + S + 1] for i in idx])
            with cast():
                _, l, _ = forward(W, c, x, y)
            tot += l.item() * x.numel()
            cnt += x.numel()
    print(json.dumps({"impl": "pytorch", "torch": torch.__version__, "threads": args.threads,
                      "steps": steps, "timed_steps": timed, "tokens_per_step": B * S,
                      "tokens_per_s": round(timed * B * S / elapsed, 1),
                      "ms_per_step": round(1000 * elapsed / timed, 3),
                      "train_loss": round(float(np.mean(losses[-10:])), 4),
                      "first_loss": losses[0],  # unrounded: tells precisions apart in tests
                      "val_loss": round(tot / cnt, 4),
                      "moe": c.E > 0 and c.moe_every > 0, "n_experts": c.E, "top_k": c.k,
                      "precision": c.precision,
                      "router_precision": c.router_precision if bf16 else "fp32", **tok_info}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", nargs=2, metavar=("IN", "OUT"))
    ap.add_argument("--train-bench", action="store_true")
    ap.add_argument("--config")
    ap.add_argument("--set", action="append", help="override a config key: key=json_value")
    ap.add_argument("--steps", type=int, default=0)
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data")
    ap.add_argument("--val-windows", type=int, default=0, help="cap validation windows (0 = all)")
    ap.add_argument("--precision", choices=("fp32", "bf16"),
                    help="fp32 | bf16 (autocast forward + loss); default: the config's, else fp32")
    ap.add_argument("--router-precision", choices=("fp32", "bf16"),
                    help="bf16: the router too under autocast (experiment); default fp32")
    ap.add_argument("--tokenizer-model", help="sentencepiece: use this tokenizer.model "
                    "(e.g. from a moe train run) instead of training the same one")
    ap.add_argument("--save-tokenizer-model", help="sentencepiece: write the model used here")
    a = ap.parse_args()
    if a.check:
        torch.set_num_threads(1)
        run_check(*a.check)
    elif a.train_bench:
        run_train_bench(a)
    else:
        ap.error("give --check IN OUT or --train-bench")


if __name__ == "__main__":
    main()
