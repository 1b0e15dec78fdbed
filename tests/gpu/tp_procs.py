#!/usr/bin/env python3
"""tests/gpu/tp_procs.py AMPR LIBDIR MODEL PROMPT NRANKS OUTDIR -- one tensor-parallel
rank per process: make a group id with ampr.tp_id_new() (this process stays up
while the ranks meet, as ampr_tp_id_new requires), start `AMPR run` once per
rank with "tp_rank" r on GPU r, greedy fp16, and write each rank's text to
OUTDIR/tp-rank-R.txt (stderr to .err). Exit 1 when a rank fails; ranks still
running at the end (one stuck in NCCL) are killed.

With a 7th argument --alone, only rank 0 of NRANKS starts, with "tp_timeout_ms"
3000: it must give up waiting for the others and fail its open with the
library's timeout message within 60 s (exit 0 when it does, 1 otherwise)."""
import glob
import json
import os
import signal
import subprocess
import sys
import time

ampr_cli, libdir, model, prompt = sys.argv[1:5]
n, outdir = int(sys.argv[5]), sys.argv[6]
here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "..", "python"))
libs = sorted(glob.glob(os.path.join(libdir, "libampr.so*")))
import ampr  # noqa: E402

signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # run the finally below
tp_id = ampr.tp_id_new(libs[0] if libs else None)

if len(sys.argv) > 7 and sys.argv[7] == "--alone":
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
procs, outs, ok = [], [], False
try:
    for r in range(n):
        cfg = {"device": "cuda", "tp_size": n, "tp_rank": r, "tp_id": tp_id, "gpus": [r],
               "tiers": ["fp16", "int8", "nf4"]}
        out = open(os.path.join(outdir, "tp-rank-%d.txt" % r), "w")
        err = open(os.path.join(outdir, "tp-rank-%d.err" % r), "w")
        outs += [out, err]
        procs.append(subprocess.Popen(
            [ampr_cli, "run", "-m", model, "--config", json.dumps(cfg), "--tier", "fp16",
             "-p", prompt, "-n", "20", "--temp", "0", "--quiet"], stdout=out, stderr=err))
    # one deadline for all ranks, inside check.sh's `timeout`; a rank that fails
    # ends the others at once (they would wait for it in NCCL until the deadline)
    ok, deadline = True, time.time() + float(os.environ.get("AMPR_TP_PROCS_TIMEOUT", "100"))
    while any(p.poll() is None for p in procs) and ok and time.time() < deadline:
        ok = all(p.poll() in (None, 0) for p in procs)
        time.sleep(0.2)
    for r, p in enumerate(procs):
        rc = p.poll()
        if rc != 0:
            ok = False
            with open(os.path.join(outdir, "tp-rank-%d.err" % r)) as f:
                sys.stderr.write("rank %d: %s: %s\n" % (r, "still running at the deadline" if rc is None
                                                         else "exit %d" % rc, f.read().strip()[-400:]))
finally:
    for p in procs:  # a rank left waiting in NCCL must not hold its GPU
        if p.poll() is None:
            p.kill()
            p.wait()
    for f in outs:
        f.close()
sys.exit(0 if ok else 1)
