#!/usr/bin/python3
"""Golden test: `moe layer --load IN --save OUT` against the PyTorch peer (bench/peers/torch_moe.py)
on the same random IN file, for every router, capacity and priority, dropless, each activation,
shared experts, each balancing loss, and training with the random draws fed from the file.

Compares y, dx, every grad.*, the four losses (unweighted) and tokens_per_expert:
  |ours - peer| <= atol + rtol*|peer|, rtol = 1e-4 (the issue's fp32 bound), and
  atol = 1e-5 * max|peer| of that tensor: entries that cancel to ~0 carry the absolute rounding
  noise of the O(max) terms they are summed from (fp32 eps 6e-8 times up to ~100 terms, BLAS and
  torch accumulating in different orders), so a pure relative bound would flag noise.
tokens_per_expert and experts_per_token must match exactly. Exit 1 on any mismatch; "skipped" only without torch.

  /usr/bin/python3 tests/peers/golden_layer.py --moe build/moe [-k substring] [-v]
"""
import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "bench", "peers"))

try:
    import torch  # noqa: F401
except ImportError:
    print("golden_layer_vs_torch: skipped (no torch in /usr/bin/python3)")
    sys.exit(0)

import safetensors_np  # noqa: E402
import torch_moe  # noqa: E402

RTOL, ATOL_REL = 1e-4, 1e-5
LOSSES = ["--w-importance", "0.3", "--w-switch", "0.2", "--w-zloss", "0.05"]

# (name, shape overrides, flags). Shapes default to T=13 d=8 f=6 E=4: odd sizes on purpose.
CASES = [
    ("softmax dense", {}, ["--router", "softmax", "--topk", "1", "--dropless"]),
    ("softmax capacity", {}, ["--router", "softmax", "--topk", "1", "--capacity-factor", "0.75"]),
    ("topk dropless", {}, ["--router", "topk", "--topk", "2", "--dropless"]),
    ("topk cap token", {}, ["--router", "topk", "--topk", "2", "--capacity-factor", "1.0"]),
    ("topk cap weight", {}, ["--router", "topk", "--topk", "2", "--capacity-factor", "0.75",
                             "--priority", "weight"]),
    ("topk k=E", {}, ["--router", "topk", "--topk", "4", "--dropless"]),
    ("topk T=1", {"T": 1}, ["--router", "topk", "--topk", "2", "--dropless"]),
    ("topk no-renorm", {}, ["--router", "topk", "--topk", "2", "--dropless", "--no-renormalize"]),
    ("topk sigmoid", {}, ["--router", "topk", "--topk", "2", "--dropless", "--score", "sigmoid"]),
    ("topk temperature", {}, ["--router", "topk", "--topk", "2", "--dropless",
                              "--temperature", "0.7"]),
    ("topk gate dropout", {}, ["--router", "topk", "--topk", "2", "--dropless", "--training",
                               "--gate-dropout", "0.25"]),
    ("topk gelu", {}, ["--router", "topk", "--topk", "2", "--dropless", "--activation", "gelu"]),
    ("topk relu", {}, ["--router", "topk", "--topk", "2", "--capacity-factor", "1.0",
                       "--activation", "relu"]),
    ("topk shared", {"S": 2}, ["--router", "topk", "--topk", "2", "--dropless",
                               "--shared-experts", "2"]),
    ("topk w-importance", {}, ["--router", "topk", "--topk", "2", "--dropless",
                               "--w-importance", "0.5"]),
    ("topk w-switch", {}, ["--router", "topk", "--topk", "2", "--dropless", "--w-switch", "0.5"]),
    ("topk w-zloss", {}, ["--router", "topk", "--topk", "2", "--dropless", "--w-zloss", "0.1"]),
    ("noisy-topk inference", {}, ["--router", "noisy-topk", "--topk", "2", "--dropless"]),
    ("noisy-topk training", {}, ["--router", "noisy-topk", "--topk", "2", "--dropless",
                                 "--training", "--w-load", "0.5"] + LOSSES),
    ("noisy-topk cap", {}, ["--router", "noisy-topk", "--topk", "1", "--capacity-factor", "1.25",
                            "--training", "--w-load", "1.0"]),
    ("switch", {}, ["--router", "switch", "--topk", "1", "--capacity-factor", "1.25"] + LOSSES),
    ("switch jitter", {}, ["--router", "switch", "--topk", "1", "--capacity-factor", "1.25",
                           "--training", "--jitter", "0.1"] + LOSSES),
    ("switch dropout", {}, ["--router", "switch", "--topk", "1", "--dropless", "--training",
                            "--gate-dropout", "0.2"]),
    ("gshard inference", {}, ["--router", "gshard", "--topk", "2", "--capacity-factor", "1.0"]),
    ("gshard training", {}, ["--router", "gshard", "--topk", "2", "--capacity-factor", "1.0",
                             "--training", "--priority", "weight"] + LOSSES),
    ("expert-choice", {}, ["--router", "expert-choice", "--topk", "2", "--capacity-factor", "1.0"]
     + LOSSES),
    ("expert-choice cf", {}, ["--router", "expert-choice", "--topk", "1",
                              "--capacity-factor", "0.5", "--activation", "gelu"]),
    ("hierarchical", {"E": 8}, ["--router", "hierarchical", "--topk", "4", "--groups", "4",
                                "--topk-groups", "2", "--dropless"] + LOSSES),
    ("hierarchical cap", {"E": 6}, ["--router", "hierarchical", "--topk", "2", "--groups", "3",
                                    "--topk-groups", "1", "--capacity-factor", "1.0",
                                    "--training"]),
    ("top-p dropless", {}, ["--router", "top-p", "--topk", "3", "--threshold", "0.6",
                            "--dropless"] + LOSSES),
    ("top-p max_k=E", {"E": 6}, ["--router", "top-p", "--topk", "6", "--threshold", "0.85",
                                 "--dropless", "--temperature", "0.7"]),
    ("top-p cap token", {}, ["--router", "top-p", "--topk", "3", "--threshold", "0.7",
                             "--capacity-factor", "0.75"] + LOSSES),
    ("top-p cap weight", {}, ["--router", "top-p", "--topk", "2", "--threshold", "0.5",
                              "--capacity-factor", "0.75", "--priority", "weight"]),
    ("top-p gate dropout", {}, ["--router", "top-p", "--topk", "3", "--threshold", "0.8",
                                "--dropless", "--training", "--gate-dropout", "0.25"] + LOSSES),
    ("top-p w-importance", {}, ["--router", "top-p", "--topk", "4", "--threshold", "0.9",
                                "--dropless", "--w-importance", "0.5"]),
]


