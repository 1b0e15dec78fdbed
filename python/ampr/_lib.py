"""
ampr._lib -- locating libampr and declaring its C interface for ctypes.

Everything here mirrors include/ampr.h one to one: the enums as integers,
the structs field by field (append-only, like the header), and argtypes /
restype for every AMPR_API function.  The Pythonic layer lives in
ampr._model; nothing here allocates or owns library memory.

Where the library is looked for, first match wins:
  1. the path given to load_library(path) (or ampr.Model(..., library=path));
  2. the environment variable AMPR_LIBRARY;
  3. the build tree of the repository this package sits in (python/ampr ->
     ../../build/libampr.so), so the package works straight from a checkout;
  4. ctypes.util.find_library("ampr"), then the dynamic loader's own search
     for the versioned name libampr.so.<ABI_MAJOR>.
An explicit path or AMPR_LIBRARY that cannot be loaded is an error: it is
never silently replaced by another copy.
"""
import ctypes
import ctypes.util
import os
import threading
from pathlib import Path

# The ABI major version this binding was written for (AMPR_VERSION_MAJOR).
ABI_MAJOR = 0

# ---- enums (int-sized in C) ----------------------------------------------

STATUS_NAMES = (
    "OK", "INVALID_ARG", "NOMEM", "IO", "CONFIG", "MODEL_FORMAT",
    "MODEL_TRUNCATED", "MODEL_BOUNDS", "MODEL_SHAPE", "MODEL_DTYPE",
    "MODEL_MISSING", "MODEL_HPARAMS", "MODEL_NONFINITE", "MODEL_VOCAB",
    "UNSUPPORTED", "BAD_UTF8", "PROMPT_EMPTY", "PROMPT_TOO_LONG", "KV_FULL",
    "CANCELLED", "TIER_UNAVAILABLE", "BACKEND", "NO_DEVICE",
    "BUFFER_TOO_SMALL", "INTERNAL",
)
AMPR_OK = 0
AMPR_ERR_BUFFER_TOO_SMALL = 23
AMPR_ERR_CANCELLED = 19

TIER_NAMES = ("auto", "fp16", "int8", "nf4", "f32", "bf16")
AMPR_TIER_COUNT = 6
FINISH_NAMES = ("length", "eos", "stop", "cancelled", "context", "error")
AMPR_ROUTE_N_FEATURES = 8
AMPR_NUL_TERMINATED = ctypes.c_size_t(-1).value

c_status = ctypes.c_int
c_tier = ctypes.c_int
c_finish = ctypes.c_int

# ---- callbacks -----------------------------------------------------------

# typedef int (*ampr_progress_fn)(void *user, const char *stage, float fraction);
PROGRESS_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_float)
# typedef int (*ampr_token_fn)(void *user, const char *piece, size_t len, int32_t id);
# piece is not NUL-terminated at len, so it is taken as a raw pointer.
TOKEN_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
                            ctypes.c_int32)
MALLOC_FN = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
REALLOC_FN = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
FREE_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)

# ---- structs ---------------------------------------------------------------


class _Sized(ctypes.Structure):
    """A struct that starts with uint32_t struct_size."""

    def has(self, field):
        """True when the library's struct_size covers `field` (a struct
        filled by an older library may end before our newest fields)."""
        f = getattr(type(self), field)
        return f.offset + f.size <= self.struct_size


class OpenParams(_Sized):
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("progress", PROGRESS_FN),
        ("progress_user", ctypes.c_void_p),
    ]


class ModelInfo(_Sized):
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("dim", ctypes.c_int32),
        ("hidden_dim", ctypes.c_int32),
        ("n_layers", ctypes.c_int32),
        ("n_heads", ctypes.c_int32),
        ("n_kv_heads", ctypes.c_int32),
        ("head_dim", ctypes.c_int32),
        ("vocab_size", ctypes.c_int32),
        ("context_length", ctypes.c_int32),
        ("n_params", ctypes.c_uint64),
        ("bos_id", ctypes.c_int32),
        ("eos_id", ctypes.c_int32),
        ("n_tiers", ctypes.c_int32),
        ("tiers", c_tier * AMPR_TIER_COUNT),
        ("format", ctypes.c_char * 16),
        ("device", ctypes.c_char * 96),
    ]


