/*
 * tokenizer.c -- the tokenizer core: building a vocabulary from a neutral
 * spec, encoding text to ids and streaming ids back to text.
 *
 * One merge engine serves both families. The text of a segment is cut into
 * symbols (UTF-8 characters for SPM, bytes for byte-level BPE) held in a
 * doubly linked list; every adjacent pair that may merge is put in a binary
 * heap keyed by its priority (SPM: the score of the merged piece; merge-rank
 * vocabularies: minus the rank) with ties going to the leftmost pair. Popping
 * the best pair, merging it and pushing the two new neighbour pairs repeats
 * until the heap is empty; stale heap entries are recognised by the symbols'
 * lengths. That is O(n log n) and gives exactly the greedy "best pair first,
 * leftmost on ties" order of SentencePiece, llama2.c run.c and HF tokenizers.
 *
 * Lookups go through two open-addressing hash tables built once: piece text
 * -> id, and (left id, right id) -> (rank, merged id). Each token's decoded
 * bytes are precomputed so that decoding is a table lookup plus the UTF-8
 * completeness check of the streaming decoder.
 *
 * Byte-level BPE pre-tokenizes with a PCRE2 regex compiled once (JIT when
 * available); each encode call makes its own match data, so a tokenizer is
 * safe to share between threads.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tok_internal.h"

#define MAX_VOCAB (1 << 24)
#define MAX_PIECE_BYTES 65536

/* GPT-2's byte-level pre-tokenizer regex. */
static const char GPT2_RE[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
/* Llama 3's (from its tokenizer.json Split pre-tokenizer). */
static const char LLAMA3_RE[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

typedef struct merge_slot {
    int32_t left, right; /* left == -1: empty */
    int32_t rank, result;
} merge_slot;

struct ampr__tokenizer {
    ampr__tok_kind kind;
    int32_t n_vocab;
    char *text;      /* all pieces, each NUL-terminated */
    uint32_t *off;   /* n_vocab offsets into text */
    uint32_t *len;   /* n_vocab byte lengths */
    float *scores;   /* n_vocab */
    int32_t *types;  /* n_vocab */
    char *dec;       /* decoded bytes of every token */
    uint32_t *dec_off, *dec_len;

    int32_t *str_slots; /* piece -> id hash, -1 empty */
    uint32_t str_mask;
    merge_slot *merge_slots; /* NULL when merges decide nothing (SPM with scores) */
    uint32_t merge_mask;
    int use_ranks;

    int32_t bos, eos, unk, pad;
    int add_bos, add_space_prefix, remove_extra_ws;
    int runc_compat, space_prefix_first_only, ignore_merges, bpe_prefix_space;
    int32_t byte_id[256];      /* SPM: <0xNN> token, or -1 */
    int32_t byte_char_id[256]; /* BPE: id of the one-character piece of byte b, or -1 */
    uint32_t byte_cp[256];     /* BPE: GPT-2's code point for byte b */

    /* literal tokens: ids sorted by first byte then length (longest first) */
    int32_t *lit_ids;
    uint8_t *lit_flags; /* n_vocab */
    uint32_t lit_start[257];

    /* SPM: every pair of adjacent code points found inside a piece that
     * merging can produce. Where the text has a pair not in this set no merge
     * can ever span it, so the text is cut there and each chunk is merged on
     * its own: the same result, with small cache-resident heaps. */
    uint64_t *cpair_slots; /* key + 1; 0 empty; NULL: never cut */
    uint32_t cpair_mask;

    pcre2_general_context *gctx;
    pcre2_code *re;
};

/* ---- small helpers ------------------------------------------------------ */

static uint32_t hash_bytes(const char *s, size_t n) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h ^ (h >> 15);
}

static uint32_t hash_pair(int32_t a, int32_t b) {
    uint64_t x = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return (uint32_t)x;
}

static int32_t str_lookup(const ampr__tokenizer *t, const char *s, size_t n) {
    uint32_t i = hash_bytes(s, n) & t->str_mask;
    for (;;) {
        int32_t id = t->str_slots[i];
        if (id < 0) return -1;
        if (t->len[id] == n && memcmp(t->text + t->off[id], s, n) == 0) return id;
        i = (i + 1) & t->str_mask;
    }
}

static const merge_slot *merge_lookup(const ampr__tokenizer *t, int32_t a, int32_t b) {
    uint32_t i = hash_pair(a, b) & t->merge_mask;
    for (;;) {
        const merge_slot *m = &t->merge_slots[i];
        if (m->left < 0) return NULL;
        if (m->left == a && m->right == b) return m;
        i = (i + 1) & t->merge_mask;
    }
}

static uint32_t pow2_at_least(uint64_t n) {
    uint32_t p = 16;
    while (p < n) p <<= 1;
    return p;
}

static size_t utf8_put(char *o, uint32_t cp) {
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) {
        o[0] = (char)(0xc0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xe0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        o[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (char)(0xf0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    o[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* Decode one valid UTF-8 character (the caller checked validity). */
static uint32_t utf8_get(const unsigned char *s, int l) {
    if (l == 1) return s[0];
    uint32_t c = s[0] & (0x7f >> l);
    for (int i = 1; i < l; i++) c = (c << 6) | (s[i] & 0x3f);
    return c;
}

/* GPT-2's reversible byte -> code point map: printable Latin-1 bytes map to
 * themselves, the other 68 to U+0100 onwards in byte order. */
static uint32_t byte_to_cp(unsigned b) {
    if ((b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae)) return b;
    uint32_t n = 0;
    for (unsigned x = 0; x < b; x++)
        if (!((x >= 0x21 && x <= 0x7e) || (x >= 0xa1 && x <= 0xac) || (x >= 0xae))) n++;
    return 256 + n;
}

static int parse_byte_piece(const char *s, uint32_t n) {
    static const char hex[] = "0123456789ABCDEF";
    if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return -1;
    const char *a = memchr(hex, s[3], 16), *b = memchr(hex, s[4], 16);
    if (!a || !b || !s[3] || !s[4]) return -1;
    return (int)((a - hex) * 16 + (b - hex));
}

static int is_special_type(int32_t t) {
    return t == AMPR__TT_CONTROL || t == AMPR__TT_UNKNOWN || t == AMPR__TT_UNUSED;
}

static void *pcre_malloc(size_t n, void *u) { (void)u; return ampr__malloc(n); }
static void pcre_free(void *p, void *u) { (void)u; ampr__free(p); }

/* ---- construction ------------------------------------------------------- */

void ampr__tok_free(ampr__tokenizer *t) {
    if (!t) return;
    ampr__free(t->text);
    ampr__free(t->off);
    ampr__free(t->len);
    ampr__free(t->scores);
    ampr__free(t->types);
    ampr__free(t->dec);
    ampr__free(t->dec_off);
    ampr__free(t->dec_len);
    ampr__free(t->str_slots);
    ampr__free(t->merge_slots);
    ampr__free(t->lit_ids);
    ampr__free(t->lit_flags);
    ampr__free(t->cpair_slots);
    if (t->re) pcre2_code_free(t->re);
    if (t->gctx) pcre2_general_context_free(t->gctx);
    ampr__free(t);
}

static ampr_status build_merges(ampr__tokenizer *t, const ampr__tok_spec *s, ampr__err *err) {
    if (s->n_merges < 0 || s->n_merges >= MAX_VOCAB)
        return ampr__fail(err, AMPR_ERR_MODEL_VOCAB, "tokenizer: bad merge count %d",
                          (int)s->n_merges);
    if (s->n_merges > 0 && !s->merges)
        return ampr__fail(err, AMPR_ERR_MODEL_VOCAB, "tokenizer: merges missing");
    t->merge_mask = pow2_at_least((uint64_t)s->n_merges * 2 + 1) - 1;
    t->merge_slots = ampr__alloc_array((size_t)t->merge_mask + 1, sizeof(merge_slot), err);
    if (!t->merge_slots) return AMPR_ERR_NOMEM;
    for (uint32_t i = 0; i <= t->merge_mask; i++) t->merge_slots[i].left = -1;
    char *tmp = NULL;
    size_t tmp_cap = 0;
    for (int32_t r = 0; r < s->n_merges; r++) {
        const char *m = s->merges[r];
        size_t ml = m ? (s->merge_lens ? s->merge_lens[r] : strlen(m)) : 0;
        const char *sp = m ? memchr(m, ' ', ml) : NULL;
        if (!sp || sp == m || sp == m + ml - 1) {
            ampr__free(tmp);
            return ampr__fail(err, AMPR_ERR_MODEL_VOCAB,
                              "tokenizer: merge %d is not \"left right\"", (int)r);
        }
        size_t ll = (size_t)(sp - m), rl = ml - ll - 1;
        int32_t a = str_lookup(t, m, ll), b = str_lookup(t, sp + 1, rl);
        if (ml > tmp_cap) {
            ampr__free(tmp);
            tmp_cap = ml * 2;
            tmp = ampr__malloc(tmp_cap);
            if (!tmp) return ampr__fail(err, AMPR_ERR_NOMEM, "tokenizer: out of memory");
        }
        memcpy(tmp, m, ll);
        memcpy(tmp + ll, sp + 1, rl);
        int32_t c = str_lookup(t, tmp, ll + rl);
        if (a < 0 || b < 0 || c < 0) {
            ampr__free(tmp);
            return ampr__fail(err, AMPR_ERR_MODEL_VOCAB,
                              "tokenizer: merge %d (\"%.*s\") refers to a piece not in the vocabulary",
                              (int)r, (int)AMPR__MIN(ml, 64), m);
        }
        uint32_t i = hash_pair(a, b) & t->merge_mask;
        while (t->merge_slots[i].left >= 0 &&
               !(t->merge_slots[i].left == a && t->merge_slots[i].right == b))
            i = (i + 1) & t->merge_mask;
        if (t->merge_slots[i].left < 0) /* a duplicate keeps its first (best) rank */
            t->merge_slots[i] = (merge_slot){a, b, r, c};
    }
    ampr__free(tmp);
    return AMPR_OK;
}

static ampr_status build_decode(ampr__tokenizer *t, ampr__err *err) {
    uint64_t total = 0;
    for (int32_t i = 0; i < t->n_vocab; i++) total += t->len[i];
    t->dec = ampr__malloc((size_t)total + 1);
    t->dec_off = ampr__alloc_array((size_t)t->n_vocab, sizeof(uint32_t), err);
    t->dec_len = ampr__alloc_array((size_t)t->n_vocab, sizeof(uint32_t), err);
    if (!t->dec || !t->dec_off || !t->dec_len)
        return ampr__fail(err, AMPR_ERR_NOMEM, "tokenizer: out of memory");
    /* inverse of the GPT-2 byte map */
    int16_t inv[324];
    for (int i = 0; i < 324; i++) inv[i] = -1;
    for (unsigned b = 0; b < 256; b++) inv[byte_to_cp(b)] = (int16_t)b;
    uint32_t o = 0;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        const unsigned char *p = (const unsigned char *)t->text + t->off[id];
        uint32_t n = t->len[id], start = o;
        int32_t ty = t->types[id];
        int bv;
        if (is_special_type(ty)) {
            /* nothing */
        } else if (ty == AMPR__TT_BYTE && (bv = parse_byte_piece((const char *)p, n)) >= 0) {
            t->dec[o++] = (char)bv;
        } else if (t->kind == AMPR__TOK_SPM) {
            for (uint32_t i = 0; i < n;) {
                if (i + 3 <= n && p[i] == 0xe2 && p[i + 1] == 0x96 && p[i + 2] == 0x81) {
                    t->dec[o++] = ' ';
                    i += 3;
                } else {
                    t->dec[o++] = (char)p[i++];
                }
            }
        } else if (ty == AMPR__TT_USER_DEFINED) {
            memcpy(t->dec + o, p, n);
            o += n;
        } else {
            for (uint32_t i = 0; i < n;) {
                int l = ampr__utf8_seq_len(p + i, n - i);
                uint32_t cp = utf8_get(p + i, l);
                if (cp < 324 && inv[cp] >= 0) {
                    t->dec[o++] = (char)inv[cp];
                } else {
                    memcpy(t->dec + o, p + i, (size_t)l);
                    o += (uint32_t)l;
                }
                i += (uint32_t)l;
            }
        }
        t->dec_off[id] = start;
        t->dec_len[id] = o - start;
    }
    return AMPR_OK;
}

/* Order of the literal tokens: by first byte, longest first, then by id. */
typedef struct lit_key {
    uint64_t key;
} lit_key;

static int lit_cmp(const void *a, const void *b) {
    uint64_t x = ((const lit_key *)a)->key, y = ((const lit_key *)b)->key;
    return x < y ? -1 : (x > y);
}

static ampr_status sort_literals(ampr__tokenizer *t, int32_t n, ampr__err *err) {
    lit_key *k = ampr__alloc_array((size_t)n + 1, sizeof *k, err);
    if (!k) return AMPR_ERR_NOMEM;
    for (int32_t i = 0; i < n; i++) {
        int32_t id = t->lit_ids[i];
        uint64_t first = (unsigned char)t->text[t->off[id]];
        uint64_t inv_len = (uint64_t)(0xffffffu - t->len[id]); /* len <= MAX_PIECE_BYTES */
        k[i].key = (first << 56) | (inv_len << 32) | (uint32_t)id;
    }
    qsort(k, (size_t)n, sizeof *k, lit_cmp);
    for (int32_t i = 0; i < n; i++) t->lit_ids[i] = (int32_t)(uint32_t)k[i].key;
    ampr__free(k);
    return AMPR_OK;
}

static ampr_status build_literals(ampr__tokenizer *t, const ampr__tok_opts *o, ampr__err *err) {
    t->lit_flags = ampr__calloc((size_t)t->n_vocab, 1);
    if (!t->lit_flags) return ampr__fail(err, AMPR_ERR_NOMEM, "tokenizer: out of memory");
    int32_t n = 0;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        uint8_t f;
        if (o && o->tok_flags) f = o->tok_flags[id];
        else if (o && o->runc_compat) f = 0;
        else f = (t->types[id] == AMPR__TT_CONTROL || t->types[id] == AMPR__TT_USER_DEFINED)
                     ? AMPR__TOKF_MATCH : 0;
        if (t->len[id] == 0) f = 0;
        t->lit_flags[id] = f;
        if (f & AMPR__TOKF_MATCH) n++;
    }
    t->lit_ids = ampr__alloc_array((size_t)n + 1, sizeof(int32_t), err);
    if (!t->lit_ids) return AMPR_ERR_NOMEM;
    n = 0;
    for (int32_t id = 0; id < t->n_vocab; id++)
        if (t->lit_flags[id] & AMPR__TOKF_MATCH) t->lit_ids[n++] = id;
    AMPR__TRY(sort_literals(t, n, err));
    /* lit_start[b]..lit_start[b+1]: the tokens starting with byte b */
    int32_t k = 0;
    for (unsigned b = 0; b < 256; b++) {
        t->lit_start[b] = (uint32_t)k;
        while (k < n && (unsigned char)t->text[t->off[t->lit_ids[k]]] == b) k++;
    }
    t->lit_start[256] = (uint32_t)n;
    return AMPR_OK;
}

static uint64_t cpair_key(uint32_t a, uint32_t b) { return (((uint64_t)a << 21) | b) + 1; }

static int cpair_has(const ampr__tokenizer *t, uint32_t a, uint32_t b) {
    uint64_t k = cpair_key(a, b);
    uint32_t i = hash_pair((int32_t)(k >> 32), (int32_t)(uint32_t)k) & t->cpair_mask;
    for (;;) {
        uint64_t v = t->cpair_slots[i];
        if (v == 0) return 0;
        if (v == k) return 1;
        i = (i + 1) & t->cpair_mask;
    }
}

/* May a merge (or a character of the text) produce this piece? SentencePiece
 * only produces normal and user-defined pieces, run.c anything. */
static int can_be_merged_into(const ampr__tokenizer *t, int32_t id) {
    int32_t ty = t->types[id];
    if (t->runc_compat) return 1;
    return ty == AMPR__TT_NORMAL || ty == AMPR__TT_USER_DEFINED;
}

static ampr_status build_cpairs(ampr__tokenizer *t, ampr__err *err) {
    if (t->use_ranks) {
        /* byte tokens that merge would make the cut unsound: then never cut */
        for (uint32_t i = 0; i <= t->merge_mask; i++) {
            const merge_slot *m = &t->merge_slots[i];
            if (m->left >= 0 &&
                (t->types[m->left] == AMPR__TT_BYTE || t->types[m->right] == AMPR__TT_BYTE))
                return AMPR_OK;
        }
    }
    uint64_t total = 0;
    for (int32_t id = 0; id < t->n_vocab; id++) total += t->len[id];
    t->cpair_mask = pow2_at_least(total * 2 + 1) - 1;
    t->cpair_slots = ampr__alloc_array((size_t)t->cpair_mask + 1, sizeof(uint64_t), err);
    if (!t->cpair_slots) return AMPR_ERR_NOMEM;
    memset(t->cpair_slots, 0, ((size_t)t->cpair_mask + 1) * sizeof(uint64_t));
    for (int32_t id = 0; id < t->n_vocab; id++) {
        if (!t->use_ranks && !can_be_merged_into(t, id)) continue;
        const unsigned char *p = (const unsigned char *)t->text + t->off[id];
        uint32_t n = t->len[id], prev = 0;
        for (uint32_t i = 0; i < n;) {
            int l = ampr__utf8_seq_len(p + i, n - i);
            uint32_t cp = utf8_get(p + i, l);
            if (i > 0) {
                uint64_t k = cpair_key(prev, cp);
                uint32_t h = hash_pair((int32_t)(k >> 32), (int32_t)(uint32_t)k) & t->cpair_mask;
                while (t->cpair_slots[h] != 0 && t->cpair_slots[h] != k) h = (h + 1) & t->cpair_mask;
                t->cpair_slots[h] = k;
            }
            prev = cp;
            i += (uint32_t)l;
        }
    }
    return AMPR_OK;
}

static ampr_status build_regex(ampr__tokenizer *t, const ampr__tok_spec *s,
                               const ampr__tok_opts *o, ampr__err *err) {
    const char *pat = GPT2_RE;
    size_t pl = sizeof GPT2_RE - 1;
    if (o && o->regex) { pat = o->regex; pl = o->regex_len; }
    else if (s->pre == AMPR__PRE_LLAMA3) { pat = LLAMA3_RE; pl = sizeof LLAMA3_RE - 1; }
    else if (s->pre != AMPR__PRE_DEFAULT && s->pre != AMPR__PRE_GPT2)
        return ampr__fail(err, AMPR_ERR_UNSUPPORTED, "tokenizer: unknown pre-tokenizer %d",
                          (int)s->pre);
    t->gctx = pcre2_general_context_create(pcre_malloc, pcre_free, NULL);
    if (!t->gctx) return ampr__fail(err, AMPR_ERR_NOMEM, "tokenizer: out of memory");
    pcre2_compile_context *cc = pcre2_compile_context_create(t->gctx);
    if (!cc) return ampr__fail(err, AMPR_ERR_NOMEM, "tokenizer: out of memory");
    int ec;
    PCRE2_SIZE eo;
    t->re = pcre2_compile((PCRE2_SPTR)pat, pl, PCRE2_UTF | PCRE2_UCP, &ec, &eo, cc);
    pcre2_compile_context_free(cc);
    if (!t->re) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(ec, msg, sizeof msg);
        return ampr__fail(err, AMPR_ERR_MODEL_VOCAB,
                          "tokenizer: pre-tokenizer regex does not compile at offset %zu: %s",
                          (size_t)eo, (const char *)msg);
    }
    (void)pcre2_jit_compile(t->re, PCRE2_JIT_COMPLETE); /* optional speed-up */
    return AMPR_OK;
}

ampr_status ampr__tok_new_ex(const ampr__tok_spec *s, const ampr__tok_opts *o,
                             ampr__tokenizer **out, ampr__err *err) {
    if (!out) return ampr__fail(err, AMPR_ERR_INVALID_ARG, "tokenizer: out is NULL");
    *out = NULL;
    if (!s) return ampr__fail(err, AMPR_ERR_INVALID_ARG, "tokenizer: spec is NULL");
    if (s->kind != AMPR__TOK_SPM && s->kind != AMPR__TOK_BPE)
        return ampr__fail(err, AMPR_ERR_UNSUPPORTED, "tokenizer: unknown kind %d", (int)s->kind);
    if (s->n_vocab <= 0 || s->n_vocab > MAX_VOCAB)
        return ampr__fail(err, AMPR_ERR_MODEL_VOCAB, "tokenizer: bad vocabulary size %d",
                          (int)s->n_vocab);
    if (!s->tokens) return ampr__fail(err, AMPR_ERR_MODEL_VOCAB, "tokenizer: tokens missing");
    if (s->kind == AMPR__TOK_BPE && s->n_merges <= 0)
        return ampr__fail(err, AMPR_ERR_MODEL_VOCAB, "tokenizer: BPE vocabulary without merges");
    const int32_t sp[4] = {s->bos_id, s->eos_id, s->unk_id, s->pad_id};
    for (int i = 0; i < 4; i++)
        if (sp[i] < -1 || sp[i] >= s->n_vocab)
            return ampr__fail(err, AMPR_ERR_MODEL_VOCAB,
                              "tokenizer: special token id %d out of range (vocab %d)",
                              (int)sp[i], (int)s->n_vocab);

    ampr__tokenizer *t = ampr__calloc(1, sizeof *t);
    if (!t) return ampr__fail(err, AMPR_ERR_NOMEM, "tokenizer: out of memory");
    ampr_status st = AMPR_OK;
    size_t nv = (size_t)s->n_vocab;
    t->kind = s->kind;
    t->n_vocab = s->n_vocab;
    t->bos = s->bos_id;
    t->eos = s->eos_id;
    t->unk = s->unk_id;
    t->pad = s->pad_id;
    t->add_bos = s->add_bos != 0;
    t->add_space_prefix = s->add_space_prefix != 0;
    t->remove_extra_ws = s->remove_extra_ws != 0;
    if (o) {
        t->runc_compat = o->runc_compat != 0;
        t->space_prefix_first_only = o->space_prefix_first_only != 0;
        t->ignore_merges = o->ignore_merges != 0;
        t->bpe_prefix_space = o->bpe_prefix_space != 0;
    }
    t->off = ampr__alloc_array(nv, sizeof(uint32_t), err);
    t->len = ampr__alloc_array(nv, sizeof(uint32_t), err);
    t->scores = ampr__alloc_array(nv, sizeof(float), err);
    t->types = ampr__alloc_array(nv, sizeof(int32_t), err);
    if (!t->off || !t->len || !t->scores || !t->types) { st = AMPR_ERR_NOMEM; goto fail; }

    /* copy and validate the pieces */
    uint64_t total = 0;
    for (size_t i = 0; i < nv; i++) {
        const char *p = s->tokens[i];
        size_t l = p ? (s->token_lens ? s->token_lens[i] : strlen(p)) : 0;
        if (!p && (!s->token_lens || s->token_lens[i] != 0)) {
            st = ampr__fail(err, AMPR_ERR_MODEL_VOCAB, "tokenizer: token %zu is NULL", i);
            goto fail;
        }
        if (l > MAX_PIECE_BYTES) {
            st = ampr__fail(err, AMPR_ERR_MODEL_VOCAB, "tokenizer: token %zu is %zu bytes long", i, l);
            goto fail;
        }
        if (!ampr__utf8_valid(p, l)) {
            st = ampr__fail(err, AMPR_ERR_MODEL_VOCAB, "tokenizer: token %zu is not valid UTF-8", i);
            goto fail;
        }
        t->len[i] = (uint32_t)l;
        t->off[i] = (uint32_t)total;
        total += l + 1;
        if (total > UINT32_MAX) {
            st = ampr__fail(err, AMPR_ERR_MODEL_VOCAB, "tokenizer: vocabulary text too large");
            goto fail;
        }
    }
    t->text = ampr__malloc((size_t)total);
    if (!t->text) { st = ampr__fail(err, AMPR_ERR_NOMEM, "tokenizer: out of memory"); goto fail; }
    for (size_t i = 0; i < nv; i++) {
        if (t->len[i]) memcpy(t->text + t->off[i], s->tokens[i], t->len[i]);
        t->text[t->off[i] + t->len[i]] = 0;
        float sc = s->scores ? s->scores[i] : 0.0f;
        if (isnan(sc)) {
            st = ampr__fail(err, AMPR_ERR_MODEL_VOCAB, "tokenizer: score of token %zu is NaN", i);
            goto fail;
        }
        t->scores[i] = sc;
        int32_t ty;
        if (s->types) {
            ty = s->types[i];
            if (ty < AMPR__TT_NORMAL || ty > AMPR__TT_BYTE) {
                st = ampr__fail(err, AMPR_ERR_MODEL_VOCAB, "tokenizer: token %zu has bad type %d",
                                i, (int)ty);
                goto fail;
            }
        } else {
            ty = parse_byte_piece(t->text + t->off[i], t->len[i]) >= 0 ? AMPR__TT_BYTE
                                                                       : AMPR__TT_NORMAL;
            if ((int32_t)i == s->unk_id) ty = AMPR__TT_UNKNOWN;
            else if ((int32_t)i == s->bos_id || (int32_t)i == s->eos_id) ty = AMPR__TT_CONTROL;
        }
        t->types[i] = ty;
    }

    /* piece -> id (a duplicated piece keeps its first id) */
    t->str_mask = pow2_at_least(nv * 2 + 1) - 1;
    t->str_slots = ampr__alloc_array((size_t)t->str_mask + 1, sizeof(int32_t), err);
    if (!t->str_slots) { st = AMPR_ERR_NOMEM; goto fail; }
    memset(t->str_slots, 0xff, ((size_t)t->str_mask + 1) * sizeof(int32_t));
    for (size_t i = 0; i < nv; i++) {
        if (t->len[i] == 0) continue;
        const char *p = t->text + t->off[i];
        uint32_t h = hash_bytes(p, t->len[i]) & t->str_mask;
        int dup = 0;
        while (t->str_slots[h] >= 0) {
            int32_t o2 = t->str_slots[h];
            if (t->len[o2] == t->len[i] && memcmp(t->text + t->off[o2], p, t->len[i]) == 0) {
                dup = 1;
                break;
            }
            h = (h + 1) & t->str_mask;
        }
        if (!dup) t->str_slots[h] = (int32_t)i;
    }

    for (int b = 0; b < 256; b++) t->byte_id[b] = t->byte_char_id[b] = -1;
    for (size_t i = 0; i < nv; i++) {
        if (t->types[i] != AMPR__TT_BYTE) continue;
        int b = parse_byte_piece(t->text + t->off[i], t->len[i]);
        if (b < 0) {
            if (s->kind == AMPR__TOK_SPM) {
                st = ampr__fail(err, AMPR_ERR_MODEL_VOCAB,
                                "tokenizer: byte token %zu is not of the form <0xNN>", i);
                goto fail;
            }
            continue;
        }
        if (t->byte_id[b] < 0) t->byte_id[b] = (int32_t)i;
    }
    if (s->kind == AMPR__TOK_BPE) {
        for (unsigned b = 0; b < 256; b++) {
            char u[4];
            t->byte_cp[b] = byte_to_cp(b);
            size_t l = utf8_put(u, t->byte_cp[b]);
            t->byte_char_id[b] = str_lookup(t, u, l);
        }
    }

    if (s->n_merges > 0) {
        st = build_merges(t, s, err);
        if (st) goto fail;
        t->use_ranks = 1;
    }
    st = build_decode(t, err);
    if (st) goto fail;
    if (s->kind == AMPR__TOK_SPM && (st = build_cpairs(t, err))) goto fail;
    st = build_literals(t, o, err);
    if (st) goto fail;
    if (s->kind == AMPR__TOK_BPE) {
        st = build_regex(t, s, o, err);
        if (st) goto fail;
    }
    *out = t;
    return AMPR_OK;
fail:
    if (st == AMPR_ERR_NOMEM) ampr__fail(err, st, "tokenizer: out of memory");
    ampr__tok_free(t);
    return st;
}

ampr_status ampr__tok_new(const ampr__tok_spec *spec, ampr__tokenizer **out, ampr__err *err) {
    return ampr__tok_new_ex(spec, NULL, out, err);
}

/* ---- accessors ---------------------------------------------------------- */

int32_t ampr__tok_n_vocab(const ampr__tokenizer *t) { return t ? t->n_vocab : 0; }
int32_t ampr__tok_bos(const ampr__tokenizer *t) { return t ? t->bos : -1; }
int32_t ampr__tok_eos(const ampr__tokenizer *t) { return t ? t->eos : -1; }
int ampr__tok_add_bos_default(const ampr__tokenizer *t) { return t ? t->add_bos : 0; }

int ampr__tok_is_special(const ampr__tokenizer *t, int32_t id) {
    if (!t || id < 0 || id >= t->n_vocab) return 0;
    return is_special_type(t->types[id]);
}

const char *ampr__tok_text(const ampr__tokenizer *t, int32_t id, uint32_t *len) {
    if (!t || id < 0 || id >= t->n_vocab) {
        if (len) *len = 0;
        return NULL;
    }
    if (len) *len = t->len[id];
    return t->text + t->off[id];
}

float ampr__tok_score(const ampr__tokenizer *t, int32_t id) {
    return (t && id >= 0 && id < t->n_vocab) ? t->scores[id] : 0.0f;
}

int32_t ampr__tok_type(const ampr__tokenizer *t, int32_t id) {
    return (t && id >= 0 && id < t->n_vocab) ? t->types[id] : 0;
}

/* ---- encoding ----------------------------------------------------------- */

typedef struct sym {
    int32_t id;         /* piece id, -1 when the text is not a piece */
    uint32_t start, len; /* bytes of buf; len 0 once merged away */
    int32_t prev, next;
    int fixed;          /* never merges (run.c byte fallback) */
} sym;

typedef struct cand {
    float score;
    int32_t left, right;
    uint32_t len; /* left.len + right.len when pushed: detects stale entries */
    int32_t result;
} cand;

typedef struct work {
    const ampr__tokenizer *t;
    ampr__err *err;
    char *buf; /* normalized text of the current word */
    size_t buf_n, buf_cap;
    sym *syms;
    size_t n_syms, syms_cap;
    cand *heap;
    size_t heap_n, heap_cap;
    int32_t *ids;
    size_t n_ids, ids_cap;
    pcre2_match_data *md;
    int cut; /* SPM: cut the text where no piece can span (see cpair_slots) */
} work;

static int grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return 1;
    size_t nc = *cap ? *cap : 64;
    while (nc < need) {
        if (nc > SIZE_MAX / 2 / elem) return 0;
        nc *= 2;
    }
    void *q = ampr__realloc(*p, nc * elem);
    if (!q) return 0;
    *p = q;
    *cap = nc;
    return 1;
}

static ampr_status push_id(work *w, int32_t id) {
    if (!grow((void **)&w->ids, &w->ids_cap, w->n_ids + 1, sizeof(int32_t)))
        return ampr__fail(w->err, AMPR_ERR_NOMEM, "tokenizer: out of memory");
    w->ids[w->n_ids++] = id;
    return AMPR_OK;
}

static int cand_before(const cand *a, const cand *b) {
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}

static void heap_push(work *w, cand c) { /* capacity reserved by the caller */
    size_t i = w->heap_n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_before(&c, &w->heap[p])) break;
        w->heap[i] = w->heap[p];
        i = p;
    }
    w->heap[i] = c;
}

