"""
Tests of the ampr Python package against the real library and the real
stories260K model (../shared, or $AMPR_SHARED). Run from the repository root:

    python3 -m unittest discover -s python/tests -v      (or: pytest python/tests)

Tests that need the library or the model skip themselves when either is
missing. AMPR_LIBRARY picks the library, AMPR_CLI the `ampr` program (default
build/ampr), AMPR_TEST_TIER the tier to test on (default f32).
"""
import ctypes
import gc
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT / "python"))

import ampr  # noqa: E402
from ampr import _lib as L  # noqa: E402

SHARED = Path(os.environ.get("AMPR_SHARED", ROOT.parent / "shared"))
MODEL = SHARED / "models" / "stories260K" / "stories260K.gguf"
TIER = os.environ.get("AMPR_TEST_TIER", "f32")
CONFIG = {"tiers": [TIER], "threads": 2}
PROMPT = "Once upon a time"


def _library():
    try:
        return ampr.load_library()
    except OSError as e:
        raise unittest.SkipTest("libampr cannot be loaded: %s" % e)


def _model_or_skip(config=None):
    _library()
    if not MODEL.is_file():
        raise unittest.SkipTest("no model at %s" % MODEL)
    return ampr.Model(str(MODEL), config=CONFIG if config is None else config)


class TestBindingMatchesHeader(unittest.TestCase):
    """The ctypes declarations against include/ampr.h (no library needed)."""

    HEADER = ROOT / "include" / "ampr.h"

    def setUp(self):
        if not self.HEADER.is_file():
            self.skipTest("not run from the source tree")
        self.text = self.HEADER.read_text()

    def test_every_function_declared(self):
        names = set(re.findall(r"^AMPR_API\b[^(]*?\b(ampr_\w+)\s*\(", self.text, re.M))
        self.assertGreater(len(names), 20)
        self.assertEqual(names, set(L.SIGNATURES))

    def test_status_names(self):
        pairs = re.findall(r"AMPR_(OK|ERR_\w+)\s*=\s*(\d+)", self.text)
        for name, num in pairs:
            self.assertEqual(L.STATUS_NAMES[int(num)], name.replace("ERR_", "", 1))
        self.assertEqual(len(pairs), len(L.STATUS_NAMES))
        for num in range(1, len(L.STATUS_NAMES)):
            self.assertIn(num, ampr.BY_STATUS)

    def test_struct_layouts(self):
        """sizeof/offsetof of each struct, compiled from the header, equal
        the ctypes mirrors."""
        cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
        if not cc:
            self.skipTest("no C compiler")
        structs = {"ampr_open_params": L.OpenParams, "ampr_model_info": L.ModelInfo,
                   "ampr_tier_info": L.TierInfo, "ampr_route_result": L.RouteResult,
                   "ampr_gen_params": L.GenParams, "ampr_result": L.Result}
        lines = ['#include <stdio.h>', '#include <stddef.h>', '#include "ampr.h"',
                 'int main(void) {']
        for cname, py in structs.items():
            lines.append('printf("%s sizeof %%zu\\n", sizeof(%s));' % (cname, cname))
            for fname, _ in py._fields_:
                lines.append('printf("%s %s %%zu\\n", offsetof(%s, %s));'
                             % (cname, fname, cname, fname))
        lines.append("return 0; }")
        with tempfile.TemporaryDirectory() as d:
            src, exe = Path(d, "layout.c"), Path(d, "layout")
            src.write_text("\n".join(lines))
            subprocess.run([cc, "-std=c11", "-I", str(ROOT / "include"), "-o", str(exe),
                            str(src)], check=True)
            out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
        for line in out.splitlines():
            cname, fname, val = line.split()
            py = structs[cname]
            got = ctypes.sizeof(py) if fname == "sizeof" else getattr(py, fname).offset
            self.assertEqual(got, int(val), "%s.%s" % (cname, fname))