class TierInfo(_Sized):
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("tier", c_tier),
        ("weight_bytes", ctypes.c_uint64),
        ("kv_bytes", ctypes.c_uint64),
        ("kv_block_size", ctypes.c_int32),
        ("kv_pages_total", ctypes.c_int32),
        ("kv_pages_used", ctypes.c_int32),
        ("kernels", ctypes.c_char * 32),  # 0.2
    ]


class RouteResult(_Sized):
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("tier", c_tier),
        ("score", ctypes.c_float),
        ("features", ctypes.c_float * AMPR_ROUTE_N_FEATURES),
        ("reason", ctypes.c_char * 160),
    ]


class GenParams(_Sized):
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("tier", c_tier),
        ("max_tokens", ctypes.c_int32),
        ("temperature", ctypes.c_float),
        ("top_k", ctypes.c_int32),
        ("top_p", ctypes.c_float),
        ("repetition_penalty", ctypes.c_float),
        ("repetition_last_n", ctypes.c_int32),
        ("seed", ctypes.c_uint64),
        ("stop", ctypes.POINTER(ctypes.c_char_p)),
        ("n_stop", ctypes.c_size_t),
        ("add_bos", ctypes.c_int),
        ("ignore_eos", ctypes.c_int),
        ("on_token", TOKEN_FN),
        ("user", ctypes.c_void_p),
        ("fallback", ctypes.c_int32),
    ]


class Result(_Sized):
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("text", ctypes.POINTER(ctypes.c_char)),
        ("text_len", ctypes.c_size_t),
        ("tokens", ctypes.POINTER(ctypes.c_int32)),
        ("n_tokens", ctypes.c_size_t),
        ("n_prompt_tokens", ctypes.c_int32),
        ("finish", c_finish),
        ("tier_first", c_tier),
        ("tier_final", c_tier),
        ("escalated", ctypes.c_int32),
        ("escalation_token", ctypes.c_int32),
        ("escalation_reason", ctypes.c_char * 64),
        ("prefill_ms", ctypes.c_double),
        ("decode_ms", ctypes.c_double),
        ("total_ms", ctypes.c_double),
    ]


def new_struct(lib_init_sized, cls):
    """A `cls` filled by its C _init_sized function, which writes defaults for
    exactly the size of the struct this binding knows (older or newer than
    the library's) and records that size in struct_size."""
    obj = cls()
    lib_init_sized(ctypes.byref(obj), ctypes.sizeof(cls))
    return obj


ctx_p = ctypes.c_void_p  # ampr_ctx * (opaque)
_P = ctypes.POINTER

