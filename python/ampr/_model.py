"""
ampr._model -- the Pythonic layer over libampr: Model, Stream and the result
dataclasses.

Threading: ctypes releases the GIL during every C call, and the library lets
several threads run requests on one context at once, so Model.generate(),
stream(), tokenize(), route() ... may be called from several Python threads
on one Model. Model keeps a count of calls in flight; close() refuses new
calls, cancels open streams and waits for the rest before ampr_close(), so
ampr_close() never races another call (the header's one rule).

Callbacks: the ctypes callback objects are held in locals for the whole C
call (a collected CFUNCTYPE would leave the library calling freed memory). A
Python exception raised inside a callback never crosses into C: it is caught,
the callback returns "cancel", and the exception is re-raised once
ampr_generate() (or ampr_open_ex()) has returned.
"""
import codecs
import ctypes
import json
import os
import queue
import threading
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from . import _lib as L
from ._errors import AmprError, make_error

__all__ = ["Model", "Stream", "ModelInfo", "TierInfo", "Route", "Result", "Timings"]

ROUTE_FEATURE_NAMES = ("lexical_density", "code_markers", "math_operators", "digits",
                       "length", "non_ascii")


@dataclass(frozen=True)
class ModelInfo:
    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab_size: int
    context_length: int
    n_params: int
    bos_id: int
    eos_id: int
    tiers: List[str]
    format: str


@dataclass(frozen=True)
class TierInfo:
    tier: str
    weight_bytes: int
    kv_bytes: int
    kv_block_size: int
    kv_pages_total: int
    kv_pages_used: int
    kernels: str  # "avx512", "avx512-bf16", "avx2", "scalar" or "cuda"; "" from libampr 0.1


@dataclass(frozen=True)
class Route:
    tier: str
    score: float
    features: Dict[str, float]
    reason: str


@dataclass(frozen=True)
class Timings:
    prefill_ms: float
    decode_ms: float
    total_ms: float


@dataclass(frozen=True)
class Result:
    text: str                  # generated text only (invalid UTF-8 replaced)
    tokens: List[int]          # generated token ids
    finish: str                # "length", "eos", "stop", "cancelled", "context", "error"
    tier_first: str
    tier_final: str
    escalated: bool
    timings: Timings
    n_prompt_tokens: int = 0
    escalation_token: Optional[int] = None
    escalation_reason: str = ""
    text_bytes: bytes = field(default=b"", repr=False)  # the exact bytes of text


def _tier_name(t):
    return L.TIER_NAMES[t] if 0 <= t < len(L.TIER_NAMES) else "?%d" % t


def _as_bytes(text, what="text"):
    """str -> UTF-8 (lone surrogates pass through, so the library reports
    BAD_UTF8 as it does for bad bytes); bytes-like -> as is."""
    if isinstance(text, str):
        return text.encode("utf-8", "surrogatepass")
    if isinstance(text, (bytes, bytearray, memoryview)):
        return bytes(text)
    raise TypeError("%s must be str or bytes, not %s" % (what, type(text).__name__))


class _Pieces:
    """Per-request callback state: decodes pieces and keeps any exception
    raised by the user's function, which then cancels the request."""

    def __init__(self, fn):
        self.fn = fn
        self.exc = None
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def __call__(self, user, ptr, n, token_id):
        try:
            piece = self.decoder.decode(ctypes.string_at(ptr, n) if n else b"")
            return 1 if self.fn(piece, token_id) else 0
        except BaseException as e:  # never let it reach C
            self.exc = e
            return 1


