#!/usr/bin/python3
"""PyTorch reference forward of the Hugging Face MoE families moe.cpp runs (mixtral, qwen2_moe,
qwen3_moe, olmoe), written from the equations of transformers' modeling_<family>.py, on a model
directory as the Hub publishes it (config.json, model.safetensors or shards + index; F32, BF16
and F16 weights, upcast to fp32 on load).

  hf_reference.py --model DIR (--ids 1,2,3 | --ids-file F) [--greedy N] [--block N --loss]
                  [--bf16 | --f64] --out OUT.json

OUT.json: ids, greedy (N argmax tokens, the whole sequence recomputed each step; no stop at
EOS), loss / n_predicted (mean cross-entropy over consecutive non-overlapping windows of
block+1 tokens, each predicting its last `block`; a last partial window is dropped, as
`moe eval` does), min_route_gap (the smallest p_k - p_{k+1} over all routing decisions: how far
top-k was from a tie), and logits_file: OUT.logits.npy, float32 [S, V] of a full causal forward
over the ids. --bf16 runs under torch.autocast("cpu", bfloat16) with the router softmax, the
attention softmax and the RMSNorm statistics in fp32, as HF does; --f64 computes in float64.

The equations (each family = one set of switches on a Llama-style decoder):
  x = embed[ids];  per layer: x += o_proj(attn(rms(x))),  x += mlp(rms(x));  logits = head(rms(x))
  rms(x) = w * x / sqrt(mean(x^2) + eps), the statistics in fp32.
  attention: q,k,v = proj(x) (+ bias: qwen2_moe; qwen3_moe/olmoe with attention_bias, o too);
    olmoe: q = rms(q) over all heads (q_norm [H*hd]), k = rms(k) (k_norm [KV*hd]), then q, k, v
           clamped to [-clip_qkv, clip_qkv] when clip_qkv is set;
    qwen3_moe: q, k per head rms (q_norm, k_norm [hd]), before RoPE;
    RoPE (rotate_half, inv_freq = theta^(-2i/hd), positions 0..S-1), GQA (kv head g serves query
    heads g*H/KV .. ), softmax(q k^T / sqrt(hd) + causal) v. head_dim = config head_dim
    (qwen3_moe) else hidden/heads.
  MoE: p = softmax(gate(x)) in fp32; top-k; mixtral: w = p_topk / sum; qwen/olmoe: that only when
    norm_topk_prob; y = sum w_j * down_j(silu(gate_j(x)) * up_j(x)) (mixtral: w2(silu(w1 x) *
    w3 x));
    qwen2_moe adds sigmoid(shared_expert_gate(x)) * shared_expert(x).
  Dense layers (qwen: layer in mlp_only_layers or (layer+1) % decoder_sparse_step != 0):
    down(silu(gate(x)) * up(x)) of width intermediate_size.
"""
import argparse
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_np  # noqa: E402

FAMILIES = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe")


# ---------------------------------------------------------------------------------------------
# loading


def load_dir(path):
    """-> (config dict, {name: float32 numpy}). Shards through model.safetensors.index.json; each
    index entry must name a tensor its shard holds, and every shard tensor must be indexed."""
    with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
        c = json.load(f)
    if c.get("model_type") not in FAMILIES:
        raise SystemExit("hf_reference.py: %s: model_type %r not in %s"
                         % (path, c.get("model_type"), FAMILIES))
    if c.get("rope_scaling"):
        raise SystemExit("hf_reference.py: %s: rope_scaling is not in the reference" % path)
    idx = os.path.join(path, "model.safetensors.index.json")
    W = {}
    if os.path.exists(idx):
        with open(idx, encoding="utf-8") as f:
            wm = json.load(f)["weight_map"]
        for shard in sorted(set(wm.values())):
            T = safetensors_np.load(os.path.join(path, shard))
            for n in T:
                if wm.get(n) != shard:
                    raise SystemExit("hf_reference.py: %s: %s not indexed to %s" % (path, n, shard))
            W.update(T)
        missing = sorted(set(wm) - set(W))
        if missing:
            raise SystemExit("hf_reference.py: %s: indexed but in no shard: %s"
                             % (path, missing[:3]))
    else:
        W = safetensors_np.load(os.path.join(path, "model.safetensors"))
    return c, {n: np.asarray(a, dtype=np.float32) for n, a in W.items()}