static cand heap_pop(work *w) {
    cand top = w->heap[0], last = w->heap[--w->heap_n];
    size_t i = 0, n = w->heap_n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && cand_before(&w->heap[c + 1], &w->heap[c])) c++;
        if (!cand_before(&w->heap[c], &last)) break;
        w->heap[i] = w->heap[c];
        i = c;
    }
    if (n) w->heap[i] = last;
    return top;
}

static void try_pair(work *w, int32_t l, int32_t r) {
    if (l < 0 || r < 0) return;
    const sym *a = &w->syms[l], *b = &w->syms[r];
    if (a->fixed || b->fixed) return;
    const ampr__tokenizer *t = w->t;
    cand c;
    if (t->use_ranks) {
        if (a->id < 0 || b->id < 0) return;
        const merge_slot *m = merge_lookup(t, a->id, b->id);
        if (!m) return;
        c.score = -(float)m->rank;
        c.result = m->result;
    } else {
        int32_t id = str_lookup(t, w->buf + a->start, (size_t)a->len + b->len);
        if (id < 0 || !can_be_merged_into(t, id)) return;
        c.score = t->scores[id];
        c.result = id;
    }
    c.left = l;
    c.right = r;
    c.len = a->len + b->len;
    heap_push(w, c);
}

/* Merge the symbols syms[0..n_syms) (linked in order) and emit their ids. */
static ampr_status merge_and_emit(work *w) {
    const ampr__tokenizer *t = w->t;
    size_t n = w->n_syms;
    if (n == 0) return AMPR_OK;
    /* each merge adds at most two entries: 3n bounds the heap */
    if (!grow((void **)&w->heap, &w->heap_cap, 3 * n + 4, sizeof(cand)))
        return ampr__fail(w->err, AMPR_ERR_NOMEM, "tokenizer: out of memory");
    w->heap_n = 0;
    for (size_t i = 0; i + 1 < n; i++) try_pair(w, (int32_t)i, (int32_t)i + 1);
    while (w->heap_n) {
        cand c = heap_pop(w);
        sym *a = &w->syms[c.left], *b = &w->syms[c.right];
        if (a->len == 0 || b->len == 0 || a->next != c.right || a->len + b->len != c.len)
            continue;
        a->len += b->len;
        a->id = c.result;
        b->len = 0;
        a->next = b->next;
        if (b->next >= 0) w->syms[b->next].prev = c.left;
        try_pair(w, a->prev, c.left);
        try_pair(w, c.left, a->next);
    }
    for (int32_t i = 0; i >= 0; i = w->syms[i].next) {
        const sym *s = &w->syms[i];
        if (s->id >= 0) {
            AMPR__TRY(push_id(w, s->id));
            continue;
        }
        if (t->kind == AMPR__TOK_SPM) { /* byte fallback */
            size_t k;
            for (k = 0; k < s->len; k++)
                if (t->byte_id[(unsigned char)w->buf[s->start + k]] < 0) break;
            if (k == s->len) {
                for (k = 0; k < s->len; k++)
                    AMPR__TRY(push_id(w, t->byte_id[(unsigned char)w->buf[s->start + k]]));
                continue;
            }
        }
        if (t->unk >= 0) AMPR__TRY(push_id(w, t->unk));
    }
    return AMPR_OK;
}

