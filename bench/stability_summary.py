#!/usr/bin/env python3
"""Summary of bench/stability_experiment.sh (docs/precision.md, "Stability experiment").

    bench/stability_summary.py OUT_DIR

OUT_DIR/<config>/<run>/ holds run.json (what the harness ran, or why it skipped or failed) and
metrics.jsonl (docs/metrics.md). Writes OUT_DIR/summary.md (one markdown table per config; also
printed), OUT_DIR/summary.json, and per config OUT_DIR/<config>/plots/*.png drawn by gnuplot, one
line per run: train loss, validation loss, max router logit (the largest over the MoE layers of
router_logit_max at each logged step) and routing change (the mean over the MoE layers of
routing_change at each evaluation).

Columns: final val loss (last evaluation, fixed validation batches), best val loss, max router
logit at the last logged step and its peak over the run (with the step), mean routing change over
all evaluations that have one, and over the evaluations in the second half of the run ("late":
routing that keeps flipping once the loss has settled is the instability to look for), and the
median training tokens/s.
"""
import json
import math
import os
import shutil
import statistics
import subprocess
import sys

RUN_ORDER = ["fp32-zloss", "fp32-nozloss", "bf16-zloss", "bf16-nozloss", "bf16router-zloss",
             "bf16router-nozloss"]


def read_jsonl(path):
    rows = []
    if not os.path.exists(path):
        return rows
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                j = json.loads(line)
            except json.JSONDecodeError:
                continue  # a run killed mid-write leaves a truncated last line
            if isinstance(j, dict) and isinstance(j.get("step"), int):
                rows.append(j)
    return rows


def finite(x):
    return isinstance(x, (int, float)) and math.isfinite(x)


def layer_values(row, key):
    return [l[key] for l in row.get("layers", []) if finite(l.get(key))]


def summarize_run(run_dir):
    info_path = os.path.join(run_dir, "run.json")
    info = json.load(open(info_path)) if os.path.exists(info_path) else {"status": "unknown"}
    rows = read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
    s = {"run": os.path.basename(run_dir), "status": info.get("status", "unknown"),
         "why": info.get("why", ""), "precision": info.get("precision"),
         "router_precision": info.get("router_precision"), "w_zloss": info.get("w_zloss"),
         "wall_s": info.get("wall_s"), "steps": rows[-1]["step"] if rows else 0}
    vals = [(r["step"], r["val_loss"]) for r in rows if finite(r.get("val_loss"))]
    s["final_val_loss"] = vals[-1][1] if vals else None
    s["best_val_loss"] = min(v for _, v in vals) if vals else None
    trains = [r["train_loss"] for r in rows if finite(r.get("train_loss"))]
    s["final_train_loss"] = trains[-1] if trains else None
    logit = [(r["step"], max(layer_values(r, "router_logit_max"))) for r in rows
             if layer_values(r, "router_logit_max")]
    s["logit_max_end"] = logit[-1][1] if logit else None
    if logit:
        peak = max(logit, key=lambda p: p[1])
        s["logit_max_peak"], s["logit_max_peak_step"] = peak[1], peak[0]
    else:
        s["logit_max_peak"], s["logit_max_peak_step"] = None, None
    change = [(r["step"], statistics.fmean(layer_values(r, "routing_change"))) for r in rows
              if layer_values(r, "routing_change")]
    s["routing_change_mean"] = statistics.fmean(c for _, c in change) if change else None
    half = s["steps"] / 2
    late = [c for st, c in change if st > half]
    s["routing_change_late"] = statistics.fmean(late) if late else None
    tps = [r["tokens_per_s"] for r in rows if finite(r.get("tokens_per_s")) and r["tokens_per_s"] > 0]
    s["tokens_per_s_median"] = statistics.median(tps) if tps else None
    series = {
        "train_loss": [(r["step"], r["train_loss"]) for r in rows if finite(r.get("train_loss"))],
        "val_loss": vals,
        "router_logit_max": logit,
        "routing_change": change,
    }
    return s, series


def fmt(x, f="{:.4f}"):
    return "–" if x is None else f.format(x)


def table(runs):
    out = ["| run | precision | router | w_zloss | status | steps | final val loss | best val loss "
           "| max logit (end) | max logit (peak @ step) | routing change (mean) | routing change "
           "(late) | tokens/s |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in runs:
        status = s["status"]
        if status == "failed" and s["why"]:  # skipped: the note under the table says why
            status += ": " + s["why"].replace("|", "/")[:160]
        peak = ("–" if s["logit_max_peak"] is None
                else "{:.2f} @ {}".format(s["logit_max_peak"], s["logit_max_peak_step"]))
        out.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
            s["run"], s["precision"] or "–", s["router_precision"] or "–",
            "–" if s["w_zloss"] is None else s["w_zloss"], status, s["steps"],
            fmt(s["final_val_loss"]), fmt(s["best_val_loss"]), fmt(s["logit_max_end"], "{:.2f}"),
            peak, fmt(s["routing_change_mean"], "{:.3f}"), fmt(s["routing_change_late"], "{:.3f}"),
            fmt(s["tokens_per_s_median"], "{:.0f}")))
    return "\n".join(out)