class Model:
    """The weights as torch tensors of one dtype plus the config switches; records which tensors
    the forward used (an unused tensor means a name the reference does not know)."""

    def __init__(self, c, W, dtype=torch.float32):
        self.c, self.dtype = c, dtype
        self.fam = c["model_type"]
        self.W = {n: torch.from_numpy(np.ascontiguousarray(a)).to(dtype) for n, a in W.items()}
        self.used = set()
        self.d, self.L = c["hidden_size"], c["num_hidden_layers"]
        self.H, self.KV = c["num_attention_heads"], c["num_key_value_heads"]
        self.hd = c.get("head_dim") or self.d // self.H
        if self.fam != "qwen3_moe" and self.hd * self.H != self.d:
            raise SystemExit("hf_reference.py: head_dim must be hidden_size/num_attention_heads")
        self.eps = float(c["rms_norm_eps"])
        self.theta = float(c.get("rope_theta", 10000.0))
        self.E = c["num_local_experts"] if self.fam == "mixtral" else c["num_experts"]
        self.k = c["num_experts_per_tok"]
        self.renorm = True if self.fam == "mixtral" else bool(c.get("norm_topk_prob", False))
        self.clip = c.get("clip_qkv") if self.fam == "olmoe" else None
        self.tie = bool(c.get("tie_word_embeddings", False))
        # qwen3_moe, olmoe: attention_bias puts biases on q, k, v and o (qwen2_moe: q, k, v always)
        self.attn_bias = self.fam in ("qwen3_moe", "olmoe") and bool(c.get("attention_bias", False))
        self.min_route_gap = math.inf
        self.routes = {}  # layer prefix -> (experts [T,k], weights [T,k]) of the last forward

    def w(self, name):
        self.used.add(name)
        return self.W[name]

    def unused(self):
        return sorted(set(self.W) - self.used)

    def sparse(self, layer):
        if self.fam in ("mixtral", "olmoe"):
            return True
        c = self.c
        return (layer not in (c.get("mlp_only_layers") or []) and self.E > 0
                and (layer + 1) % c.get("decoder_sparse_step", 1) == 0)


# ---------------------------------------------------------------------------------------------
# the forward


