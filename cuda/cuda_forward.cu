/*
 * cuda_forward.cu -- the transformer forward pass on the device, the same op
 * sequence as lib/forward/forward.c (see there for the shapes):
 *
 *   x = embd[tokens]
 *   per layer: xb = rmsnorm(x)*attn_norm; qkv = Wqkv xb; rope(Q), rope(K);
 *              K,V -> pages; att = attention; x += Wo att;
 *              xb = rmsnorm(x)*ffn_norm; hb = Wgu xb; hb2 = silu(g)*u; x += Wdown hb2
 *   logits = Wout (rmsnorm(x)*final_norm); argmax(last logits)
 *
 * Tokens and positions live in device memory, so a decode step can be
 * captured once as a CUDA graph and replayed; a greedy graph also writes the
 * argmax back as the next token and advances the position.
 *
 * Reading order: the model upload; one layer (layer_attention, layer_ffn,
 * layer_logits over a pass_bufs), which both users below share; a single
 * sequence with its own KV cache (ampr__cuda_forward / _decode: the GPU
 * check's API); then the engine's passes (ampr__cuda_forward_paged: tier KV
 * pools, batches of sequences, tensor-parallel ranks, captured decode graphs).
 */
#include "cuda_err.h"

struct ampr__cuda_model {
    ampr__cuda *c;
    ampr__cuda_hparams hp;
    ampr__qtype qtype;
    ampr__cuda_mat embd, output; /* output unused when tied */
    int tied;
    ampr__cuda_mat *layers;      /* n_layers * 4: wqkv, wo, w_gu, w_down */
    float *norms;                /* [L][dim] attn, [L][dim] ffn, [dim] final */
    float *rope_cos, *rope_sin;  /* [context][head_dim/2] */
    float **smooth;              /* [n_layers*4] SmoothQuant 1/s divisors (device) or NULL */
    uint64_t bytes;
};

struct ampr__cuda_seq {
    ampr__cuda_model *m;
    int32_t max_tokens, block_size, n_pages;
    ampr__cuda_dtype kv_dtype;
    void *kc, *vc;               /* [n_pages][n_layers][block_size][kv_dim] */
    int32_t *blocks;             /* [n_pages] */
    float *x, *xb, *qkv, *att, *hb, *hb2; /* [max_tokens][...] */
    float *logits;               /* [max_tokens][vocab] */
    int32_t *tokens, *pos;       /* [max_tokens] */
    int32_t *argmax;             /* [1] */
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    int graph_greedy;
    uint64_t graph_gen;          /* the context's scratch_gen when captured */
};


/* ---- model --------------------------------------------------------------- */

static ampr_status upload_f32(ampr__cuda *c, const float *src, size_t n, float **dst,
                              ampr__err *err) {
    void *p = NULL;
    AMPR__TRY(ampr__cuda_alloc(c, n * sizeof(float), &p, err));
    *dst = (float *)p;
    return ampr__cuda_upload(c, p, src, n * sizeof(float), err);
}

static ampr_status check_shape(const ampr__qmat *w, int64_t rows, int64_t cols, const char *name,
                               ampr__err *err) {
    if (w->rows != rows || w->cols != cols)
        return ampr__fail(err, AMPR_ERR_MODEL_SHAPE, "%s is %lldx%lld, expected %lldx%lld", name,
                          (long long)w->rows, (long long)w->cols, (long long)rows,
                          (long long)cols);
    return AMPR_OK;
}

static ampr_status model_build(ampr__cuda_model *m, const ampr__qmat *embd,
                               const ampr__qmat *output, const ampr__qmat *layers,
                               const float *norms, const float *rope_cos, const float *rope_sin,
                               ampr__err *err) {
    const ampr__cuda_hparams *hp = &m->hp;
    ampr__cuda *c = m->c;
    int64_t q_dim = (int64_t)hp->n_heads * hp->head_dim;
    int64_t kv_dim = (int64_t)hp->n_kv_heads * hp->head_dim;
    AMPR__TRY(check_shape(embd, hp->vocab_size, hp->dim, "embd", err));
    if (output) AMPR__TRY(check_shape(output, hp->vocab_size, hp->dim, "output", err));
    m->qtype = embd->type;
    AMPR__TRY(ampr__cuda_mat_upload(c, embd, &m->embd, err));
    m->bytes += ampr__cuda_mat_bytes(&m->embd);
    if (output) {
        AMPR__TRY(ampr__cuda_mat_upload(c, output, &m->output, err));
        m->bytes += ampr__cuda_mat_bytes(&m->output);
    }
    for (int32_t l = 0; l < hp->n_layers; l++) {
        const ampr__qmat *L = layers + 4 * (size_t)l;
        AMPR__TRY(check_shape(&L[0], q_dim + 2 * kv_dim, hp->dim, "wqkv", err));
        AMPR__TRY(check_shape(&L[1], hp->dim, q_dim, "wo", err));
        AMPR__TRY(check_shape(&L[2], 2 * (int64_t)hp->hidden_dim, hp->dim, "w_gu", err));
        AMPR__TRY(check_shape(&L[3], hp->dim, hp->hidden_dim, "w_down", err));
        for (int k = 0; k < 4; k++) {
            if (L[k].type != m->qtype)
                return ampr__fail(err, AMPR_ERR_INVALID_ARG, "layer %d mixes weight formats", l);
            AMPR__TRY(ampr__cuda_mat_upload(c, &L[k], &m->layers[4 * (size_t)l + k], err));
            m->bytes += ampr__cuda_mat_bytes(&m->layers[4 * (size_t)l + k]);
        }
    }
    size_t nn = (2 * (size_t)hp->n_layers + 1) * (size_t)hp->dim;
    size_t nr = (size_t)hp->context_length * (size_t)(hp->head_dim / 2);
    AMPR__TRY(upload_f32(c, norms, nn, &m->norms, err));
    AMPR__TRY(upload_f32(c, rope_cos, nr, &m->rope_cos, err));
    AMPR__TRY(upload_f32(c, rope_sin, nr, &m->rope_sin, err));
    m->bytes += 4 * (nn + 2 * nr);
    return AMPR_OK;
}

ampr_status ampr__cuda_model_new(ampr__cuda *c, const ampr__cuda_hparams *hp,
                                 const ampr__qmat *embd, const ampr__qmat *output,
                                 const ampr__qmat *layers, const float *norms,
                                 const float *rope_cos, const float *rope_sin,
                                 ampr__cuda_model **out, ampr__err *err) {
    *out = NULL;
    if (hp->n_layers <= 0 || hp->dim <= 0 || hp->head_dim <= 0 || hp->head_dim % 2 ||
        hp->n_kv_heads <= 0 || hp->n_heads % hp->n_kv_heads || hp->vocab_size <= 0 ||
        hp->context_length <= 0 || hp->hidden_dim <= 0)
        return ampr__fail(err, AMPR_ERR_MODEL_HPARAMS, "CUDA model: inconsistent hyper-parameters");
    ampr__cuda_model *m = (ampr__cuda_model *)ampr__calloc(1, sizeof *m);
    if (!m) return ampr__fail(err, AMPR_ERR_NOMEM, "out of memory for a CUDA model");
    m->c = c;
    m->hp = *hp;
    m->tied = output == NULL;
    m->layers = (ampr__cuda_mat *)ampr__calloc(4 * (size_t)hp->n_layers, sizeof(ampr__cuda_mat));
    ampr_status st = m->layers ? model_build(m, embd, output, layers, norms, rope_cos, rope_sin, err)
                               : ampr__fail(err, AMPR_ERR_NOMEM, "out of memory for a CUDA model");
    if (st != AMPR_OK) {
        ampr__cuda_model_free(m);
        return st;
    }
    *out = m;
    return AMPR_OK;
}

void ampr__cuda_model_free(ampr__cuda_model *m) {
    if (!m) return;
    ampr__cuda *c = m->c;
    ampr__cuda_mat_free(c, &m->embd);
    ampr__cuda_mat_free(c, &m->output);
    if (m->layers)
        for (size_t i = 0; i < 4 * (size_t)m->hp.n_layers; i++) ampr__cuda_mat_free(c, &m->layers[i]);
    ampr__free(m->layers);
    ampr__cuda_free(c, m->norms);
    ampr__cuda_free(c, m->rope_cos);
    ampr__cuda_free(c, m->rope_sin);
    if (m->smooth)
        for (size_t i = 0; i < 4 * (size_t)m->hp.n_layers; i++) ampr__cuda_free(c, m->smooth[i]);
    ampr__free(m->smooth);
    ampr__free(m);
}

uint64_t ampr__cuda_model_bytes(const ampr__cuda_model *m) { return m->bytes; }

/* ---- one layer ---------------------------------------------------------------
 * The same code runs a sequence's pass (ampr__cuda_forward, the check's API)
 * and each rank's part of an engine pass (ampr__cuda_forward_paged). */

/* x[i][c] /= s[c] (IEEE division, as ampr__smooth_act) */
__global__ void div_cols_kernel(float *x, const float *__restrict__ s, size_t total, int32_t cols) {
    AMPR__PDL_ENTER();
    for (size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (size_t)gridDim.x * blockDim.x)
        x[e] = __fdiv_rn(x[e], s[e % (size_t)cols]);
}

/* SmoothQuant: divide the input of matmul mm of layer l by its factors, if any. */
static ampr_status smooth_div(const ampr__cuda_model *m, int32_t l, int mm, float *x, int32_t n,
                              int32_t cols, ampr__err *err) {
    const float *s = m->smooth ? m->smooth[4 * (size_t)l + (size_t)mm] : NULL;
    if (!s) return AMPR_OK;
    size_t total = (size_t)n * (size_t)cols;
    ampr__launch(m->c, "div_cols_kernel", div_cols_kernel, ampr__cuda_grid(total, 256), 256, 0,
        x, s, total, cols);
    AMPR__CU_LAUNCHED(err, "div_cols");
    return AMPR_OK;
}

