#!/usr/bin/env python3
"""lower.py SRC.cu OUT.cc -- CUDA source to host C++ for the CPU emulation
(tests/emu/cuda_emu.h). Two rewrites, each keeping the line count so that
compiler messages point at SRC:

  kernel<<<grid, block[, smem[, stream]]>>>(args)
      -> ampr_emu_launch(kernel, "kernel", ampr_emu_cfg(grid, block[, ...]), args)
  extern __shared__ [__align__(N)] T name[];
      -> T *name = (T *)ampr_emu_dyn_smem();
  __shared__ T a[N], b;
      -> auto &a = ampr_emu_shared<T[N]>([] {}); auto &b = ampr_emu_shared<T>([] {});
         (storage that each block starts with 0xff bytes in)
  __launch_bounds__(N) kernel(params) { body
      -> kernel(params) { ampr_emu_bounds(N); body
         (a launch with more threads than N faults, as a GPU refuses it)

and inline PTX the emulator knows (mma.sync m16n8k16 f16 -> f32, prefetch) is
left to the source: it is selected with #ifdef AMPR_CUDA_EMU there.
"""
import re
import sys

src_path, out_path = sys.argv[1], sys.argv[2]
text = open(src_path).read()

# a kernel name, possibly with template arguments (one level of nesting)
NAME = r"([A-Za-z_][\w:]*(?:\s*<(?:[^<>;]|<[^<>;]*>)*>)?)"
launch = re.compile(NAME + r"\s*<<<(.*?)>>>\s*\(", re.S)


def fix_launch(m):
    name, cfg = m.group(1), m.group(2)
    label = re.sub(r"\s+", " ", name)
    # an empty argument list: no comma after the configuration
    rest = text[m.end():]
    comma = "" if rest.lstrip().startswith(")") else ", "
    return 'ampr_emu_launch(%s, "%s", ampr_emu_cfg(%s)%s' % (name, label, cfg, comma)


text = launch.sub(fix_launch, text)
if "<<<" in text:
    line = text[: text.index("<<<")].count("\n") + 1
    sys.exit("lower.py: %s:%d: a launch this script cannot parse" % (src_path, line))

dyn = re.compile(r"extern\s+__shared__\s+(?:__align__\s*\(\s*\d+\s*\)\s+)?([\w\s]+?)\s+(\w+)\s*\[\s*\]\s*;")
text = dyn.sub(lambda m: "%s *%s = (%s *)ampr_emu_dyn_smem();" % (m.group(1), m.group(2), m.group(1)), text)

# static shared memory: `__shared__ T a[N], b;` -> a reference each to storage
# that every block starts with 0xff bytes in (ampr_emu_shared in cuda_emu.h; the
# lambda makes each declaration its own storage). Other forms keep the macro's
# per-thread static, unpoisoned.
shared = re.compile(r"__shared__\s+([A-Za-z_]\w*)\s+([A-Za-z_]\w*(?:\s*\[[^\];]*\])*(?:\s*,\s*[A-Za-z_]\w*(?:\s*\[[^\];]*\])*)*)\s*;")
declarator = re.compile(r"([A-Za-z_]\w*)((?:\s*\[[^\];]*\])*)")


def fix_shared(m):
    out = []
    for d in declarator.finditer(m.group(2)):
        dims = re.sub(r"\s+", "", d.group(2))
        out.append("auto &%s = ampr_emu_shared<%s%s>([] {});" % (d.group(1), m.group(1), dims))
    return " ".join(out)


text = shared.sub(fix_shared, text)



def close_paren(t, i):
    """index just past the parenthesis that closes the one at t[i]"""
    depth = 0
    for j in range(i, len(t)):
        if t[j] == "(":
            depth += 1
        elif t[j] == ")":
            depth -= 1
            if depth == 0:
                return j + 1
    sys.exit("lower.py: %s: unbalanced parentheses" % src_path)


out, pos = [], 0
for m in re.finditer(r"__launch_bounds__\s*\(", text):
    if m.start() < pos:
        continue
    end = close_paren(text, m.end() - 1)
    bound = text[m.end():end - 1]
    name = re.match(r"\s*([A-Za-z_]\w*)\s*\(", text[end:])
    if not name:
        continue
    body = text.index("{", close_paren(text, end + name.end() - 1))
    out.append(text[pos:m.start()])
    out.append(text[end:body + 1])
    out.append(" ampr_emu_bounds(%s);" % bound)
    pos = body + 1
out.append(text[pos:])
text = "".join(out)

with open(out_path, "w") as f:
    f.write('#line 1 "%s"\n' % src_path)
    f.write(text)
