/*
 * writer.c -- models with random weights, as a GGUF file or a Hugging Face
 * directory (optionally sharded), for tests and benchmarks.
 *
 * Every tensor is drawn from its own splitmix64 stream (seeded from the
 * model seed, the tensor kind and the layer), so the two formats hold the
 * same model: the GGUF file in the interleaved RoPE layout, the HF directory
 * with Q/K rows permuted to the half-split layout, as a converter would.
 * Matrices are (approximately) normal with std 0.02, norms 1 + N(0, 0.02).
 * Data is produced in chunks and streamed to disk; only a Q or K matrix is
 * ever held whole (for the HF permutation). Value i of a tensor's stream
 * depends on i alone (splitmix64's state after i steps is a sum), so the
 * threads of a pool each make a part of a chunk and the file is the same
 * for any thread count (an 8B model is ~16 GB of F16: minutes on one core).
 *
 * The vocabulary is SentencePiece-like: <unk>, <s>, </s>, the 256 byte
 * tokens <0x00>..<0xFF>, then "\u2581", the letters, "\u2581" + letters,
 * letter pairs, "\u2581" + pairs, triples, ... until vocab_size, scored
 * -0, -1, -2, ... so that every piece is a merge of two earlier ones.
 */
#include "model_int.h"

#include "../common/pool.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

/* ---- random numbers ----------------------------------------------------------- */

#define SPLITMIX_STEP 0x9e3779b97f4a7c15ull

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += SPLITMIX_STEP);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* n values of approximately N(mean, std) into out: the sum of four 16-bit
 * uniforms (Irwin-Hall, variance 1/3), rescaled. One splitmix64 call per
 * value keeps a 1B-parameter model fast to write; tails stop at 3.46 std,
 * which random test weights do not miss. */
static void gen_normal(uint64_t *s, float *out, size_t n, float mean, float std) {
    const float scale = std * 1.7320508f / 65536.0f; /* sqrt(3) / 2^16 */
    for (size_t i = 0; i < n; i++) {
        uint64_t r = splitmix64(s);
        int32_t sum = (int32_t)(r & 0xffff) + (int32_t)((r >> 16) & 0xffff) +
                      (int32_t)((r >> 32) & 0xffff) + (int32_t)(r >> 48) - 2 * 65535;
        out[i] = mean + scale * (float)sum;
    }
}

typedef struct rand_ctx {
    const ampr__hparams *hp;
    uint64_t seed;
    float *buf;      /* CHUNK floats */
    uint16_t *half;  /* CHUNK F16/BF16 values */
    float *qk[2];    /* whole Q/K matrix and its permutation (HF only) */
    int hf;
    ampr__pool *pool; /* NULL: the calling thread alone */
} rand_ctx;

#define CHUNK ((size_t)1 << 20)

/* One chunk: values [first, first + n) of the stream that starts at state s
 * (value i is splitmix64's output at state s + (i + 1) * STEP), as floats
 * into buf and, for F16/BF16, converted into half; each pool thread takes an
 * equal part. */
typedef struct gen_job {
    uint64_t s;
    size_t first, n;
    float mean, std;
    ampr__dtype dt;
    float *buf;
    uint16_t *half;
} gen_job;

static void gen_part(void *arg, int i, int n_parts) {
    const gen_job *j = arg;
    size_t a = j->n * (size_t)i / (size_t)n_parts, b = j->n * (size_t)(i + 1) / (size_t)n_parts;
    uint64_t s = j->s + (uint64_t)(j->first + a) * SPLITMIX_STEP; /* wraps as the steps do */
    gen_normal(&s, j->buf + a, b - a, j->mean, j->std);
    if (j->half) ampr__f32_to_half_as(j->buf + a, j->half + a, b - a, j->dt);
}

static void gen_chunk(rand_ctx *c, gen_job *j) {
    int parts = c->pool ? ampr__pool_size(c->pool) : 1;
    if (j->n < ((size_t)1 << 16)) parts = 1; /* not worth waking the pool */
    if (parts > 1) ampr__pool_run(c->pool, parts, gen_part, j);
    else gen_part(j, 0, 1);
}