def compare(name, ours, peer, problems):
    if name in ("tokens_per_expert", "experts_per_token"):
        if ours.shape != peer.shape or not np.array_equal(ours.astype(np.int64), peer):
            problems.append(f"{name}: ours {ours.tolist()} peer {peer.tolist()}")
        return
    if ours.shape != peer.shape:
        problems.append(f"{name}: shape ours {list(ours.shape)} peer {list(peer.shape)}")
        return
    a, b = ours.astype(np.float64), peer.astype(np.float64)
    atol = ATOL_REL * float(np.max(np.abs(b))) if b.size else 0.0
    if name.startswith("loss."):
        atol = max(atol, 1e-7)
    bad = ~(np.abs(a - b) <= atol + RTOL * np.abs(b))
    if bad.any():
        i = np.unravel_index(np.argmax(np.abs(a - b) - RTOL * np.abs(b)), a.shape)
        problems.append(f"{name}: {int(bad.sum())}/{a.size} differ, worst at {list(i)}: "
                        f"ours {a[i]:.9g} peer {b[i]:.9g} (atol {atol:.3g})")


def run_case(moe, tmp, idx, name, shape, flags, verbose):
    T, d, f, E, S = shape.get("T", 13), 8, 6, shape.get("E", 4), shape.get("S", 0)
    cfg = torch_moe.parse_args(flags + ([] if "--training" in flags else ["--eval"]))
    tensors = torch_moe.random_inputs(T, d, f, E, cfg.router, cfg.activation, S, cfg.groups,
                                      seed=1000 + idx)
    inp, out = os.path.join(tmp, f"in{idx}.safetensors"), os.path.join(tmp, f"out{idx}.safetensors")
    safetensors_np.save(inp, tensors)
    # `moe layer` defaults to training, the peer to inference: say which, explicitly, to both.
    mode = [] if "--training" in flags else ["--eval"]
    cmd = [moe, "layer", "--experts", str(E), "--d", str(d), "--ffn", str(f), "--tokens", str(T),
           "--seed", "1"] + flags + mode + ["--load", inp, "--save", out]
    if verbose:
        print(" ".join(cmd))
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        return [f"moe layer failed (exit {p.returncode}): {p.stderr.strip()[-2000:]}\n  {' '.join(cmd)}"]
    ours = safetensors_np.load(out)
    peer = torch_moe.run(cfg, tensors)
    problems = []
    for key in sorted(peer):
        if key not in ours:
            problems.append(f"{key}: missing from moe's output")
            continue
        compare(key, ours[key], peer[key], problems)
    for key in sorted(ours):
        if key.startswith("grad.") and key not in peer:
            problems.append(f"{key}: moe wrote a gradient the peer has no parameter for")
    return problems


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--moe", default=os.environ.get("MOE_BIN", os.path.join(ROOT, "build", "moe")))
    ap.add_argument("-k", default="", help="run only cases whose name contains this")
    ap.add_argument("-v", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        for idx, (name, shape, flags) in enumerate(CASES):
            if args.k not in name:
                continue
            problems = run_case(args.moe, tmp, idx, name, shape, flags, args.v)
            print(f"{'ok  ' if not problems else 'FAIL'} {name}")
            for pr in problems:
                print("     " + pr)
            failed += bool(problems)
    print(f"golden_layer_vs_torch: {failed} case(s) failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
