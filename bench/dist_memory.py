#!/usr/bin/env python3
"""Per-rank memory of training under expert parallelism (docs/distributed.md, issue 10).

Trains a config whose experts dominate the parameters (16 experts of width 2048 at d 128, two MoE
layers: 25M expert parameters, 0.5M the rest) for a few steps under `mpirun -np N --expert-parallel
N` and samples every rank's resident memory (VmRSS from /proc, every 50 ms). Prints, per layout,
the median over the samples of each rank (the steady state of the training steps) and the peak
(VmHWM at exit: includes the final checkpoint save, where rank 0 assembles the whole model).
Usage: dist_memory.py MOE_BIN [NP ...] (default 1 2 4). Not a test: a measurement.
"""
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

MOE = sys.argv[1]
NPS = [int(a) for a in sys.argv[2:]] or [1, 2, 4]
SRC = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CFG = {
    "data": os.path.join(SRC, "data/tinyshakespeare.txt"),
    "tokenizer": "char", "n_layers": 2, "n_heads": 4, "n_kv_heads": 4, "d_model": 128,
    "d_ff": 256, "block_size": 32, "moe_every": 1, "n_experts": 16, "top_k": 2,
    "expert_d_ff": 2048, "router": "topk", "batch_size": 4, "max_steps": 30, "lr": 1e-3,
    "warmup_steps": 2, "eval_every": 1000, "eval_batches": 1, "log_every": 10,
    "save_every": 1000, "threads": 1, "seed": 3,
}


def children(pid):
    out = []
    for line in subprocess.run(["ps", "-e", "-o", "pid=,ppid=,comm="], capture_output=True,
                               text=True).stdout.splitlines():
        p, pp, comm = line.split(None, 2)
        if int(pp) == pid:
            out.append((int(p), comm.strip()))
    return out


def rank_of(pid):
    try:
        env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    except OSError:
        return None
    for e in env:
        if e.startswith(b"OMPI_COMM_WORLD_RANK="):
            return int(e.split(b"=")[1])
    return 0


def status(pid, key):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0  # MiB
    except OSError:
        return None
    return None


with tempfile.TemporaryDirectory(prefix="moe_mem_") as w:
    cfg_path = os.path.join(w, "mem.json")
    json.dump(CFG, open(cfg_path, "w"))
    print(f"config: {json.dumps({k: v for k, v in CFG.items() if k != 'data'})}")
    print("| ranks | layout | params per rank | median RSS per rank (MiB) | peak RSS per rank "
          "(MiB) |")
    print("|---|---|---|---|---|")
    for np_ in NPS:
        out = os.path.join(w, f"np{np_}")
        cmd = ["mpiexec", "--oversubscribe", "--allow-run-as-root", "--bind-to", "none", "-np",
               str(np_), MOE, "train", "--config", cfg_path, "--out", out]
        if np_ > 1:
            cmd += ["--expert-parallel", str(np_)]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env)
        samples, peak = {}, {}
        while p.poll() is None:
            for c, comm in children(p.pid):
                if comm != "moe":
                    continue
                r = rank_of(c)
                v = status(c, "VmRSS")
                if r is not None and v is not None:
                    samples.setdefault(r, []).append(v)
                h = status(c, "VmHWM")
                if r is not None and h is not None:
                    peak[r] = max(peak.get(r, 0), h)
            time.sleep(0.05)
        so, se = p.communicate()
        if p.returncode != 0:
            print(f"np {np_}: exit {p.returncode}\n{se[-1500:]}")
            continue
        m = re.search(r"(\d+) params per rank of (\d+)", se)
        n = f"{int(m.group(1)) / 1e6:.1f}M of {int(m.group(2)) / 1e6:.1f}M" if m else "all"
        med = ", ".join(f"{statistics.median(samples[r]):.0f}" for r in sorted(samples))
        pk = ", ".join(f"{peak[r]:.0f}" for r in sorted(peak))
        print(f"| {np_} | ep{np_}xdp1 | {n} | {med} | {pk} |", flush=True)
