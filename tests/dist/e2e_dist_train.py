#!/usr/bin/env python3
"""Training under mpirun gives the single-process numbers (issue 10, docs/distributed.md).

20 steps of configs/tiny-test.json: the training losses of every step (and the validation
losses) under 1 process, DP 2, EP 2 and EP 2 x DP 2 agree within 1e-5 relative; a checkpoint
saved under EP 2 x DP 2 at step 10 resumes under 1 process and under EP 4 and continues as the
uninterrupted run; the all-to-all in chunks (--overlap) gives the same bits; --freeze gives the
numbers of one process (and its checkpoint resumes in one process); `moe generate` under mpirun
with the experts split over 1, 2 and 4 ranks prints what one process prints; a damaged expert
tensor is caught by its checksum; E not divisible by the
expert-parallel size, a batch not divisible by the ranks and a config that differs across ranks
are clear errors; a rank killed mid-step ends the whole job within seconds with a message.
Usage: e2e_dist_train.py MOE_BIN MPIEXEC SOURCE_DIR. Exits non-zero on any failure.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

MOE, MPIEXEC, SRC = sys.argv[1], sys.argv[2], sys.argv[3]
CFG = os.path.join(SRC, "configs/tiny-test.json")
MPI = [MPIEXEC, "--oversubscribe", "--allow-run-as-root", "--bind-to", "none"]
fails = 0


def report(ok, what):
    global fails
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        fails += 1


def train(np, ep, out, *extra, expect_ok=True, timeout=300):
    cmd = ([] if np == 0 else MPI + ["-np", str(np)]) + [MOE, "train", "--quiet"] + list(extra)
    if not any(a == "--resume" for a in extra):
        cmd += ["--config", CFG, "--max-steps", "20", "--log-every", "1", "--eval-every", "10"]
    if ep > 1:
        cmd += ["--expert-parallel", str(ep)]
    cmd += ["--out", out]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run(cmd, cwd=SRC, capture_output=True, text=True, timeout=timeout, env=env)
    if expect_ok and p.returncode != 0:
        report(False, f"{' '.join(cmd)}: exit {p.returncode}\n{p.stderr[-2000:]}")
    return p


def metrics(run):
    out = {}
    for line in open(os.path.join(run, "metrics.jsonl")):
        j = json.loads(line)
        out[j["step"]] = j
    return out


def close(a, b, rel=1e-5):
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-12)


def compare(name, run, ref, steps, layout):
    m, r = metrics(run), metrics(ref)
    worst = 0.0
    ok = True
    for s in steps:
        if s not in m or s not in r:
            report(False, f"{name}: step {s} missing from metrics")
            return
        for key in ("train_loss", "val_loss"):
            if key in r[s]:
                if key not in m[s] or not close(m[s][key], r[s][key]):
                    ok = False
                    report(False, f"{name}: step {s} {key} {m[s].get(key)} vs {r[s][key]}")
                else:
                    worst = max(worst, abs(m[s][key] - r[s][key]) / abs(r[s][key]))
        if m[s].get("layout") != layout:
            ok = False
            report(False, f"{name}: step {s} layout {m[s].get('layout')}, want {layout}")
    if ok:
        report(True, f"{name}: steps {steps[0]}..{steps[-1]} losses within {worst:.2e} relative "
               f"of one process (layout {layout})")


def expect_fail(name, pattern, p):
    ok = p.returncode != 0 and pattern in p.stderr
    last = [l for l in p.stderr.splitlines() if "moe: error" in l or pattern in l]
    report(ok, f"{name}: " + (last[0] if last else f"exit {p.returncode}: {p.stderr[-500:]}"))


with tempfile.TemporaryDirectory(prefix="moe_dist_") as w:
    one = os.path.join(w, "one")
    train(0, 1, one)
    steps = list(range(1, 21))
    for np_, ep, tag in ((2, 1, "ep1xdp2"), (2, 2, "ep2xdp1"), (4, 2, "ep2xdp2")):
        run = os.path.join(w, tag)
        if train(np_, ep, run).returncode == 0:
            compare(f"np {np_} --expert-parallel {ep}", run, one, steps, tag)

    # Same layout, same bits.
    again = os.path.join(w, "ep2xdp2_again")
    if train(4, 2, again).returncode == 0:
        a, b = metrics(again), metrics(os.path.join(w, "ep2xdp2"))
        report(all(a[s]["train_loss"] == b[s]["train_loss"] for s in steps),
               "EP 2 x DP 2 twice: the same bits")

    # Save under EP 2 x DP 2 at step 10, resume under 1 process and under EP 4.
    half = os.path.join(w, "half")
    if train(4, 2, half, "--stop-after", "10").returncode == 0:
        st = json.load(open(os.path.join(half, "latest/trainer_state.json")))
        report(st.get("layout") == "ep2xdp2" and len(st.get("expert_checksums", {})) > 0,
               "checkpoint records its layout and a checksum per expert tensor")
        for np_, ep, tag in ((0, 1, "ep1xdp1"), (4, 4, "ep4xdp1")):
            dst = os.path.join(w, "resume_" + tag)
            shutil.copytree(half, dst)
            if train(np_, ep, dst, "--resume", dst).returncode == 0:
                compare(f"resume at 10 under {tag}", dst, one, list(range(11, 21)), tag)
        # A damaged expert tensor: its checksum no longer matches.
        bad = os.path.join(w, "bad")
        shutil.copytree(half, bad)
        stp = os.path.join(bad, "latest/trainer_state.json")
        st = json.load(open(stp))
        name = sorted(st["expert_checksums"])[0]
        st["expert_checksums"][name] = "0" * 16
        json.dump(st, open(stp, "w"))
        expect_fail("damaged expert checksum", "does not match its checksum",
                    train(2, 2, bad, "--resume", bad, expect_ok=False))

    # All-to-all in chunks overlapped with the expert GEMMs: the same bits as without.
    ovl = os.path.join(w, "ep2_overlap")
    if train(2, 2, ovl, "--overlap", "2").returncode == 0:
        a, b = metrics(ovl), metrics(os.path.join(w, "ep2xdp1"))
        report(all(a[s]["train_loss"] == b[s]["train_loss"] for s in steps),
               "EP 2 with --overlap 2: the same bits as without")

    # --freeze under several processes: the numbers of one process. Expert 3 lives on rank 1
    # under EP 2 (its missing optimizer state must travel right at a save); resume at step 10
    # under one process.
    fz = ["--freeze", "attention,*experts.3.*"]
    fone = os.path.join(w, "freeze_one")
    train(0, 1, fone, *fz)
    for np_, ep, tag in ((2, 2, "ep2xdp1"), (4, 2, "ep2xdp2")):
        run = os.path.join(w, "freeze_" + tag)
        if train(np_, ep, run, *fz).returncode == 0:
            compare(f"--freeze under np {np_} --expert-parallel {ep}", run, fone, steps, tag)
    fhalf = os.path.join(w, "freeze_half")
    if train(2, 2, fhalf, *fz, "--stop-after", "10").returncode == 0:
        if train(0, 1, fhalf, "--resume", fhalf).returncode == 0:
            compare("--freeze saved under EP 2, resumed in one process", fhalf, fone,
                    list(range(11, 21)), "ep1xdp1")

    # Generation under mpirun with the experts split over the ranks: greedy output identical
    # to one process; rank 0 alone prints.
    def gen(np_, *sampling):
        cmd = ([] if np_ == 0 else MPI + ["-np", str(np_)]) + [
            MOE, "generate", os.path.join(w, "one"), "--prompt", "ROMEO:", "--max-tokens", "40",
            "--json"] + list(sampling)
        env = dict(os.environ, OMP_NUM_THREADS="1")
        p = subprocess.run(cmd, cwd=SRC, capture_output=True, text=True, timeout=120, env=env)
        lines = p.stdout.splitlines()
        try:  # the sample printed, then the JSON line (its tokens/s differ from run to run)
            j = json.loads(lines[-1])
            return p.returncode, lines[:-1], j["text"], j["token_ids"], p.stderr
        except (ValueError, IndexError, KeyError):
            return p.returncode, lines, None, None, p.stderr
    for sampling in (["--temperature", "0"], ["--temperature", "1", "--seed", "5"]):
        g1 = gen(0, *sampling)
        report(g1[0] == 0 and g1[3], f"generate {' '.join(sampling)} in one process: {g1[4][-300:]}")
        for np_ in (1, 2, 4):
            gp = gen(np_, *sampling)
            ok = gp[0] == 0 and gp[1:4] == g1[1:4] and gp[4].count("generate:") == 1
            report(ok, f"generate {' '.join(sampling)} under mpirun -np {np_} (experts over "
                   f"{np_} ranks): " + ("the same text and ids as one process, printed once"
                                        if ok else f"{gp[:4]}\nvs\n{g1[:4]}\n{gp[4][-600:]}"))
    gp = subprocess.run(MPI + ["-np", "3", MOE, "generate", os.path.join(w, "one"),
                               "--max-tokens", "3"], cwd=SRC, capture_output=True, text=True,
                        timeout=120)
    expect_fail("generate with 4 experts over 3 ranks", "do not split over 3 ranks", gp)

    # Bad layouts and mismatched ranks.
    expect_fail("E=4 under --expert-parallel 3", "not divisible",
                train(3, 3, os.path.join(w, "e3"), "--batch-size", "3", expect_ok=False))
    expect_fail("more expert ranks than experts", "more expert-parallel ranks than experts",
                train(2, 2, os.path.join(w, "e1"), "--n-experts", "1", "--top-k", "1",
                      expect_ok=False))
    expect_fail("batch not divisible by ranks", "must be divisible by the 4 ranks",
                train(4, 1, os.path.join(w, "b"), "--batch-size", "6", expect_ok=False))
    # Rank 1 sees another learning rate (an environment-dependent config).
    cmd = MPI + ["-np", "2", "bash", "-c",
                 f'if [ "$OMPI_COMM_WORLD_RANK" = 1 ]; then X="--lr 1e-3"; fi; exec {MOE} train '
                 f'--quiet --config {CFG} --max-steps 2 --out {w}/mismatch $X']
    p = subprocess.run(cmd, cwd=SRC, capture_output=True, text=True, timeout=120)
    expect_fail("config differs across ranks", "different configs", p)

    # A rank killed mid-step: every rank gone within seconds, with a message.
    env = dict(os.environ, OMP_NUM_THREADS="1", MOE_TEST_KILL_RANK_AT_STEP="1:5")
    t0 = time.time()
    p = subprocess.run(MPI + ["-np", "2", MOE, "train", "--quiet", "--config", CFG, "--max-steps",
                              "1000", "--out", os.path.join(w, "kill")],
                       cwd=SRC, capture_output=True, text=True, timeout=120, env=env)
    dt = time.time() - t0
    report(p.returncode != 0 and dt < 60 and ("signal 9" in p.stderr or "Killed" in p.stderr),
           f"rank 1 killed at step 5: mpirun exit {p.returncode} after {dt:.1f}s: "
           + " ".join([l.strip() for l in p.stderr.splitlines() if "signal" in l][:1]))

print("e2e_dist_train:", "FAIL" if fails else "ok", f"({fails} failures)")
sys.exit(1 if fails else 0)