/* A pass's device buffers: activations [n][...] and inputs (tokens and
 * positions [n]); kv is the KV cache view (its layer is set per call). */
typedef struct pass_bufs {
    float *x, *xb, *qkv, *att, *hb, *hb2, *logits;
    const int32_t *tokens, *pos;
    ampr__cuda_kv_view kv;
    /* the residual add and RMSNorm that begin each half-layer (but layer 0's)
     * and the logits are done by the matmul that ends the half before
     * (ampr__cuda_matmul_addnorm): no all-reduce between them, every row's
     * logits, and the AMPR__CUDA_FUSE_TAIL switch on (pass_addnorm) */
    int addnorm;
} pass_bufs;

/* The norm weights of the half-layer that begins with norm k: 2 l: layer
 * l's attention, 2 l + 1: its FFN, 2 L: the final norm. */
static const float *norm_w(const ampr__cuda_model *m, int32_t k) {
    int32_t L = m->hp.n_layers, half = k < 2 * L ? (k % 2) * L + k / 2 : 2 * L;
    return m->norms + (size_t)half * (size_t)m->hp.dim;
}

/* Whether a pass's norms go into its matmuls (pass_bufs.addnorm): not when
 * its half-layers' outputs are all-reduced (tensor parallelism, also one rank
 * a process) before the add */
static int pass_addnorm(const ampr__cuda_model *m, int reduces, int32_t n, int32_t n_logits) {
    return !reduces && n_logits == n && ampr__cuda_switch_on(m->c, AMPR__CUDA_FUSE_TAIL);
}

/* x = embd[tokens] */
static ampr_status layer_embed(const ampr__cuda_model *m, const pass_bufs *b, int32_t n,
                               ampr__err *err) {
    AMPR__TRY(ampr__cuda_use(m->c, err));
    return ampr__cuda_embed(m->c, &m->embd, b->tokens, n, b->x, AMPR__CUDA_F32, err);
}

/* Attention half of layer l: x += xb (the FFN output of layer l-1; not for
 * layer 0), then xb = Wo att -- with tensor parallelism this rank's part of
 * it, to be all-reduced before the next half. With b->addnorm the add and
 * norm at the start were done by the matmul before (not for layer 0: the
 * embedding), and this half's matmul does the FFN's. */
static ampr_status layer_attention(const ampr__cuda_model *m, const pass_bufs *b, int32_t l,
                                   int32_t n, ampr__err *err) {
    const ampr__cuda_hparams *hp = &m->hp;
    ampr__cuda *c = m->c;
    int32_t dim = hp->dim, hd = hp->head_dim;
    int32_t q_dim = hp->n_heads * hd, kv_dim = hp->n_kv_heads * hd, qkv_dim = q_dim + 2 * kv_dim;
    const ampr__cuda_mat *L = m->layers + 4 * (size_t)l;
    ampr__cuda_kv_view view = b->kv;
    view.layer = l;
    AMPR__TRY(ampr__cuda_use(c, err));
    if (l == 0 || !b->addnorm)
        AMPR__TRY(ampr__cuda_add_rmsnorm(c, b->x, l > 0 ? b->xb : NULL, norm_w(m, 2 * l), b->xb, n,
                                         dim, hp->norm_eps, err));
    AMPR__TRY(smooth_div(m, l, 0, b->xb, n, dim, err));
    /* the matmul, then RoPE and the KV store (in its kernel with AMPR_CUDA_FUSE_TAIL) */
    AMPR__TRY(ampr__cuda_matmul_rope_kv(c, &L[0], b->xb, n, b->qkv, &view, hp->n_heads,
                                        hp->n_kv_heads, hd, b->pos, m->rope_cos, m->rope_sin,
                                        hp->rope_interleaved, err));
    AMPR__TRY(ampr__cuda_attention(c, &view, b->qkv, qkv_dim, n, b->pos, hp->n_heads,
                                   hp->n_kv_heads, hd, b->att, err));
    AMPR__TRY(smooth_div(m, l, 1, b->att, n, q_dim, err));
    if (b->addnorm) /* and the FFN's norm */
        return ampr__cuda_matmul_addnorm(c, &L[1], b->att, n, b->xb, b->x, norm_w(m, 2 * l + 1),
                                         hp->norm_eps, err);
    return ampr__cuda_matmul(c, &L[1], b->att, n, b->xb, dim, err);
}

/* FFN half of layer l: x += xb (the attention output), then
 * xb = Wdown swiglu(Wgu rmsnorm(x)) -- with TP this rank's part of it.
 * b->addnorm: as for the attention half; Wdown's matmul does the next
 * layer's attention norm, or the final norm after the last layer. */
static ampr_status layer_ffn(const ampr__cuda_model *m, const pass_bufs *b, int32_t l, int32_t n,
                             ampr__err *err) {
    const ampr__cuda_hparams *hp = &m->hp;
    ampr__cuda *c = m->c;
    int32_t dim = hp->dim, hidden = hp->hidden_dim;
    const ampr__cuda_mat *L = m->layers + 4 * (size_t)l;
    AMPR__TRY(ampr__cuda_use(c, err));
    if (!b->addnorm)
        AMPR__TRY(ampr__cuda_add_rmsnorm(c, b->x, b->xb, norm_w(m, 2 * l + 1), b->xb, n, dim,
                                         hp->norm_eps, err));
    AMPR__TRY(smooth_div(m, l, 2, b->xb, n, dim, err));
    AMPR__TRY(ampr__cuda_matmul_swiglu(c, &L[2], b->xb, n, b->hb, b->hb2, err));
    AMPR__TRY(smooth_div(m, l, 3, b->hb2, n, hidden, err));
    if (b->addnorm) /* and the next layer's attention norm, or the final one */
        return ampr__cuda_matmul_addnorm(c, &L[3], b->hb2, n, b->xb, b->x, norm_w(m, 2 * l + 2),
                                         hp->norm_eps, err);
    return ampr__cuda_matmul(c, &L[3], b->hb2, n, b->xb, dim, err);
}

/* After the last layer: x += xb and the final norm for the last n_logits
 * rows (the earlier rows' hidden states are not needed again), then their
 * logits. Each row is normalized in place in xb. */
static ampr_status layer_logits(const ampr__cuda_model *m, const pass_bufs *b, int32_t n,
                                int32_t n_logits, ampr__err *err) {
    const ampr__cuda_hparams *hp = &m->hp;
    ampr__cuda *c = m->c;
    size_t first = (size_t)(n - n_logits) * (size_t)hp->dim;
    AMPR__TRY(ampr__cuda_use(c, err));
    if (!b->addnorm) /* else the last matmul did it (n_logits == n) */
        AMPR__TRY(ampr__cuda_add_rmsnorm(c, b->x + first, b->xb + first, norm_w(m, 2 * hp->n_layers),
                                         b->xb + first, n_logits, hp->dim, hp->norm_eps, err));
    const ampr__cuda_mat *out = m->tied ? &m->embd : &m->output;
    return ampr__cuda_matmul(c, out, b->xb + first, n_logits, b->logits, hp->vocab_size, err);
}

/* ---- sequence ---------------------------------------------------------------- */

static ampr_status seq_alloc(ampr__cuda *c, size_t bytes, void *out, ampr__err *err) {
    void *p = NULL;
    AMPR__TRY(ampr__cuda_alloc(c, bytes, &p, err));
    *(void **)out = p;
    return ampr__cuda_memset(c, p, 0, bytes, err);
}

static ampr_status seq_build(ampr__cuda_seq *s, ampr__err *err) {
    const ampr__cuda_hparams *hp = &s->m->hp;
    ampr__cuda *c = s->m->c;
    size_t n = (size_t)s->max_tokens;
    size_t q_dim = (size_t)hp->n_heads * hp->head_dim, kv_dim = (size_t)hp->n_kv_heads * hp->head_dim;
    size_t esz = s->kv_dtype == AMPR__CUDA_F16 ? 2 : 4;
    size_t kv_elems = (size_t)s->n_pages * hp->n_layers * (size_t)s->block_size * kv_dim;
    AMPR__TRY(seq_alloc(c, kv_elems * esz, &s->kc, err));
    AMPR__TRY(seq_alloc(c, kv_elems * esz, &s->vc, err));
    AMPR__TRY(seq_alloc(c, (size_t)s->n_pages * 4, &s->blocks, err));
    AMPR__TRY(seq_alloc(c, n * hp->dim * 4, &s->x, err));
    AMPR__TRY(seq_alloc(c, n * hp->dim * 4, &s->xb, err));
    AMPR__TRY(seq_alloc(c, n * (q_dim + 2 * kv_dim) * 4, &s->qkv, err));
    AMPR__TRY(seq_alloc(c, n * q_dim * 4, &s->att, err));
    AMPR__TRY(seq_alloc(c, n * 2 * hp->hidden_dim * 4, &s->hb, err));
    AMPR__TRY(seq_alloc(c, n * hp->hidden_dim * 4, &s->hb2, err));
    AMPR__TRY(seq_alloc(c, n * hp->vocab_size * 4, &s->logits, err));
    AMPR__TRY(seq_alloc(c, n * 4, &s->tokens, err));
    AMPR__TRY(seq_alloc(c, n * 4, &s->pos, err));
    AMPR__TRY(seq_alloc(c, 4, &s->argmax, err));
    int64_t max_rows = AMPR__MAX((int64_t)(q_dim + 2 * kv_dim),
                                 AMPR__MAX(2 * (int64_t)hp->hidden_dim, (int64_t)hp->vocab_size));
    int64_t max_cols = AMPR__MAX((int64_t)hp->dim, AMPR__MAX((int64_t)q_dim, (int64_t)hp->hidden_dim));
    int64_t nf4 = 0;
    /* the uploaded type: NF4_DQ runs as NF4 on the device */
    if (s->m->embd.type == AMPR__Q_NF4 && s->max_tokens > c->gemv_max) {
        const int64_t qkv = (int64_t)(q_dim + 2 * kv_dim), q = (int64_t)q_dim;
        const int64_t shapes[5][2] = {{hp->vocab_size, hp->dim}, {2 * (int64_t)hp->hidden_dim, hp->dim},
                                      {qkv, hp->dim}, {hp->dim, q}, {hp->dim, hp->hidden_dim}};
        for (int k = 0; k < 5; k++) nf4 = AMPR__MAX(nf4, ampr__cuda_dequant_elems(c, shapes[k][0], shapes[k][1]));
    }
    AMPR__TRY(ampr__cuda_reserve(c, s->max_tokens, max_rows, max_cols, nf4, err));
    return ampr__cuda_sync(c, err);
}

