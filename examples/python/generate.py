#!/usr/bin/env python3
"""
generate.py -- one-shot greedy generation (the Python twin of
examples/generate.c): prints the prompt and the generated text to stdout, the
tier, finish reason and timing to stderr.

    python3 examples/python/generate.py [MODEL] [PROMPT] [MAX_TOKENS]
"""
import sys

from _common import ampr, config, model_path


def main():
    prompt = sys.argv[2] if len(sys.argv) > 2 else "Once upon a time"
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 40
    try:
        with ampr.Model(model_path(), config=config()) as m:
            r = m.generate(prompt, max_tokens=n, temperature=0)
    except ampr.AmprError as e:
        print("generate: %s [status %d]" % (e, e.status), file=sys.stderr)
        return 1
    sys.stdout.buffer.write(prompt.encode() + r.text_bytes + b"\n")
    print("tier %s, %d tokens, finish %s, %.2f ms" % (r.tier_final, len(r.tokens), r.finish,
                                                     r.timings.total_ms), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
