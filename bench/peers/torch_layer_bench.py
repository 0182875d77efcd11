#!/usr/bin/python3
"""Speed peer for `moe bench layer`: the efficient PyTorch MoE layer (shared/ANCHORS.md) and a
dense FFN of equal active FLOPs, timed forward and forward+backward (median after warm-up).

Routing is Mixtral top-k (softmax, top-k, renormalise; the dense softmax router when k == E),
then: one argsort of the flat expert ids, one index_select, torch.split per expert (slicing a
stacked weight inside autograd made the E=64 backward take tens of seconds, so every expert has
its own leaf tensors), per-expert matmuls, one index_add_ back. SwiGLU experts use one fused
[2f, d] input weight per expert, as moe.cpp does, so both sides run the same GEMMs.

--precision bf16 runs forward and loss under torch.autocast("cpu", dtype=torch.bfloat16) (GEMM
operands cast to bf16 on every call, fp32 accumulation and outputs of the activations in bf16, as
autocast does); the weights stay fp32 masters and backward runs outside autocast, as in a training
step. The router (logits, softmax, top-k, renormalisation) runs in fp32 with autocast switched
off around it: PyTorch 1.13's CPU autocast would run its matmul and softmax in bf16, while moe.cpp's
bf16 mode and ST-MoE's "selective precision" keep it fp32; --router-precision bf16 leaves it to
autocast (for the stability experiment). The dense twin runs under the same precision.

Run it as moe bench does: OPENBLAS_CORETYPE=SKYLAKEX (AVX-512 kernels; only on a CPU that shows
AVX-512, else OpenBLAS dies with "Illegal instruction"), LD_PRELOAD=jemalloc with
purging off (MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1), same thread count. The last line
of stdout is one JSON object.
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F


def act_fn(name, h, f):
    if name == "swiglu":
        h1, h3 = h.split(f, dim=-1)
        return F.silu(h1) * h3
    if name == "gelu":
        return F.gelu(h)
    return F.relu(h)


class MoE(torch.nn.Module):
    def __init__(self, d, f, E, k, act):
        super().__init__()
        hf = 2 * f if act == "swiglu" else f
        self.E, self.k, self.f, self.act = E, k, f, act
        self.router = torch.nn.Parameter(torch.randn(E, d) * 0.02)
        self.w13 = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.empty(hf, d).uniform_(-d ** -0.5, d ** -0.5)) for _ in range(E)])
        self.w2 = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.empty(d, f).uniform_(-f ** -0.5, f ** -0.5)) for _ in range(E)])

    router_fp32 = True

    def route(self, x):
        p = torch.softmax(x @ self.router.t(), dim=-1)
        w, idx = torch.topk(p, self.k, dim=-1)
        return w / w.sum(dim=-1, keepdim=True), idx

    def forward(self, x):
        if self.router_fp32 and torch.is_autocast_cpu_enabled():
            with torch.autocast("cpu", enabled=False):
                w, idx = self.route(x.float())
        else:
            w, idx = self.route(x)
        flat = idx.reshape(-1)
        order = torch.argsort(flat, stable=True)
        tok = order // self.k
        counts = torch.bincount(flat, minlength=self.E).tolist()
        xs = x.index_select(0, tok)
        outs = []
        for e, xe in enumerate(torch.split(xs, counts)):
            if xe.shape[0] == 0:
                continue
            a = act_fn(self.act, xe @ self.w13[e].t(), self.f)
            outs.append(a @ self.w2[e].t())
        out = torch.cat(outs) * w.reshape(-1)[order].unsqueeze(1)
        return torch.zeros_like(x).index_add_(0, tok, out.to(x.dtype))  # combine summed in fp32


class Dense(torch.nn.Module):
    def __init__(self, d, f, act):
        super().__init__()
        hf = 2 * f if act == "swiglu" else f
        self.f, self.act = f, act
        self.w13 = torch.nn.Parameter(torch.empty(hf, d).uniform_(-d ** -0.5, d ** -0.5))
        self.w2 = torch.nn.Parameter(torch.empty(d, f).uniform_(-f ** -0.5, f ** -0.5))

    def forward(self, x):
        return act_fn(self.act, x @ self.w13.t(), self.f) @ self.w2.t()


def timed(fn, reps, warmup):
    """Median wall ms and median process CPU ms per repetition."""
    for _ in range(warmup):
        fn()
    ts, cs = [], []
    for _ in range(reps):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        ts.append(1e3 * (time.perf_counter() - t0))
        cs.append(1e3 * (time.process_time() - c0))
    return statistics.median(ts), statistics.median(cs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--ffn", type=int, default=1024)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--topk", type=int, default=2)
    ap.add_argument("--activation", default="swiglu")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                    help="bf16: forward under CPU autocast (bf16 GEMMs, fp32 master weights)")
    ap.add_argument("--router-precision", choices=("fp32", "bf16"), default="fp32",
                    help="bf16: the router too under autocast (only with --precision bf16)")
    a = ap.parse_args()
    if a.router_precision == "bf16" and a.precision != "bf16":
        ap.error("--router-precision bf16 needs --precision bf16")
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    moe = MoE(a.d, a.ffn, a.experts, a.topk, a.activation)
    moe.router_fp32 = a.router_precision == "fp32"
    bf16 = a.precision == "bf16"

    def cast():  # autocast region of one forward (the weight-cast cache lives as long as it)
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
    dense = Dense(a.d, a.ffn * a.topk, a.activation)
    x = torch.randn(a.tokens, a.d, requires_grad=True)
    dy = torch.ones(a.tokens, a.d)

    def fwd(m):
        def run():
            with cast():
                return m(x)
        return run

    def fwdbwd(m):
        def run():
            for p in m.parameters():
                p.grad = None
            x.grad = None
            with cast():
                y = m(x)
            y.backward(dy.to(y.dtype))
        return run

    r = {"torch_version": torch.__version__, "threads": torch.get_num_threads(),
         "precision": a.precision, "router_precision": a.router_precision if bf16 else "fp32"}
    if bf16:  # proof that autocast took effect, and by how much: relative L2 error of y vs fp32
        with torch.no_grad():
            y32 = moe(x)
            with cast():
                y16 = moe(x)
            r["out_rel_err_vs_fp32"] = float((y16.float() - y32).norm() / y32.norm())
    for name, fn in (("torch_fwd", fwd(moe)), ("torch_fwdbwd", fwdbwd(moe)),
                     ("torch_dense_fwd", fwd(dense)), ("torch_dense_fwdbwd", fwdbwd(dense))):
        r[name + "_ms"], r[name + "_cpu_ms"] = timed(fn, a.reps, a.warmup)
    print(json.dumps(r))


if __name__ == "__main__":
    main()