# name -> (restype, argtypes): every AMPR_API function of include/ampr.h.
# python/tests checks this table against the header.
SIGNATURES = {
    "ampr_version": (ctypes.c_char_p, []),
    "ampr_version_number": (ctypes.c_uint32, []),
    "ampr_strerror": (ctypes.c_char_p, [c_status]),
    "ampr_status_name": (ctypes.c_char_p, [c_status]),
    "ampr_set_allocator": (c_status, [MALLOC_FN, REALLOC_FN, FREE_FN, ctypes.c_void_p]),
    "ampr_tier_name": (ctypes.c_char_p, [c_tier]),
    "ampr_tier_from_name": (c_status, [ctypes.c_char_p, _P(c_tier)]),
    "ampr_open_params_init_sized": (None, [_P(OpenParams), ctypes.c_size_t]),
    "ampr_tp_id_new": (c_status, [ctypes.c_char_p, ctypes.c_size_t]),
    "ampr_open": (c_status, [ctypes.c_char_p, ctypes.c_char_p, _P(ctx_p)]),
    "ampr_open_ex": (c_status, [ctypes.c_char_p, ctypes.c_char_p, _P(OpenParams), _P(ctx_p)]),
    "ampr_close": (None, [ctx_p]),
    "ampr_errmsg": (ctypes.c_char_p, [ctx_p]),
    "ampr_model_info_init_sized": (None, [_P(ModelInfo), ctypes.c_size_t]),
    "ampr_get_model_info": (c_status, [ctx_p, _P(ModelInfo)]),
    "ampr_tier_info_init_sized": (None, [_P(TierInfo), ctypes.c_size_t]),
    "ampr_get_tier_info": (c_status, [ctx_p, c_tier, _P(TierInfo)]),
    "ampr_tokenize": (c_status, [ctx_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int,
                                 _P(ctypes.c_int32), ctypes.c_size_t, _P(ctypes.c_size_t)]),
    "ampr_detokenize": (c_status, [ctx_p, _P(ctypes.c_int32), ctypes.c_size_t,
                                   ctypes.c_char_p, ctypes.c_size_t, _P(ctypes.c_size_t)]),
    "ampr_route_result_init_sized": (None, [_P(RouteResult), ctypes.c_size_t]),
    "ampr_route": (c_status, [ctx_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p,
                              ctypes.c_size_t, _P(RouteResult)]),
    "ampr_gen_params_init_sized": (None, [_P(GenParams), ctypes.c_size_t]),
    "ampr_result_free": (None, [_P(Result)]),
    "ampr_generate": (c_status, [ctx_p, ctypes.c_char_p, ctypes.c_size_t, _P(GenParams),
                                 _P(_P(Result))]),
    "ampr_logits": (c_status, [ctx_p, c_tier, _P(ctypes.c_int32), ctypes.c_size_t,
                               _P(ctypes.c_float), ctypes.c_size_t]),
    "ampr_free": (None, [ctypes.c_void_p]),
    "ampr_metrics_text": (c_status, [ctx_p, _P(ctypes.c_void_p), _P(ctypes.c_size_t)]),
    "ampr_metrics_reset": (c_status, [ctx_p]),
}


class Library:
    """A loaded libampr with every public function declared (as attributes
    named like the C functions)."""

    def __init__(self, cdll, path):
        self.cdll = cdll
        self.path = path
        for name, (restype, argtypes) in SIGNATURES.items():
            fn = getattr(cdll, name)  # AttributeError: the library lacks a public symbol
            fn.restype = restype
            fn.argtypes = argtypes
            setattr(self, name, fn)
        self.version = self.ampr_version().decode()
        major = self.ampr_version_number() // 10000
        if major != ABI_MAJOR:
            raise OSError("%s is libampr %s (ABI %d); this binding needs ABI %d"
                          % (path, self.version, major, ABI_MAJOR))

    def strerror(self, status):
        return self.ampr_strerror(status).decode()

    def status_name(self, status):
        """The name without the AMPR_ERR_ prefix, as the header documents
        ("KV_FULL"); libampr 0.1.0 returns "ERR_KV_FULL", so any "ERR_" is
        dropped here."""
        name = self.ampr_status_name(status).decode()
        return name[4:] if name.startswith("ERR_") else name


_loaded = {}
_lock = threading.Lock()


def _repo_candidates():
    root = Path(__file__).resolve().parent.parent.parent
    if (root / "include" / "ampr.h").is_file():
        build = Path(os.environ.get("AMPR_BUILD", root / "build"))
        for name in ("libampr.so.%d" % ABI_MAJOR, "libampr.so"):
            p = build / name
            if p.exists():
                yield str(p)


def _candidates(path):
    """(path, must_succeed) in search order."""
    if path:
        yield os.fspath(path), True
        return
    env = os.environ.get("AMPR_LIBRARY")
    if env:
        yield env, True
        return
    for p in _repo_candidates():
        yield p, False
    found = ctypes.util.find_library("ampr")
    if found:
        yield found, False
    yield "libampr.so.%d" % ABI_MAJOR, False


def load_library(path=None):
    """Load libampr (see the module docstring for the search order) and
    return a Library. Loaded libraries are cached by path."""
    errors = []
    with _lock:
        for cand, must in _candidates(path):
            if cand in _loaded:
                return _loaded[cand]
            try:
                lib = Library(ctypes.CDLL(cand), cand)
            except (OSError, AttributeError) as e:
                if must:
                    raise OSError("cannot load libampr from %s: %s" % (cand, e)) from e
                errors.append("%s: %s" % (cand, e))
                continue
            _loaded[cand] = lib
            return lib
    raise OSError("libampr not found (set AMPR_LIBRARY to its path); tried:\n  "
                  + "\n  ".join(errors))