static ampr_status add_sym(work *w, int32_t id, uint32_t start, uint32_t len, int fixed) {
    if (!grow((void **)&w->syms, &w->syms_cap, w->n_syms + 1, sizeof(sym)))
        return ampr__fail(w->err, AMPR_ERR_NOMEM, "tokenizer: out of memory");
    int32_t i = (int32_t)w->n_syms++;
    w->syms[i] = (sym){id, start, len, i - 1, -1, fixed};
    if (i > 0) w->syms[i - 1].next = i;
    return AMPR_OK;
}

static ampr_status buf_put(work *w, const char *s, size_t n) {
    if (!grow((void **)&w->buf, &w->buf_cap, w->buf_n + n + 1, 1))
        return ampr__fail(w->err, AMPR_ERR_NOMEM, "tokenizer: out of memory");
    memcpy(w->buf + w->buf_n, s, n);
    w->buf_n += n;
    return AMPR_OK;
}

/* One SPM character: append it (escaped) to buf and make its symbol(s). */
static ampr_status spm_char(work *w, const char *c, size_t l, int literal) {
    const ampr__tokenizer *t = w->t;
    uint32_t start = (uint32_t)w->buf_n;
    if (l == 1 && c[0] == ' ') AMPR__TRY(buf_put(w, "\xe2\x96\x81", 3));
    else AMPR__TRY(buf_put(w, c, l));
    uint32_t n = (uint32_t)w->buf_n - start;
    int32_t id = str_lookup(t, w->buf + start, n);
    if (id >= 0 && !can_be_merged_into(t, id)) id = -1;
    if (t->runc_compat) {
        /* run.c's vocabulary stores U+2581 as ' ': a literal U+2581 is unknown */
        int lit2581 = literal && l == 3 && memcmp(c, "\xe2\x96\x81", 3) == 0;
        if (lit2581) id = -1;
        return add_sym(w, id, start, n, id < 0);
    }
    if (id < 0 && t->use_ranks) { /* HF: byte fallback happens before merging */
        size_t k;
        for (k = 0; k < n; k++)
            if (t->byte_id[(unsigned char)w->buf[start + k]] < 0) break;
        if (k == n) {
            for (k = 0; k < n; k++)
                AMPR__TRY(add_sym(w, t->byte_id[(unsigned char)w->buf[start + k]],
                                  start + (uint32_t)k, 1, 0));
            return AMPR_OK;
        }
    }
    return add_sym(w, id, start, n, 0);
}