def rms_norm(x, w, eps):
    """HF *RMSNorm: statistics in fp32 (float64 stays float64), weight * x.to(input dtype)."""
    dt = x.dtype
    h = x.to(torch.float64 if dt == torch.float64 else torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return w * h.to(dt)


def rope(m, positions):
    """cos, sin [S, hd]: HF default RoPE, inv_freq from integer steps, cat(freqs, freqs)."""
    ft = torch.float64 if m.dtype == torch.float64 else torch.float32
    inv = 1.0 / (m.theta ** (torch.arange(0, m.hd, 2, dtype=torch.int64).to(ft) / m.hd))
    f = positions.to(ft)[:, None] * inv[None, :]
    emb = torch.cat([f, f], dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


def repeat_kv(t, G):
    """[B, KV, T, hd] -> [B, KV*G, T, hd]: kv head g serves query heads g*G .. g*G+G-1 (HF
    repeat_kv; expand + reshape: torch 1.13's repeat_interleave is ~100x slower here)."""
    B, KV, T, hd = t.shape
    return t[:, :, None].expand(B, KV, G, T, hd).reshape(B, KV * G, T, hd)


def linear(m, x, name, bias=None):
    return F.linear(x, m.w(name), None if bias is None else m.w(bias))


def attention(m, x, p, cos, sin, cache=None):
    """x [B,S,d] -> [B,S,d]. cache: dict holding this layer's past k, v (post-RoPE), extended."""
    B, S, _ = x.shape
    a = p + "self_attn."
    bias = m.fam == "qwen2_moe" or m.attn_bias
    q = linear(m, x, a + "q_proj.weight", a + "q_proj.bias" if bias else None)
    k = linear(m, x, a + "k_proj.weight", a + "k_proj.bias" if bias else None)
    v = linear(m, x, a + "v_proj.weight", a + "v_proj.bias" if bias else None)
    if m.fam == "olmoe":  # norm over the whole projection, then the clip (HF OlmoeAttention)
        q = rms_norm(q, m.w(a + "q_norm.weight"), m.eps)
        k = rms_norm(k, m.w(a + "k_norm.weight"), m.eps)
        if m.clip is not None:
            q, k, v = (t.clamp(-m.clip, m.clip) for t in (q, k, v))
    q = q.view(B, S, m.H, m.hd)
    k = k.view(B, S, m.KV, m.hd)
    v = v.view(B, S, m.KV, m.hd)
    if m.fam == "qwen3_moe":  # per-head norm, before RoPE (HF Qwen3Attention)
        q = rms_norm(q, m.w(a + "q_norm.weight"), m.eps)
        k = rms_norm(k, m.w(a + "k_norm.weight"), m.eps)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, heads, S, hd]
    cos, sin = cos.to(q.dtype), sin.to(q.dtype)
    q = q * cos + rotate_half(q) * sin
    k = k * cos + rotate_half(k) * sin
    past = 0
    if cache is not None:
        if "k" in cache:
            past = cache["k"].shape[2]
            k = torch.cat([cache["k"], k], dim=2)
            v = torch.cat([cache["v"], v], dim=2)
        cache["k"], cache["v"] = k, v
    k, v = repeat_kv(k, m.H // m.KV), repeat_kv(v, m.H // m.KV)
    s = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(m.hd)
    T = k.shape[2]
    mask = torch.arange(T)[None, :] > (past + torch.arange(S))[:, None]  # key after query
    s = s.masked_fill(mask, float("-inf"))
    att = F.softmax(s, dim=-1, dtype=torch.float32 if s.dtype != torch.float64 else None)
    y = torch.matmul(att.to(v.dtype), v).transpose(1, 2).reshape(B, S, m.H * m.hd)
    return linear(m, y, a + "o_proj.weight", a + "o_proj.bias" if m.attn_bias else None)


def swiglu(m, x, gate, up, down):
    return linear(m, F.silu(linear(m, x, gate)) * linear(m, x, up), down)


def moe(m, x, p):
    """x [T,d] -> [T,d]: HF *SparseMoeBlock."""
    if m.fam == "mixtral":
        b, names = p + "block_sparse_moe.", ("w1", "w3", "w2")
    else:
        b, names = p + "mlp.", ("gate_proj", "up_proj", "down_proj")
    logits = linear(m, x, b + "gate.weight")
    probs = F.softmax(logits, dim=-1,
                      dtype=torch.float32 if logits.dtype != torch.float64 else None)
    srt = probs.sort(dim=-1, descending=True).values
    if m.k < m.E:
        m.min_route_gap = min(m.min_route_gap, float((srt[:, m.k - 1] - srt[:, m.k]).min()))
    top_w, top_i = torch.topk(probs, m.k, dim=-1)
    if m.renorm:
        top_w = top_w / top_w.sum(dim=-1, keepdim=True)
    top_w = top_w.to(x.dtype)
    m.routes[p] = (top_i, top_w)  # the last forward's choice per token, best first
    y = torch.zeros_like(x)
    for j in range(m.E):
        tok, slot = torch.where(top_i == j)
        e = b + "experts.%d." % j
        names_j = [e + n + ".weight" for n in names]
        if tok.numel() == 0:
            m.used.update(names_j)
            continue
        out = swiglu(m, x[tok], *names_j) * top_w[tok, slot, None]
        y = y.index_add(0, tok, out.to(y.dtype))
    if m.fam == "qwen2_moe":
        s = b + "shared_expert."
        sh = swiglu(m, x, s + "gate_proj.weight", s + "up_proj.weight", s + "down_proj.weight")
        y = y + torch.sigmoid(linear(m, x, b + "shared_expert_gate.weight")) * sh
    return y


def forward(m, ids, start=0, caches=None):
    """ids [B,S] (torch long) -> logits [B,S,V]. start, caches: incremental decoding."""
    B, S = ids.shape
    x = m.w("model.embed_tokens.weight")[ids]
    cos, sin = rope(m, torch.arange(start, start + S))
    for layer in range(m.L):
        p = "model.layers.%d." % layer
        cache = None if caches is None else caches.setdefault(layer, {})
        x = x + attention(m, rms_norm(x, m.w(p + "input_layernorm.weight"), m.eps), p, cos, sin,
                          cache)
        h = rms_norm(x, m.w(p + "post_attention_layernorm.weight"), m.eps)
        if m.sparse(layer):
            y = moe(m, h.reshape(B * S, m.d), p).view(B, S, m.d)
        else:
            y = swiglu(m, h, p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight",
                       p + "mlp.down_proj.weight")
        x = x + y
    x = rms_norm(x, m.w("model.norm.weight"), m.eps)
    head = "model.embed_tokens.weight" if m.tie else "lm_head.weight"
    return linear(m, x, head)


class Runner:
    """A Model and how to run it: fp32, float64, or fp32 weights under bf16 autocast."""

    def __init__(self, c, W, mode="f32"):
        self.mode = mode
        self.m = Model(c, W, torch.float64 if mode == "f64" else torch.float32)

    def __call__(self, ids, start=0, caches=None):
        t = torch.as_tensor(np.asarray(ids, dtype=np.int64))
        if t.dim() == 1:
            t = t[None]
        with torch.no_grad():
            if self.mode == "bf16":
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    out = forward(self.m, t, start, caches)
            else:
                out = forward(self.m, t, start, caches)
        return out.to(torch.float64)

    def logits(self, ids):
        """[S,V] float64 of a full causal forward."""
        return self(ids)[0].numpy()

    def routing(self, ids):
        """{layer: (experts [S,k], weights [S,k])} of a full forward over ids, sparse layers."""
        self.m.routes = {}
        self(ids)
        return {int(p.split(".")[2]): (e.numpy(), w.to(torch.float64).numpy())
                for p, (e, w) in self.m.routes.items()}

    def decode_kv(self, ids):
        """[S,V]: the same logits one token at a time through a KV cache (a self-check)."""
        caches, rows = {}, []
        for i, t in enumerate(ids):
            rows.append(self([t], start=i, caches=caches)[0, 0].numpy())
        return np.stack(rows)

    def greedy(self, ids, n):
        """n argmax tokens, recomputing the whole sequence each step; also the smallest gap
        between the two best logits over the steps."""
        seq, out, gap = list(ids), [], math.inf
        for _ in range(n):
            row = self(seq)[0, -1].numpy()
            best = int(np.argmax(row))
            gap = min(gap, float(row[best] - np.partition(row, -2)[-2]))
            out.append(best)
            seq.append(best)
        return out, gap

    def window_loss(self, ids, block):
        """Mean cross-entropy over consecutive windows of block+1 tokens (moe eval's windows)."""
        n_win = len(ids) // (block + 1)
        if n_win < 1:
            raise SystemExit("hf_reference.py: %d ids are fewer than one window of %d"
                             % (len(ids), block + 1))
        a = np.asarray(ids[:n_win * (block + 1)], dtype=np.int64).reshape(n_win, block + 1)
        total = 0.0
        for w0 in range(0, n_win, 8):
            chunk = a[w0:w0 + 8]
            lg = self(chunk[:, :-1])
            total += float(F.cross_entropy(lg.reshape(-1, lg.shape[-1]),
                                           torch.from_numpy(chunk[:, 1:].reshape(-1)),
                                           reduction="sum"))
        return total / (n_win * block), n_win * block


def read_ids(a):
    if a.ids is not None:
        return [int(x) for x in a.ids.split(",") if x.strip()]
    with open(a.ids_file, encoding="utf-8") as f:
        s = f.read()
    if s.lstrip().startswith("{"):
        return [int(x) for x in json.loads(s)["ids"]]
    if s.lstrip().startswith("["):
        return [int(x) for x in json.loads(s)]
    return [int(x) for x in s.replace(",", " ").split()]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--ids")
    g.add_argument("--ids-file")
    ap.add_argument("--greedy", type=int, default=0)
    ap.add_argument("--block", type=int, default=0)
    ap.add_argument("--loss", action="store_true")
    mg = ap.add_mutually_exclusive_group()
    mg.add_argument("--bf16", action="store_true")
    mg.add_argument("--f64", action="store_true")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    c, W = load_dir(a.model)
    ids = read_ids(a)
    V = c["vocab_size"]
    if not ids or min(ids) < 0 or max(ids) >= V:
        raise SystemExit("hf_reference.py: ids must be in [0, %d)" % V)
    r = Runner(c, W, "bf16" if a.bf16 else "f64" if a.f64 else "f32")
    res = {"model": a.model, "family": c["model_type"], "mode": r.mode, "ids": ids}
    if a.loss:
        if a.block < 1:
            raise SystemExit("hf_reference.py: --loss needs --block N")
        res["loss"], res["n_predicted"] = r.window_loss(ids, a.block)
        res["block"] = a.block
    else:
        lg = r.logits(ids).astype(np.float32)
        base = os.path.splitext(a.out)[0]
        np.save(base + ".logits.npy", lg)
        res["logits_file"] = base + ".logits.npy"
        res["logits_shape"] = list(lg.shape)
        res["max_abs_logit"] = float(np.abs(lg).max())
    if a.greedy:
        res["greedy"], res["min_logit_gap"] = r.greedy(ids, a.greedy)
    res["min_route_gap"] = r.m.min_route_gap if r.m.min_route_gap != math.inf else None
    unused = r.m.unused()
    if unused:
        raise SystemExit("hf_reference.py: %s: tensors the %s forward does not use: %s"
                         % (a.model, c["model_type"], unused[:5]))
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(res, f)
        f.write("\n")
    print(json.dumps({k: v for k, v in res.items() if k != "ids"}))


if __name__ == "__main__":
    main()
