"""
_common.py -- shared by the Python examples: makes `import ampr` work from a
source checkout (python/ beside this folder) when the package is not
installed, and finds the model and config the same way the C examples do:

  model:  sys.argv[1], else ../shared/models/stories260K/stories260K.gguf
          relative to the repository root;
  config: $AMPR_CONFIG, else {"tiers": ["fp16", "int8"]} (the default list
          also has NF4, which the tiny test model's widths do not allow).
"""
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
try:
    import ampr  # noqa: F401  (installed with pip install ./python)
except ImportError:
    sys.path.insert(0, str(ROOT / "python"))
    import ampr  # noqa: F401


def model_path():
    if len(sys.argv) > 1:
        return sys.argv[1]
    p = ROOT.parent / "shared" / "models" / "stories260K" / "stories260K.gguf"
    if not p.is_file():
        sys.exit("usage: %s MODEL.gguf (no default model found)" % sys.argv[0])
    return str(p)


def config():
    c = os.environ.get("AMPR_CONFIG")
    return json.loads(c) if c else {"tiers": ["fp16", "int8"]}