ampr_status ampr__cuda_seq_new(ampr__cuda_model *m, int32_t max_tokens, int32_t block_size,
                               int32_t n_pages, ampr__cuda_dtype kv_dtype,
                               ampr__cuda_seq **out, ampr__err *err) {
    *out = NULL;
    if (max_tokens <= 0 || block_size <= 0 || n_pages <= 0)
        return ampr__fail(err, AMPR_ERR_INVALID_ARG, "CUDA sequence: bad sizes");
    ampr__cuda_seq *s = (ampr__cuda_seq *)ampr__calloc(1, sizeof *s);
    if (!s) return ampr__fail(err, AMPR_ERR_NOMEM, "out of memory for a CUDA sequence");
    s->m = m;
    s->max_tokens = max_tokens;
    s->block_size = block_size;
    s->n_pages = n_pages;
    s->kv_dtype = kv_dtype;
    ampr_status st = seq_build(s, err);
    if (st != AMPR_OK) {
        ampr__cuda_seq_free(s);
        return st;
    }
    *out = s;
    return AMPR_OK;
}

void ampr__cuda_seq_free(ampr__cuda_seq *s) {
    if (!s) return;
    ampr__cuda *c = s->m->c;
    if (c->stream) cudaStreamSynchronize(c->stream);
    if (s->exec) cudaGraphExecDestroy(s->exec);
    if (s->graph) cudaGraphDestroy(s->graph);
    void *bufs[] = {s->kc, s->vc, s->blocks, s->x, s->xb, s->qkv, s->att, s->hb, s->hb2,
                    s->logits, s->tokens, s->pos, s->argmax};
    for (size_t i = 0; i < AMPR__ARRAY_LEN(bufs); i++) ampr__cuda_free(c, bufs[i]);
    ampr__free(s);
}

ampr_status ampr__cuda_seq_set_blocks(ampr__cuda_seq *s, const int32_t *blocks, int32_t n_blocks,
                                      ampr__err *err) {
    if (n_blocks < 0 || n_blocks > s->n_pages)
        return ampr__fail(err, AMPR_ERR_INVALID_ARG, "%d blocks for an arena of %d pages",
                          n_blocks, s->n_pages);
    for (int32_t i = 0; i < n_blocks; i++)
        if (blocks[i] < 0 || blocks[i] >= s->n_pages)
            return ampr__fail(err, AMPR_ERR_INVALID_ARG, "page id %d out of range", blocks[i]);
    return ampr__cuda_upload(s->m->c, s->blocks, blocks, (size_t)n_blocks * 4, err);
}

const float *ampr__cuda_seq_logits(const ampr__cuda_seq *s) { return s->logits; }
int32_t *ampr__cuda_seq_argmax(const ampr__cuda_seq *s) { return s->argmax; }

/* ---- the pass ---------------------------------------------------------------- */

/* Programmatic dependent launch (AMPR__CUDA_PDL) for passes of up to
 * PDL_MAX_TOKENS tokens (decode, decode batches) only: c->big_pass set for
 * the others' launches (cuda_err.h, ampr__launch) and cleared after. */
#define PDL_MAX_TOKENS 32
static void big_pass(ampr__cuda *c, int32_t n) { c->big_pass = n > PDL_MAX_TOKENS; }

/* n tokens at s->tokens[0..n), positions s->pos[0..n); everything enqueued,
 * nothing synchronized (so it can be captured). */
static ampr_status run_layers(ampr__cuda_seq *s, int32_t n, int all_logits, ampr__err *err) {
    const ampr__cuda_model *m = s->m;
    const ampr__cuda_hparams *hp = &m->hp;
    int32_t kv_dim = hp->n_kv_heads * hp->head_dim, n_out = all_logits ? n : 1;
    pass_bufs b = {s->x, s->xb, s->qkv, s->att, s->hb, s->hb2, s->logits, s->tokens, s->pos,
                   {s->kc, s->vc, s->kv_dtype, hp->n_layers, s->block_size, kv_dim, 0, s->blocks,
                    NULL, 0}, pass_addnorm(m, 0, n, n_out)};
    AMPR__TRY(layer_embed(m, &b, n, err));
    for (int32_t l = 0; l < hp->n_layers; l++) {
        AMPR__TRY(layer_attention(m, &b, l, n, err));
        AMPR__TRY(layer_ffn(m, &b, l, n, err));
    }
    AMPR__TRY(layer_logits(m, &b, n, n_out, err));
    return ampr__cuda_argmax(m->c, s->logits + (size_t)(n_out - 1) * hp->vocab_size, 1,
                             hp->vocab_size, s->argmax, err);
}
static ampr_status run(ampr__cuda_seq *s, int32_t n, int all_logits, ampr__err *err) {
    big_pass(s->m->c, n);
    ampr_status st = run_layers(s, n, all_logits, err);
    big_pass(s->m->c, 0);
    return st;
}

ampr_status ampr__cuda_forward(ampr__cuda_seq *s, const int32_t *tokens, int32_t n, int32_t p0,
                               int all_logits, ampr__err *err) {
    const ampr__cuda_hparams *hp = &s->m->hp;
    if (n <= 0 || n > s->max_tokens)
        return ampr__fail(err, AMPR_ERR_INTERNAL, "CUDA forward of %d tokens (scratch holds %d)",
                          n, s->max_tokens);
    if (p0 < 0 || (int64_t)p0 + n > hp->context_length ||
        (int64_t)p0 + n > (int64_t)s->n_pages * s->block_size)
        return ampr__fail(err, AMPR_ERR_PROMPT_TOO_LONG, "positions %d..%d do not fit", p0,
                          p0 + n - 1);
    int32_t *host = (int32_t *)ampr__alloc_array((size_t)n, sizeof(int32_t), err);
    if (!host) return AMPR_ERR_NOMEM;
    ampr_status st = AMPR_OK;
    for (int32_t i = 0; i < n && st == AMPR_OK; i++)
        if (tokens[i] < 0 || tokens[i] >= hp->vocab_size)
            st = ampr__fail(err, AMPR_ERR_INVALID_ARG, "token id %d out of range [0, %d)",
                            tokens[i], hp->vocab_size);
    if (st == AMPR_OK) st = ampr__cuda_upload(s->m->c, s->tokens, tokens, (size_t)n * 4, err);
    for (int32_t i = 0; i < n; i++) host[i] = p0 + i;
    if (st == AMPR_OK) st = ampr__cuda_upload(s->m->c, s->pos, host, (size_t)n * 4, err);
    ampr__free(host);
    if (st != AMPR_OK) return st;
    return run(s, n, all_logits, err);
}

/* ---- decode ------------------------------------------------------------------- */

__global__ void advance_kernel(int32_t *tokens, int32_t *pos, const int32_t *argmax) {
    AMPR__PDL_ENTER();
    tokens[0] = argmax[0];
    pos[0] += 1;
}

ampr_status ampr__cuda_decode_set(ampr__cuda_seq *s, int32_t token, int32_t pos, ampr__err *err) {
    if (token < 0 || token >= s->m->hp.vocab_size || pos < 0 || pos >= s->m->hp.context_length ||
        pos >= s->n_pages * s->block_size)
        return ampr__fail(err, AMPR_ERR_INVALID_ARG, "decode token %d at position %d", token, pos);
    AMPR__TRY(ampr__cuda_upload(s->m->c, s->tokens, &token, 4, err));
    return ampr__cuda_upload(s->m->c, s->pos, &pos, 4, err);
}

static ampr_status decode_body(ampr__cuda_seq *s, int greedy, ampr__err *err) {
    AMPR__TRY(run(s, 1, 0, err));
    if (greedy) {
        ampr__launch(s->m->c, "advance_kernel", advance_kernel, 1, 1, 0, s->tokens, s->pos, s->argmax);
        AMPR__CU_LAUNCHED(err, "advance");
    }
    return AMPR_OK;
}

static ampr_status capture(ampr__cuda_seq *s, int greedy, ampr__err *err) {
    ampr__cuda *c = s->m->c;
    if (s->exec) cudaGraphExecDestroy(s->exec);
    if (s->graph) cudaGraphDestroy(s->graph);
    s->exec = NULL;
    s->graph = NULL;
    AMPR__CU(err, cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal));
    ampr_status st = decode_body(s, greedy, err);
    cudaGraph_t g = NULL;
    cudaError_t e = cudaStreamEndCapture(c->stream, &g); /* always end the capture */
    if (st != AMPR_OK) {
        if (g) cudaGraphDestroy(g);
        (void)cudaGetLastError();
        return st;
    }
    if (e != cudaSuccess) return ampr__cuda_fail(err, e, "cudaStreamEndCapture", __FILE__, __LINE__);
    s->graph = g;
    AMPR__CU(err, cudaGraphInstantiate(&s->exec, s->graph, 0));
    s->graph_greedy = greedy;
    s->graph_gen = c->scratch_gen;
    return AMPR_OK;
}

