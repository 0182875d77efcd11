#!/usr/bin/env python3
"""Summary of bench/finetune_experiments.sh: markdown tables on stdout, OUT/summary.json, and
gnuplot figures docs/img/finetune-kjv.png, finetune-forgetting.png, upcycle.png (when gnuplot
is installed). Usage: finetune_summary.py OUT [IMG_DIR]"""
import json
import os
import shutil
import subprocess
import sys

OUT = sys.argv[1]
IMG = sys.argv[2] if len(sys.argv) > 2 else "docs/img"
ARMS = [("ft-moe-full", "MoE, full"), ("ft-moe-freeze-non-expert", "MoE, --freeze non-expert"),
        ("ft-moe-freeze-moe", "MoE, --freeze moe"), ("ft-dense-full", "dense, full")]


def lines(run):
    p = os.path.join(OUT, run, "metrics.jsonl")
    if not os.path.exists(p):
        return []
    return [json.loads(l) for l in open(p) if l.strip()]


def load(path):
    return json.load(open(path)) if os.path.exists(path) else {}


def evals(run, key="val_loss"):
    return [(l["step"], l.get("elapsed_s", 0.0), l[key]) for l in lines(run) if key in l]


def median(xs):
    xs = sorted(x for x in xs if x and x > 0)
    return xs[len(xs) // 2] if xs else float("nan")


def gnuplot(name, title, xlabel, series, key="top right"):
    """series: [(title, [(x, y)...])]; writes IMG/name.png."""
    if not shutil.which("gnuplot") or not any(pts for _, pts in series):
        return
    os.makedirs(IMG, exist_ok=True)
    data = os.path.join(OUT, name + ".dat")
    with open(data, "w") as f:
        for _, pts in series:
            for x, y in pts:
                f.write(f"{x} {y}\n")
            f.write("\n\n")
    plots = ", ".join(f"'{data}' index {i} with linespoints pt 7 ps 0.5 lw 2 title '{t}'"
                      for i, (t, pts) in enumerate(series) if pts)
    script = (f"set terminal pngcairo size 900,520 font 'sans,11'\nset output '{IMG}/{name}.png'\n"
              f"set title '{title}'\nset xlabel '{xlabel}'\nset ylabel 'validation loss (nats)'\n"
              f"set grid\nset key {key}\nplot {plots}\n")
    subprocess.run(["gnuplot"], input=script.encode(), check=True)


summary = {"finetune": [], "upcycle": {}}
# ---- experiment 1
print("## Fine-tuning on KJV (Shakespeare-pre-trained)\n")
print("| arm | trainable params | AdamW state MiB (saved) | KJV val step 0 -> end | "
      "Shakespeare val step 0 -> end (forgetting) | tokens/s |")
print("|---|---|---|---|---|---|")
kjv_series, shk_series = [], []
for run, title in ARMS:
    ev, ea = evals(run), evals(run, "eval_also_loss")
    if not ev:
        continue
    fz = load(os.path.join(OUT, run, "frozen.json"))
    res = load(os.path.join(OUT, run + ".json"))
    row = {"arm": title, "run": run, "trainable_params": fz.get("trainable_params"),
           "n_params": fz.get("n_params"),
           "optimizer_mib": fz.get("optimizer_state_bytes", 0) / 2**20,
           "optimizer_saved_mib": fz.get("optimizer_state_bytes_saved", 0) / 2**20,
           "kjv_val_start": ev[0][2], "kjv_val_end": ev[-1][2],
           "shakespeare_val_start": ea[0][2] if ea else None,
           "shakespeare_val_end": ea[-1][2] if ea else None,
           "tokens_per_s": res.get("tokens_per_s"),
           "median_logged_tokens_per_s": median(l.get("tokens_per_s") for l in lines(run))}
    summary["finetune"].append(row)
    print(f"| {title} | {row['trainable_params']:,} of {row['n_params']:,} | "
          f"{row['optimizer_mib']:.2f} ({row['optimizer_saved_mib']:.2f}) | "
          f"{row['kjv_val_start']:.3f} -> {row['kjv_val_end']:.3f} | "
          f"{row['shakespeare_val_start']:.3f} -> {row['shakespeare_val_end']:.3f} "
          f"(+{row['shakespeare_val_end'] - row['shakespeare_val_start']:.3f}) | "
          f"{row['tokens_per_s']:.0f} |")
    kjv_series.append((title, [(s, v) for s, _, v in ev]))
    shk_series.append((title, [(s, v) for s, _, v in ea]))
gnuplot("finetune-kjv", "Fine-tuning on KJV: KJV validation loss", "fine-tuning step", kjv_series)
gnuplot("finetune-forgetting", "Fine-tuning on KJV: Shakespeare validation loss (forgetting)",
        "fine-tuning step", shk_series, key="bottom right")

# ---- experiment 2
def step_tflop(run):
    """Training FLOPs of one step, 6 x active parameters x tokens (Kaplan's estimate; attention
    scores left out, the same for every model here)."""
    c = load(os.path.join(OUT, run, "train_config.json"))
    d, L, f = c["d_model"], c["n_layers"], c["d_ff"]
    V = load(os.path.join(OUT, run, "best", "config.json")).get("vocab_size", 65)
    attn = 4 * d * d
    if c["moe_every"] > 0:
        ffn = c["top_k"] * 3 * d * c["expert_d_ff"] + d * c["n_experts"]
    else:
        ffn = 3 * d * f
    return 6 * (L * (attn + ffn) + V * d) * c["batch_size"] * c["block_size"] / 1e12


dense, up, scratch = evals("pre-dense"), evals("upcycled"), evals("scratch-moe512")
if dense and up:
    t0 = dense[-1][1]
    fd, fu = step_tflop("pre-dense"), step_tflop("upcycled")
    f0 = dense[-1][0] * fd
    up_t = [(t0 + t, v) for _, t, v in up]
    series = [("dense pre-training", [(s * fd, v) for s, _, v in dense]),
              ("upcycled to 8 experts (after the dense run)", [(f0 + s * fu, v) for s, _, v in up]),
              ("MoE 8x512 top-2 from scratch", [(s * fu, v) for s, _, v in scratch])]
    gnuplot("upcycle", "Upcycling vs the MoE from scratch (Shakespeare)",
            "training compute (TFLOP, 6 x active params x tokens)", series)
    series_t = [("dense pre-training", [(t, v) for _, t, v in dense]),
                ("upcycled to 8 experts (after the dense run)", up_t),
                ("MoE 8x512 top-2 from scratch", [(t, v) for _, t, v in scratch])]
    gnuplot("upcycle-time", "Upcycling vs the MoE from scratch (Shakespeare)",
            "training time (s, one thread on a shared machine)", series_t)
    total_f = f0 + up[-1][0] * fu
    # The from-scratch MoE at the same compute: its last evaluation at or before total_f.
    at = [e for e in scratch if e[0] * fu <= total_f + 1e-9]
    summary["upcycle"] = {"dense_val": dense[-1][2], "dense_time_s": t0,
                          "upcycled_val": up[-1][2], "total_time_s": up_t[-1][0],
                          "upcycled_step0_val": up[0][2],
                          "scratch_val": scratch[-1][2] if scratch else None,
                          "scratch_time_s": scratch[-1][1] if scratch else None,
                          "scratch_steps": scratch[-1][0] if scratch else None,
                          "total_tflop": total_f, "dense_step_tflop": fd, "moe_step_tflop": fu,
                          "scratch_val_at_equal_tflop": at[-1][2] if at else None,
                          "scratch_step_at_equal_tflop": at[-1][0] if at else None}
    u = summary["upcycle"]
    print("\n## Upcycling (Shakespeare)\n")
    print("| model | steps | TFLOP | training time s | val loss |\n|---|---|---|---|---|")
    print(f"| dense d_ff 512 (pre-training) | {dense[-1][0]} | {f0:.2f} | {t0:.0f} | "
          f"{u['dense_val']:.3f} |")
    print(f"| + upcycled 8x512 top-2 (step 0 / end) | +{up[-1][0]} | {total_f:.2f} | "
          f"{u['total_time_s']:.0f} | {u['upcycled_step0_val']:.3f} / {u['upcycled_val']:.3f} |")
    if at:
        print(f"| MoE 8x512 top-2 from scratch, same compute | {at[-1][0]} | {at[-1][0] * fu:.2f} "
              f"| {at[-1][1]:.0f} | {at[-1][2]:.3f} |")
    if scratch:
        print(f"| MoE 8x512 top-2 from scratch, end | {scratch[-1][0]} | "
              f"{scratch[-1][0] * fu:.2f} | {scratch[-1][1]:.0f} | {scratch[-1][2]:.3f} |")
json.dump(summary, open(os.path.join(OUT, "summary.json"), "w"), indent=2)
