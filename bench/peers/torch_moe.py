#!/usr/bin/python3
"""PyTorch peer of moe.cpp's MoE layer (DESIGN.md §4, docs/routers.md, docs/layer.md).

A plain, readable re-implementation with autograd for the gradients: every router, every
balancing loss, temperature, gate dropout, jitter, capacity with priority and dropping, dropless,
ReLU / GELU (exact erf) / SwiGLU experts and shared experts. It reads the same IN file as
`moe layer --load IN --save OUT` and writes the same OUT file, so the two can be compared
tensor by tensor (tests/peers/golden_layer.py).

  /usr/bin/python3 bench/peers/torch_moe.py --in IN.safetensors --out OUT.safetensors \
      --router topk --topk 2 [--capacity-factor 1.25] [--dropless] [--priority token|weight] \
      [--activation swiglu|gelu|relu] [--temperature 1] [--no-renormalize] [--score sigmoid] \
      [--jitter j] [--gate-dropout q] [--groups G --topk-groups g] [--threshold p] \
      [--w-importance a] [--w-load b] [--w-switch c] [--w-zloss d] [--training]

IN: x [T,d], router.weight [E,d], router.noise_weight [E,d] (noisy-topk), router.group_weight
[G,d] (hierarchical), experts.J.{w1,w3} [f,d], experts.J.w2 [d,f], shared_experts.J.* likewise,
optional dy [T,d] (default ones), noise [T,E], dropout_u [T,E], jitter_u [T,d], gshard_u [T].
OUT: y, dx, grad.<param>, loss.{importance,load,switch,z} (1 element, unweighted),
tokens_per_expert (I64 [E], kept slots), experts_per_token (I64 [k+1]: tokens by number of
kept slots; E+1 bins for expert choice). Objective: sum(y*dy) + weighted aux total.

Numbers follow the C++ side's fp32 conventions (1/tau and 1/(1-q) rounded to fp32 first) so the
discrete choices (top-k, capacity, GShard's test) come out the same. --dtype float64 runs the
same maths in double (used by --selftest, a finite-difference check of the autograd graph).
"""
import argparse
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_np  # noqa: E402

ROUTERS = ["softmax", "noisy-topk", "topk", "switch", "gshard", "expert-choice", "hierarchical",
           "top-p"]
DRAWS = ["noise", "dropout_u", "jitter_u", "gshard_u"]


def f32(v):
    return float(np.float32(v))


# ---- helpers ----------------------------------------------------------------------------------------

def cv_squared(v):
    """population variance / (mean² + 1e-10); 0 for one element."""
    if v.numel() <= 1:
        return v.sum() * 0
    mean = v.mean()
    var = ((v - mean) ** 2).mean()
    return var / (mean * mean + 1e-10)


def desc_order(score):
    """Indices sorting each row descending; ties to the lower index (stable sort)."""
    return torch.sort(score.detach(), dim=-1, descending=True, stable=True).indices


def normal_cdf(z):
    return 0.5 * (1 + torch.erf(z / math.sqrt(2.0)))


class Routing:
    """Assignments: token [n], expert [n] (-1 = unused slot), weight [n] (autograd), slot [n]
    (the slot index j for token choice; None for expert choice), k = slots per token (0: expert
    choice), probs [T,E] (autograd), load (autograd scalar or 0)."""

    def __init__(self, token, expert, weight, k, probs, load=None):
        self.token, self.expert, self.weight, self.k, self.probs = token, expert, weight, k, probs
        self.load = load


def token_choice(sel, w, T, k):
    """sel [T,k] experts, w [T,k] weights -> Routing fields in the a = t*k + j layout."""
    token = torch.arange(T).repeat_interleave(k)
    return token, sel.reshape(-1), w.reshape(-1)


def dropout_mask(cfg, u, like):
    """Gate dropout factor [T,E]: [u >= q] / (1 - q), training only."""
    if not (cfg.training and cfg.gate_dropout > 0):
        return None
    if u is None:
        raise SystemExit("torch_moe: gate dropout in training needs dropout_u [T,E] in the input")
    keep = np.float32(1) / (np.float32(1) - np.float32(cfg.gate_dropout))
    return (u >= f32(cfg.gate_dropout)).to(like.dtype) * float(keep)