ampr_status ampr__cuda_decode(ampr__cuda_seq *s, int greedy, int use_graph, ampr__err *err) {
    if (!use_graph) return decode_body(s, greedy, err);
    if (!s->exec || s->graph_greedy != greedy || s->graph_gen != s->m->c->scratch_gen)
        AMPR__TRY(capture(s, greedy, err)); /* first use, other mode, or scratch moved */
    AMPR__CU(err, cudaGraphLaunch(s->exec, s->m->c->stream));
    return AMPR_OK;
}

/* ---- paged passes over a tier's KV page pool (the engine's backend) -------- */

struct ampr__cuda_kvpool {
    ampr__cuda *c;
    void *k, *v;                 /* [n_pages][n_layers][block_size][kv_dim] */
    int32_t n_pages, block_size, n_layers, kv_dim;
    ampr__cuda_dtype dtype;
    uint64_t bytes;
};

ampr_status ampr__cuda_kvpool_new(ampr__cuda *c, int32_t n_layers, int32_t kv_dim,
                                  int32_t block_size, int32_t n_pages, ampr__cuda_dtype dtype,
                                  ampr__cuda_kvpool **out, ampr__err *err) {
    *out = NULL;
    if (n_layers <= 0 || kv_dim <= 0 || block_size <= 0 || n_pages <= 0)
        return ampr__fail(err, AMPR_ERR_INVALID_ARG, "CUDA KV pool: bad sizes");
    ampr__cuda_kvpool *p = (ampr__cuda_kvpool *)ampr__calloc(1, sizeof *p);
    if (!p) return ampr__fail(err, AMPR_ERR_NOMEM, "out of memory for a CUDA KV pool");
    p->c = c;
    p->n_pages = n_pages;
    p->block_size = block_size;
    p->n_layers = n_layers;
    p->kv_dim = kv_dim;
    p->dtype = dtype;
    size_t elems = (size_t)n_pages * (size_t)n_layers * (size_t)block_size * (size_t)kv_dim;
    size_t bytes = elems * (dtype == AMPR__CUDA_F16 ? 2 : 4);
    p->bytes = 2 * (uint64_t)bytes;
    ampr_status st = seq_alloc(c, bytes, &p->k, err);
    if (st == AMPR_OK) st = seq_alloc(c, bytes, &p->v, err);
    if (st != AMPR_OK) {
        ampr__cuda_kvpool_free(p);
        return st;
    }
    *out = p;
    return AMPR_OK;
}

void ampr__cuda_kvpool_free(ampr__cuda_kvpool *p) {
    if (!p) return;
    cudaSetDevice(p->c->device);
    if (p->c->stream) cudaStreamSynchronize(p->c->stream);
    ampr__cuda_free(p->c, p->k);
    ampr__cuda_free(p->c, p->v);
    ampr__free(p);
}

uint64_t ampr__cuda_kvpool_bytes(const ampr__cuda_kvpool *p) { return p ? p->bytes : 0; }

ampr_status ampr__cuda_model_set_smooth(ampr__cuda_model *m, int32_t layer, int mm,
                                        const float *s, int32_t len, ampr__err *err) {
    if (layer < 0 || layer >= m->hp.n_layers || mm < 0 || mm > 3 || !s || len <= 0)
        return ampr__fail(err, AMPR_ERR_INVALID_ARG, "CUDA smooth factors: bad arguments");
    if (!m->smooth) {
        m->smooth = (float **)ampr__calloc(4 * (size_t)m->hp.n_layers, sizeof(float *));
        if (!m->smooth) return ampr__fail(err, AMPR_ERR_NOMEM, "out of memory for smooth factors");
    }
    float **slot = &m->smooth[4 * (size_t)layer + (size_t)mm];
    m->c->scratch_gen++; /* captured passes hold the old divisors (or none) */
    ampr__cuda_free(m->c, *slot);
    *slot = NULL;
    return upload_f32(m->c, s, (size_t)len, slot, err);
}

/* A captured pass of the engine (logits for every token): replayed when the
 * same model, pool, token count and table stride come again and no buffer it
 * uses has moved since (the generation counters, per rank). One rank with
 * nothing to all-reduce: the whole pass is one graph (exec). Ranks with
 * all-reduces between the half-layers (AMPR__CUDA_TP_GRAPHS): each rank's
 * part of each segment between two all-reduces is a graph (seg[rank][k],
 * pass_segment), launched in turn with the all-reduces in between. */
#define AMPR__CUDA_PASS_GRAPHS 64
#define AMPR__CUDA_PASS_GRAPH_MAX_N 32 /* decode batches; longer passes run eagerly */
typedef struct pass_graph {
    const ampr__cuda_model *m;
    const ampr__cuda_kvpool *kv;
    int32_t n, stride;
    int has_row_seq;
    int n_ranks, reduces;      /* the pass's ranks, and whether it all-reduces */
    int runs;                  /* eager runs so far (up to 2): capture on the second */
    uint64_t last_use;         /* for evicting the least recently used */
    uint64_t c_gen[AMPR__TP_MAX], w_gen[AMPR__TP_MAX]; /* generations when captured (or when capture failed) */
    int failed;                /* capture failed at those generations: run eagerly */
    cudaGraphExec_t exec;
    cudaGraphExec_t *seg;      /* [n_ranks][2 layers + 1], or NULL */
    int32_t n_seg;             /* segments a rank */
} pass_graph;

struct ampr__cuda_work {
    ampr__cuda *c;
    ampr__cuda_hparams hp;
    int32_t cap_tokens, cap_logits, cap_blocks; /* capacities of the buffers below */
    float *x, *xb, *qkv, *att, *hb, *hb2;     /* [cap_tokens][...] */
    float *logits;                            /* [cap_logits][vocab] */
    /* what decode rows bring back instead of the row (fetch_logits): device
     * argmaxes and candidate lists, and their host staging */
    int32_t *argmax, *cand_ids, *cand_n;      /* [cap_logits], [cap_logits][CANDS_MAX], [..] */
    float *cand_vals;                         /* [cap_logits][AMPR__CANDS_MAX] */
    ampr__cuda_cand_req *cand_req;            /* [cap_logits] */
    double *cand_mass;                        /* [cap_logits]: a nucleus's row mass */
    /* host, as the device ones; what comes back (h_argmax, h_ids, h_n,
     * h_vals, h_mass, h_part, h_dout) in one block of pinned memory
     * (h_block): their copies are asynchronous, a pass waits once */
    void *h_block;
    int32_t *h_argmax, *h_ids, *h_n;
    float *h_vals;
    double *h_mass;
    ampr__cuda_cand_req *h_req;
    /* the fallback's monitor (fetch_logits): requests and slice sums */
    ampr__cuda_mon_req *mon_req, *h_mon;      /* [cap_logits] */
    ampr__row_part *mon_part, *h_part;        /* [cap_logits][AMPR__CUDA_MON_PARTS] */
    /* temperature-only draws (fetch_logits): requests and tokens */
    ampr__cuda_draw_req *draw_req, *h_dreq;   /* [cap_logits] */
    int32_t *draw_out, *h_dout;
    /* repetition penalties (fetch_logits): the logits changed and their values */
    ampr__cuda_pen *pen, *h_pen;              /* [pen_cap], grown as asked for */
    float *pen_kept;
    int32_t pen_cap;
    /* one device allocation of 3*cap_tokens + cap_blocks ints, filled by one
     * copy from stage (host) per pass, packed for the pass's n tokens:
     * tokens [n] | pos [n] | row_seq [n] | blocks [n_blk] (the pointers below) */
    int32_t *ints, *stage;
    int32_t *tokens, *pos, *row_seq, *blocks;
    uint64_t gen;                             /* bumped whenever a buffer above moves */
    int graphs;                               /* capture passes (AMPR_CUDA_GRAPHS != "0") */
    pass_graph g[AMPR__CUDA_PASS_GRAPHS];
    uint64_t g_clock;                         /* pass counter for last_use */
};

ampr_status ampr__cuda_work_new(ampr__cuda *c, const ampr__cuda_hparams *hp,
                                ampr__cuda_work **out, ampr__err *err) {
    *out = NULL;
    ampr__cuda_work *w = (ampr__cuda_work *)ampr__calloc(1, sizeof *w);
    if (!w) return ampr__fail(err, AMPR_ERR_NOMEM, "out of memory for CUDA work buffers");
    w->c = c;
    w->hp = *hp;
    const char *e = getenv("AMPR_CUDA_GRAPHS");
    w->graphs = !(e && !strcmp(e, "0"));
    *out = w;
    return AMPR_OK;
}

/* The graphs of a slot destroyed (its key kept) */
static void graph_execs_drop(pass_graph *g) {
    if (g->exec) cudaGraphExecDestroy(g->exec);
    g->exec = NULL;
    if (g->seg) {
        for (int32_t i = 0; i < g->n_ranks * g->n_seg; i++)
            if (g->seg[i]) cudaGraphExecDestroy(g->seg[i]);
        ampr__free(g->seg);
    }
    g->seg = NULL;
}

static void graph_drop(pass_graph *g) {
    graph_execs_drop(g);
    memset(g, 0, sizeof *g);
}

static int graph_live(const pass_graph *g) { return g->exec || g->seg; }

void ampr__cuda_work_set_graphs(ampr__cuda_work *w, int on) {
    w->graphs = on != 0;
    if (!on)
        for (int i = 0; i < AMPR__CUDA_PASS_GRAPHS; i++) graph_drop(&w->g[i]);
}

