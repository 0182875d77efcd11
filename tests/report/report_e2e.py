#!/usr/bin/python3
"""End-to-end checks of `moe report` and `moe inspect` through the moe binary.

  report_e2e.py cli     MOE_BIN WORK_DIR [SOURCE_DIR]
                                           exit codes and messages of the commands; with
                                           SOURCE_DIR also a tiny real run (train, generate
                                           --trace, report, inspect) on data/tinyshakespeare.txt
  report_e2e.py browser MOE_BIN WORK_DIR   the HTML report in headless Chromium: renders with no
                                           console error, every figure present and non-empty,
                                           a non-blank screenshot (WORK_DIR/screenshot.png)

Exit 0 = pass, 1 = fail, 77 = skipped (CTest SKIP_RETURN_CODE), e.g. chromium not installed.
Standard library only (the PNG check decodes PNGs with zlib).
"""
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from html.parser import HTMLParser

SKIP = 77


def fail(msg):
    print("FAIL: " + msg)
    sys.exit(1)


def make_run(run):
    """A synthetic run folder: metrics.jsonl (2 MoE layers of 8 experts, expert 5 of layer 1
    starves after step 400, a truncated last line) and a routing trace."""
    os.makedirs(run, exist_ok=True)
    lines = []
    for i in range(1, 81):
        step = i * 10
        loss = 4.2 * math.exp(-step / 300.0) + 1.5
        layers = []
        for l in range(2):
            tpe = [100 + 10 * ((e * 7 + i + l) % 5) for e in range(8)]
            if l == 1 and step > 400:
                tpe[5] = 0
                tpe[2] += 300
            mean = sum(tpe) / 8.0
            cv = math.sqrt(sum((t - mean) ** 2 for t in tpe) / 8.0) / mean
            layers.append({"layer": l, "tokens_per_expert": tpe, "dropped": 5 * l,
                           "routed": sum(tpe) + 5 * l, "load_cv": cv,
                           "router_entropy": 2.0 - step / 1000.0,
                           "mean_top1_weight": 0.4 + step / 4000.0})
        rec = {"step": step, "lr": 1e-3 * min(1.0, step / 100.0), "train_loss": loss,
               "tokens_per_s": 9000 + 50 * (i % 9), "elapsed_s": step * 0.04,
               "grad_norm": 1.0 / math.sqrt(step), "aux_importance": 0.01, "aux_load": 0.0,
               "aux_switch": 1.0 + 0.05 * (step > 400), "aux_z": 0.3, "aux_total": 0.011,
               "layers": layers}
        if step % 100 == 0:
            rec["val_loss"] = loss + 0.12
        lines.append(json.dumps(rec))
    with open(os.path.join(run, "metrics.jsonl"), "w") as f:
        f.write("\n".join(lines) + "\n" + lines[0][: len(lines[0]) // 2])
    text = "ROMEO:\nBut soft, what light?\n"
    with open(os.path.join(run, "sample.trace.jsonl"), "w") as f:
        for pos, ch in enumerate(text):
            f.write(json.dumps({"pos": pos, "token": ord(ch) % 65, "text": ch, "layers": [
                {"layer": l, "experts": [(ord(ch) + l) % 8, (ord(ch) * 3 + l) % 8],
                 "weights": [0.7, 0.3]} for l in range(2)]}) + "\n")


def run(cmd, timeout=300):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


def png_stats(path):
    """(width, height, distinct colours (capped), share of pixels that are not the most common
    colour) of an 8-bit RGB/RGBA/grey PNG, decoded with zlib and the PNG filters."""
    data = open(path, "rb").read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        fail(path + ": not a PNG")
    pos, idat, w = 8, b"", 0
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, ctype = struct.unpack(">IIBB", body[:10])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    if depth != 8 or ctype not in (0, 2, 4, 6):
        return w, h, 1000, 1.0  # palette/16-bit: not decoded; chromium and cairo write 8-bit
    bpp = {0: 1, 2: 3, 4: 2, 6: 4}[ctype]
    raw = zlib.decompress(idat)
    stride = w * bpp
    prev = bytearray(stride)
    counts = {}
    step = max(1, h // 400)  # sample rows: enough to tell blank from drawn
    for y in range(h):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pr = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pr) & 255
        prev = line
        if y % step == 0:
            for x in range(0, stride, bpp * 2):
                px = bytes(line[x:x + min(bpp, 3)])
                counts[px] = counts.get(px, 0) + 1
    total = sum(counts.values())
    top = max(counts.values())
    return w, h, len(counts), 1.0 - top / total


class FigureScan(HTMLParser):
    """Counts, for each <figure class="fig">, the SVG elements drawn inside it."""

    def __init__(self):
        super().__init__()
        self.figs = {}  # id -> [svg seen, elements inside svg]
        self.cur = None
        self.depth = 0
        self.in_svg = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "figure" and "fig" in (a.get("class") or "").split():
            self.cur = a.get("id", "?")
            self.figs[self.cur] = [False, 0]
            self.depth = 0
        if self.cur is None:
            return
        self.depth += 1
        if tag == "svg":
            self.figs[self.cur][0] = True
            self.in_svg += 1
        elif self.in_svg and tag in ("path", "image", "text", "rect", "polyline", "g", "use"):
            self.figs[self.cur][1] += 1

    def handle_startendtag(self, tag, attrs):
        if self.cur is not None and self.in_svg and tag in ("path", "image", "rect", "use",
                                                            "polyline"):
            self.figs[self.cur][1] += 1

    def handle_endtag(self, tag):
        if self.cur is None:
            return
        if tag == "svg":
            self.in_svg -= 1
        if tag == "figure":
            self.cur = None
        else:
            self.depth -= 1


def chromium_args(chrome, profile):
    return [chrome, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--user-data-dir=" + profile, "--enable-logging=stderr", "--v=0",
            # Nothing may come from outside the file: any fetch fails and logs a console error.
            "--host-resolver-rules=MAP * ~NOTFOUND"]


def browser(moe, work):
    chrome = os.environ.get("MOE_CHROMIUM", "/usr/bin/chromium")
    if not (os.path.isfile(chrome) and os.access(chrome, os.X_OK)):
        print("SKIP: %s not installed; the test command installs it (MOE_WITH_BROWSER=1 "
              "scripts/setup.sh, i.e. apt-get install chromium)" % chrome)
        sys.exit(SKIP)
    shutil.rmtree(work, ignore_errors=True)
    rundir = os.path.join(work, "run")
    make_run(rundir)
    rc, out, err = run([moe, "report", rundir, "--json"])
    if rc != 0:
        fail("moe report exited %d: %s" % (rc, err))
    res = json.loads(out.strip().splitlines()[-1])
    html = res["report"]
    pngs = res["pngs"]
    if res["lines_skipped"] != 1:
        fail("expected 1 skipped metrics line, got %s" % res["lines_skipped"])
    if not any("layer 1: expert 5 collapsed" in w for w in res["warnings"]):
        fail("no collapse warning for layer 1 expert 5: %s" % res["warnings"])
    url = "file://" + os.path.abspath(html)

    profile = tempfile.mkdtemp(prefix="moe-chromium-")
    try:
        rc, dom, log = run(chromium_args(chrome, profile) + ["--dump-dom", url], timeout=180)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    if rc != 0:
        fail("chromium --dump-dom exited %d: %s" % (rc, log[-2000:]))
    console = [l for l in log.splitlines() if ":CONSOLE" in l or "Uncaught" in l]
    if console:
        fail("console messages while rendering the report:\n" + "\n".join(console[:10]))
    scan = FigureScan()
    scan.feed(dom)
    if len(scan.figs) != len(pngs):
        fail("%d figures in the rendered page, %d PNGs written" % (len(scan.figs), len(pngs)))
    for fid, (has_svg, n) in sorted(scan.figs.items()):
        if not has_svg or n < 10:
            fail("figure %s: svg=%s, %d drawn elements" % (fid, has_svg, n))
    print("rendered %d figures, each with an inline svg (min %d elements)"
          % (len(scan.figs), min(n for _, n in scan.figs.values())))

    shot = os.path.join(work, "screenshot.png")
    profile = tempfile.mkdtemp(prefix="moe-chromium-")
    try:
        rc, _, log = run(chromium_args(chrome, profile) +
                         ["--screenshot=" + shot, "--window-size=1280,2600",
                          "--hide-scrollbars", url], timeout=180)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    if rc != 0 or not os.path.isfile(shot):
        fail("chromium --screenshot exited %d: %s" % (rc, log[-2000:]))
    w, h, colours, ink = png_stats(shot)
    size = os.path.getsize(shot)
    print("screenshot %s: %dx%d, %d bytes, %d colours, %.1f%% non-background"
          % (shot, w, h, size, colours, 100 * ink))
    if w < 1000 or h < 2000 or size < 50000 or colours < 50 or ink < 0.03:
        fail("screenshot looks blank or trivial")
    for p in pngs:
        w, h, colours, ink = png_stats(p)
        if colours < 8 or ink < 0.01:
            fail("%s looks blank (%d colours, %.2f%% ink)" % (p, colours, 100 * ink))
    print("PASS: %d PNG copies non-blank" % len(pngs))


def cli(moe, work, source=None):
    shutil.rmtree(work, ignore_errors=True)
    rundir = os.path.join(work, "run")
    make_run(rundir)
    empty = os.path.join(work, "empty")
    os.makedirs(empty)
    # A folder without metrics: one clear line, non-zero exit.
    rc, out, err = run([moe, "report", empty])
    if rc == 0 or "metrics.jsonl" not in err or not err.startswith("moe: error:"):
        fail("report on a folder without metrics: rc=%d stderr=%r" % (rc, err))
    # gnuplot missing: says what to install.
    env_rc = subprocess.run([moe, "report", rundir], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE,
                            env=dict(os.environ, MOE_GNUPLOT="/nonexistent/gnuplot"))
    if env_rc.returncode == 0 or b"gnuplot-nox" not in env_rc.stderr:
        fail("report without gnuplot: rc=%d stderr=%r" % (env_rc.returncode, env_rc.stderr))
    # A report to --out; the truncated line is reported on stderr.
    out_html = os.path.join(work, "out", "r.html")
    rc, out, err = run([moe, "report", rundir, "--out", out_html])
    if rc != 0 or not os.path.isfile(out_html) or "skipped 1" not in err:
        fail("report --out: rc=%d stdout=%r stderr=%r" % (rc, out, err))
    if not os.path.isfile(os.path.join(work, "out", "layer1-load.png")):
        fail("no layer1-load.png beside --out")
    # inspect a trace: table on stdout (no colour: not a tty), HTML, JSON, aggregate.
    trace = os.path.join(rundir, "sample.trace.jsonl")
    page = os.path.join(work, "trace.html")
    rc, out, err = run([moe, "inspect", "--trace", trace, "--html", page])
    if rc != 0 or "\x1b[" in out or "layer 1" not in out or not os.path.isfile(page):
        fail("inspect --trace: rc=%d stdout=%r stderr=%r" % (rc, out[:500], err))
    rc, out, err = run([moe, "inspect", "--trace", trace, "--layer", "1", "--json"])
    toks = json.loads(out)["tokens"]
    if rc != 0 or len(toks) != len("ROMEO:\nBut soft, what light?\n"):
        fail("inspect --trace --json: rc=%d" % rc)
    rc, out, err = run([moe, "inspect", "--trace", trace, "--by", "char-class", "--json"])
    agg = json.loads(out)
    classes = {c["class"] for c in agg["layers"][0]["classes"]}
    if rc != 0 or not {"speaker name", "lowercase", "newline", "punctuation"} <= classes:
        fail("inspect --by char-class: rc=%d classes=%s" % (rc, classes))
    rc, out, err = run([moe, "inspect", "--trace", trace, "--layer", "7"])
    if rc == 0 or "layer 7" not in err:
        fail("inspect --layer 7 should fail clearly: rc=%d stderr=%r" % (rc, err))
    rc, out, err = run([moe, "inspect", "--text", "hello"])
    if rc == 0 or "checkpoint" not in err:
        fail("inspect --text without a checkpoint: rc=%d stderr=%r" % (rc, err))
    if source:
        with_checkpoint(moe, work, source)
    print("PASS")


def with_checkpoint(moe, work, source):
    """The whole path on a real (tiny) run: train, generate with a trace, report, inspect."""
    tiny = os.path.join(work, "tiny")
    cfg = os.path.join(source, "configs", "tiny-test.json")
    p = subprocess.run([moe, "train", "--config", cfg, "--out", tiny, "--quiet"], cwd=source,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=600)
    if p.returncode != 0:
        fail("moe train (tiny) failed: %s" % p.stderr.decode()[-2000:])
    trace = os.path.join(tiny, "gen.trace.jsonl")
    rc, out, err = run([moe, "generate", tiny, "--prompt", "ROMEO:", "--max-tokens", "20",
                        "--trace", trace])
    if rc != 0 or not os.path.isfile(trace):
        fail("moe generate --trace: rc=%d %s" % (rc, err[-1000:]))
    p = subprocess.run([moe, "report", tiny, "--json"], cwd=source, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=600)
    if p.returncode != 0:
        fail("moe report (tiny) failed: %s" % p.stderr.decode()[-2000:])
    res = json.loads(p.stdout.decode().strip().splitlines()[-1])
    if not res["checkpoint"] or res["traces"] != 1:
        fail("report of the tiny run: checkpoint=%r traces=%r note=%r"
             % (res["checkpoint"], res["traces"], res["similarity_note"]))
    html = open(res["report"], encoding="utf-8").read()
    if "validation split" not in html or 'id="fig-layer1-output-sim"' not in html:
        fail("tiny report lacks the similarity section on the validation probe")
    # inspect --text: \n read as a newline; every token has its experts in the MoE layer (1).
    rc, out, err = run([moe, "inspect", tiny, "--text", "ROMEO:\\nBut soft", "--json"])
    if rc != 0:
        fail("inspect --text: rc=%d %s" % (rc, err))
    toks = json.loads(out)["tokens"]
    if len(toks) != len("ROMEO:\nBut soft") or toks[6]["text"] != "\n":
        fail("inspect --text tokens: %r" % [t["text"] for t in toks])
    if any(len(t["layers"]) != 1 or len(t["layers"][0]["experts"]) != 2 for t in toks):
        fail("inspect --text: expected top-2 routing in one MoE layer")
    rc, out, err = run([moe, "inspect", tiny, "--text", "caf\u00e9"])
    if rc == 0 or "tokenizer" not in err:
        fail("inspect with a symbol outside the vocabulary: rc=%d stderr=%r" % (rc, err))
    corpus = os.path.join(source, "data", "tinyshakespeare.txt")
    page = os.path.join(work, "classes.html")
    rc, out, err = run([moe, "inspect", tiny, "--corpus", corpus, "--max-tokens", "3000",
                        "--json", "--html", page])
    if rc != 0 or not os.path.isfile(page):
        fail("inspect --corpus: rc=%d %s" % (rc, err))
    agg = json.loads(out)
    if agg["by"] != "char-class" or agg["n_tokens"] != 3000:
        fail("inspect --corpus: by=%r n_tokens=%r" % (agg["by"], agg["n_tokens"]))
    speaker = [c for c in agg["layers"][0]["classes"] if c["class"] == "speaker name"]
    if not speaker or speaker[0]["slots"] <= 0:
        fail("no speaker-name tokens found in Tiny Shakespeare's first 3000 characters")


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5) or sys.argv[1] not in ("cli", "browser"):
        print(__doc__)
        sys.exit(2)
    {"cli": cli, "browser": browser}[sys.argv[1]](*sys.argv[2:])