# ---- routers (logits -> Routing), docs/routers.md --------------------------------------------------

def route_softmax(cfg, L, draws):
    T, E = L.shape
    p = torch.softmax(L * cfg.inv_tau, dim=-1)
    m = dropout_mask(cfg, draws.get("dropout_u"), p)
    w = p * m if m is not None else p
    sel = torch.arange(E).expand(T, E)
    return Routing(*token_choice(sel, w, T, E), E, p)


def route_topk(cfg, L, draws):
    T, E = L.shape
    k = cfg.topk
    if cfg.score == "sigmoid":
        s = torch.sigmoid(L * cfg.inv_tau)
        probs = s / s.sum(-1, keepdim=True)
    else:
        probs = torch.softmax(L * cfg.inv_tau, dim=-1)
        m = dropout_mask(cfg, draws.get("dropout_u"), probs)
        s = probs * m if m is not None else probs
    sel = desc_order(s)[:, :k]
    w = s.gather(1, sel)
    if cfg.renormalize:
        S = w.sum(-1, keepdim=True)
        w = w / torch.where(S > 0, S, torch.ones_like(S))  # S = 0 only if dropout hit all k
    return Routing(*token_choice(sel, w, T, k), k, probs)


def route_top_p(cfg, L, draws):
    """Threshold routing: experts in descending p' until the running sum (double, of the fp32 p')
    reaches the fp32 threshold; at least 1, at most k; weights renormalised over the used ones;
    unused slots expert -1, weight 0."""
    T, E = L.shape
    k = cfg.topk
    probs = torch.softmax(L * cfg.inv_tau, dim=-1)
    m = dropout_mask(cfg, draws.get("dropout_u"), probs)
    s = probs * m if m is not None else probs
    order = desc_order(s)[:, :k]
    top = s.gather(1, order)
    cum = torch.cumsum(top.detach().to(torch.float64), dim=1)
    before = torch.cat([torch.zeros(T, 1, dtype=torch.float64), cum[:, :-1]], dim=1)
    used = before < f32(cfg.threshold)  # slot j is taken while the first j fall short
    used[:, 0] = True
    w = torch.where(used, top, torch.zeros_like(top))
    S = w.sum(-1, keepdim=True)
    w = w / torch.where(S > 0, S, torch.ones_like(S))  # S = 0 only if dropout hit all used
    sel = torch.where(used, order, torch.full_like(order, -1))
    return Routing(*token_choice(sel, w, T, k), k, probs)


def route_noisy_topk(cfg, L, Ln, draws):
    T, E = L.shape
    k = cfg.topk
    clean = L * cfg.inv_tau
    probs = torch.softmax(clean, dim=-1)
    sigma = torch.nn.functional.softplus(Ln)
    if cfg.training:
        if "noise" not in draws:
            raise SystemExit("torch_moe: noisy-topk in training needs noise [T,E] in the input")
        H = clean + draws["noise"] * sigma
    else:
        H = clean
    sel = desc_order(H)[:, :k]
    w = torch.softmax(H.gather(1, sel), dim=-1)
    load = None
    if cfg.training:
        # Shazeer's smooth load: P(t,i) = Φ((clean_i - kth_excluding(H, k, i)) / sigma_i).
        order = desc_order(H)
        Hs = H.gather(1, order)  # sorted values, differentiable into the expert they came from
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(E).expand(T, E).contiguous())
        inside = rank < k
        if k < E:
            thr = torch.where(inside, Hs[:, k:k + 1].expand(T, E), Hs[:, k - 1:k].expand(T, E))
            P = normal_cdf((clean - thr) / sigma)
        else:  # fewer than k other experts: i always stays in the top k
            P = torch.ones_like(clean)
        load = cv_squared(P.sum(0))
    return Routing(*token_choice(sel, w, T, k), k, probs, load)


def route_switch(cfg, L, draws):
    T, E = L.shape
    p = torch.softmax(L * cfg.inv_tau, dim=-1)
    m = dropout_mask(cfg, draws.get("dropout_u"), p)
    s = p * m if m is not None else p
    sel = desc_order(s)[:, :1]
    return Routing(*token_choice(sel, s.gather(1, sel), T, 1), 1, p)