int ampr__cuda_work_graphs_live(const ampr__cuda_work *w) {
    int k = 0;
    for (int i = 0; i < AMPR__CUDA_PASS_GRAPHS; i++) k += graph_live(&w->g[i]);
    return k;
}

/* The repetition penalties' buffers (grown by penalties()). */
static void pen_release(ampr__cuda_work *w) {
    ampr__cuda_free(w->c, w->pen);
    ampr__cuda_free(w->c, w->pen_kept);
    ampr__free(w->h_pen);
    w->pen = w->h_pen = NULL;
    w->pen_kept = NULL;
    w->pen_cap = 0;
}

/* The logits rows and what decode rows bring back instead (fetch_logits). */
static void logits_release(ampr__cuda_work *w) {
    ampr__cuda *c = w->c;
    ampr__cuda_free(c, w->logits);
    ampr__cuda_free(c, w->argmax);
    ampr__cuda_free(c, w->cand_vals);
    ampr__cuda_free(c, w->cand_ids);
    ampr__cuda_free(c, w->cand_n);
    ampr__cuda_free(c, w->cand_req);
    ampr__cuda_free(c, w->cand_mass);
    w->cand_mass = w->h_mass = NULL;
    ampr__cuda_free(c, w->mon_req);
    ampr__cuda_free(c, w->mon_part);
    ampr__cuda_free(c, w->draw_req);
    ampr__cuda_free(c, w->draw_out);
    ampr__free(w->h_req);
    ampr__free(w->h_mon);
    ampr__free(w->h_dreq);
    w->draw_req = w->h_dreq = NULL;
    w->draw_out = w->h_dout = NULL;
    pen_release(w);
    w->mon_req = w->h_mon = NULL;
    w->mon_part = w->h_part = NULL;
    if (w->h_block) cudaFreeHost(w->h_block);
    w->h_block = NULL;
    w->logits = w->cand_vals = NULL;
    w->argmax = w->cand_ids = w->cand_n = w->h_argmax = w->h_n = w->h_ids = NULL;
    w->h_vals = NULL;
    w->cand_req = w->h_req = NULL;
    w->cap_logits = 0;
}

static void work_release(ampr__cuda_work *w) {
    void *bufs[] = {w->x, w->xb, w->qkv, w->att, w->hb, w->hb2};
    for (size_t i = 0; i < AMPR__ARRAY_LEN(bufs); i++) ampr__cuda_free(w->c, bufs[i]);
    w->x = w->xb = w->qkv = w->att = w->hb = w->hb2 = NULL;
    w->cap_tokens = 0;
}

static void ints_release(ampr__cuda_work *w) {
    ampr__cuda_free(w->c, w->ints);
    ampr__free(w->stage);
    w->ints = w->stage = w->tokens = w->pos = w->row_seq = w->blocks = NULL;
}

void ampr__cuda_work_free(ampr__cuda_work *w) {
    if (!w) return;
    cudaSetDevice(w->c->device);
    if (w->c->stream) cudaStreamSynchronize(w->c->stream);
    for (int i = 0; i < AMPR__CUDA_PASS_GRAPHS; i++) graph_drop(&w->g[i]);
    work_release(w);
    ints_release(w);
    logits_release(w);
    ampr__free(w);
}

/* Grow the buffers to hold n tokens, n_logits logits rows and n_blocks table
 * entries (rounded up, so growth is rare). */
static ampr_status work_reserve(ampr__cuda_work *w, int32_t n, int32_t n_logits, int32_t n_blocks,
                                ampr__err *err) {
    const ampr__cuda_hparams *hp = &w->hp;
    ampr__cuda *c = w->c;
    int ints_small = n > w->cap_tokens || n_blocks > w->cap_blocks;
    if (n > w->cap_tokens) {
        AMPR__CU(err, cudaStreamSynchronize(c->stream));
        work_release(w);
        w->gen++;
        size_t cap = 32;
        while (cap < (size_t)n) cap *= 2; /* growth is rare, and each one drops the graphs */
        size_t q_dim = (size_t)hp->n_heads * hp->head_dim, kv_dim = (size_t)hp->n_kv_heads * hp->head_dim;
        AMPR__TRY(seq_alloc(c, cap * hp->dim * 4, &w->x, err));
        AMPR__TRY(seq_alloc(c, cap * hp->dim * 4, &w->xb, err));
        AMPR__TRY(seq_alloc(c, cap * (q_dim + 2 * kv_dim) * 4, &w->qkv, err));
        AMPR__TRY(seq_alloc(c, cap * q_dim * 4, &w->att, err));
        AMPR__TRY(seq_alloc(c, cap * 2 * (size_t)hp->hidden_dim * 4, &w->hb, err));
        AMPR__TRY(seq_alloc(c, cap * (size_t)hp->hidden_dim * 4, &w->hb2, err));
        w->cap_tokens = (int32_t)cap;
    }
    if (ints_small) {
        AMPR__CU(err, cudaStreamSynchronize(c->stream));
        ints_release(w);
        w->gen++;
        int64_t cap_blocks = AMPR__MAX(w->cap_blocks, 1024);
        while (cap_blocks < n_blocks) cap_blocks *= 2;
        if (cap_blocks > INT32_MAX) return ampr__fail(err, AMPR_ERR_INTERNAL, "block table too large");
        w->cap_blocks = 0;
        size_t count = 3 * (size_t)w->cap_tokens + (size_t)cap_blocks;
        w->stage = (int32_t *)ampr__calloc(count, sizeof(int32_t)); /* defined bytes */
        if (!w->stage) return ampr__fail(err, AMPR_ERR_NOMEM, "out of memory for CUDA inputs");
        AMPR__TRY(seq_alloc(c, count * 4, &w->ints, err));
        w->cap_blocks = (int32_t)cap_blocks;
    }
    if (n_logits > w->cap_logits) {
        AMPR__CU(err, cudaStreamSynchronize(c->stream));
        logits_release(w);
        w->gen++;
        int32_t cap = 32;
        while (cap < n_logits) cap *= 2; /* n_logits <= tokens of a pass, an int32 */
        size_t nc = (size_t)cap * AMPR__CANDS_MAX;
        AMPR__TRY(seq_alloc(c, (size_t)cap * (size_t)hp->vocab_size * 4, &w->logits, err));
        AMPR__TRY(seq_alloc(c, (size_t)cap * 4, &w->argmax, err));
        AMPR__TRY(seq_alloc(c, nc * 4, &w->cand_vals, err));
        AMPR__TRY(seq_alloc(c, nc * 4, &w->cand_ids, err));
        AMPR__TRY(seq_alloc(c, (size_t)cap * 4, &w->cand_n, err));
        AMPR__TRY(seq_alloc(c, (size_t)cap * sizeof(ampr__cuda_cand_req), &w->cand_req, err));
        AMPR__TRY(seq_alloc(c, (size_t)cap * sizeof(double), &w->cand_mass, err));
        size_t np = (size_t)cap * AMPR__CUDA_MON_PARTS;
        AMPR__TRY(seq_alloc(c, (size_t)cap * sizeof(ampr__cuda_mon_req), &w->mon_req, err));
        AMPR__TRY(seq_alloc(c, np * sizeof(ampr__row_part), &w->mon_part, err));
        AMPR__TRY(seq_alloc(c, (size_t)cap * sizeof(ampr__cuda_draw_req), &w->draw_req, err));
        AMPR__TRY(seq_alloc(c, (size_t)cap * 4, &w->draw_out, err));
        /* the requests the host uploads (pageable: a copy from there has
         * read them when it returns, so the host may rewrite them at once) */
        w->h_req = (ampr__cuda_cand_req *)ampr__alloc_array((size_t)cap, sizeof(ampr__cuda_cand_req), err);
        w->h_mon = (ampr__cuda_mon_req *)ampr__alloc_array((size_t)cap, sizeof(ampr__cuda_mon_req), err);
        w->h_dreq = (ampr__cuda_draw_req *)ampr__alloc_array((size_t)cap, sizeof(ampr__cuda_draw_req), err);
        if (!w->h_req || !w->h_mon || !w->h_dreq) return AMPR_ERR_NOMEM;
        /* what comes back, carved from one pinned block (64-byte aligned
         * parts): the copies into it are asynchronous, the host reads it
         * after the pass's one wait (a pass that failed before its wait left
         * its copies in the stream, ahead of the next pass's wait) */
        struct { void **p; size_t bytes; } parts[] = {
            {(void **)&w->h_mass, (size_t)cap * sizeof(double)},
            {(void **)&w->h_argmax, (size_t)cap * 4},
            {(void **)&w->h_n, (size_t)cap * 4},
            {(void **)&w->h_ids, nc * 4},
            {(void **)&w->h_vals, nc * 4},
            {(void **)&w->h_part, np * sizeof(ampr__row_part)},
            {(void **)&w->h_dout, (size_t)cap * 4}};
        size_t total = 0;
        for (size_t i = 0; i < AMPR__ARRAY_LEN(parts); i++) total += (parts[i].bytes + 63) / 64 * 64;
        AMPR__CU(err, cudaMallocHost(&w->h_block, total));
        memset(w->h_block, 0, total);
        total = 0;
        for (size_t i = 0; i < AMPR__ARRAY_LEN(parts); i++) {
            *parts[i].p = (char *)w->h_block + total;
            total += (parts[i].bytes + 63) / 64 * 64;
        }
        w->cap_logits = cap;
    }
    return AMPR_OK;
}

/* The checks and the upload of one rank's inputs for a pass: tokens,
 * positions, row -> sequence map and block tables in one copy. */
