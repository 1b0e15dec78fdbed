#!/usr/bin/env python3
"""
stream_cancel.py -- streaming with cancellation (the Python twin of
examples/stream_cancel.c): print pieces as they come and leave the loop at the
end of the first sentence. Leaving the loop cancels the request in the
library (through the token callback's return value); stream.result then
holds the partial result with finish "cancelled" (what the loop received,
plus at most the one piece that was on offer when it left).

    python3 examples/python/stream_cancel.py [MODEL] [PROMPT]
"""
import sys

from _common import ampr, config, model_path


def main():
    prompt = sys.argv[2] if len(sys.argv) > 2 else "Once upon a time"
    with ampr.Model(model_path(), config=config()) as m:
        print(prompt, end="", flush=True)
        seen = ""
        with m.stream(prompt, max_tokens=500, temperature=0, ignore_eos=True) as stream:
            for piece in stream:
                print(piece, end="", flush=True)
                seen += piece
                if "." in piece:
                    break  # cancels the request
        print()
        r = stream.result
        ok = r.finish == "cancelled" and len(r.tokens) < 500 and r.text.startswith(seen)
        print("cancelled after %d tokens, as asked" % len(r.tokens) if ok
              else "stream_cancel: unexpected result %r" % (r,), file=sys.stderr)
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