class TestLibrary(unittest.TestCase):
    def test_version_and_strings(self):
        lib = _library()
        self.assertEqual(lib.version.split(".")[0], str(ampr.ABI_MAJOR))
        self.assertEqual(ampr.status_name(18), "KV_FULL")
        self.assertTrue(ampr.strerror(18))
        self.assertEqual(lib.ampr_tier_name(1), b"fp16")

    def test_tp_id_new(self):
        # a CUDA + NCCL build makes an id (no GPU needed); a CPU-only one says so
        _library()
        try:
            a, b = ampr.tp_id_new(), ampr.tp_id_new()
        except ampr.UnsupportedError as e:
            self.assertEqual(e.name, "UNSUPPORTED")
            return
        self.assertEqual(len(a), ampr.TP_ID_LEN)
        self.assertTrue(all(ch in "0123456789abcdef" for ch in a))
        self.assertNotEqual(a, b)

    def test_explicit_bad_path_is_an_error(self):
        with self.assertRaises(OSError):
            ampr.load_library("/nonexistent/libampr.so.0")


class TestModel(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.m = _model_or_skip()

    @classmethod
    def tearDownClass(cls):
        cls.m.close()

    def gen(self, prompt=PROMPT, **kw):
        kw.setdefault("temperature", 0)
        kw.setdefault("max_tokens", 40)
        return self.m.generate(prompt, **kw)

    def test_info(self):
        info = self.m.info
        self.assertEqual(info.tiers, [TIER])
        self.assertEqual(info.format, "gguf")
        self.assertEqual(info.vocab_size, 512)
        ti = self.m.tier_info(TIER)
        self.assertEqual(ti.tier, TIER)
        self.assertGreater(ti.weight_bytes, 0)
        self.assertEqual(ti.kv_pages_used, 0)
        self.assertIn(ti.kernels, ("scalar", "avx2", "avx512", "avx512-bf16", "cuda"))

    def test_tokenize_roundtrip(self):
        ids = self.m.tokenize(PROMPT)
        self.assertEqual(ids[0], self.m.info.bos_id)
        self.assertEqual(self.m.tokenize(PROMPT, add_bos=False), ids[1:])
        self.assertEqual(self.m.detokenize(ids), PROMPT)
        long = "Lily and Ben went to the park. " * 40
        self.assertEqual(self.m.detokenize(self.m.tokenize(long, add_bos=False)), long)

    def test_route(self):
        r = self.m.route(PROMPT)
        self.assertEqual(r.tier, TIER)  # only one tier is resident
        self.assertTrue(0.0 <= r.score <= 1.0)
        self.assertIn("lexical_density", r.features)
        self.assertTrue(r.reason)
        self.assertEqual(self.m.route(PROMPT, system="You are helpful.").tier, TIER)

    def test_generate_greedy(self):
        r = self.gen()
        self.assertEqual(r.finish, "length")
        self.assertEqual(len(r.tokens), 40)
        self.assertEqual(r.tier_first, TIER)
        self.assertEqual(r.tier_final, TIER)
        self.assertFalse(r.escalated)
        self.assertGreaterEqual(r.timings.total_ms, 0)
        self.assertEqual(r.n_prompt_tokens, len(self.m.tokenize(PROMPT)))
        again = self.gen()  # greedy is deterministic
        self.assertEqual((again.tokens, again.text), (r.tokens, r.text))
        self.assertTrue((PROMPT + r.text).startswith("Once upon a time, there was"))

    def test_greedy_matches_golden(self):
        golden = SHARED / "models" / "stories260K" / "golden_fp32" / "p1_once_upon.txt"
        if TIER != "f32" or not golden.is_file():
            self.skipTest("golden is for f32")
        r = self.gen(max_tokens=100)
        self.assertTrue(golden.read_text().startswith(PROMPT + r.text))

    def test_greedy_matches_cli(self):
        cli = os.environ.get("AMPR_CLI", str(ROOT / "build" / "ampr"))
        if not os.access(cli, os.X_OK):
            self.skipTest("no CLI at %s" % cli)
        out = subprocess.run([cli, "run", "-m", str(MODEL), "--tier", TIER, "-p", PROMPT,
                              "-n", "20", "--temp", "0", "--quiet"],
                             check=True, capture_output=True).stdout
        r = self.gen(max_tokens=20)
        self.assertEqual(out, (PROMPT + r.text + "\n").encode())

    def test_logits_agree_with_greedy(self):
        ids = self.m.tokenize(PROMPT)
        r = self.gen(max_tokens=8)
        rows = self.m.logits(ids + r.tokens[:-1], TIER)
        self.assertEqual(len(rows), len(ids) + 7)
        self.assertEqual(len(rows[0]), self.m.info.vocab_size)
        argmax = [max(range(len(row)), key=row.__getitem__) for row in rows[len(ids) - 1:]]
        self.assertEqual(argmax, r.tokens)

    def test_metrics(self):
        self.gen(max_tokens=5)
        text = self.m.metrics_text()
        self.assertIn('ampr_requests_total{tier="%s"' % TIER, text)
        self.m.metrics_reset()
        self.assertIn("ampr_build_info", self.m.metrics_text())

    def test_sampling_is_seeded(self):
        a = self.gen(temperature=1.0, seed=7, max_tokens=30)
        b = self.gen(temperature=1.0, seed=7, max_tokens=30)
        self.assertEqual(a.tokens, b.tokens)

    def test_stream_equals_generate(self):
        whole = self.gen(max_tokens=60)
        s = self.m.stream(PROMPT, temperature=0, max_tokens=60)
        pieces = list(s)
        self.assertGreater(len(pieces), 1)
        self.assertEqual("".join(pieces), whole.text)
        self.assertEqual(s.result.tokens, whole.tokens)
        self.assertEqual(s.result.finish, "length")

    def test_on_token_callback(self):
        seen = []
        r = self.gen(on_token=lambda piece, tid: seen.append((piece, tid)) and False)
        self.assertEqual("".join(p for p, _ in seen), r.text)
        self.assertEqual([t for _, t in seen if t >= 0], r.tokens)
        r = self.gen(max_tokens=50, on_token=lambda piece, tid: len(seen) > 0)
        self.assertEqual(r.finish, "cancelled")
        self.assertEqual(len(r.tokens), 1)

    def test_callback_exception_propagates(self):
        class Boom(Exception):
            pass

        def cb(piece, tid):
            raise Boom("from the callback")
        with self.assertRaises(Boom):
            self.gen(on_token=cb)
        self.assertEqual(self.m.tier_info(TIER).kv_pages_used, 0)

    def test_stream_break_cancels(self):
        s = self.m.stream(PROMPT, temperature=0, max_tokens=200, ignore_eos=True)
        got = []
        for piece in s:
            got.append(piece)
            if len(got) == 3:
                break
        s.close()
        self.assertEqual(s.result.finish, "cancelled")
        self.assertLess(len(s.result.tokens), 200)
        self.assertTrue(s.result.text.startswith("".join(got)))
        self.assertLessEqual(len(s.result.tokens), len(self.m.tokenize("".join(got), False)) + 2)
        self.assertEqual(self.m.tier_info(TIER).kv_pages_used, 0)

    def test_stream_dropped_cancels(self):
        before = threading.active_count()
        for i, piece in enumerate(self.m.stream(PROMPT, temperature=0, max_tokens=200,
                                                ignore_eos=True)):
            if i == 2:
                break
        gc.collect()
        self.assertEqual(threading.active_count(), before)
        self.assertEqual(self.m.tier_info(TIER).kv_pages_used, 0)

    def test_stop_strings(self):
        full = self.gen(max_tokens=60).text
        word = " girl" if " girl" in full else full[len(full) // 2:len(full) // 2 + 3]
        cut = full.index(word)
        r = self.gen(max_tokens=60, stop=[word, "zzzz-never"])
        self.assertEqual(r.finish, "stop")
        self.assertEqual(r.text, full[:cut])
        s = self.m.stream(PROMPT, temperature=0, max_tokens=60, stop=word)
        self.assertEqual("".join(s), full[:cut])

    def test_threads(self):
        prompts = ["Once upon a time", "Lily and Ben went to the park",
                   "The little dog was very sad because", "One day, a big bear found a shiny",
                   "Sara said", "Tom had a red ball"]
        want = [self.gen(p, max_tokens=50).tokens for p in prompts]
        got = [None] * (2 * len(prompts))
        errors = []

        def work(i):
            try:
                if i % 2:
                    got[i] = self.gen(prompts[i // 2], max_tokens=50).tokens
                else:
                    s = self.m.stream(prompts[i // 2], temperature=0, max_tokens=50)
                    "".join(s)
                    got[i] = s.result.tokens
            except BaseException as e:
                errors.append(e)
        ts = [threading.Thread(target=work, args=(i,)) for i in range(len(got))]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        self.assertEqual(errors, [])
        self.assertEqual(got, [w for w in want for _ in (0, 1)])

    def test_errors(self):
        with self.assertRaises(ampr.BadUtf8Error) as cm:
            self.m.generate(b"Once \xff\xfe upon", max_tokens=4)
        self.assertEqual(cm.exception.status, 15)
        self.assertEqual(cm.exception.name, "BAD_UTF8")
        self.assertTrue(cm.exception.message)
        with self.assertRaises(ampr.BadUtf8Error):
            self.m.tokenize(b"\xc3")
        with self.assertRaises(ampr.TierUnavailableError) as cm:
            self.m.generate(PROMPT, tier="nf4" if TIER != "nf4" else "fp16", max_tokens=4)
        self.assertIn("not resident", cm.exception.message)
        with self.assertRaises(ampr.TierUnavailableError):
            self.m.tier_info("int8" if TIER != "int8" else "fp16")
        with self.assertRaises(ampr.InvalidArgError):
            self.m.generate(PROMPT, tier="fp64")
        with self.assertRaises(ampr.InvalidArgError):
            self.m.generate(PROMPT, max_tokens=-1)
        with self.assertRaises(TypeError):
            self.m.generate(42)
        self.assertTrue(issubclass(ampr.KvFullError, ampr.AmprError))


class TestOpenErrors(unittest.TestCase):
    def setUp(self):
        _library()

    def test_bad_path(self):
        with self.assertRaises(ampr.AmprError) as cm:
            ampr.Model("/nonexistent/model.gguf", config=CONFIG)
        self.assertIsInstance(cm.exception, ampr.IoError)
        self.assertEqual(cm.exception.status, 3)
        self.assertIn("nonexistent", cm.exception.message)

    def test_bad_config(self):
        if not MODEL.is_file():
            self.skipTest("no model")
        for cfg in ('{"tiers": ["f32"], "bogus": 1}', "{not json", {"tiers": ["fp64"]},
                    {"kv": {"block_size": 0}}):
            with self.assertRaises(ampr.ConfigError, msg=str(cfg)) as cm:
                ampr.Model(str(MODEL), config=cfg)
            self.assertEqual(cm.exception.status, 4)
            self.assertEqual(cm.exception.name, "CONFIG")

    def test_not_a_model(self):
        with tempfile.NamedTemporaryFile(suffix=".gguf") as f:
            f.write(b"this is not a model file at all" * 10)
            f.flush()
            with self.assertRaises(ampr.AmprError):
                ampr.Model(f.name, config=CONFIG)

    def test_kv_full(self):
        cfg = dict(CONFIG, kv={"block_size": 16, "arena_tokens": 32})
        with _model_or_skip(cfg) as m:
            self.assertEqual(m.tier_info(TIER).kv_pages_total, 2)
            self.assertEqual(len(m.generate(PROMPT, temperature=0, max_tokens=8).tokens), 8)
            with self.assertRaises(ampr.KvFullError) as cm:
                m.generate(PROMPT, temperature=0, max_tokens=100)
            self.assertEqual(cm.exception.status, 18)
            self.assertIn("KV", cm.exception.message)

    def test_progress_and_close(self):
        stages = []
        m = _model_or_skip(dict(CONFIG))
        m.close()
        m = ampr.Model(str(MODEL), config=CONFIG, progress=lambda s, f: stages.append(s))
        self.assertTrue(stages)
        with m:
            self.assertFalse(m.closed)
        self.assertTrue(m.closed)
        m.close()  # twice is harmless
        with self.assertRaises(ValueError):
            m.generate(PROMPT)
        with self.assertRaises(ampr.CancelledError):
            ampr.Model(str(MODEL), config=CONFIG, progress=lambda s, f: True)


if __name__ == "__main__":
    unittest.main()