static ampr_status encode_spm(work *w, const char *s, size_t n, int prefix) {
    const ampr__tokenizer *t = w->t;
    w->buf_n = 0;
    w->n_syms = 0;
    size_t i = 0, end = n;
    if (t->remove_extra_ws) {
        while (i < end && s[i] == ' ') i++;
        /* SentencePiece trims trailing whitespace after escaping, so a
         * literal U+2581 there goes too (leading ones stay) */
        for (;;) {
            if (end > i && s[end - 1] == ' ') end--;
            else if (end >= i + 3 && memcmp(s + end - 3, "\xe2\x96\x81", 3) == 0) end -= 3;
            else break;
        }
    }
    if (i == end) return AMPR_OK;
    uint32_t prev_cp = 0x2581;
    if (prefix) AMPR__TRY(spm_char(w, " ", 1, 0));
    while (i < end) {
        int l = ampr__utf8_seq_len((const unsigned char *)s + i, end - i);
        if (l <= 0) l = 1; /* cannot happen: the text was validated */
        if (t->remove_extra_ws && s[i] == ' ' && i > 0 && s[i - 1] == ' ') {
            i++;
            continue;
        }
        uint32_t cp = s[i] == ' ' ? 0x2581 : utf8_get((const unsigned char *)s + i, l);
        if (w->n_syms > 0 && w->cut && !cpair_has(t, prev_cp, cp)) {
            AMPR__TRY(merge_and_emit(w)); /* no piece spans this point: cut */
            w->n_syms = 0;
            w->buf_n = 0;
        }
        AMPR__TRY(spm_char(w, s + i, (size_t)l, 1));
        prev_cp = cp;
        i += (size_t)l;
    }
    return merge_and_emit(w);
}

