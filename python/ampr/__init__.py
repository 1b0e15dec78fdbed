"""
ampr -- Python bindings for libampr (pure Python, ctypes).

    import ampr
    with ampr.Model("stories260K.gguf", config={"tiers": ["fp16"]}) as m:
        r = m.generate("Once upon a time", max_tokens=40, temperature=0)
        print(r.text, r.finish, r.tier_final)
        for piece in m.stream("Once upon a time", max_tokens=40):
            print(piece, end="", flush=True)

The shared library is found through, in order: an explicit path
(ampr.Model(..., library=PATH) or ampr.load_library(PATH)), the environment
variable AMPR_LIBRARY, the build/ folder of the source tree this package sits
in, and the system loader (libampr.so.0). Errors are ampr.AmprError
subclasses with .status, .name and .message.
"""
import ctypes

from ._lib import ABI_MAJOR, TIER_NAMES, FINISH_NAMES, STATUS_NAMES, load_library
from ._errors import *  # noqa: F401,F403  (the exception classes)
from ._errors import AmprError, BY_STATUS, make_error
from ._model import Model, Stream, ModelInfo, TierInfo, Route, Result, Timings

__version__ = "0.2.0"


def version(library=None):
    """Version string of the loaded libampr."""
    return load_library(library).version


TP_ID_LEN = 256  # AMPR_TP_ID_LEN


def tp_id_new(library=None):
    """A fresh id for a tensor-parallel group of processes (the "tp_id" of
    each rank's config; see ampr_tp_id_new in ampr.h). The calling process
    must stay alive until every rank has opened."""
    lib = load_library(library)
    buf = ctypes.create_string_buffer(TP_ID_LEN + 1)
    st = lib.ampr_tp_id_new(buf, len(buf))
    if st != 0:
        raise make_error(lib, st, "ampr_tp_id_new: " + lib.strerror(st))
    return buf.value.decode()


def strerror(status, library=None):
    return load_library(library).strerror(status)


def status_name(status, library=None):
    return load_library(library).status_name(status)