static int is_norm(int kind) {
    return kind == AMPR__TK_ATTN_NORM || kind == AMPR__TK_FFN_NORM ||
           kind == AMPR__TK_OUTPUT_NORM;
}

static ampr_status rand_fill(void *vctx, const ampr__wtensor *t, FILE *f, ampr__err *err) {
    rand_ctx *c = vctx;
    uint64_t s = c->seed ^ ((uint64_t)(t->kind + 1) * 0x100000001b3ull) ^
                 ((uint64_t)(t->layer + 1) << 40);
    splitmix64(&s);
    float mean = is_norm(t->kind) ? 1.0f : 0.0f;
    size_t n = (size_t)(t->ne[0] * t->ne[1]);
    int half = t->dtype == AMPR__DT_F16 || t->dtype == AMPR__DT_BF16;
    if (!half && t->dtype != AMPR__DT_F32)
        return ampr__fail(err, AMPR_ERR_UNSUPPORTED, "cannot write dtype %s",
                          ampr__dtype_name(t->dtype));
    if (c->hf && (t->kind == AMPR__TK_ATTN_Q || t->kind == AMPR__TK_ATTN_K)) {
        gen_job j = {s, 0, n, mean, 0.02f, t->dtype, c->qk[0], NULL};
        gen_chunk(c, &j);
        int heads = t->kind == AMPR__TK_ATTN_Q ? c->hp->n_heads : c->hp->n_kv_heads;
        ampr__permute_qk(c->qk[0], c->qk[1], heads, c->hp->head_dim, t->ne[0]);
        return ampr__write_f32_as(f, c->qk[1], n, t->dtype, err);
    }
    uint64_t seq = s; /* without a pool: one stream, chunk after chunk (the reference) */
    for (size_t done = 0; done < n;) {
        size_t k = AMPR__MIN(CHUNK, n - done);
        if (c->pool) {
            gen_job j = {s, done, k, mean, 0.02f, t->dtype, c->buf, half ? c->half : NULL};
            gen_chunk(c, &j);
            if (fwrite(half ? (const void *)c->half : (const void *)c->buf, half ? 2 : 4, k, f) != k)
                return ampr__fail(err, AMPR_ERR_IO, "write failed");
        } else {
            gen_normal(&seq, c->buf, k, mean, 0.02f);
            AMPR__TRY(ampr__write_f32_as(f, c->buf, k, t->dtype, err));
        }
        done += k;
    }
    return AMPR_OK;
}

/* ---- vocabulary ------------------------------------------------------------------ */

typedef struct rvocab {
    ampr__spm_vocab v;
    char **pieces;
    uint32_t *lens;
    float *scores;
    int32_t *types;
} rvocab;

static void rvocab_free(rvocab *rv) {
    for (int32_t i = 0; rv->pieces && i < rv->v.n; i++) ampr__free(rv->pieces[i]);
    ampr__free(rv->pieces);
    ampr__free(rv->lens);
    ampr__free(rv->scores);
    ampr__free(rv->types);
}