static ampr_status rank_inputs(ampr__cuda_model *m, ampr__cuda_kvpool *kv, ampr__cuda_work *w,
                               const int32_t *tokens, const int32_t *pos, const int32_t *row_seq,
                               int32_t n, const int32_t *blocks, size_t n_blk, int32_t n_logits,
                               ampr__err *err) {
    const ampr__cuda_hparams *hp = &m->hp;
    ampr__cuda *c = m->c;
    if (kv->c != c || w->c != c || kv->n_layers != hp->n_layers ||
        kv->kv_dim != hp->n_kv_heads * hp->head_dim)
        return ampr__fail(err, AMPR_ERR_INTERNAL, "CUDA KV pool does not fit the model");
    AMPR__TRY(ampr__cuda_use(c, err));
    AMPR__TRY(work_reserve(w, n, n_logits, (int32_t)n_blk, err));
    size_t k = (size_t)n;
    memcpy(w->stage, tokens, k * 4);
    memcpy(w->stage + k, pos, k * 4);
    if (row_seq) memcpy(w->stage + 2 * k, row_seq, k * 4);
    else memset(w->stage + 2 * k, 0, k * 4);
    memcpy(w->stage + 3 * k, blocks, n_blk * 4);
    /* the same addresses for every pass of n tokens (graphs bake them in) */
    w->tokens = w->ints;
    w->pos = w->ints + k;
    w->row_seq = w->ints + 2 * k;
    w->blocks = w->ints + 3 * k;
    /* no host wait: the stream orders the copy before the pass, and stage is
     * rewritten only by the next pass, after this one's closing sync */
    AMPR__CU(err, cudaMemcpyAsync(w->ints, w->stage, (3 * k + n_blk) * 4, cudaMemcpyHostToDevice,
                                  c->stream));
    return AMPR_OK;
}

/* Sum every rank's w->xb over the group (nothing to do with one rank). */
static ampr_status reduce_parts(ampr__cuda_work *const *w, int n_ranks, ampr__cuda_reduce *red,
                                int32_t n, ampr__err *err) {
    if (!red) return AMPR_OK;
    float *bufs[AMPR__TP_MAX];
    for (int r = 0; r < n_ranks; r++) bufs[r] = w[r]->xb;
    return ampr__cuda_reduce_sum(red, bufs, (size_t)n * (size_t)w[0]->hp.dim, err);
}

/* Rank r's buffers for a pass over its KV pool and work buffers. */
static pass_bufs rank_bufs(const ampr__cuda_model *m, const ampr__cuda_kvpool *kv,
                           const ampr__cuda_work *w, int has_row_seq, int32_t stride) {
    pass_bufs b = {w->x, w->xb, w->qkv, w->att, w->hb, w->hb2, w->logits, w->tokens, w->pos,
                   {kv->k, kv->v, kv->dtype, m->hp.n_layers, kv->block_size, kv->kv_dim, 0,
                    w->blocks, has_row_seq ? w->row_seq : NULL, stride}, 0};
    return b;
}

/* A pass is 2 L + 1 segments (L layers), each rank's part of one between two
 * all-reduces: 0 = the embedding and layer 0's attention half, 2l + 1 =
 * layer l's FFN half, 2l + 2 = layer l + 1's attention half, 2 L = the final
 * norm and the logits, on rank 0 only (the residual stream is the same on
 * every rank). Segment k of rank r: */
static ampr_status pass_segment(const ampr__cuda_model *m, const pass_bufs *b, int r, int32_t k,
                                int32_t n, int32_t n_logits, ampr__err *err) {
    int32_t L = m->hp.n_layers;
    if (k == 2 * L) return r == 0 ? layer_logits(m, b, n, n_logits, err) : AMPR_OK;
    if (k % 2) return layer_ffn(m, b, (k - 1) / 2, n, err);
    if (k == 0) AMPR__TRY(layer_embed(m, b, n, err));
    return layer_attention(m, b, k / 2, n, err);
}

/* Everything a pass enqueues after its inputs are on the devices: the
 * segments with the all-reduces between them, the logits into w[0]->logits.
 * No host synchronization and no allocation once the scratch is large
 * enough, so a single-rank pass, or a segment of a rank, can be captured.
 * Each segment is enqueued on every rank before the next: the ranks' streams
 * run side by side, meeting only in the all-reduces. g: a slot whose
 * segment graphs replace the eager segments (NULL: none). */
static ampr_status pass_layers(ampr__cuda_model *const *m, ampr__cuda_kvpool *const *kv,
                               ampr__cuda_work *const *w, int n_ranks, ampr__cuda_reduce *red,
                               int32_t n, int has_row_seq, int32_t stride, int32_t n_logits,
                               const pass_graph *g, ampr__err *err) {
    pass_bufs b[AMPR__TP_MAX];
    for (int r = 0; r < n_ranks; r++) {
        b[r] = rank_bufs(m[r], kv[r], w[r], has_row_seq, stride);
        b[r].addnorm = pass_addnorm(m[r], red != NULL, n, n_logits);
    }
    int32_t segs = 2 * m[0]->hp.n_layers + 1;
    for (int32_t k = 0; k < segs; k++) {
        for (int r = 0; r < n_ranks; r++) {
            cudaGraphExec_t e = g && g->seg ? g->seg[r * segs + k] : NULL;
            if (!e) {
                AMPR__TRY(pass_segment(m[r], &b[r], r, k, n, n_logits, err));
                continue;
            }
            AMPR__TRY(ampr__cuda_use(m[r]->c, err));
            AMPR__CU(err, cudaGraphLaunch(e, m[r]->c->stream));
        }
        if (k + 1 < segs) AMPR__TRY(reduce_parts(w, n_ranks, red, n, err));
    }
    return AMPR_OK;
}
static ampr_status pass_body(ampr__cuda_model *const *m, ampr__cuda_kvpool *const *kv,
                             ampr__cuda_work *const *w, int n_ranks, ampr__cuda_reduce *red,
                             int32_t n, int has_row_seq, int32_t stride, int32_t n_logits,
                             const pass_graph *g, ampr__err *err) {
    for (int r = 0; r < n_ranks; r++) big_pass(m[r]->c, n);
    ampr_status st = pass_layers(m, kv, w, n_ranks, red, n, has_row_seq, stride, n_logits, g, err);
    for (int r = 0; r < n_ranks; r++) big_pass(m[r]->c, 0);
    return st;
}

/* Whether every rank's buffers are where they were at the slot's capture */
static int graph_gens_same(const pass_graph *g, ampr__cuda_work *const *w) {
    for (int r = 0; r < g->n_ranks; r++)
        if (g->c_gen[r] != w[r]->c->scratch_gen || g->w_gen[r] != w[r]->gen) return 0;
    return 1;
}

/* The graph slot of a decode-like pass shape (n tokens, logits for each), or
 * NULL (graphs off, long passes). Graphs whose buffers moved since their
 * capture are dropped here. */
static pass_graph *graph_slot(ampr__cuda_work *const *w, int n_ranks, int reduces,
                              const ampr__cuda_model *m, const ampr__cuda_kvpool *kv, int32_t n,
                              int32_t stride, int has_row_seq) {
    ampr__cuda_work *w0 = w[0];
    if (!w0->graphs || n > AMPR__CUDA_PASS_GRAPH_MAX_N) return NULL;
    pass_graph *victim = &w0->g[0];
    uint64_t now = ++w0->g_clock;
    for (int i = 0; i < AMPR__CUDA_PASS_GRAPHS; i++) {
        pass_graph *g = &w0->g[i];
        if (g->m && g->m == m && g->kv == kv && g->n == n && g->stride == stride &&
            g->has_row_seq == has_row_seq && g->n_ranks == n_ranks && g->reduces == reduces) {
            if (graph_live(g) && !graph_gens_same(g, w)) graph_execs_drop(g); /* stale pointers */
            g->last_use = now;
            return g;
        }
        if (victim->m && (!g->m || g->last_use < victim->last_use)) victim = g;
    }
    pass_graph *g = victim; /* a free slot, else the least recently used */
    graph_drop(g);
    g->last_use = now;
    g->m = m;
    g->kv = kv;
    g->n = n;
    g->stride = stride;
    g->has_row_seq = has_row_seq;
    g->n_ranks = n_ranks;
    g->reduces = reduces;
    return g;
}

/* What body enqueues on c's stream, captured and instantiated into *out (NULL
 * on any failure, the error cleared) */
typedef ampr_status (*capture_fn)(void *arg, ampr__err *err);
static void capture_one(ampr__cuda *c, capture_fn body, void *arg, cudaGraphExec_t *out) {
    *out = NULL;
    ampr__err e;
    memset(&e, 0, sizeof e);
    if (cudaSetDevice(c->device) != cudaSuccess ||
        cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal) != cudaSuccess) {
        (void)cudaGetLastError();
        return;
    }
    ampr_status st = body(arg, &e);
    cudaGraph_t graph = NULL;
    cudaError_t ce = cudaStreamEndCapture(c->stream, &graph); /* always end the capture */
    if (st == AMPR_OK && ce == cudaSuccess && graph && cudaGraphInstantiate(out, graph, 0) != cudaSuccess)
        *out = NULL;
    if (graph) cudaGraphDestroy(graph);
    (void)cudaGetLastError();
}

typedef struct capture_arg {
    ampr__cuda_model *const *m;
    ampr__cuda_kvpool *const *kv;
    ampr__cuda_work *const *w;
    int32_t n, stride;
    int has_row_seq;
    int rank;                  /* a segment's */
    int32_t k;
} capture_arg;

static ampr_status capture_pass(void *p, ampr__err *err) {
    const capture_arg *a = (const capture_arg *)p;
    return pass_body(a->m, a->kv, a->w, 1, NULL, a->n, a->has_row_seq, a->stride, a->n, NULL, err);
}