def route_gshard(cfg, L, draws):
    T, E = L.shape
    p = torch.softmax(L * cfg.inv_tau, dim=-1)
    m = dropout_mask(cfg, draws.get("dropout_u"), p)
    s = p * m if m is not None else p
    sel = desc_order(s)[:, :2]
    top = s.gather(1, sel)
    S = top.sum(-1, keepdim=True)
    g = top / torch.where(S > 0, S, torch.ones_like(S))
    if cfg.training:
        if "gshard_u" not in draws:
            raise SystemExit("torch_moe: gshard in training needs gshard_u [T] in the input")
        use2 = 2 * g[:, 1].detach() > draws["gshard_u"]
    else:
        use2 = torch.ones(T, dtype=torch.bool)
    sel = sel.clone()
    sel[:, 1] = torch.where(use2, sel[:, 1], torch.full_like(sel[:, 1], -1))
    w = torch.stack([g[:, 0], torch.where(use2, g[:, 1], torch.zeros_like(g[:, 1]))], dim=1)
    return Routing(*token_choice(sel, w, T, 2), 2, p)


def route_expert_choice(cfg, L, draws):
    T, E = L.shape
    S = torch.softmax(L * cfg.inv_tau, dim=-1)
    C = min(T, math.ceil(f32(cfg.capacity_factor) * T * cfg.topk / E)) if T > 0 else 0
    tokens, experts, weights = [], [], []
    for e in range(E):
        top = desc_order(S[:, e])[:C]
        tokens.append(top)
        experts.append(torch.full((C,), e, dtype=torch.long))
        weights.append(S[top, e])
    return Routing(torch.cat(tokens), torch.cat(experts), torch.cat(weights), 0, S)


def route_hierarchical(cfg, L, Lg, draws):
    T, E = L.shape
    G, tg, k = cfg.groups, cfg.topk_groups, cfg.topk
    m, kk = E // G, k // tg
    pg = torch.softmax(Lg * cfg.inv_tau, dim=-1)                      # [T,G]
    q = torch.softmax((L * cfg.inv_tau).view(T, G, m), dim=-1)        # [T,G,m]
    probs = (pg.unsqueeze(-1) * q).reshape(T, E)
    gsel = desc_order(pg)[:, :tg]                                     # [T,tg]
    qsel = q.gather(1, gsel.unsqueeze(-1).expand(T, tg, m))           # [T,tg,m]
    esel = desc_order(qsel)[:, :, :kk]                                # [T,tg,kk]
    sel = (gsel.unsqueeze(-1) * m + esel).reshape(T, k)
    w = (pg.gather(1, gsel).unsqueeze(-1) * qsel.gather(2, esel)).reshape(T, k)
    return Routing(*token_choice(sel, w, T, k), k, probs)


# ---- capacity, experts, the layer -------------------------------------------------------------------

