#!/usr/bin/env python3
"""Cost model of one expert-parallel training step beyond one machine (docs/distributed.md).

Inputs are measured here (`mpirun -np 2 build/moe bench layer --mpi --json`): the all-to-all
latency a (s per call, small messages) and bandwidth b (bytes/s each rank sends), the compute time
of a step at the per-rank batch, and the router's cost per (token, expert) pair. The step is
weak-scaled: T tokens per rank fixed, experts per rank fixed (E = W * e_r), every rank one expert
group (P = W: the all-to-all's worst case). Per step and rank (fp32):
  all-to-all   4 calls (rows out and back, forward and backward), each (W-1) a + 4 d T k (1-1/W) / b
  router       all-gather of the global logits: log2(W) a + 4 E T (W-1) / b, and the replicated
               routing of the global batch: c_r T W E  (this design's non-scaling part)
  all-reduce   replicated parameters N_rep (ring): 2 log2(W) a + 8 N_rep (W-1) / W / b
Usage: dist_cost_model.py --lat-us A --gbs B --compute-ms C --router-ns R [--T --d --k --e-per-rank
--n-rep] [--check W:ms ...] (measured points to print beside the prediction).
"""
import argparse
import math

ap = argparse.ArgumentParser()
ap.add_argument("--lat-us", type=float, required=True)
ap.add_argument("--gbs", type=float, required=True)
ap.add_argument("--compute-ms", type=float, required=True, help="fwd+bwd compute at T per rank")
ap.add_argument("--router-ns", type=float, required=True, help="router cost per (token, expert)")
ap.add_argument("--T", type=int, default=2048)
ap.add_argument("--d", type=int, default=512)
ap.add_argument("--k", type=int, default=2)
ap.add_argument("--e-per-rank", type=int, default=4)
ap.add_argument("--n-rep", type=float, default=0, help="replicated parameters (all-reduced)")
ap.add_argument("--check", nargs="*", default=[], help="W:measured_ms")
a = ap.parse_args()

lat, bw = a.lat_us * 1e-6, a.gbs * 1e9
checks = dict((int(x.split(":")[0]), float(x.split(":")[1])) for x in a.check)
print(f"T={a.T} per rank, d={a.d}, k={a.k}, {a.e_per_rank} experts per rank, latency "
      f"{a.lat_us:.1f} us, {a.gbs:.2f} GB/s, compute {a.compute_ms:.1f} ms, router "
      f"{a.router_ns:.1f} ns per token-expert")
print("| ranks W | experts E | all-to-all ms | router gather ms | router compute ms | "
      "all-reduce ms | step ms | all-to-all share | measured |")
print("|---|---|---|---|---|---|---|---|---|")
for W in sorted(set([2, 4, 8, 16, 32, 64, 128, 256, 512, 1024] + list(checks))):
    E = W * a.e_per_rank
    a2a = 4 * ((W - 1) * lat + 4 * a.d * a.T * a.k * (1 - 1 / W) / bw)
    gather = math.log2(W) * lat + 4 * E * a.T * (W - 1) / bw
    rcomp = a.router_ns * 1e-9 * a.T * W * E
    ared = 2 * math.log2(W) * lat + 8 * a.n_rep * (W - 1) / W / bw
    step = a.compute_ms * 1e-3 + a2a + gather + rcomp + ared
    meas = f"{checks[W]:.1f}" if W in checks else ""
    print(f"| {W} | {E} | {a2a*1e3:.2f} | {gather*1e3:.2f} | {rcomp*1e3:.2f} | {ared*1e3:.2f} | "
          f"{step*1e3:.1f} | {100*a2a/step:.1f}% | {meas} |")