/* One byte-level pre-token. */
static ampr_status encode_bpe_word(work *w, const char *s, size_t n) {
    const ampr__tokenizer *t = w->t;
    if (n == 0) return AMPR_OK;
    w->n_syms = 0;
    w->buf_n = 0;
    if (t->ignore_merges) {
        for (size_t i = 0; i < n; i++) {
            char u[4];
            size_t l = utf8_put(u, t->byte_cp[(unsigned char)s[i]]);
            AMPR__TRY(buf_put(w, u, l));
        }
        int32_t id = str_lookup(t, w->buf, w->buf_n);
        if (id >= 0) return push_id(w, id);
    }
    for (size_t i = 0; i < n; i++)
        AMPR__TRY(add_sym(w, t->byte_char_id[(unsigned char)s[i]], (uint32_t)i, 1, 0));
    return merge_and_emit(w);
}

static ampr_status encode_bpe(work *w, const char *s, size_t n, int first) {
    const ampr__tokenizer *t = w->t;
    char *tmp = NULL;
    if (first && t->bpe_prefix_space && n > 0 && s[0] != ' ') {
        tmp = ampr__malloc(n + 1);
        if (!tmp) return ampr__fail(w->err, AMPR_ERR_NOMEM, "tokenizer: out of memory");
        tmp[0] = ' ';
        memcpy(tmp + 1, s, n);
        s = tmp;
        n++;
    }
    ampr_status st = AMPR_OK;
    size_t pos = 0, gap = 0;
    while (pos < n) {
        int rc = pcre2_match(t->re, (PCRE2_SPTR)s, n, pos, PCRE2_NO_UTF_CHECK, w->md, NULL);
        if (rc < 0) break; /* no match (or a match limit): the rest is one gap */
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(w->md);
        size_t ms = ov[0], me = ov[1];
        if (ms < pos || me < ms || me > n) break;
        if (me == ms) { /* empty match: step over one character */
            int l = ampr__utf8_seq_len((const unsigned char *)s + ms, n - ms);
            pos = ms + (size_t)(l > 0 ? l : 1);
            continue;
        }
        if (ms > gap && (st = encode_bpe_word(w, s + gap, ms - gap))) goto done;
        if ((st = encode_bpe_word(w, s + ms, me - ms))) goto done;
        pos = gap = me;
    }
    if (gap < n) st = encode_bpe_word(w, s + gap, n - gap);
done:
    ampr__free(tmp);
    return st;
}