static ampr_status rvocab_build(int32_t n, rvocab *rv, ampr__err *err) {
    memset(rv, 0, sizeof *rv);
    if (n < 260)
        return ampr__fail(err, AMPR_ERR_INVALID_ARG,
                          "vocab_size %d: the random SPM vocabulary needs at least 260", n);
    rv->pieces = ampr__alloc_array((size_t)n, sizeof *rv->pieces, err);
    rv->lens = ampr__alloc_array((size_t)n, sizeof *rv->lens, err);
    rv->scores = ampr__alloc_array((size_t)n, sizeof *rv->scores, err);
    rv->types = ampr__alloc_array((size_t)n, sizeof *rv->types, err);
    rv->v.n = n;
    if (!rv->pieces || !rv->lens || !rv->scores || !rv->types) return AMPR_ERR_NOMEM;
    char buf[64];
    int32_t id = 0;
    int32_t normal = 0;
    /* letters of the current word, as digits base 26 */
    int word_len = 0, prefixed = 1;
    uint64_t word = 0, words_of_len = 1;
    while (id < n) {
        int32_t type = AMPR__TT_NORMAL;
        if (id == 0) snprintf(buf, sizeof buf, "<unk>"), type = AMPR__TT_UNKNOWN;
        else if (id < 3) snprintf(buf, sizeof buf, id == 1 ? "<s>" : "</s>"), type = AMPR__TT_CONTROL;
        else if (id < 259) snprintf(buf, sizeof buf, "<0x%02X>", id - 3), type = AMPR__TT_BYTE;
        else {
            /* "\u2581" alone, then for len = 1, 2, ...: all words, then all "\u2581"+words */
            size_t o = 0;
            if (prefixed) memcpy(buf, "\xe2\x96\x81", 3), o = 3;
            uint64_t w = word;
            for (int k = word_len - 1; k >= 0; k--) buf[o + (size_t)k] = (char)('a' + w % 26), w /= 26;
            buf[o + (size_t)word_len] = '\0';
            if (++word == words_of_len) {
                word = 0;
                if (prefixed || word_len == 0) {
                    prefixed = 0;
                    word_len++;
                    words_of_len *= 26;
                } else {
                    prefixed = 1;
                }
            }
            rv->scores[id] = -(float)normal++;
        }
        rv->pieces[id] = ampr__strndup(buf, strlen(buf));
        if (!rv->pieces[id]) return ampr__fail(err, AMPR_ERR_NOMEM, "out of memory");
        rv->lens[id] = (uint32_t)strlen(buf);
        rv->types[id] = type;
        id++;
    }
    rv->v.pieces = (const char *const *)rv->pieces;
    rv->v.lens = rv->lens;
    rv->v.scores = rv->scores;
    rv->v.types = rv->types;
    return AMPR_OK;
}

/* ---- GGUF writer ---------------------------------------------------------------------- */

typedef struct bytebuf {
    uint8_t *p;
    size_t n, cap;
    int oom;
    uint64_t n_kv;
} bytebuf;

static void bb_put(bytebuf *b, const void *d, size_t n) {
    if (b->oom) return;
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + n) cap *= 2;
        uint8_t *np = ampr__realloc(b->p, cap);
        if (!np) {
            b->oom = 1;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
}

static void bb_u32(bytebuf *b, uint32_t v) { bb_put(b, &v, 4); }
static void bb_u64(bytebuf *b, uint64_t v) { bb_put(b, &v, 8); }
static void bb_str(bytebuf *b, const char *s, size_t n) {
    bb_u64(b, n);
    bb_put(b, s, n);
}
static void bb_key(bytebuf *b, const char *key, uint32_t type) {
    bb_str(b, key, strlen(key));
    bb_u32(b, type);
    b->n_kv++;
}
static void kv_u32(bytebuf *b, const char *key, uint32_t v) {
    bb_key(b, key, 4);
    bb_u32(b, v);
}
static void kv_f32(bytebuf *b, const char *key, float v) {
    bb_key(b, key, 6);
    bb_put(b, &v, 4);
}
static void kv_bool(bytebuf *b, const char *key, int v) {
    uint8_t x = v != 0;
    bb_key(b, key, 7);
    bb_put(b, &x, 1);
}
static void kv_str(bytebuf *b, const char *key, const char *v) {
    bb_key(b, key, 8);
    bb_str(b, v, strlen(v));
}

static uint32_t ggml_type(ampr__dtype dt) {
    switch (dt) {
    case AMPR__DT_F32: return 0;
    case AMPR__DT_F16: return 1;
    case AMPR__DT_Q8_0: return 8;
    case AMPR__DT_BF16: return 30;
    case AMPR__DT_NF4: /* no GGUF type; writers only plan F32/F16/BF16/Q8_0 */
    case AMPR__DT_U8: return 0;
    }
    return 0;
}

#define GGUF_ALIGN 32