class Model:
    """An open libampr context.

        with ampr.Model("stories260K.gguf", config={"tiers": ["fp16"]}) as m:
            print(m.generate("Once upon a time", max_tokens=20, temperature=0).text)

    config is a dict (serialised to JSON), a JSON string, or None for the
    library's defaults. library is an explicit path to libampr (see
    ampr.load_library for the search order). progress(stage, fraction), if
    given, is called while the tiers are built; a truthy return aborts the
    open with ampr.CancelledError.
    """

    def __init__(self, path, config=None, *, library=None, progress=None):
        self._ctx = None
        self._lib = lib = L.load_library(library)
        self._cv = threading.Condition()
        self._busy = 0
        self._streams = weakref.WeakSet()
        self._info = None
        if config is None:
            cfg = None
        elif isinstance(config, (str, bytes)):
            cfg = _as_bytes(config, "config")
        else:
            cfg = json.dumps(config).encode()
        params = L.new_struct(lib.ampr_open_params_init_sized, L.OpenParams)
        state = None
        if progress is not None:
            state = _Progress(progress)
            cb = L.PROGRESS_FN(state)  # alive until the end of __init__
            params.progress = cb
        ctx = L.ctx_p()
        st = lib.ampr_open_ex(os.fsencode(path), cfg, ctypes.byref(params), ctypes.byref(ctx))
        if st != L.AMPR_OK:
            msg = lib.ampr_errmsg(ctx).decode("utf-8", "replace")
            lib.ampr_close(ctx)
            if state is not None and state.exc is not None:
                raise state.exc
            raise make_error(lib, st, msg)
        self._ctx = ctx

    # ---- lifetime ---------------------------------------------------------

    def close(self):
        """Free the context. Waits for calls in flight on other threads and
        cancels open streams first. Closing twice is harmless."""
        with self._cv:
            ctx, self._ctx = self._ctx, None
            if ctx is None:
                return
            streams = list(self._streams)
        for s in streams:
            s._job.cancel.set()
        with self._cv:
            while self._busy:
                self._cv.wait()
        self._lib.ampr_close(ctx)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            if self._ctx is not None:
                self.close()
        except Exception:
            pass

    @property
    def closed(self):
        return self._ctx is None

    @property
    def library(self):
        return self._lib

    @contextmanager
    def _use(self):
        with self._cv:
            if self._ctx is None:
                raise ValueError("operation on a closed ampr.Model")
            self._busy += 1
            ctx = self._ctx
        try:
            yield ctx
        finally:
            with self._cv:
                self._busy -= 1
                if not self._busy:
                    self._cv.notify_all()

    def _fail(self, ctx, st):
        """Build the exception for status st; must run on the thread whose
        call failed, right after it (ampr_errmsg is per thread)."""
        return make_error(self._lib, st, self._lib.ampr_errmsg(ctx).decode("utf-8", "replace"))

    def _tier(self, tier):
        if isinstance(tier, int):
            return tier
        out = L.c_tier()
        st = self._lib.ampr_tier_from_name(_as_bytes(tier, "tier"), ctypes.byref(out))
        if st != L.AMPR_OK:
            raise make_error(self._lib, st, "unknown tier %r" % (tier,))
        return out.value

    # ---- information ------------------------------------------------------

    @property
    def info(self):
        """ModelInfo (cached: the model is read-only after open)."""
        if self._info is None:
            mi = L.new_struct(self._lib.ampr_model_info_init_sized, L.ModelInfo)
            with self._use() as ctx:
                st = self._lib.ampr_get_model_info(ctx, ctypes.byref(mi))
                if st != L.AMPR_OK:
                    raise self._fail(ctx, st)
            self._info = ModelInfo(
                dim=mi.dim, hidden_dim=mi.hidden_dim, n_layers=mi.n_layers, n_heads=mi.n_heads,
                n_kv_heads=mi.n_kv_heads, head_dim=mi.head_dim, vocab_size=mi.vocab_size,
                context_length=mi.context_length, n_params=mi.n_params, bos_id=mi.bos_id,
                eos_id=mi.eos_id, tiers=[_tier_name(mi.tiers[i]) for i in range(mi.n_tiers)],
                format=mi.format.decode())
        return self._info

    def tier_info(self, tier):
        """TierInfo of a resident tier (name or number); TierUnavailableError
        otherwise. kv_pages_used is live, so this is not cached."""
        ti = L.new_struct(self._lib.ampr_tier_info_init_sized, L.TierInfo)
        t = self._tier(tier)
        with self._use() as ctx:
            st = self._lib.ampr_get_tier_info(ctx, t, ctypes.byref(ti))
            if st != L.AMPR_OK:
                raise self._fail(ctx, st)
        return TierInfo(tier=_tier_name(ti.tier), weight_bytes=ti.weight_bytes,
                        kv_bytes=ti.kv_bytes, kv_block_size=ti.kv_block_size,
                        kv_pages_total=ti.kv_pages_total, kv_pages_used=ti.kv_pages_used,
                        kernels=ti.kernels.decode())

    # ---- tokens -----------------------------------------------------------

    def tokenize(self, text, add_bos=True):
        """Token ids of text (str or UTF-8 bytes)."""
        data = _as_bytes(text)
        cap = len(data) + 2
        with self._use() as ctx:
            while True:
                ids = (ctypes.c_int32 * max(cap, 1))()
                n = ctypes.c_size_t()
                st = self._lib.ampr_tokenize(ctx, data, len(data), 1 if add_bos else 0, ids, cap,
                                             ctypes.byref(n))
                if st == L.AMPR_ERR_BUFFER_TOO_SMALL or (st == L.AMPR_OK and n.value > cap):
                    cap = n.value
                    continue
                if st != L.AMPR_OK:
                    raise self._fail(ctx, st)
                return list(ids[:n.value])

    def detokenize(self, ids, as_bytes=False):
        """Text of token ids (special tokens skipped). Returns str, with any
        invalid UTF-8 replaced, or the exact bytes when as_bytes is true."""
        ids = list(ids)
        arr = (ctypes.c_int32 * max(len(ids), 1))(*ids)
        cap = 4 * len(ids) + 16
        with self._use() as ctx:
            while True:
                buf = ctypes.create_string_buffer(cap + 1)
                n = ctypes.c_size_t()
                st = self._lib.ampr_detokenize(ctx, arr, len(ids), buf, cap, ctypes.byref(n))
                if st == L.AMPR_ERR_BUFFER_TOO_SMALL or (st == L.AMPR_OK and n.value > cap):
                    cap = n.value
                    continue
                if st != L.AMPR_OK:
                    raise self._fail(ctx, st)
                raw = buf.raw[:n.value]
                return raw if as_bytes else raw.decode("utf-8", "replace")

    # ---- routing ----------------------------------------------------------

    def route(self, prompt, system=None):
        """The tier ampr_route() would pick for prompt, with its score,
        features and a one-line reason."""
        data = _as_bytes(prompt, "prompt")
        sysb = None if system is None else _as_bytes(system, "system")
        r = L.new_struct(self._lib.ampr_route_result_init_sized, L.RouteResult)
        with self._use() as ctx:
            st = self._lib.ampr_route(ctx, data, len(data), sysb, len(sysb) if sysb else 0,
                                      ctypes.byref(r))
            if st != L.AMPR_OK:
                raise self._fail(ctx, st)
        return Route(tier=_tier_name(r.tier), score=r.score,
                     features={k: r.features[i] for i, k in enumerate(ROUTE_FEATURE_NAMES)},
                     reason=r.reason.decode("utf-8", "replace"))

    # ---- generation -------------------------------------------------------

    def _params(self, tier="auto", max_tokens=None, temperature=None, top_k=None, top_p=None,
                repetition_penalty=None, repetition_last_n=None, seed=None, stop=None,
                add_bos=None, ignore_eos=None, fallback=None):
        """ampr_gen_params from keyword arguments; None keeps the library's
        default. Returns (params, objects that must stay alive)."""
        p = L.new_struct(self._lib.ampr_gen_params_init_sized, L.GenParams)
        p.tier = self._tier(tier)
        for name, v in (("max_tokens", max_tokens), ("temperature", temperature),
                        ("top_k", top_k), ("top_p", top_p),
                        ("repetition_penalty", repetition_penalty),
                        ("repetition_last_n", repetition_last_n), ("seed", seed)):
            if v is not None:
                setattr(p, name, v)
        if add_bos is not None:
            p.add_bos = 1 if add_bos else 0
        if ignore_eos is not None:
            p.ignore_eos = 1 if ignore_eos else 0
        if fallback is not None:
            p.fallback = 1 if fallback else 0
        keep = []
        if stop:
            if isinstance(stop, (str, bytes)):
                stop = [stop]
            enc = [_as_bytes(s, "stop") for s in stop]
            if any(b"\0" in s for s in enc):
                raise ValueError("stop strings cannot contain NUL")
            arr = (ctypes.c_char_p * len(enc))(*enc)
            keep.append(arr)
            p.stop = ctypes.cast(arr, ctypes.POINTER(ctypes.c_char_p))
            p.n_stop = len(enc)
        return p, keep

    def _result(self, r):
        text = ctypes.string_at(r.text, r.text_len) if r.text_len else b""
        return Result(
            text=text.decode("utf-8", "replace"), text_bytes=text,
            tokens=list(r.tokens[:r.n_tokens]) if r.n_tokens else [],
            finish=L.FINISH_NAMES[r.finish] if 0 <= r.finish < len(L.FINISH_NAMES) else str(r.finish),
            tier_first=_tier_name(r.tier_first), tier_final=_tier_name(r.tier_final),
            escalated=bool(r.escalated), n_prompt_tokens=r.n_prompt_tokens,
            escalation_token=r.escalation_token if r.escalation_token >= 0 else None,
            escalation_reason=r.escalation_reason.decode("utf-8", "replace"),
            timings=Timings(prefill_ms=r.prefill_ms, decode_ms=r.decode_ms, total_ms=r.total_ms))

    def generate(self, prompt, *, on_token=None, tier="auto", max_tokens=None, temperature=None,
                 top_k=None, top_p=None, repetition_penalty=None, repetition_last_n=None,
                 seed=None, stop=None, add_bos=None, ignore_eos=None, fallback=None):
        """Run one request and return a Result.

        prompt is str or UTF-8 bytes. Sampling arguments left as None keep
        the library's defaults (ampr_gen_params_init: max_tokens 256,
        temperature 0.8, top_k 40, top_p 0.95, ...); temperature=0 is greedy.
        stop is a string or a list of strings. tier is "auto" (route the
        prompt) or a tier name. on_token(piece, token_id), if given, is called
        for each piece of text as it is produced; a truthy return cancels the
        request, which then returns the partial Result with finish
        "cancelled". fallback=False keeps the request on its tier (no
        escalation to the top tier). An exception raised by on_token cancels the request and
        is re-raised here.
        """
        data = _as_bytes(prompt, "prompt")
        p, keep = self._params(tier, max_tokens, temperature, top_k, top_p, repetition_penalty,
                               repetition_last_n, seed, stop, add_bos, ignore_eos, fallback)
        state = cb = None
        if on_token is not None:
            state = _Pieces(on_token)
            cb = L.TOKEN_FN(state)  # must outlive the C call below
            p.on_token = cb
        out = ctypes.POINTER(L.Result)()
        err = None
        with self._use() as ctx:
            st = self._lib.ampr_generate(ctx, data, len(data), ctypes.byref(p), ctypes.byref(out))
            if st not in (L.AMPR_OK, L.AMPR_ERR_CANCELLED):
                err = self._fail(ctx, st)
        del cb, keep
        try:
            if state is not None and state.exc is not None:
                raise state.exc
            if err is not None:
                raise err
            if not out:
                raise make_error(self._lib, st, "ampr_generate returned no result")
            return self._result(out.contents)
        finally:
            if out:
                self._lib.ampr_result_free(out)

    def logits(self, ids, tier):
        """Teacher-forced logits (ampr_logits) of token ids on one resident
        tier: a list of len(ids) rows of vocab_size floats, row i being the
        distribution of the token after ids[i]."""
        ids = list(ids)
        t = self._tier(tier)
        V = self.info.vocab_size
        arr = (ctypes.c_int32 * max(len(ids), 1))(*ids)
        out = (ctypes.c_float * max(len(ids) * V, 1))()
        with self._use() as ctx:
            st = self._lib.ampr_logits(ctx, t, arr, len(ids), out, len(ids) * V)
            if st != L.AMPR_OK:
                raise self._fail(ctx, st)
        flat = memoryview(out).cast("B").cast("f")
        return [flat[i * V:(i + 1) * V].tolist() for i in range(len(ids))]

    def metrics_text(self):
        """The context's metrics in Prometheus text format 0.0.4 (str)."""
        out = ctypes.c_void_p()
        n = ctypes.c_size_t()
        with self._use() as ctx:
            st = self._lib.ampr_metrics_text(ctx, ctypes.byref(out), ctypes.byref(n))
            if st != L.AMPR_OK:
                raise self._fail(ctx, st)
        try:
            return ctypes.string_at(out, n.value).decode("utf-8", "replace")
        finally:
            self._lib.ampr_free(out)

    def metrics_reset(self):
        """Zero the counters and histograms (gauges stay)."""
        with self._use() as ctx:
            st = self._lib.ampr_metrics_reset(ctx)
            if st != L.AMPR_OK:
                raise self._fail(ctx, st)

    def stream(self, prompt, **kwargs):
        """Like generate(), but returns a Stream: an iterator over the pieces
        of text as they are produced (empty pieces are skipped). Leaving the
        loop early (break, an exception, or Stream.close()) cancels the
        request. After the iteration ends, Stream.result holds the Result."""
        if "on_token" in kwargs:
            raise TypeError("stream() takes no on_token; iterate over it instead")
        s = Stream(self, prompt, kwargs)
        self._streams.add(s)
        return s