static ampr_status encode_segment(work *w, const char *s, size_t n, int first) {
    const ampr__tokenizer *t = w->t;
    if (n == 0) return AMPR_OK;
    if (t->kind == AMPR__TOK_SPM)
        return encode_spm(w, s, n, t->add_space_prefix && (first || !t->space_prefix_first_only));
    return encode_bpe(w, s, n, first);
}

static int is_ws(unsigned char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

/* Find the next literal token at or after pos: its id and [*ms, *me). */
static int32_t find_literal(const ampr__tokenizer *t, const char *s, size_t n, size_t pos,
                            size_t *ms) {
    for (size_t i = pos; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        for (uint32_t k = t->lit_start[c]; k < t->lit_start[c + 1]; k++) {
            int32_t id = t->lit_ids[k];
            uint32_t l = t->len[id];
            if (l <= n - i && memcmp(s + i, t->text + t->off[id], l) == 0) {
                *ms = i;
                return id;
            }
        }
    }
    return -1;
}

ampr_status ampr__tok_encode_ex(const ampr__tokenizer *t, const char *text, size_t n,
                                unsigned flags, int32_t **ids, size_t *n_ids, ampr__err *err) {
    if (!t || !ids || !n_ids || (!text && n))
        return ampr__fail(err, AMPR_ERR_INVALID_ARG, "tokenize: NULL argument");
    *ids = NULL;
    *n_ids = 0;
    if (!ampr__utf8_valid(text, n))
        return ampr__fail(err, AMPR_ERR_BAD_UTF8, "tokenize: the text is not valid UTF-8");
    work w;
    memset(&w, 0, sizeof w);
    w.t = t;
    w.err = err;
    w.cut = t->cpair_slots != NULL && !(flags & AMPR__ENC_NO_CUT);
    ampr_status st = AMPR_OK;
    if (t->re) {
        w.md = pcre2_match_data_create_from_pattern(t->re, t->gctx);
        if (!w.md) { st = ampr__fail(err, AMPR_ERR_NOMEM, "tokenizer: out of memory"); goto done; }
    }
    if ((flags & AMPR__ENC_ADD_BOS) && t->bos >= 0 && (st = push_id(&w, t->bos))) goto done;
    int use_lit = !(flags & AMPR__ENC_NO_SPECIAL) && t->lit_start[256] > 0;
    size_t pos = 0;
    int first = 1;
    while (pos < n) {
        size_t ms = n, seg_end;
        int32_t lit = use_lit ? find_literal(t, text, n, pos, &ms) : -1;
        seg_end = lit >= 0 ? ms : n;
        size_t me = lit >= 0 ? ms + t->len[lit] : n;
        if (lit >= 0 && (t->lit_flags[lit] & AMPR__TOKF_LSTRIP))
            while (seg_end > pos && is_ws((unsigned char)text[seg_end - 1])) seg_end--;
        if ((st = encode_segment(&w, text + pos, seg_end - pos, first))) goto done;
        first = 0;
        if (lit < 0) break;
        if ((st = push_id(&w, lit))) goto done;
        if (t->lit_flags[lit] & AMPR__TOKF_RSTRIP)
            while (me < n && is_ws((unsigned char)text[me])) me++;
        pos = me;
    }
done:
    if (w.md) pcre2_match_data_free(w.md);
    ampr__free(w.buf);
    ampr__free(w.syms);
    ampr__free(w.heap);
    if (st) {
        ampr__free(w.ids);
        return st;
    }
    *ids = w.ids;
    *n_ids = w.n_ids;
    return AMPR_OK;
}

ampr_status ampr__tok_encode(const ampr__tokenizer *t, const char *text, size_t n, int add_bos,
                             int32_t **ids, size_t *n_ids, ampr__err *err) {
    return ampr__tok_encode_ex(t, text, n, add_bos ? AMPR__ENC_ADD_BOS : 0, ids, n_ids, err);
}

/* ---- streaming decoding -------------------------------------------------- */

void ampr__detok_init(ampr__detok *d) {
    memset(d, 0, sizeof *d);
    d->prev = -1;
}

typedef struct sink {
    char *out;
    size_t cap, n;
} sink;

static void sink_put(sink *k, const void *p, size_t n) {
    if (n > k->cap - k->n) n = k->cap - k->n; /* never overflow (see tokenizer.h) */
    memcpy(k->out + k->n, p, n);
    k->n += n;
}

static void sink_fffd(sink *k) { sink_put(k, "\xef\xbf\xbd", 3); }

/* Expected length of a sequence led by c (0: not a lead byte). */
static int lead_len(unsigned char c) {
    if (c >= 0xc2 && c <= 0xdf) return 2;
    if (c >= 0xe0 && c <= 0xef) return 3;
    if (c >= 0xf0 && c <= 0xf4) return 4;
    return 0;
}

/* May c follow the incomplete sequence p[0..n)? */
static int cont_ok(const unsigned char *p, int n, unsigned char c) {
    if (n == 1) {
        if (p[0] == 0xe0) return c >= 0xa0 && c <= 0xbf;
        if (p[0] == 0xed) return c >= 0x80 && c <= 0x9f;
        if (p[0] == 0xf0) return c >= 0x90 && c <= 0xbf;
        if (p[0] == 0xf4) return c >= 0x80 && c <= 0x8f;
    }
    return (c & 0xc0) == 0x80;
}

static void feed_byte(ampr__detok *d, sink *k, unsigned char c) {
    if (d->n_pending > 0) {
        if (cont_ok(d->pending, d->n_pending, c)) {
            d->pending[d->n_pending++] = c;
            if (d->n_pending == lead_len(d->pending[0])) {
                sink_put(k, d->pending, (size_t)d->n_pending);
                d->n_pending = 0;
            }
            return;
        }
        sink_fffd(k); /* the maximal invalid subpart */
        d->n_pending = 0;
    }
    if (c < 0x80) { sink_put(k, &c, 1); return; }
    if (lead_len(c)) { d->pending[0] = c; d->n_pending = 1; return; }
    sink_fffd(k);
}

size_t ampr__detok_push(const ampr__tokenizer *t, ampr__detok *d, int32_t id, char *out,
                        size_t cap) {
    if (!t || !d || !out) return 0;
    if (d->n_pending < 0 || d->n_pending > 3) d->n_pending = 0;
    sink k = {out, cap, 0};
    int32_t prev = d->prev;
    d->prev = id;
    if (id < 0 || id >= t->n_vocab) return 0;
    const unsigned char *p = (const unsigned char *)t->dec + t->dec_off[id];
    uint32_t n = t->dec_len[id];
    if (n == 0) return 0;
    if (t->kind == AMPR__TOK_SPM && t->add_space_prefix && (prev == -1 || prev == t->bos) &&
        p[0] == ' ') {
        p++;
        n--;
    }
    for (uint32_t i = 0; i < n; i++) feed_byte(d, &k, p[i]);
    return k.n;
}

size_t ampr__detok_flush(ampr__detok *d, char *out, size_t cap) {
    if (!d || !out) return 0;
    sink k = {out, cap, 0};
    if (d->n_pending > 0) sink_fffd(&k);
    d->n_pending = 0;
    return k.n;
}