static ampr_status write_gguf(const char *path, const ampr__hparams *hp, const rvocab *rv,
                              ampr__wtensor *ts, size_t n, rand_ctx *rc, ampr__err *err) {
    bytebuf b = {0};
    kv_str(&b, "general.architecture", "llama");
    kv_str(&b, "general.name", "ampr-random");
    kv_u32(&b, "general.alignment", GGUF_ALIGN);
    kv_u32(&b, "llama.context_length", (uint32_t)hp->context_length);
    kv_u32(&b, "llama.embedding_length", (uint32_t)hp->dim);
    kv_u32(&b, "llama.block_count", (uint32_t)hp->n_layers);
    kv_u32(&b, "llama.feed_forward_length", (uint32_t)hp->hidden_dim);
    kv_u32(&b, "llama.attention.head_count", (uint32_t)hp->n_heads);
    kv_u32(&b, "llama.attention.head_count_kv", (uint32_t)hp->n_kv_heads);
    if (hp->head_dim * hp->n_heads != hp->dim)
        kv_u32(&b, "llama.attention.key_length", (uint32_t)hp->head_dim);
    kv_u32(&b, "llama.rope.dimension_count", (uint32_t)hp->head_dim);
    kv_f32(&b, "llama.attention.layer_norm_rms_epsilon", hp->norm_eps);
    kv_f32(&b, "llama.rope.freq_base", hp->rope_theta);
    kv_str(&b, "tokenizer.ggml.model", "llama");
    bb_key(&b, "tokenizer.ggml.tokens", 9);
    bb_u32(&b, 8);
    bb_u64(&b, (uint64_t)rv->v.n);
    for (int32_t i = 0; i < rv->v.n; i++) bb_str(&b, rv->pieces[i], rv->lens[i]);
    bb_key(&b, "tokenizer.ggml.scores", 9);
    bb_u32(&b, 6);
    bb_u64(&b, (uint64_t)rv->v.n);
    bb_put(&b, rv->scores, (size_t)rv->v.n * 4);
    bb_key(&b, "tokenizer.ggml.token_type", 9);
    bb_u32(&b, 5);
    bb_u64(&b, (uint64_t)rv->v.n);
    bb_put(&b, rv->types, (size_t)rv->v.n * 4);
    kv_u32(&b, "tokenizer.ggml.bos_token_id", 1);
    kv_u32(&b, "tokenizer.ggml.eos_token_id", 2);
    kv_u32(&b, "tokenizer.ggml.unknown_token_id", 0);
    kv_bool(&b, "tokenizer.ggml.add_bos_token", 1);
    kv_bool(&b, "tokenizer.ggml.add_space_prefix", 1);
    uint64_t n_kv = b.n_kv;

    /* tensor infos */
    uint64_t off = 0;
    ampr_status st = AMPR_OK;
    for (size_t i = 0; i < n && st == AMPR_OK; i++) {
        ampr__wtensor *t = &ts[i];
        st = ampr__tensor_size(t->name, t->n_dims, t->ne, t->dtype, &t->nbytes, err);
        t->offset = off;
        off = (off + t->nbytes + GGUF_ALIGN - 1) & ~(uint64_t)(GGUF_ALIGN - 1);
        bb_str(&b, t->name, strlen(t->name));
        bb_u32(&b, (uint32_t)t->n_dims);
        for (int d = 0; d < t->n_dims; d++) bb_u64(&b, (uint64_t)t->ne[d]);
        bb_u32(&b, ggml_type(t->dtype));
        bb_u64(&b, t->offset);
    }
    if (st == AMPR_OK && b.oom) st = ampr__fail(err, AMPR_ERR_NOMEM, "out of memory");
    FILE *f = st == AMPR_OK ? fopen(path, "wb") : NULL;
    if (st == AMPR_OK && !f) st = ampr__fail(err, AMPR_ERR_IO, "cannot create %s", path);
    if (st == AMPR_OK) {
        uint32_t v = 3;
        uint64_t nt = n;
        static const uint8_t zeros[GGUF_ALIGN] = {0};
        uint64_t hdr = 24 + b.n, pad = (GGUF_ALIGN - hdr % GGUF_ALIGN) % GGUF_ALIGN;
        if (fwrite("GGUF", 1, 4, f) != 4 || fwrite(&v, 4, 1, f) != 1 ||
            fwrite(&nt, 8, 1, f) != 1 || fwrite(&n_kv, 8, 1, f) != 1 ||
            fwrite(b.p, 1, b.n, f) != b.n || fwrite(zeros, 1, pad, f) != pad)
            st = ampr__fail(err, AMPR_ERR_IO, "write to %s failed", path);
        for (size_t i = 0; i < n && st == AMPR_OK; i++) {
            st = rand_fill(rc, &ts[i], f, err);
            size_t tail = (size_t)((GGUF_ALIGN - ts[i].nbytes % GGUF_ALIGN) % GGUF_ALIGN);
            if (st == AMPR_OK && i + 1 < n && fwrite(zeros, 1, tail, f) != tail)
                st = ampr__fail(err, AMPR_ERR_IO, "write to %s failed", path);
        }
    }
    if (f && fclose(f) != 0 && st == AMPR_OK)
        st = ampr__fail(err, AMPR_ERR_IO, "write to %s failed", path);
    ampr__free(b.p);
    return st;
}

