#!/usr/bin/env python3
"""The bad-input suite: runs every case of cases.py against the moe binary and checks, for each,
  - the exit code (1 bad input, 2 usage error, 0 for the edge cases that must succeed),
  - for an error: stderr is exactly one line `moe: error: <where>: <what>; <what to do>`, holding
    the case's fragment (no raw library text, no sanitizer report, no second line),
  - no input file changed (SHA-256 of every file before and after; none deleted), and a refused
    input leaves no new file or folder behind.
Usage: run_badinput.py --moe build/moe [--src .] [-j N] [-k PATTERN] [--list] [--count]"""
import argparse
import concurrent.futures as cf
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cases as case_table  # noqa: E402
import fixtures  # noqa: E402

STYLE = re.compile(r"^moe: error: \S.*: .+; .+$")
RAW_LIBRARY = re.compile(r"json\.exception|std::|basic_string|max_size|bad_alloc|terminate called|"
                         r"AddressSanitizer|runtime error:|Segmentation|Aborted|CLI::|"
                         r"check '.*' failed")


def hash_tree(d):
    out = {}
    for root, dirs, files in os.walk(d):
        for sub in dirs:
            out[os.path.relpath(os.path.join(root, sub), d) + "/"] = "dir"
        for f in files:
            p = os.path.join(root, f)
            if os.path.islink(p) or not os.path.isfile(p):
                continue
            with open(p, "rb") as fh:
                out[os.path.relpath(p, d)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def run_case(moe, fx, work, i, c, timeout):
    d = os.path.join(work, "c%04d" % i)
    shutil.copytree(fx, d)
    if c["setup"]:
        c["setup"](d)
    before = hash_tree(d)
    env = dict(os.environ, OMP_NUM_THREADS="1", ASAN_OPTIONS="detect_leaks=0")
    t0 = time.time()
    try:
        r = subprocess.run([moe, *c["args"]], cwd=d, env=env, capture_output=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return ["timed out after %ds" % timeout], "", time.time() - t0
    dt = time.time() - t0
    err = r.stderr.decode("utf-8", "replace")
    problems = []
    if r.returncode != c["code"]:
        problems.append("exit %d, expected %d" % (r.returncode, c["code"]))
    lines = [l for l in err.splitlines() if l.strip()]
    if c["code"] != 0:
        if len(lines) != 1:
            problems.append("stderr has %d lines, expected 1" % len(lines))
        elif not STYLE.match(lines[0]):
            problems.append("not in the style 'moe: error: <where>: <what>; <what to do>'")
        if RAW_LIBRARY.search(err):
            problems.append("raw library or sanitizer text")
        if c["frag"] and c["frag"] not in err:
            problems.append("message lacks %r" % c["frag"])
    if not c["writes"]:
        after = hash_tree(d)
        changed = [k for k in before if after.get(k) != before[k]]
        if changed:
            problems.append("input files changed: %s" % ", ".join(sorted(changed)[:5]))
        created = [k for k in after if k not in before]
        if created and c["code"] != 0:
            problems.append("a refused input left files behind: %s" % ", ".join(sorted(created)[:5]))
    if c["code"] == 0 and c["name"].startswith("resume/finished") and "already finished" not in r.stdout.decode():
        problems.append("a finished run does not say so")
    shutil.rmtree(d, ignore_errors=True)
    return problems, (lines[-1] if lines else ""), dt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--moe", default=os.environ.get("MOE_BIN", "build/moe"))
    ap.add_argument("--src", default=os.environ.get("MOE_SOURCE_DIR",
                                                    os.path.join(os.path.dirname(__file__), "..", "..")))
    ap.add_argument("-j", type=int, default=os.cpu_count() or 2)
    ap.add_argument("-k", default="", help="only cases whose name contains this")
    ap.add_argument("--timeout", type=int, default=120)
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--count", action="store_true", help="print the number of cases")
    ap.add_argument("-v", action="store_true", help="print every case's message")
    a = ap.parse_args()
    todo = [c for c in case_table.CASES if a.k in c["name"]]
    names = [c["name"] for c in case_table.CASES]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        print("duplicate case names: %s" % sorted(dup))
        return 1
    if a.count:
        print(len(case_table.CASES))
        return 0
    if a.list:
        for c in todo:
            print("%-70s exit %d  %s" % (c["name"], c["code"], c["frag"] or ""))
        return 0
    moe = os.path.abspath(a.moe)
    t0 = time.time()
    work = tempfile.mkdtemp(prefix="moe_badinput.")
    try:
        fx = fixtures.make(moe, os.path.abspath(a.src), work)
        t_fx = time.time() - t0
        fails = 0
        with cf.ThreadPoolExecutor(max_workers=a.j) as ex:
            futs = [ex.submit(run_case, moe, fx, work, i, c, a.timeout) for i, c in enumerate(todo)]
            for c, f in zip(todo, futs):
                problems, last, dt = f.result()
                if problems:
                    fails += 1
                    print("FAIL %s: %s\n     args: %s\n     stderr: %s" %
                          (c["name"], "; ".join(problems), " ".join(c["args"]), last))
                elif a.v:
                    print("ok   %-60s %s" % (c["name"], last))
        print("bad-input suite: %d cases, %d failed (fixtures %.1f s, total %.1f s, -j %d)" %
              (len(todo), fails, t_fx, time.time() - t0, a.j))
        return 1 if fails else 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