def apply_capacity(cfg, r, T, E):
    """kept [n] bool. C = ceil(cf*T*k/E), k = slots per token; priority slot-major token order or
    weight descending (ties slot-major); kept iff fewer than C earlier ones went to the expert."""
    n = r.expert.numel()
    routed = r.expert >= 0
    if r.k == 0 or cfg.dropless:  # expert choice comes limited to its capacity
        return routed.clone()
    C = math.ceil(f32(cfg.capacity_factor) * T * r.k / E)
    order = sorted([i for i in range(n) if routed[i]], key=lambda i: (i % r.k, i // r.k))
    if cfg.priority == "weight":
        wd = r.weight.detach()
        order = sorted(order, key=lambda i: -float(wd[i]))  # Python's sort is stable
    kept = torch.zeros(n, dtype=torch.bool)
    used = [0] * E
    for i in order:
        e = int(r.expert[i])
        if used[e] < C:
            used[e] += 1
            kept[i] = True
    return kept


def expert_ffn(x, w, activation):
    """HF Mixtral orientation: w1, w3 [f,d], w2 [d,f]."""
    h = x @ w["w1"].t()
    if activation == "relu":
        h = torch.relu(h)
    elif activation == "gelu":
        h = torch.nn.functional.gelu(h)  # exact erf GELU
    elif activation == "swiglu":
        h = torch.nn.functional.silu(h) * (x @ w["w3"].t())
    else:
        raise SystemExit(f"torch_moe: unknown activation {activation}")
    return h @ w["w2"].t()


def expert_params(params, prefix):
    """{J: {w1, w2, w3}} for names prefix.J.wN."""
    out = {}
    for name, t in params.items():
        parts = name.split(".")
        if len(parts) == 3 and parts[0] == prefix:
            out.setdefault(int(parts[1]), {})[parts[2]] = t
    return out


def layer_forward(cfg, x, params, draws):
    """Returns y [T,d], Routing, kept [n], aux {name: tensor}."""
    T, d = x.shape
    Wg = params["router.weight"]
    E = Wg.shape[0]
    xr = x
    if cfg.training and cfg.jitter > 0:
        if "jitter_u" not in draws:
            raise SystemExit("torch_moe: jitter in training needs jitter_u [T,d] in the input")
        j = f32(cfg.jitter)
        xr = x * (f32(1 - j) + f32(2 * j) * draws["jitter_u"])  # fp32 like the C++ side
    L = xr @ Wg.t()
    if cfg.router == "noisy-topk":
        r = route_noisy_topk(cfg, L, xr @ params["router.noise_weight"].t(), draws)
    elif cfg.router == "hierarchical":
        r = route_hierarchical(cfg, L, xr @ params["router.group_weight"].t(), draws)
    else:
        r = {"softmax": route_softmax, "topk": route_topk, "switch": route_switch,
             "gshard": route_gshard, "expert-choice": route_expert_choice,
             "top-p": route_top_p}[cfg.router](cfg, L, draws)

    kept = apply_capacity(cfg, r, T, E)
    experts = expert_params(params, "experts")
    y = torch.zeros_like(x)
    for e in range(E):
        idx = torch.nonzero(kept & (r.expert == e)).flatten()
        if idx.numel() == 0:
            continue
        tok = r.token[idx]
        out = expert_ffn(x[tok], experts[e], cfg.activation)
        y = y.index_add(0, tok, out * r.weight[idx].unsqueeze(1))
    for _, w in sorted(expert_params(params, "shared_experts").items()):
        y = y + expert_ffn(x, w, cfg.activation)

    # Balancing losses, unweighted (docs/routers.md).
    routed = r.expert >= 0
    G = torch.zeros(T, E, dtype=x.dtype).index_put(
        (r.token[routed], r.expert[routed]), r.weight[routed], accumulate=True)
    aux = {"importance": cv_squared(G.sum(0))}
    counts = torch.bincount(r.expert[routed], minlength=E).to(x.dtype)
    f = counts / counts.sum() if counts.sum() > 0 else counts
    aux["switch"] = E * (f * r.probs.mean(0)).sum() if T > 0 else x.sum() * 0
    lse = torch.logsumexp(L * cfg.inv_tau, dim=-1)
    aux["z"] = (lse * lse).mean() if T > 0 else x.sum() * 0
    aux["load"] = r.load if r.load is not None else x.sum() * 0
    return y, r, kept, aux


# ---- command line --------------------------------------------------------------------------------

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--in", dest="inp")
    ap.add_argument("--out")
    ap.add_argument("--router", default="topk", choices=ROUTERS)
    ap.add_argument("--topk", type=int, default=2)
    ap.add_argument("--capacity-factor", type=float, default=1.0)
    ap.add_argument("--dropless", action="store_true")
    ap.add_argument("--priority", default="token", choices=["token", "weight"])
    ap.add_argument("--activation", default="swiglu", choices=["swiglu", "gelu", "relu"])
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--no-renormalize", dest="renormalize", action="store_false")
    ap.add_argument("--score", default="softmax", choices=["softmax", "sigmoid"])
    ap.add_argument("--jitter", type=float, default=0.0)
    ap.add_argument("--gate-dropout", type=float, default=0.0)
    ap.add_argument("--groups", type=int, default=0)
    ap.add_argument("--topk-groups", type=int, default=1)
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--w-importance", type=float, default=0.0)
    ap.add_argument("--w-load", type=float, default=0.0)
    ap.add_argument("--w-switch", type=float, default=0.0)
    ap.add_argument("--w-zloss", type=float, default=0.0)
    ap.add_argument("--training", action="store_true")
    ap.add_argument("--eval", dest="training", action="store_false",
                    help="inference (the default here; `moe layer` defaults to --training)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--selftest", action="store_true",
                    help="finite-difference check (double) of the autograd graph for every router")
    # The C++ command's shape flags are accepted (and ignored: shapes come from the file).
    for flag in ["--experts", "--d", "--ffn", "--tokens", "--shared-experts", "--seed"]:
        ap.add_argument(flag, type=int, default=None)
    ap.add_argument("--json", action="store_true")
    cfg = ap.parse_args(argv)
    cfg.inv_tau = f32(np.float32(1) / np.float32(cfg.temperature))
    return cfg


def check_config(cfg, E):
    if cfg.router in ("switch",) and cfg.topk != 1:
        raise SystemExit("torch_moe: switch needs --topk 1")
    if cfg.router == "gshard" and cfg.topk != 2:
        raise SystemExit("torch_moe: gshard needs --topk 2")
    if not 1 <= cfg.topk <= E:
        raise SystemExit(f"torch_moe: --topk {cfg.topk} must be in [1, E={E}]")
    if cfg.router == "top-p" and not 0 < cfg.threshold <= 1:
        raise SystemExit(f"torch_moe: --threshold {cfg.threshold} must be in (0, 1]")
    if cfg.router == "hierarchical":
        if cfg.groups < 1 or E % cfg.groups or cfg.topk % cfg.topk_groups:
            raise SystemExit("torch_moe: hierarchical needs E % groups == 0, topk % topk-groups == 0")


PARAM_PREFIXES = ("router.", "experts.", "shared_experts.")


def run(cfg, tensors):
    """tensors: {name: numpy} -> {name: numpy} (the OUT file)."""
    dt = torch.float64 if cfg.dtype == "float64" else torch.float32
    x = torch.tensor(tensors["x"], dtype=dt, requires_grad=True)
    params = {n: torch.tensor(a, dtype=dt, requires_grad=True)
              for n, a in tensors.items() if n.startswith(PARAM_PREFIXES)}
    draws = {n: torch.tensor(tensors[n], dtype=dt) for n in DRAWS if n in tensors}
    E = params["router.weight"].shape[0]
    check_config(cfg, E)
    y, r, kept, aux = layer_forward(cfg, x, params, draws)
    dy = torch.tensor(tensors["dy"], dtype=dt) if "dy" in tensors else torch.ones_like(y)
    obj = (y * dy).sum() + cfg.w_importance * aux["importance"] + cfg.w_load * aux["load"] + \
        cfg.w_switch * aux["switch"] + cfg.w_zloss * aux["z"]
    leaves = [x] + list(params.values())
    grads = torch.autograd.grad(obj, leaves, allow_unused=True)
    npdt = np.float64 if dt == torch.float64 else np.float32
    out = {"y": y.detach().numpy().astype(npdt), "dx": grads[0].numpy().astype(npdt)}
    for (name, p), g in zip(params.items(), grads[1:]):
        out["grad." + name] = (g if g is not None else torch.zeros_like(p)).numpy().astype(npdt)
    for name, v in aux.items():
        out["loss." + name] = np.array([float(v)], dtype=npdt)
    tpe = torch.bincount(r.expert[kept], minlength=E) if kept.any() else torch.zeros(E, dtype=torch.long)
    out["tokens_per_expert"] = tpe.numpy().astype(np.int64)
    T = x.shape[0]
    per_token = torch.bincount(r.token[kept], minlength=T) if kept.any() else torch.zeros(T, dtype=torch.long)
    out["experts_per_token"] = torch.bincount(per_token, minlength=(r.k if r.k > 0 else E) + 1) \
        .numpy().astype(np.int64)
    return out


def random_inputs(T, d, f, E, router, activation, shared, groups, seed, dtype=np.float32):
    """A random IN dict (the golden test and the self-test use it)."""
    rng = np.random.default_rng(seed)
    t = {"x": rng.standard_normal((T, d)),
         "router.weight": rng.standard_normal((E, d)) * 0.5,
         "dy": rng.standard_normal((T, d)),
         "noise": rng.standard_normal((T, E)),
         "dropout_u": rng.random((T, E)),
         "jitter_u": rng.random((T, d)),
         "gshard_u": rng.random(T)}
    if router == "noisy-topk":
        t["router.noise_weight"] = rng.standard_normal((E, d)) * 0.5
    if router == "hierarchical":
        t["router.group_weight"] = rng.standard_normal((groups, d)) * 0.5
    names = ["w1", "w2"] + (["w3"] if activation == "swiglu" else [])
    for prefix, n in (("experts", E), ("shared_experts", shared)):
        for j in range(n):
            for w in names:
                shape = (d, f) if w == "w2" else (f, d)
                t[f"{prefix}.{j}.{w}"] = rng.standard_normal(shape) / math.sqrt(shape[1])
    return {k: v.astype(dtype) for k, v in t.items()}


def selftest():
    """Autograd vs central differences in double for every router and loss: proves the peer's
    graph is differentiable where it should be (no stray detach) before it serves as golden."""
    cases = [
        ("softmax", 1, []), ("softmax", 1, ["--gate-dropout", "0.3"]),
        ("topk", 2, []), ("topk", 3, ["--no-renormalize"]), ("topk", 2, ["--score", "sigmoid"]),
        ("topk", 2, ["--gate-dropout", "0.25"]),
        ("noisy-topk", 2, []), ("switch", 1, ["--jitter", "0.1"]), ("gshard", 2, []),
        ("expert-choice", 2, []), ("hierarchical", 2, ["--groups", "2", "--topk-groups", "1"]),
        ("topk", 2, ["--capacity-factor", "0.75", "--priority", "weight", "--activation", "gelu"]),
        ("switch", 1, ["--capacity-factor", "1.0", "--activation", "relu"]),
        ("top-p", 3, ["--threshold", "0.6"]), ("top-p", 4, ["--threshold", "0.8", "--gate-dropout", "0.2"]),
        ("top-p", 3, ["--threshold", "0.7", "--capacity-factor", "0.75", "--priority", "weight"]),
    ]
    losses = ["--w-importance", "0.7", "--w-load", "0.9", "--w-switch", "0.5", "--w-zloss", "0.3"]
    failures = 0
    for i, (router, k, extra) in enumerate(cases):
        cfg = parse_args(["--router", router, "--topk", str(k), "--training", "--dtype", "float64",
                          "--temperature", "0.8"] + losses + extra)
        t = random_inputs(5, 4, 3, 4, router, cfg.activation, 1 if i % 2 else 0, 2, 100 + i,
                          np.float64)
        x = torch.tensor(t["x"], requires_grad=True)
        params = {n: torch.tensor(a, requires_grad=True) for n, a in t.items()
                  if n.startswith(PARAM_PREFIXES)}
        draws = {n: torch.tensor(t[n]) for n in DRAWS}
        dy = torch.tensor(t["dy"])
        names = ["x"] + list(params)

        def objective(*leaves):
            p = dict(zip(names[1:], leaves[1:]))
            y, r, kept, aux = layer_forward(cfg, leaves[0], p, draws)
            return (y * dy).sum() + cfg.w_importance * aux["importance"] + \
                cfg.w_load * aux["load"] + cfg.w_switch * aux["switch"] + cfg.w_zloss * aux["z"]

        leaves = [x] + list(params.values())
        ok = torch.autograd.gradcheck(objective, leaves, eps=1e-6, atol=1e-6, rtol=1e-5,
                                      raise_exception=False)
        print(f"selftest {router} {' '.join(extra)}: {'ok' if ok else 'FAILED'}")
        failures += not ok
    return failures


def main():
    cfg = parse_args()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    if cfg.selftest:
        torch.set_num_threads(1)  # tiny shapes: threads only add overhead
        sys.exit(1 if selftest() else 0)
    if not cfg.inp or not cfg.out:
        raise SystemExit("torch_moe: --in and --out are required (or --selftest)")
    out = run(cfg, safetensors_np.load(cfg.inp))
    safetensors_np.save(cfg.out, out)


if __name__ == "__main__":
    main()