PLOTS = [  # file, series key, title, y label, with points
    ("train_loss", "train_loss", "training loss", "cross-entropy (nats)", False),
    ("val_loss", "val_loss", "validation loss (fixed batches)", "cross-entropy (nats)", True),
    ("router_logit_max", "router_logit_max", "max |router logit| (largest over MoE layers)",
     "largest |logit|", False),
    ("routing_change", "routing_change",
     "routing change between evaluations (mean over MoE layers)",
     "share of probe tokens whose top-1 changed", True),
]


def plot(cfg_dir, runs, series, gnuplot):
    """One PNG per quantity, one line per run; data and script kept beside for re-drawing."""
    pdir = os.path.join(cfg_dir, "plots")
    os.makedirs(pdir, exist_ok=True)
    script = []
    made = []
    for fname, key, title, ylabel, points in PLOTS:
        curves = []
        for s in runs:
            pts = series[s["run"]][key]
            if not pts:
                continue
            dat = os.path.join(pdir, "{}.{}.dat".format(fname, s["run"]))
            with open(dat, "w") as f:
                for x, y in pts:
                    f.write("{} {}\n".format(x, y))
            style = "linespoints pt 7 ps 0.6" if points else "lines"
            # Colour = precision, dashes = z-loss off: the pairs read at a glance.
            colour = {"fp32": "#1f77b4", "bf16": "#2ca02c", "bf16router": "#d62728"}.get(
                s["run"].rsplit("-", 1)[0], "black")
            dash = 2 if s["run"].endswith("-nozloss") else 1
            curves.append("'{}' using 1:2 with {} lw 1.5 lc rgb '{}' dt {} title '{}'".format(
                os.path.basename(dat), style, colour, dash, s["run"]))
        if not curves:
            continue
        script += ["set output '{}.png'".format(fname), "set title '{}'".format(title),
                   "set ylabel '{}'".format(ylabel), "plot " + ", \\\n     ".join(curves), ""]
        made.append(os.path.join(pdir, fname + ".png"))
    if not made:
        return []
    head = ["set terminal pngcairo size 900,480 font 'sans,10'", "set key outside right top",
            "set grid", "set xlabel 'step'", ""]
    with open(os.path.join(pdir, "plots.gp"), "w") as f:
        f.write("\n".join(head + script))
    r = subprocess.run([gnuplot, "plots.gp"], cwd=pdir, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit("stability_summary: gnuplot failed on {}/plots.gp: {}".format(pdir, r.stderr.strip()))
    return made


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: bench/stability_summary.py OUT_DIR (the folder of stability_experiment.sh)")
    out = sys.argv[1]
    if not os.path.isdir(out):
        sys.exit("stability_summary: {}: no such folder".format(out))
    gnuplot = os.environ.get("MOE_GNUPLOT") or shutil.which("gnuplot")
    md, js = ["# Stability experiment: summary", ""], {}
    configs = sorted(d for d in os.listdir(out) if os.path.isdir(os.path.join(out, d)))
    for cfg in configs:
        cfg_dir = os.path.join(out, cfg)
        names = [r for r in RUN_ORDER if os.path.isdir(os.path.join(cfg_dir, r))]
        if not names:
            continue
        runs, series = [], {}
        for name in names:
            s, ser = summarize_run(os.path.join(cfg_dir, name))
            runs.append(s)
            series[name] = ser
        md += ["## {}".format(cfg), "", table(runs), ""]
        skipped = [s for s in runs if s["status"] == "skipped"]
        if skipped:
            md += ["Skipped: {} ({}).".format(", ".join(s["run"] for s in skipped),
                                              skipped[0]["why"]), ""]
        if gnuplot:
            pngs = plot(cfg_dir, runs, series, gnuplot)
            if pngs:
                md += ["Plots: " + ", ".join(os.path.relpath(p, out) for p in pngs), ""]
        else:
            md += ["Plots: skipped (gnuplot not found; apt-get install gnuplot-nox).", ""]
        js[cfg] = runs
    if not js:
        sys.exit("stability_summary: {}: no run folders (<config>/<run>/) found".format(out))
    text = "\n".join(md)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(js, f, indent=1)
    print(text)


if __name__ == "__main__":
    main()