static ampr_status capture_segment(void *p, ampr__err *err) {
    const capture_arg *a = (const capture_arg *)p;
    int r = a->rank;
    pass_bufs b = rank_bufs(a->m[r], a->kv[r], a->w[r], a->has_row_seq, a->stride);
    big_pass(a->m[r]->c, a->n);
    ampr_status st = pass_segment(a->m[r], &b, r, a->k, a->n, a->n, err);
    big_pass(a->m[r]->c, 0);
    return st;
}

/* Capture the slot's pass: one graph for a single rank without all-reduces,
 * else a graph per rank and segment (rank 0's logits segment included; the
 * other ranks have none). On any failure (a buffer that would have to grow,
 * a cuBLASLt shape without an algorithm inside capture, ...) what was
 * captured is dropped and g marked failed for the current buffer
 * generations: the pass then runs eagerly, as it would without graphs. */
static void graph_capture(pass_graph *g, ampr__cuda_model *const *m, ampr__cuda_kvpool *const *kv,
                          ampr__cuda_work *const *w, int32_t n, int has_row_seq, int32_t stride) {
    g->failed = 1;
    for (int r = 0; r < g->n_ranks; r++) {
        g->c_gen[r] = w[r]->c->scratch_gen;
        g->w_gen[r] = w[r]->gen;
    }
    capture_arg a = {m, kv, w, n, stride, has_row_seq, 0, 0};
    if (g->n_ranks == 1 && !g->reduces) {
        capture_one(m[0]->c, capture_pass, &a, &g->exec);
    } else {
        int32_t segs = 2 * m[0]->hp.n_layers + 1;
        g->n_seg = segs;
        g->seg = (cudaGraphExec_t *)ampr__calloc((size_t)g->n_ranks * (size_t)segs, sizeof *g->seg);
        for (int r = 0; g->seg && r < g->n_ranks; r++)
            for (int32_t k = 0; k < segs - (r > 0); k++) {
                a.rank = r;
                a.k = k;
                capture_one(m[r]->c, capture_segment, &a, &g->seg[r * segs + k]);
                if (!g->seg[r * segs + k]) {
                    graph_execs_drop(g);
                    return;
                }
            }
    }
    if (graph_live(g) && graph_gens_same(g, w)) g->failed = 0;
    else graph_execs_drop(g);
}

/* Copy rows [i, j) of the pass's logits to the host (async). */
static ampr_status copy_rows(ampr__cuda *c, ampr__cuda_work *w, size_t row, float *logits, int32_t i,
                             int32_t j, ampr__err *err) {
    AMPR__CU(err, cudaMemcpyAsync((char *)logits + (size_t)i * row, (const char *)w->logits + (size_t)i * row,
                                  (size_t)(j - i) * row, cudaMemcpyDeviceToHost, c->stream));
    return AMPR_OK;
}

/* The device address of slot `slot` of a ring (sampler.h) of vocab-long
 * rows; NULL when it has none there. */
static float *ring_row(const ampr__ring *r, int32_t slot, int32_t vocab) {
    if (!r || !r->dev || slot < 0 || slot >= r->n_rows) return NULL;
    return (float *)r->dev + (size_t)slot * (size_t)vocab;
}

/* The fallback's monitor for the rows that ask (stats, kl_ring, keep): one
 * kernel for all of them (merged by monitor_merge once fetch_logits has
 * copied the slice sums back with the rest). *n_mon = how many rows asked. */
static ampr_status monitor_start(ampr__cuda *c, ampr__cuda_work *w, int32_t vocab, int32_t n_logits,
                                 const ampr__row_want *want, int32_t *n_mon, int32_t *n_parts,
                                 ampr__err *err) {
    int32_t n = 0;
    for (int32_t i = 0; i < n_logits; i++) {
        const ampr__row_want *wi = &want[i];
        if (!wi->stats && !wi->kl_ring && !wi->keep) continue;
        ampr__cuda_mon_req q = {i, ring_row(wi->kl_ring, wi->kl_slot, vocab),
                                ring_row(wi->keep, wi->keep_slot, vocab)};
        if ((wi->kl_ring && !q.q) || (wi->keep && !q.keep))
            return ampr__fail(err, AMPR_ERR_INTERNAL, "row %d asks for a slot no device ring has", i);
        w->h_mon[n++] = q;
    }
    *n_mon = n;
    /* slices of about 4096 logits: a 128k row is 32 blocks */
    *n_parts = AMPR__MIN((vocab + 4095) / 4096, AMPR__CUDA_MON_PARTS);
    if (!n) return AMPR_OK;
    AMPR__CU(err, cudaMemcpyAsync(w->mon_req, w->h_mon, (size_t)n * sizeof *w->h_mon, cudaMemcpyHostToDevice,
                                  c->stream));
    return ampr__cuda_row_monitor(c, w->logits, vocab, w->mon_req, n, *n_parts, w->mon_part, err);
}

static void monitor_merge(const ampr__cuda_work *w, int32_t n_mon, int32_t n_parts, ampr__row_want *want) {
    for (int32_t k = 0; k < n_mon; k++) {
        ampr__row_want *wi = &want[w->h_mon[k].row];
        double kl = 0;
        wi->nonfinite = ampr__row_parts_merge(w->h_part + (size_t)k * (size_t)n_parts, n_parts, &wi->entropy,
                                              wi->kl_ring ? &kl : NULL);
        wi->kl = kl;
    }
}

/* The repetition penalties of the argmax and list rows into one upload;
 * *n_pen = the logits they change. */
static ampr_status penalties(ampr__cuda *c, ampr__cuda_work *w, int32_t vocab, int32_t n_logits,
                             const ampr__row_want *want, int32_t *n_pen, ampr__err *err) {
    int64_t need = 0;
    for (int32_t i = 0; i < n_logits; i++) {
        const ampr__row_want *wi = &want[i];
        if (!ampr__row_draws(wi) || wi->n_pen == 0) continue;
        if (wi->n_pen < 0 || wi->n_pen > AMPR__PEN_MAX)
            return ampr__fail(err, AMPR_ERR_INTERNAL, "row %d names %d penalized ids", i, wi->n_pen);
        need += wi->n_pen;
    }
    if (need > w->pen_cap) { /* grow (the buffers are idle: only this pass's later kernels use them) */
        int32_t cap = 256;
        while (cap < need) cap *= 2; /* need <= n_logits * AMPR__PEN_MAX */
        pen_release(w);
        AMPR__TRY(seq_alloc(c, (size_t)cap * sizeof(ampr__cuda_pen), &w->pen, err));
        AMPR__TRY(seq_alloc(c, (size_t)cap * 4, &w->pen_kept, err));
        w->h_pen = (ampr__cuda_pen *)ampr__alloc_array((size_t)cap, sizeof(ampr__cuda_pen), err);
        if (!w->h_pen) return AMPR_ERR_NOMEM;
        w->pen_cap = cap;
    }
    int32_t n = 0;
    for (int32_t i = 0; i < n_logits; i++) {
        const ampr__row_want *wi = &want[i];
        if (!ampr__row_draws(wi) || wi->n_pen == 0) continue;
        for (int32_t p = 0; p < wi->n_pen; p++) {
            if (wi->pen_ids[p] < 0 || wi->pen_ids[p] >= vocab)
                return ampr__fail(err, AMPR_ERR_INTERNAL, "penalized id %d", wi->pen_ids[p]);
            w->h_pen[n++] = ampr__cuda_pen{i, wi->pen_ids[p], wi->penalty};
        }
    }
    *n_pen = n;
    if (n)
        AMPR__CU(err, cudaMemcpyAsync(w->pen, w->h_pen, (size_t)n * sizeof *w->h_pen, cudaMemcpyHostToDevice,
                                      c->stream));
    return AMPR_OK;
}

/* After a pass, what the host asked of each logits row (want NULL: every
 * row): the rows themselves (runs of consecutive ones in one copy); the
 * monitor's entropy, KL and kept rows; repetition penalties applied for the
 * argmaxes and lists and taken back; the argmaxes, on the device; candidate
 * lists, on the device, then the rows whose lists cannot decide the draw.
 * The last sync reports asynchronous faults. */