/* ---- HF writer ---------------------------------------------------------------------- */

static const char *torch_dtype(ampr__dtype dt) {
    return dt == AMPR__DT_F16 ? "float16" : dt == AMPR__DT_BF16 ? "bfloat16" : "float32";
}

static ampr_status write_hf(const char *dir, const ampr__hparams *hp, ampr__dtype dt,
                            const rvocab *rv, ampr__wtensor *ts, size_t n, int n_shards,
                            rand_ctx *rc, ampr__err *err) {
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return ampr__fail(err, AMPR_ERR_IO, "cannot create %s: %s", dir, strerror(errno));
    AMPR__TRY(ampr__hf_write_config(dir, hp, torch_dtype(dt), err));
    AMPR__TRY(ampr__hf_write_tokenizer(dir, &rv->v, hp->context_length, err));
    char path[4096];
    if (n_shards <= 1) {
        AMPR__TRY(ampr__path_join(path, sizeof path, dir, "model.safetensors", err));
        return ampr__st_write(path, ts, n, rand_fill, rc, err);
    }
    /* Contiguous groups of about equal bytes. */
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++) {
        AMPR__TRY(ampr__tensor_size(ts[i].name, ts[i].n_dims, ts[i].ne, dt, &ts[i].nbytes, err));
        total += ts[i].nbytes;
    }
    if ((size_t)n_shards > n) n_shards = (int)n;
    json_t *wm = json_object();
    if (!wm) return ampr__fail(err, AMPR_ERR_NOMEM, "out of memory");
    ampr_status st = AMPR_OK;
    size_t first = 0;
    uint64_t acc = 0;
    for (int s = 0; s < n_shards && st == AMPR_OK; s++) {
        size_t last = first;
        uint64_t goal = total / (uint64_t)n_shards * (uint64_t)(s + 1);
        /* leave at least one tensor for each later shard */
        while (last < n - (size_t)(n_shards - 1 - s) &&
               (last == first || acc + ts[last].nbytes <= goal || s == n_shards - 1))
            acc += ts[last++].nbytes;
        char name[64];
        snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", s + 1, n_shards);
        for (size_t i = first; i < last && st == AMPR_OK; i++)
            if (json_object_set_new(wm, ts[i].name, json_string(name)))
                st = ampr__fail(err, AMPR_ERR_NOMEM, "out of memory");
        if (st == AMPR_OK) st = ampr__path_join(path, sizeof path, dir, name, err);
        if (st == AMPR_OK) st = ampr__st_write(path, ts + first, last - first, rand_fill, rc, err);
        first = last;
    }
    json_t *idx = json_pack("{s:{s:I}, s:o}", "metadata", "total_size", (json_int_t)total,
                            "weight_map", wm);
    if (st != AMPR_OK) {
        json_decref(idx);
        return st;
    }
    if (!idx) return ampr__fail(err, AMPR_ERR_NOMEM, "out of memory");
    st = ampr__path_join(path, sizeof path, dir, "model.safetensors.index.json", err);
    if (st == AMPR_OK && json_dump_file(idx, path, JSON_INDENT(2) | JSON_PRESERVE_ORDER))
        st = ampr__fail(err, AMPR_ERR_IO, "cannot write %s", path);
    json_decref(idx);
    return st;
}

