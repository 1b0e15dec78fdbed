#!/usr/bin/env python3
"""tests/gpu/tp_procs.py AMPR LIBDIR MODEL PROMPT NRANKS OUTDIR [options] -- one
tensor-parallel rank per process: make a group id with ampr.tp_id_new() (this
process stays up while the ranks meet, as ampr_tp_id_new requires), start
`AMPR run` once per rank with "tp_rank" r on GPU r, greedy fp16, and write each
rank's text to OUTDIR/tp-rank-R.txt (stderr to .err). Exit 1 when a rank fails;
ranks still running at the end (one stuck in NCCL) are killed.

Options:
  --alone         only rank 0 of NRANKS starts, with "tp_timeout_ms" 3000: it
                  must give up waiting for the others and fail its open with the
                  library's timeout message within 60 s (exit 0 when it does).
  --env R VAR=VAL rank R runs with VAR=VAL in its environment (repeatable; the
                  CPU emulation's failure hooks: tests/emu/README.md).
  --expect-fail R MSG  a rank is meant to fail: every rank must end within the
                  deadline with a non-zero exit, rank R's stderr containing MSG
                  (exit 0 when so). No rank may be left waiting.
  --keep-going    a rank that fails does not end the others (they must end by
                  themselves); exit 0 when every rank ended within the deadline.
  --timeout-ms T  every rank's "tp_timeout_ms".
Each rank's exit status ("none": killed at the deadline) goes to OUTDIR/tp-rcs.txt."""
import argparse
import glob
import json
import os
import signal
import subprocess
import sys
import time

ap = argparse.ArgumentParser()
for name in ("ampr_cli", "libdir", "model", "prompt"):
    ap.add_argument(name)
ap.add_argument("n", type=int)
ap.add_argument("outdir")
ap.add_argument("--alone", action="store_true")
ap.add_argument("--env", nargs=2, action="append", default=[], metavar=("RANK", "VAR=VAL"))
ap.add_argument("--expect-fail", nargs=2, metavar=("RANK", "MSG"))
ap.add_argument("--keep-going", action="store_true")
ap.add_argument("--timeout-ms", type=int)
a = ap.parse_args()
ampr_cli, libdir, model, prompt, n, outdir = a.ampr_cli, a.libdir, a.model, a.prompt, a.n, a.outdir
here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "..", "python"))
libs = sorted(glob.glob(os.path.join(libdir, "libampr.so*")))
import ampr  # noqa: E402

signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # run the finally below
tp_id = ampr.tp_id_new(libs[0] if libs else None)

if a.alone:
    cfg = {"device": "cuda", "tp_size": n, "tp_rank": 0, "tp_id": tp_id, "gpus": [0],
           "tiers": ["fp16"], "tp_timeout_ms": 3000}
    t0 = time.time()
    try:
        p = subprocess.run([ampr_cli, "run", "-m", model, "--config", json.dumps(cfg), "--tier", "fp16",
                            "-p", prompt, "-n", "4", "--temp", "0", "--quiet"],
                           capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        sys.stderr.write("rank 0 alone: still waiting after 60 s (tp_timeout_ms 3000)\n")
        sys.exit(1)
    took = time.time() - t0
    if p.returncode != 0 and "did not all join" in p.stderr and took >= 2.9:
        print("rank 0 of %d alone: open failed after %.1f s: %s" % (n, took, p.stderr.strip()[-200:]))
        sys.exit(0)
    sys.stderr.write("rank 0 alone: exit %d after %.1f s: %s\n" % (p.returncode, took, p.stderr.strip()[-300:]))
    sys.exit(1)


def err_text(r):
    with open(os.path.join(outdir, "tp-rank-%d.err" % r)) as f:
        return f.read().strip()


procs, outs, rcs = [], [], []
try:
    for r in range(n):
        cfg = {"device": "cuda", "tp_size": n, "tp_rank": r, "tp_id": tp_id, "gpus": [r],
               "tiers": ["fp16", "int8", "nf4"]}
        if a.timeout_ms is not None:
            cfg["tp_timeout_ms"] = a.timeout_ms
        env = dict(os.environ)
        for rank, kv in a.env:
            if int(rank) == r:
                k, _, v = kv.partition("=")
                env[k] = v
        out = open(os.path.join(outdir, "tp-rank-%d.txt" % r), "w")
        err = open(os.path.join(outdir, "tp-rank-%d.err" % r), "w")
        outs += [out, err]
        procs.append(subprocess.Popen(
            [ampr_cli, "run", "-m", model, "--config", json.dumps(cfg), "--tier", "fp16",
             "-p", prompt, "-n", "20", "--temp", "0", "--quiet"], stdout=out, stderr=err, env=env))
    # one deadline for all ranks, inside check.sh's `timeout`. Without
    # --expect-fail a rank that fails ends the others at once (they would wait
    # for it in NCCL until the deadline); with it, every rank must end by itself.
    deadline = time.time() + float(os.environ.get("AMPR_TP_PROCS_TIMEOUT", "100"))
    while any(p.poll() is None for p in procs) and time.time() < deadline:
        if not (a.expect_fail or a.keep_going) and not all(p.poll() in (None, 0) for p in procs):
            break
        time.sleep(0.2)
    rcs = [p.poll() for p in procs]
finally:
    for p in procs:  # a rank left waiting in NCCL must not hold its GPU
        if p.poll() is None:
            p.kill()
            p.wait()
    for f in outs:
        f.close()
    with open(os.path.join(outdir, "tp-rcs.txt"), "w") as f:
        f.write(" ".join("none" if rc is None else str(rc) for rc in rcs) + "\n")

if a.expect_fail:
    want_rank, msg = int(a.expect_fail[0]), a.expect_fail[1]
    ok = all(rc not in (None, 0) for rc in rcs) and msg in err_text(want_rank)
    for r, rc in enumerate(rcs):
        line = "rank %d: %s: %s" % (r, "still running at the deadline" if rc is None else "exit %d" % rc,
                                    err_text(r)[-300:])
        (sys.stdout if ok else sys.stderr).write(line + "\n")
    if not ok:
        sys.stderr.write("wanted: every rank ends with an error, rank %d's saying %r\n" % (want_rank, msg))
    sys.exit(0 if ok else 1)
if a.keep_going:
    sys.exit(0 if rcs and all(rc is not None for rc in rcs) else 1)
ok = all(rc == 0 for rc in rcs)
for r, rc in enumerate(rcs):
    if rc != 0:
        sys.stderr.write("rank %d: %s: %s\n" % (r, "still running at the deadline" if rc is None
                                                 else "exit %d" % rc, err_text(r)[-400:]))
sys.exit(0 if ok else 1)
