#!/usr/bin/env python3
"""tests/gpu/tp_procs.py AMPR LIBDIR MODEL PROMPT NRANKS OUTDIR -- one tensor-parallel
rank per process: make a group id with ampr.tp_id_new() (this process stays up
while the ranks meet, as ampr_tp_id_new requires), start `AMPR run` once per
rank with "tp_rank" r on GPU r, greedy fp16, and write each rank's text to
OUTDIR/tp-rank-R.txt. Exit 1 when a rank fails."""
import glob
import json
import os
import subprocess
import sys

ampr_cli, libdir, model, prompt = sys.argv[1:5]
n, outdir = int(sys.argv[5]), sys.argv[6]
here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "..", "python"))
libs = sorted(glob.glob(os.path.join(libdir, "libampr.so*")))
import ampr  # noqa: E402

tp_id = ampr.tp_id_new(libs[0] if libs else None)
procs = []
for r in range(n):
    cfg = {"device": "cuda", "tp_size": n, "tp_rank": r, "tp_id": tp_id, "gpus": [r],
           "tiers": ["fp16", "int8", "nf4"]}
    procs.append(subprocess.Popen(
        [ampr_cli, "run", "-m", model, "--config", json.dumps(cfg), "--tier", "fp16",
         "-p", prompt, "-n", "20", "--temp", "0", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
ok = True
for r, p in enumerate(procs):
    out, err = p.communicate(timeout=170)
    if p.returncode != 0:
        ok = False
        sys.stderr.write("rank %d: exit %d: %s\n" % (r, p.returncode, err.strip()[-400:]))
    with open(os.path.join(outdir, "tp-rank-%d.txt" % r), "w") as f:
        f.write(out if p.returncode == 0 else "(rank %d failed)" % r)
sys.exit(0 if ok else 1)