class _Progress:
    def __init__(self, fn):
        self.fn = fn
        self.exc = None

    def __call__(self, user, stage, fraction):
        try:
            return 1 if self.fn(stage.decode("utf-8", "replace"), fraction) else 0
        except BaseException as e:
            self.exc = e
            return 1


_DONE = object()


class _Job:
    """The side of a Stream that the generating thread holds (so the user's
    Stream object can be collected, and cancel the job, when dropped).

    The two sides run in lock step: the token callback hands a piece over
    only when the consumer asks for the next one, so generation never runs
    ahead of the loop, and a loop that stops asking (break) leaves the
    callback waiting until Stream.close() sets `cancel`, which makes it
    return "cancel" to the library. The result of a cancelled stream is
    therefore what the loop received plus at most the one piece that was
    being offered when it stopped."""

    def __init__(self, model, prompt, kwargs):
        self.q = queue.SimpleQueue()
        self.want = threading.Semaphore(0)
        self.cancel = threading.Event()
        self.result = None
        self.error = None
        self.thread = threading.Thread(target=self.run, args=(model, prompt, kwargs),
                                       name="ampr-stream", daemon=True)

    def on_token(self, piece, token_id):
        if not piece:
            return self.cancel.is_set()
        while not self.want.acquire(timeout=0.05):
            if self.cancel.is_set():
                return True
        if self.cancel.is_set():
            return True
        self.q.put(piece)
        return False

    def run(self, model, prompt, kwargs):
        try:
            self.result = model.generate(prompt, on_token=self.on_token, **kwargs)
        except BaseException as e:
            self.error = e
        finally:
            self.q.put(_DONE)


class Stream:
    """Iterator of text pieces from one request; see Model.stream()."""

    def __init__(self, model, prompt, kwargs):
        self._job = _Job(model, prompt, kwargs)
        self._started = False
        self._done = False

    @property
    def result(self):
        """The Result once the stream has ended, else None. After an early
        close its finish is "cancelled" and its text is what the loop
        received plus at most one more piece."""
        return self._job.result

    def __iter__(self):
        return self

    def __next__(self):
        if self._done:
            raise StopIteration
        if not self._started:
            self._started = True
            self._job.thread.start()
        self._job.want.release()
        item = self._job.q.get()
        if item is _DONE:
            self._done = True
            self._job.thread.join()
            if self._job.error is not None:
                raise self._job.error
            raise StopIteration
        return item

    def close(self):
        """Cancel the request (if still running) and wait for it to end."""
        self._done = True
        self._job.cancel.set()
        if self._started:
            self._job.thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