static ampr_status fetch_logits(ampr__cuda *c, ampr__cuda_work *w, int32_t vocab, int32_t n_logits,
                                float *logits, ampr__row_want *want, ampr__err *err) {
    size_t row = (size_t)vocab * sizeof(float);
    AMPR__TRY(ampr__cuda_use(c, err));
    if (!want) {
        AMPR__TRY(copy_rows(c, w, row, logits, 0, n_logits, err));
        return ampr__cuda_sync(c, err);
    }
    int32_t n_mon = 0, n_parts = 1;
    AMPR__TRY(monitor_start(c, w, vocab, n_logits, want, &n_mon, &n_parts, err));
    int32_t n_pen = 0; /* after the monitor, which reads the rows as they came */
    AMPR__TRY(penalties(c, w, vocab, n_logits, want, &n_pen, err));
    AMPR__TRY(ampr__cuda_penalize(c, w->logits, vocab, w->pen, n_pen, w->pen_kept, 0, err));
    AMPR__TRY(ampr__cuda_argmax(c, w->logits, n_logits, vocab, w->argmax, err));
    int32_t n_d = 0; /* temperature-only draws */
    for (int32_t i = 0; i < n_logits; i++) {
        if (want[i].what != AMPR__WANT_DRAW) continue;
        if (!(want[i].temperature > 0.0f) || !(want[i].u >= 0.0f && want[i].u < 1.0f))
            return ampr__fail(err, AMPR_ERR_INTERNAL, "draw at T %g with u %g", (double)want[i].temperature,
                              (double)want[i].u);
        w->h_dreq[n_d++] = ampr__cuda_draw_req{i, want[i].temperature, want[i].u};
    }
    if (n_d) {
        AMPR__CU(err, cudaMemcpyAsync(w->draw_req, w->h_dreq, (size_t)n_d * sizeof *w->h_dreq,
                                      cudaMemcpyHostToDevice, c->stream));
        AMPR__TRY(ampr__cuda_temp_draw(c, w->logits, vocab, w->draw_req, n_d, w->draw_out, err));
    }
    int32_t n_c = 0, m_max = 1;
    for (int32_t i = 0; i < n_logits; i++) {
        if (want[i].what != AMPR__WANT_CANDS) continue;
        int32_t m = AMPR__MIN(AMPR__MIN(want[i].m, vocab), AMPR__CANDS_MAX);
        int32_t k = AMPR__MIN(want[i].top_k, m); /* 0: a nucleus */
        float p = want[i].top_p;
        if (m < 1 || k < 0 || (k == 0 && !(p > 0.0f && p < 1.0f)) || !(want[i].temperature > 0.0f))
            return ampr__fail(err, AMPR_ERR_INTERNAL, "candidate list of k %d, m %d, T %g, p %g",
                              want[i].top_k, want[i].m, (double)want[i].temperature, (double)p);
        w->h_req[n_c++] = ampr__cuda_cand_req{i, k, m, want[i].temperature, p};
        m_max = AMPR__MAX(m_max, m);
    }
    if (n_c) {
        AMPR__CU(err, cudaMemcpyAsync(w->cand_req, w->h_req, (size_t)n_c * sizeof *w->h_req,
                                      cudaMemcpyHostToDevice, c->stream));
        AMPR__TRY(ampr__cuda_topk_cands(c, w->logits, vocab, w->cand_req, n_c, m_max, w->cand_vals,
                                        w->cand_ids, w->cand_n, w->cand_mass, err));
    }
    /* the rows as they came, for the ones that come back */
    AMPR__TRY(ampr__cuda_penalize(c, w->logits, vocab, w->pen, n_pen, w->pen_kept, 1, err));
    for (int32_t i = 0; i < n_logits;) {
        if (want[i].what != AMPR__WANT_ROW) { /* NONE: nothing of the row itself */
            i++;
            continue;
        }
        int32_t j = i + 1;
        while (j < n_logits && want[j].what == AMPR__WANT_ROW) j++;
        AMPR__TRY(copy_rows(c, w, row, logits, i, j, err));
        i = j;
    }
    /* the small results into pinned memory (asynchronous): after every
     * kernel is queued, then one wait for all of them */
    if (n_mon)
        AMPR__CU(err, cudaMemcpyAsync(w->h_part, w->mon_part, (size_t)n_mon * (size_t)n_parts * sizeof *w->h_part,
                                      cudaMemcpyDeviceToHost, c->stream));
    if (n_d)
        AMPR__CU(err, cudaMemcpyAsync(w->h_dout, w->draw_out, (size_t)n_d * 4, cudaMemcpyDeviceToHost, c->stream));
    if (n_c) {
        size_t nc = (size_t)n_c * (size_t)m_max;
        AMPR__CU(err, cudaMemcpyAsync(w->h_vals, w->cand_vals, nc * 4, cudaMemcpyDeviceToHost, c->stream));
        AMPR__CU(err, cudaMemcpyAsync(w->h_ids, w->cand_ids, nc * 4, cudaMemcpyDeviceToHost, c->stream));
        AMPR__CU(err, cudaMemcpyAsync(w->h_n, w->cand_n, (size_t)n_c * 4, cudaMemcpyDeviceToHost, c->stream));
        AMPR__CU(err, cudaMemcpyAsync(w->h_mass, w->cand_mass, (size_t)n_c * sizeof(double), cudaMemcpyDeviceToHost,
                                      c->stream));
    }
    AMPR__CU(err, cudaMemcpyAsync(w->h_argmax, w->argmax, (size_t)n_logits * 4, cudaMemcpyDeviceToHost,
                                  c->stream));
    AMPR__TRY(ampr__cuda_sync(c, err));
    for (int32_t i = 0; i < n_logits; i++) want[i].argmax = w->h_argmax[i];
    monitor_merge(w, n_mon, n_parts, want);
    int more = 0; /* rows whose candidates or walks cannot decide: the row after all */
    for (int32_t q = 0; q < n_d; q++) {
        ampr__row_want *wq = &want[w->h_dreq[q].row];
        wq->drawn = w->h_dout[q];
        if (wq->drawn < 0) {
            AMPR__TRY(copy_rows(c, w, row, logits, w->h_dreq[q].row, w->h_dreq[q].row + 1, err));
            more = 1;
        }
    }
    for (int32_t q = 0; q < n_c; q++) {
        ampr__row_want *wq = &want[w->h_req[q].row];
        wq->n_cands = w->h_n[q];
        wq->mass = w->h_req[q].k == 0 ? w->h_mass[q] : 0;
        if (wq->n_cands > 0) {
            memcpy(wq->cand_vals, w->h_vals + (size_t)q * m_max, (size_t)wq->n_cands * 4);
            memcpy(wq->cand_ids, w->h_ids + (size_t)q * m_max, (size_t)wq->n_cands * 4);
        } else {
            AMPR__TRY(copy_rows(c, w, row, logits, w->h_req[q].row, w->h_req[q].row + 1, err));
            more = 1;
        }
    }
    return more ? ampr__cuda_sync(c, err) : AMPR_OK;
}

ampr_status ampr__cuda_forward_paged(ampr__cuda_model *const *m, ampr__cuda_kvpool *const *kv,
                                     ampr__cuda_work *const *w, int n_ranks,
                                     ampr__cuda_reduce *red, const int32_t *tokens,
                                     const int32_t *pos, const int32_t *row_seq, int32_t n,
                                     const int32_t *blocks, int32_t n_seqs, int32_t stride,
                                     int32_t n_logits, float *logits, ampr__row_want *want,
                                     ampr__err *err) {
    if (n_ranks < 1 || n_ranks > AMPR__TP_MAX || (n_ranks > 1 && !red))
        return ampr__fail(err, AMPR_ERR_INTERNAL, "CUDA paged forward: %d ranks", n_ranks);
    const ampr__cuda_hparams *hp = &m[0]->hp;
    if (n <= 0 || n_logits < 1 || n_logits > n || n_seqs < 1 || stride < 1)
        return ampr__fail(err, AMPR_ERR_INTERNAL, "CUDA paged forward: %d tokens, %d logits, %d seqs",
                          n, n_logits, n_seqs);
    for (int r = 1; r < n_ranks; r++)
        if (m[r]->hp.n_layers != hp->n_layers || m[r]->hp.dim != hp->dim ||
            kv[r]->block_size != kv[0]->block_size || kv[r]->n_pages != kv[0]->n_pages)
            return ampr__fail(err, AMPR_ERR_INTERNAL, "CUDA ranks disagree on the model's shape");
    for (int32_t i = 0; i < n; i++) {
        int32_t sq = row_seq ? row_seq[i] : 0;
        if (tokens[i] < 0 || tokens[i] >= hp->vocab_size)
            return ampr__fail(err, AMPR_ERR_INVALID_ARG, "token id %d out of range [0, %d)",
                              tokens[i], hp->vocab_size);
        if (sq < 0 || sq >= n_seqs || pos[i] < 0 || pos[i] >= hp->context_length ||
            pos[i] / kv[0]->block_size >= stride)
            return ampr__fail(err, AMPR_ERR_INTERNAL, "CUDA paged forward: row %d (seq %d, pos %d)",
                              i, sq, pos[i]);
    }
    size_t n_blk = (size_t)n_seqs * (size_t)stride;
    for (size_t b = 0; b < n_blk; b++)
        if (blocks[b] < -1 || blocks[b] >= kv[0]->n_pages)
            return ampr__fail(err, AMPR_ERR_INTERNAL, "page id %d out of range [0, %d)", blocks[b],
                              kv[0]->n_pages);
    if (n_blk > (size_t)INT32_MAX) return ampr__fail(err, AMPR_ERR_INTERNAL, "block table too large");

    for (int r = 0; r < n_ranks; r++)
        AMPR__TRY(rank_inputs(m[r], kv[r], w[r], tokens, pos, row_seq, n, blocks, n_blk,
                              r == 0 ? n_logits : 0, err));
    ampr__cuda *c = m[0]->c;
    ampr__cuda_work *w0 = w[0];
    /* graphs for decode-like passes (logits for every token: decode batches,
     * the fallback's check windows), whose shapes repeat: one rank with
     * nothing to all-reduce, or (AMPR__CUDA_TP_GRAPHS) ranks or a rank of a
     * multi-process group (red set) with their segments captured */
    int tp = n_ranks > 1 || red;
    pass_graph *g = n_logits == n && (!tp || c->sw[AMPR__CUDA_TP_GRAPHS])
                        ? graph_slot(w, n_ranks, red != NULL, m[0], kv[0], n, stride, row_seq != NULL)
                        : NULL;
    if (g && !graph_live(g) && !(g->failed && graph_gens_same(g, w)) && g->runs >= 1)
        graph_capture(g, m, kv, w, n, row_seq != NULL, stride); /* failure: eager */
    if (g && g->exec) {
        AMPR__TRY(ampr__cuda_use(c, err));
        AMPR__CU(err, cudaGraphLaunch(g->exec, c->stream));
    } else {
        AMPR__TRY(pass_body(m, kv, w, n_ranks, red, n, row_seq != NULL, stride, n_logits, g, err));
        if (g && !g->seg && g->runs < 2) g->runs++;
    }
    /* a process-per-rank group: wait watching the other ranks (bounded) */
    AMPR__TRY(ampr__cuda_reduce_wait(red, err));
    AMPR__TRY(fetch_logits(c, w0, hp->vocab_size, n_logits, logits, want, err));
    for (int r = 1; r < n_ranks; r++) AMPR__TRY(ampr__cuda_sync(m[r]->c, err));
    return ampr__cuda_sync(c, err);
}