ampr_status ampr__model_write_random(const char *path, const char *format,
                                     const ampr__hparams *hp, ampr__dtype dtype,
                                     int n_shards, uint64_t seed, ampr__err *err) {
    return ampr__model_write_random_threads(path, format, hp, dtype, n_shards, seed, 0, err);
}

ampr_status ampr__model_write_random_threads(const char *path, const char *format,
                                             const ampr__hparams *hp, ampr__dtype dtype,
                                             int n_shards, uint64_t seed, int n_threads,
                                             ampr__err *err) {
    if (!path || !format || !hp)
        return ampr__fail(err, AMPR_ERR_INVALID_ARG, "NULL argument");
    int hf = !strcmp(format, "hf");
    if (!hf && strcmp(format, "gguf"))
        return ampr__fail(err, AMPR_ERR_INVALID_ARG, "format %s (gguf or hf)", format);
    if (dtype != AMPR__DT_F32 && dtype != AMPR__DT_F16 && dtype != AMPR__DT_BF16)
        return ampr__fail(err, AMPR_ERR_INVALID_ARG, "dtype %s", ampr__dtype_name(dtype));
    AMPR__TRY(ampr__hparams_check(hp, err));
    rvocab rv;
    rand_ctx rc = {hp, seed, NULL, NULL, {NULL, NULL}, hf, NULL};
    size_t n = 0, cap = 9 * (size_t)hp->n_layers + 4;
    ampr__wtensor *ts = NULL;
    ampr_status st = rvocab_build(hp->vocab_size, &rv, err);
    if (st == AMPR_OK) {
        size_t qk = (size_t)AMPR__MAX(hp->n_heads, hp->n_kv_heads) * (size_t)hp->head_dim *
                    (size_t)hp->dim;
        ts = ampr__alloc_array(cap, sizeof *ts, err);
        rc.buf = ampr__alloc_array(CHUNK, sizeof *rc.buf, err);
        rc.half = ampr__alloc_array(CHUNK, sizeof *rc.half, err);
        if (hf) {
            rc.qk[0] = ampr__alloc_array(qk, sizeof(float), err);
            rc.qk[1] = ampr__alloc_array(qk, sizeof(float), err);
        }
        if (!ts || !rc.buf || !rc.half || (hf && (!rc.qk[0] || !rc.qk[1]))) st = AMPR_ERR_NOMEM;
    }
    /* threads: the machine's (0), at most 64; without a pool (one thread, or
     * none could be made) the calling thread makes every value */
    if (n_threads <= 0) n_threads = ampr__cpu_count();
    if (st == AMPR_OK && n_threads > 1) {
        ampr__err perr = {AMPR_OK, {0}};
        if (ampr__pool_new(AMPR__MIN(n_threads, 64), &rc.pool, &perr) != AMPR_OK) rc.pool = NULL;
    }
    if (st == AMPR_OK) {
        n = ampr__model_plan(hp, dtype, hf, ts);
        st = hf ? write_hf(path, hp, dtype, &rv, ts, n, n_shards, &rc, err)
                : write_gguf(path, hp, &rv, ts, n, &rc, err);
    }
    ampr__pool_free(rc.pool);
    rvocab_free(&rv);
    ampr__free(ts);
    ampr__free(rc.buf);
    ampr__free(rc.half);
    ampr__free(rc.qk[0]);
    ampr__free(rc.qk[1]);
    return st;
}
