#!/usr/bin/env python3
"""Build tests/data/prompts.jsonl: real prompts of four kinds for calibration
and routing experiments, cut from the texts in ../shared/text (stories, C and
Python code) plus hand-written arithmetic and questions.

    python3 tools/make_prompts.py ../shared/text > tests/data/prompts.jsonl
"""
import json
import random
import re
import sys

root = sys.argv[1] if len(sys.argv) > 1 else "../shared/text"
rng = random.Random(1234)
out = []

stories = open(f"{root}/tinystories_train_head.txt", encoding="utf-8").read().split("\n\n")
stories = [s.strip() for s in stories if 80 < len(s.strip()) < 600 and "â" not in s]
for s in rng.sample(stories, 40):
    words = s.split()
    out.append({"kind": "story", "prompt": " ".join(words[: rng.randint(6, 20)])})

def code_chunks(path, n):
    lines = [l.rstrip() for l in open(path, encoding="utf-8")]
    res = []
    while len(res) < n:
        i = rng.randrange(0, len(lines) - 8)
        chunk = "\n".join(lines[i : i + rng.randint(3, 8)]).strip()
        if len(chunk) > 60 and re.search(r"[(){};=]", chunk):
            res.append(chunk)
    return res

for c in code_chunks(f"{root}/code_sample_c_zlib_h.txt", 15):
    out.append({"kind": "code", "prompt": c})
for c in code_chunks(f"{root}/code_sample_python_stdlib.txt", 15):
    out.append({"kind": "code", "prompt": c})

ops = ["+", "-", "*", "/"]
for _ in range(30):
    a, b, c = rng.randint(2, 999), rng.randint(2, 99), rng.randint(1, 50)
    o1, o2 = rng.choice(ops), rng.choice(ops)
    form = rng.choice(["What is {a} {o1} {b} {o2} {c}?", "Compute ({a} {o1} {b}) {o2} {c} =",
                       "Solve for x: {a}x {o1} {b} = {c}", "If x = {b}, then {a} {o1} x^2 {o2} {c} ="])
    out.append({"kind": "math", "prompt": form.format(a=a, b=b, c=c, o1=o1, o2=o2)})

questions = [
    "Why is the sky blue?", "What do cats like to eat?", "How do birds fly?",
    "Where does the rain come from?", "Why do we need to sleep?", "What is the biggest animal?",
    "How do plants grow?", "Why is the sea salty?", "What makes a rainbow?",
    "How many legs does a spider have?", "Why do leaves change color in the fall?",
    "What is a friend?", "How does a car move?", "Why do dogs bark?", "What is the moon made of?",
    "How do fish breathe under water?", "Why do we have seasons?", "What does a doctor do?",
    "How is bread made?", "Why is ice cold?", "What is the capital of France?",
    "Who was the first person on the moon?", "How far away is the sun?", "What is gravity?",
    "Why do people smile?", "How do bees make honey?", "What is a volcano?",
    "Why do stars twinkle?", "How do you make a paper boat?", "What is the tallest tree?",
]
for q in questions:
    out.append({"kind": "question", "prompt": q})

rng.shuffle(out)
for o in out:
    print(json.dumps(o, ensure_ascii=False))
