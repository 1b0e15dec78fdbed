#!/usr/bin/env python3
"""
server_threads.py -- several requests at once on one Model from a thread
pool (the Python twin of examples/server_threads.c). ctypes releases the GIL
while the library computes, so the requests really run in parallel. Results
are printed in request order; each is checked against a sequential rerun.

    python3 examples/python/server_threads.py [MODEL] [N_THREADS]
"""
import sys
from concurrent.futures import ThreadPoolExecutor

from _common import ampr, config, model_path

PROMPTS = ["Once upon a time", "Lily and Ben went to the park",
           "The little dog was very sad because", "One day, a big bear found a shiny",
           "Tom had a red ball", "Sara said", "The sun was hot and", "Mom and dad"]


def main():
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(n)]
    with ampr.Model(model_path(), config=config()) as m:
        def serve(prompt):
            return m.generate(prompt, max_tokens=48, temperature=0)
        with ThreadPoolExecutor(max_workers=n) as pool:
            results = list(pool.map(serve, prompts))  # in request order
        for i, (p, r) in enumerate(zip(prompts, results)):
            print("[%d] (%s, %d tokens) %s%s" % (i, r.tier_final, len(r.tokens), p, r.text))
        bad = [i for i, p in enumerate(prompts) if serve(p).tokens != results[i].tokens]
    if bad:
        print("requests %s differ from their sequential reruns" % bad, file=sys.stderr)
        return 1
    print("%d concurrent requests match their sequential reruns" % n, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
