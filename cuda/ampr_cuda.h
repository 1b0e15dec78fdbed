/*
 * ampr_cuda.h -- the CUDA backend of libampr as a plain C interface.
 *
 * Everything here is internal (ampr__ prefix) and callable from C11. The
 * backend holds one device context per GPU (ampr__cuda): a stream, a
 * cuBLASLt handle with its workspace and a cache of matmul plans, and
 * scratch buffers that grow on demand. Every op is enqueued on the
 * context's stream and returns at once; ampr__cuda_sync() waits and reports
 * asynchronous faults. Errors never print or abort: every CUDA, cuBLASLt and
 * NCCL failure becomes an ampr_status (AMPR_ERR_BACKEND, AMPR_ERR_NO_DEVICE,
 * AMPR_ERR_NOMEM) with a message in err (mapping: cuda/cuda_err.h).
 *
 * Thread safety: a context is used by one host thread at a time. A thread
 * that drives several contexts (tensor parallelism: one per rank, on one
 * GPU or several) calls ampr__cuda_use(c) before enqueuing ops on c; the
 * buffer functions and ampr__cuda_sync() select c's device themselves.
 *
 * Layouts mirror lib/quant and lib/kv bit for bit:
 *   F16   IEEE half, row-major [rows][cols]
 *   INT8  int8 row-major [rows][cols], one fp32 scale per row; activations are
 *         quantized per token exactly as the CPU (quant.h): inv = absmax > 0 ?
 *         127/absmax : 0, q = clamp(round-half-even(x * inv), -127, 127),
 *         s = absmax/127; y = ((float)acc * wscale[r]) * s (int32 acc, exact)
 *   NF4   bitsandbytes NF4, blocks of 64 along the flattened row-major matrix
 *         (any shape: blocks span rows when cols % 64 != 0, element e = r*cols+c
 *         is byte e/2, high nibble when e is even, absmax[e/64]); NF4_DQ is
 *         uploaded as NF4 with its absmax decoded on the host
 *   KV    K and V each [n_pages][n_layers][block_size][kv_dim], f32 or f16;
 *         position p of a sequence lives in page blocks[p / block_size]
 *
 * Device positions and tokens: ops that depend on a token's position read it
 * from device memory (d_pos[i]), so one captured CUDA graph serves every
 * decode step.
 */
#ifndef AMPR_CUDA_H
#define AMPR_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "ampr.h"

#ifdef __cplusplus
extern "C" {
#endif

#include "common/common.h"
#include "quant/quant.h"
#include "sampler/sampler.h"

typedef struct ampr__cuda ampr__cuda;

typedef enum ampr__cuda_dtype { AMPR__CUDA_F32 = 0, AMPR__CUDA_F16 = 1 } ampr__cuda_dtype;

/* ---- context ------------------------------------------------------------- */

/* Number of usable GPUs; 0 (and AMPR_OK) when there is no driver or device. */
ampr_status ampr__cuda_device_count(int *n, ampr__err *err);
/* Open device `device`. AMPR_ERR_NO_DEVICE when there is no driver/GPU or the
 * id is out of range. *out is NULL on failure. */
ampr_status ampr__cuda_open(int device, ampr__cuda **out, ampr__err *err);
void ampr__cuda_close(ampr__cuda *c); /* NULL-safe; waits for pending work */
/* Make c's GPU the calling thread's current device (cudaSetDevice). */
ampr_status ampr__cuda_use(ampr__cuda *c, ampr__err *err);
/* Wait for every op enqueued so far; reports asynchronous faults. */
ampr_status ampr__cuda_sync(ampr__cuda *c, ampr__err *err);
/* Name, compute capability, SM count (for reports). */
const char *ampr__cuda_device_name(const ampr__cuda *c);
int ampr__cuda_device(const ampr__cuda *c); /* the device id */
int ampr__cuda_cc(const ampr__cuda *c); /* major*10 + minor */
/* Decode paths: matmuls with n <= this many tokens use the fused GEMV kernels,
 * larger ones cuBLASLt (default 8, at most 8; 0 forces cuBLASLt always). */
void ampr__cuda_set_gemv_max(ampr__cuda *c, int n);
/* The one-token fp32 NF4 GEMV's shape, for the GPU check's side-by-side
 * timing (check --gemv): R * 10 + U (rows a warp, loads a lane before the
 * arithmetic) of 21, 22, 24, 41, 42 or 44; 0 (the default): 42 on matrices
 * of 24 rows an SM or more, else 22. */
void ampr__cuda_set_nf4_gemv1(ampr__cuda *c, int ru);
/* The NF4 ring GEMV's stages (AMPR__CUDA_NF4_RING), for the same timing: 4
 * or 8; 0 (the default, and any other value): 8 while the ring and the
 * staged x take at most 64 KB of shared memory, else 4. */
void ampr__cuda_set_nf4_ring(ampr__cuda *c, int stages);
/* A probe for the GPU check: every kernel whose launch name contains `name`
 * (e.g. "rmsnorm_kernel", "attention") is launched `times` times from now on,
 * 2 (twice) or 0 (left out), so that a decode step's time with the probe less
 * the time without it (twice), or the time without it less the time with it
 * (left out), is that kernel's cost inside the step: its run and its boundary
 * with the next kernel, as the graph replays them. Twice, the second launch
 * finds the first one's weights in L2 where they fit there and its output as
 * its input where it writes in place; left out, the kernels after it read what
 * it wrote at an earlier step: the values are not meant to be used. NULL or
 * "" stops it. Returns the launches that matched since the previous call. */
unsigned long ampr__cuda_set_probe(ampr__cuda *c, const char *name, int times);
/* NF4 on cuBLASLt (prefill) dequantizes a chunk of rows at a time: the
 * scratch elements a rows x cols matrix needs at any number of tokens
 * (ampr__cuda_reserve's nf4_elems), and the rows of a chunk (0: by size,
 * 16 MB of fp16, or with DQ_WIDE by the tokens; the GPU check sets fewer to
 * run several chunks on small matrices; rounded up to a multiple of 64). */
int64_t ampr__cuda_dequant_elems(const ampr__cuda *c, int64_t rows, int64_t cols);
int64_t ampr__cuda_dequant_rows(const ampr__cuda *c, int64_t rows, int64_t cols, int32_t n);
void ampr__cuda_set_dequant_rows(ampr__cuda *c, int64_t rows);
/* DQ_WIDE's waves of 128 x 128 tiles a chunk (0: the default, 4), for the
 * GPU check's comparison */
void ampr__cuda_set_dequant_waves(ampr__cuda *c, int waves);
/* most tokens of NF4's tensor-core batch matmul (AMPR__CUDA_NF4_BATCH) */
#define AMPR__CUDA_NF4_BATCH_MAX 32
/* Kernel paths chosen at open, each by its switch: its environment variable
 * (ampr__cuda_switch_env) set to 1 turns it on, set to 0 off, unset leaves
 * the default (ampr__cuda_switch_default: on where the GPU check measured it
 * faster and its checks pass, cuda/NOTES.md "Measured history"); the GPU
 * check flips them with ampr__cuda_set_switch to compare both ways.
 *   NF4_BATCH NF4 matmuls of 2 .. 32 tokens (decode batches, short prompts;
 *            cols % 64 == 0) on tensor cores, codes and activations rounded
 *            to fp16 with fp32 sums: up to gemv_max tokens in
 *            gemv_nf4_mma_kernel instead of the fp32 GEMV, which multiplies
 *            each weight once a token (1.8-6.5x faster on the H200), more in
 *            gemm_nf4_mma_kernel instead of dequantizing the matrix for
 *            cuBLASLt (1.2-5x) (on);
 *   NF4_MMA  also NF4's one-token matmuls on tensor cores
 *            (gemv_nf4_mma_kernel) instead of the fp32 GEMV (on: since its
 *            tokens are rounded once a block, 1.13x the decode step at the
 *            1.1B shape and 1.4x the 8B shape's matmuls on the H200);
 *   ATT_MMA  prefill attention (the query-tile path, head_dim 64 or 128) on
 *            tensor cores (attention_mma_kernel: Q, K, V and the probabilities
 *            rounded to fp16, fp32 sums) instead of the fp32 tile kernel
 *            (on);
 *   ATT_DEC  decode attention (the position-split kernel, head_dim 64 or 128)
 *            with its V loop on 16-byte loads (a lane takes 8 positions x
 *            head_dim / 8 dims, 4 or 8 positions' loads in flight) and the
 *            splits merged by the last of them to finish instead of a second
 *            kernel; same math, another summation order (on);
 *   FUSE     ampr__cuda_matmul_swiglu in one kernel where a decode GEMV
 *            applies (one token; NF4 on tensor cores: up to 32): the
 *            same floats as the matmul and swiglu it replaces (off);
 *   PDL      programmatic dependent launch for every kernel (sm_90 and newer;
 *            ignored before) in passes of up to 32 tokens: cuda_err.h,
 *            ampr__launch (on: 1-4% faster decode on the H200; without the
 *            32-token limit prefill was up to 20% slower);
 *   TP_GRAPHS CUDA graphs for the decode-like passes of tensor-parallel ranks
 *            (read from rank 0's context): each rank's part of each segment
 *            between two all-reduces is captured and replayed, the
 *            all-reduces run between them as before (one-rank passes are
 *            one graph whatever this says) (on);
 *   PREFETCH the decode GEMVs (one-token, tensor-core NF4 and its batch
 *            kernel; not the NF4 ring, which copies its first blocks before
 *            the PDL wait anyway) prefetch their blocks' first weights into L2 before
 *            anything else: before the PDL wait, so that with PDL the loads
 *            overlap the previous kernel's tail, and before INT8's
 *            quantization of x and NF4's table fill; a hint, the same
 *            values (off: no faster on the H200);
 *   FUSE_TAIL ampr__cuda_matmul_addnorm and ampr__cuda_matmul_rope_kv in
 *            one kernel where a decode GEMV (up to 8 tokens, gemv_max)
 *            takes the matmul: its last block does the residual add and
 *            RMSNorm, or RoPE and the KV store (the same floats as the
 *            kernels they replace), so decode passes launch no norm kernel
 *            (without all-reduces; cuda_forward.cu) and no RoPE kernel
 *            (off: slower on the H200);
 *   NF4_RING the tensor-core GEMV (NF4_MMA, NF4_BATCH up to gemv_max tokens)
 *            with its weights copied by cp.async through a ring of 4 or 8
 *            stages a warp in shared memory (gemv_nf4_ring_kernel: S - 1
 *            blocks in flight a warp at every step, the first issued before
 *            the PDL wait) where x fits in shared memory; the same floats
 *            (off: not yet measured on a GPU);
 *   DQ_WIDE  NF4 on cuBLASLt (passes of more tokens than NF4_BATCH takes)
 *            dequantizes chunks of rows large enough for cuBLASLt to fill
 *            the GPU (as few as chunks of rows x tokens = 4 waves x SMs x
 *            128 x 128 would be, those at least the 16 MB chunks' rows and
 *            at most 128M elements; a matrix's chunks of one size;
 *            cuda_matmul.cu dq_rows) instead of 16 MB ones that may stay
 *            in L2: at the 8B shape a 16 MB chunk is 2048 rows, 16 tiles of
 *            128 x 128 at 128 tokens for 132 SMs. Another summation order
 *            only where cuBLASLt picks another algorithm for the other row
 *            count (off: not yet measured on a GPU);
 *   DQ_PIPE  those chunks (more than one, prefill passes of more than 32
 *            tokens, not in a graph) alternately on two streams of the
 *            context's own, each with its scratch and cuBLASLt workspace, so
 *            that a chunk's dequantization runs beside the GEMM before it;
 *            the same values (off: not yet measured on a GPU);
 *   I8_ONCE  INT8's one-token GEMV takes x quantized once by
 *            quant_act_kernel instead of every block quantizing it into
 *            shared memory before its first weight (at the 8B shape 528
 *            blocks each read the token twice, 56 KB at 14336 columns): one
 *            launch more, the same bytes and scale (off: not yet measured). */
typedef enum {
    AMPR__CUDA_NF4_MMA,
    AMPR__CUDA_ATT_MMA,
    AMPR__CUDA_ATT_DEC,
    AMPR__CUDA_FUSE,
    AMPR__CUDA_PDL,
    AMPR__CUDA_TP_GRAPHS,
    AMPR__CUDA_PREFETCH,
    AMPR__CUDA_FUSE_TAIL,
    AMPR__CUDA_NF4_BATCH,
    AMPR__CUDA_NF4_RING,
    AMPR__CUDA_DQ_WIDE,
    AMPR__CUDA_DQ_PIPE,
    AMPR__CUDA_I8_ONCE,
    AMPR__CUDA_N_SWITCHES
} ampr__cuda_switch;
void ampr__cuda_set_switch(ampr__cuda *c, ampr__cuda_switch s, int on);
int ampr__cuda_switch_default(ampr__cuda_switch s); /* 1 on, 0 off at open */
int ampr__cuda_switch_on(const ampr__cuda *c, ampr__cuda_switch s);
const char *ampr__cuda_switch_env(ampr__cuda_switch s); /* "AMPR_CUDA_NF4_MMA", ... */
/* Bytes in use on c's GPU (cudaMemGetInfo: total - free, every process's
 * and the driver's); 0 when it cannot tell. */
uint64_t ampr__cuda_mem_used(ampr__cuda *c);
/* Device-to-device copy bandwidth of c's GPU in GB/s, counting the bytes read
 * and written (the figure decode speed is compared with): best of reps
 * copies of `bytes`. Allocates two buffers of that size for the duration. */
ampr_status ampr__cuda_copy_gbs(ampr__cuda *c, size_t bytes, int reps, double *gbs,
                                ampr__err *err);
/* The context's stream as a void* (a cudaStream_t), for callers that time. */
void *ampr__cuda_stream(ampr__cuda *c);

/* ---- buffers (plain cudaMalloc; never managed memory) ------------------- */

ampr_status ampr__cuda_alloc(ampr__cuda *c, size_t bytes, void **dptr, ampr__err *err);
void ampr__cuda_free(ampr__cuda *c, void *dptr); /* NULL-safe */
/* Synchronous with respect to the host buffer: it may be reused on return. */
ampr_status ampr__cuda_upload(ampr__cuda *c, void *dst, const void *src, size_t bytes,
                              ampr__err *err);
/* Waits for the stream, then copies. */
ampr_status ampr__cuda_download(ampr__cuda *c, void *dst, const void *src, size_t bytes,
                                ampr__err *err);
ampr_status ampr__cuda_memset(ampr__cuda *c, void *dst, int value, size_t bytes, ampr__err *err);

/* ---- weights --------------------------------------------------------------- */

/* A weight matrix resident on the device, y = W x with W [rows][cols]. */
typedef struct ampr__cuda_mat {
    ampr__qtype type;     /* AMPR__Q_F16, AMPR__Q_INT8 or AMPR__Q_NF4 */
    int64_t rows, cols;
    void *data;           /* F16: half[rows*cols]; INT8: int8[rows*cols]; NF4: uint8[ceil(rows*cols/2)] */
    float *scales;        /* INT8: [rows]; NF4: [ceil(rows*cols/64)]; F16: NULL */
} ampr__cuda_mat;

/* Copy a CPU matrix (lib/quant layout) to the device: F16, INT8, NF4 and
 * NF4_DQ, any shape (odd shapes use the simple kernel; the fast GEMV needs
 * cols % 8 / 16 / 32, cuBLASLt rows and cols % 64). Else AMPR_ERR_UNSUPPORTED. */
ampr_status ampr__cuda_mat_upload(ampr__cuda *c, const ampr__qmat *src, ampr__cuda_mat *dst,
                                  ampr__err *err);
void ampr__cuda_mat_free(ampr__cuda *c, ampr__cuda_mat *m); /* NULL-safe, zeroes m */
/* Bytes of device memory a matrix's weights and scales take. */
uint64_t ampr__cuda_mat_bytes(const ampr__cuda_mat *m);

/* ---- ops (all enqueued on the context's stream) ---------------------------- */

/* out[i][0..cols) = row d_tokens[i] of table, as fp32 or fp16. */
ampr_status ampr__cuda_embed(ampr__cuda *c, const ampr__cuda_mat *table, const int32_t *d_tokens,
                             int32_t n, void *out, ampr__cuda_dtype out_type, ampr__err *err);
/* out[i] = x[i] * rsqrt(mean(x[i]^2) + eps) * w, for n rows of dim. */
ampr_status ampr__cuda_rmsnorm(ampr__cuda *c, const float *x, const float *w, float *out,
                               int32_t n, int32_t dim, float eps, ampr__err *err);
/* The residual add and the norm after it, in one kernel: x[i] += y[i] (x is
 * updated), then out[i] = rmsnorm(x[i]) * w. y NULL: the norm alone. out
 * may be y (a row is read before it is written) but not x. */
ampr_status ampr__cuda_add_rmsnorm(ampr__cuda *c, float *x, const float *y, const float *w,
                                   float *out, int32_t n, int32_t dim, float eps, ampr__err *err);
/* Rotate n_heads heads of head_dim values in each of n rows (row stride ld)
 * at position d_pos[i], in place. cos/sin: [context][head_dim/2].
 * interleaved: pairs (2i, 2i+1); else half-split pairs (i, i + head_dim/2). */
ampr_status ampr__cuda_rope(ampr__cuda *c, float *v, int64_t ld, int32_t n, int32_t n_heads,
                            int32_t head_dim, const int32_t *d_pos, const float *cos_tab,
                            const float *sin_tab, int interleaved, ampr__err *err);
/* out[i][e] = silu(gu[i][e]) * gu[i][hidden + e]; gu is [n][2*hidden]. */
ampr_status ampr__cuda_swiglu(ampr__cuda *c, const float *gu, float *out, int32_t n,
                              int32_t hidden, ampr__err *err);
/* x[e] += y[e] */
ampr_status ampr__cuda_add(ampr__cuda *c, float *x, const float *y, int64_t count, ampr__err *err);
/* Per-token int8 quantization (see the INT8 rule above): q [n][cols], s [n]. */
ampr_status ampr__cuda_quant_act(ampr__cuda *c, const float *x, int32_t n, int32_t cols,
                                 int8_t *q, float *s, ampr__err *err);
/* y[i*ldy + r] = sum_c W[r][c] x[i][c] for i < n, r < rows. x is fp32
 * [n][cols]. n <= gemv_max: fused GEMV kernels (fp32 activations; INT8
 * quantizes them first); otherwise cuBLASLt (F16: activations rounded to
 * half, fp32 accumulation; INT8: int8 x int8 -> int32, then the scales; NF4:
 * the weights are dequantized to half in scratch first). Plans are cached per
 * (format, rows, n, cols). Scratch grows on demand, except while the stream
 * is being captured (then it fails with AMPR_ERR_INTERNAL: reserve first);
 * growing moves the scratch, so graphs captured before a growth are stale
 * (ampr__cuda_seq_new reserves everything its graph needs up front).
 * Alignment: x 16 bytes (GEMV loads; row i starts at x + i*cols, so cols %
 * 8 == 0 for F16, % 16 for INT8, % 32 for NF4, or the cuBLASLt path is
 * taken); y 256 bytes on the cuBLASLt path (AMPR_ERR_INVALID_ARG otherwise). */
ampr_status ampr__cuda_matmul(ampr__cuda *c, const ampr__cuda_mat *w, const float *x, int32_t n,
                              float *y, int64_t ldy, ampr__err *err);
/* out[i][e] = silu(g) * u of gu = W x (W the gate/up matrix, rows 2 hidden:
 * gate rows, then up rows), out [n][hidden]: one fused kernel where
 * the AMPR__CUDA_FUSE switch allows it, else the matmul into gu [n][2 hidden] and
 * ampr__cuda_swiglu. */
ampr_status ampr__cuda_matmul_swiglu(ampr__cuda *c, const ampr__cuda_mat *w, const float *x,
                                     int32_t n, float *gu, float *out, ampr__err *err);
/* y = W x [n][rows], then the residual add and RMSNorm that follow it:
 * r [n][rows] += y, y = rmsnorm(r) * nw (ampr__cuda_add_rmsnorm(c, r, y, nw,
 * y, n, rows, eps)). In the matmul's own kernel, by its last block, where
 * the AMPR__CUDA_FUSE_TAIL switch allows it and a decode GEMV (up to 8
 * tokens) takes the matmul; else the matmul, then
 * ampr__cuda_add_rmsnorm. The same floats either way. */
ampr_status ampr__cuda_matmul_addnorm(ampr__cuda *c, const ampr__cuda_mat *w, const float *x,
                                      int32_t n, float *y, float *r, const float *nw, float eps,
                                      ampr__err *err);
/* Grow scratch for matmuls of up to max_n tokens, max_cols inputs and
 * max_rows outputs, and NF4 prefill dequantization of matrices of up to
 * nf4_elems weights (0: none). */
ampr_status ampr__cuda_reserve(ampr__cuda *c, int32_t max_n, int64_t max_rows, int64_t max_cols,
                               int64_t nf4_elems, ampr__err *err);

/* Paged KV view of one layer of one sequence. */
typedef struct ampr__cuda_kv_view {
    void *k, *v;               /* arena base pointers (device) */
    ampr__cuda_dtype dtype;    /* f32 or f16 */
    int32_t n_layers, block_size, kv_dim;
    int32_t layer;
    const int32_t *d_blocks;   /* block table (device) */
    /* Several sequences at once: when d_row_seq is set, token/query row i
     * uses row d_row_seq[i] of d_blocks, a [seqs][blocks_stride] table. */
    const int32_t *d_row_seq;  /* device [n] or NULL (one table for all rows) */
    int32_t blocks_stride;
} ampr__cuda_kv_view;

/* Store n rows of K and V at positions d_pos[i] of layer kv->layer: row i
 * holds kv_dim K values at kv_rows + i*ld, then kv_dim V values. kv_dim must
 * be even (AMPR_ERR_UNSUPPORTED otherwise; head_dim always is). */
ampr_status ampr__cuda_kv_store(ampr__cuda *c, const ampr__cuda_kv_view *kv, const float *kv_rows,
                                int64_t ld, int32_t n, const int32_t *d_pos, ampr__err *err);
/* The attention block's RoPE and KV store in one kernel: each row of qkv
 * (stride ld) holds n_heads Q heads, n_kv_heads K heads and n_kv_heads V
 * heads; Q and K rotate in place (as ampr__cuda_rope), then K and V are
 * stored (as ampr__cuda_kv_store). kv->kv_dim must be n_kv_heads * head_dim
 * (AMPR_ERR_INTERNAL otherwise). */
ampr_status ampr__cuda_rope_kv(ampr__cuda *c, const ampr__cuda_kv_view *kv, float *qkv,
                               int64_t ld, int32_t n, int32_t n_heads, int32_t n_kv_heads,
                               int32_t head_dim, const int32_t *d_pos, const float *cos_tab,
                               const float *sin_tab, int interleaved, ampr__err *err);
/* qkv [n][rows] = W x (W the QKV matrix: rows = (n_heads + 2 n_kv_heads)
 * head_dim), then ampr__cuda_rope_kv on it: in the matmul's own kernel, by
 * its last block, where the AMPR__CUDA_FUSE_TAIL switch allows it and a
 * decode GEMV (up to 8 tokens) takes the matmul; else the
 * matmul, then ampr__cuda_rope_kv. The same values either way. */
ampr_status ampr__cuda_matmul_rope_kv(ampr__cuda *c, const ampr__cuda_mat *w, const float *x,
                                      int32_t n, float *qkv, const ampr__cuda_kv_view *kv,
                                      int32_t n_heads, int32_t n_kv_heads, int32_t head_dim,
                                      const int32_t *d_pos, const float *cos_tab,
                                      const float *sin_tab, int interleaved, ampr__err *err);
/* Causal GQA attention: for each of n query rows (row stride ldq, n_heads *
 * head_dim values) at position d_pos[i], attend over positions 0..d_pos[i] of
 * the sequence (their K/V must be stored). out is [n][n_heads*head_dim].
 * head_dim <= 256, n_heads % n_kv_heads == 0. When n * n_heads blocks would
 * not fill the GPU (decode), each row's positions are split across blocks
 * and a second kernel merges the splits (the context's fixed scratch). */
ampr_status ampr__cuda_attention(ampr__cuda *c, const ampr__cuda_kv_view *kv, const float *q,
                                 int64_t ldq, int32_t n, const int32_t *d_pos, int32_t n_heads,
                                 int32_t n_kv_heads, int32_t head_dim, float *out,
                                 ampr__err *err);
/* One row's request for a candidate list (ampr__cuda_topk_cands). */
typedef struct ampr__cuda_cand_req {
    int32_t row;   /* the row of x */
    int32_t k, m;  /* 1 <= k <= m <= min(cols, AMPR__CANDS_MAX); k 0: a nucleus */
    float t;       /* the draw's temperature (> 0) */
    float top_p;   /* k 0: the nucleus's top_p */
} ampr__cuda_cand_req;
/* For each of n requests (req: device array), the m largest of row req.row
 * of x (cols wide) by (value desc, id asc; NaN as -inf, -0 as +0) into
 * vals / ids[i * m_max ..] (device), sorted, and n_out[i] = m when a top-k
 * draw at temperature t from them is the draw from the row (ampr__topk_cands,
 * sampler.h, is the host's reference), else 0 (also when more than 1024
 * values tie at the m-th: the caller then takes the row). For a nucleus
 * (k 0), mass[i] (device) = the row's mass and n_out[i] as
 * ampr__nucleus_cands decides. */
ampr_status ampr__cuda_topk_cands(ampr__cuda *c, const float *x, int32_t cols,
                                  const ampr__cuda_cand_req *req, int32_t n, int32_t m_max,
                                  float *vals, int32_t *ids, int32_t *n_out, double *mass,
                                  ampr__err *err);
/* One row's request for the fallback's monitor (ampr__cuda_row_monitor):
 * row `row` of x, with q (device, cols floats) for KL or NULL, and keep
 * (device, cols floats) to store the row into or NULL. */
typedef struct ampr__cuda_mon_req {
    int32_t row;
    const float *q;
    float *keep;
} ampr__cuda_mon_req;
#define AMPR__CUDA_MON_PARTS 64 /* the most slices a row is cut into */
/* For each of n requests (req: device array), the sums of n_parts slices of
 * its row (and of q) into parts[i * n_parts ..] (device; ampr__row_part,
 * lib/fallback/logits.h: the host merges them into the row's entropy and
 * KL(row || q)), and the row copied into keep. */
ampr_status ampr__cuda_row_monitor(ampr__cuda *c, const float *x, int32_t cols,
                                   const ampr__cuda_mon_req *req, int32_t n, int32_t n_parts,
                                   ampr__row_part *parts, ampr__err *err);
/* One row's temperature-only draw (ampr__cuda_temp_draw). */
typedef struct ampr__cuda_draw_req {
    int32_t row;
    float t, u; /* temperature (> 0), the uniform number in [0, 1) */
} ampr__cuda_draw_req;
/* For each of n requests (req: device array), out[i] = the token the draw
 * walks to in row req.row of x, or -1 when the walk cannot decide (as
 * ampr__sample_walk, sampler.h, the host's reference: the same exps bit for
 * bit, ampr__exp_det, summed in double). */
ampr_status ampr__cuda_temp_draw(ampr__cuda *c, const float *x, int32_t cols, const ampr__cuda_draw_req *req,
                                 int32_t n, int32_t *out, ampr__err *err);
/* out[i] = the device's ampr__exp_det(d[i]) (device arrays; for check.cu,
 * which compares it bit for bit with the host's). */
ampr_status ampr__cuda_exp_det(ampr__cuda *c, const float *d, int32_t n, float *out, ampr__err *err);
/* One logit a repetition penalty changes (ampr__cuda_penalize). */
typedef struct ampr__cuda_pen {
    int32_t row, id;
    float penalty;
} ampr__cuda_pen;
/* For each of n entries (pen: device array; no (row, id) twice): restore 0
 * saves x[row][id] in kept[i] and penalizes it (ampr__penalize, sampler.h);
 * restore 1 puts kept[i] back. */
ampr_status ampr__cuda_penalize(ampr__cuda *c, float *x, int32_t cols, const ampr__cuda_pen *pen,
                                int32_t n, float *kept, int restore, ampr__err *err);
/* d_out[i] = argmax of x[i][0..cols) (lowest index on ties), for n rows. */
ampr_status ampr__cuda_argmax(ampr__cuda *c, const float *x, int32_t n, int32_t cols,
                              int32_t *d_out, ampr__err *err);

/* ---- the device forward pass (cuda_forward.cu) --------------------------- */

typedef struct ampr__cuda_hparams {
    int32_t n_layers, dim, hidden_dim, n_heads, n_kv_heads, head_dim, vocab_size;
    int32_t context_length;
    float norm_eps;
    int rope_interleaved;   /* 1: pairs (2i,2i+1); 0: half-split */
} ampr__cuda_hparams;

/* One tier's weights on the device, the lib/engine.h fused layout:
 * wqkv [q+2kv][dim] (Q rows, K, V), wo [dim][q], w_gu [2*hidden][dim] (gate,
 * up), w_down [dim][hidden], embd [vocab][dim], output [vocab][dim]. */
typedef struct ampr__cuda_model ampr__cuda_model;

/* layers: n_layers*4 matrices in the order wqkv, wo, w_gu, w_down.
 * output NULL: tied to embd (tensor-parallel ranks that make no logits pass
 * NULL too: ampr__cuda_forward_paged takes logits from its first rank only). norms: fp32 [L][dim] attn, [L][dim] ffn, [dim]
 * final. rope_cos/sin: [context_length][head_dim/2]. All host memory. */
ampr_status ampr__cuda_model_new(ampr__cuda *c, const ampr__cuda_hparams *hp,
                                 const ampr__qmat *embd, const ampr__qmat *output,
                                 const ampr__qmat *layers, const float *norms,
                                 const float *rope_cos, const float *rope_sin,
                                 ampr__cuda_model **out, ampr__err *err);
void ampr__cuda_model_free(ampr__cuda_model *m);
uint64_t ampr__cuda_model_bytes(const ampr__cuda_model *m);

/* One sequence: its paged KV arena, block table, activations for up to
 * max_tokens per call, logits and a captured decode graph. */
typedef struct ampr__cuda_seq ampr__cuda_seq;

ampr_status ampr__cuda_seq_new(ampr__cuda_model *m, int32_t max_tokens, int32_t block_size,
                               int32_t n_pages, ampr__cuda_dtype kv_dtype,
                               ampr__cuda_seq **out, ampr__err *err);
void ampr__cuda_seq_free(ampr__cuda_seq *s);
/* Page ids in position order (host array), copied to the device. */
ampr_status ampr__cuda_seq_set_blocks(ampr__cuda_seq *s, const int32_t *blocks, int32_t n_blocks,
                                      ampr__err *err);

/* Run tokens[0..n) (host) at positions p0..p0+n-1, writing their K/V.
 * Logits of the last token (all n with all_logits) go to the device buffer
 * returned by ampr__cuda_seq_logits(), and the argmax of the last token's
 * logits to ampr__cuda_seq_argmax() (device int32). */
ampr_status ampr__cuda_forward(ampr__cuda_seq *s, const int32_t *tokens, int32_t n, int32_t p0,
                               int all_logits, ampr__err *err);
const float *ampr__cuda_seq_logits(const ampr__cuda_seq *s);   /* device */
/* The argmax of the last token's logits, written by every forward/decode
 * (device int32). */
int32_t *ampr__cuda_seq_argmax(const ampr__cuda_seq *s);       /* device */

/* Decode one token: the token and position set by ampr__cuda_decode_set()
 * (or left by the previous greedy step), kept in device memory. The
 * first call captures a CUDA graph; later calls replay it. With greedy, the
 * graph ends by writing the argmax as the next token and advancing the
 * position, so repeated calls generate greedily with no host round trip.
 * ampr__cuda_decode_set() puts a token and position in place. */
ampr_status ampr__cuda_decode_set(ampr__cuda_seq *s, int32_t token, int32_t pos, ampr__err *err);
ampr_status ampr__cuda_decode(ampr__cuda_seq *s, int greedy, int use_graph, ampr__err *err);

/* ---- paged passes for the engine (lib/backend) ------------------------------
 * The engine keeps its page accounting in the CPU arena (lib/kv: free list,
 * block tables, AMPR_ERR_KV_FULL); each tier owns a device page pool indexed
 * by the same page ids, and every pass uploads the block tables it needs. */

typedef struct ampr__cuda_kvpool ampr__cuda_kvpool;
/* K and V each [n_pages][n_layers][block_size][kv_dim] of dtype, zeroed. */
ampr_status ampr__cuda_kvpool_new(ampr__cuda *c, int32_t n_layers, int32_t kv_dim,
                                  int32_t block_size, int32_t n_pages, ampr__cuda_dtype dtype,
                                  ampr__cuda_kvpool **out, ampr__err *err);
void ampr__cuda_kvpool_free(ampr__cuda_kvpool *p); /* NULL-safe */
uint64_t ampr__cuda_kvpool_bytes(const ampr__cuda_kvpool *p);

/* SmoothQuant: divide the input of matmul mm (0 wqkv, 1 wo, 2 w_gu, 3 w_down)
 * of layer `layer` by s[0..len) before the matmul (host array, copied). */
ampr_status ampr__cuda_model_set_smooth(ampr__cuda_model *m, int32_t layer, int mm,
                                        const float *s, int32_t len, ampr__err *err);

/* Activation buffers for paged passes, grown on demand; one per context,
 * used under the caller's lock. */
typedef struct ampr__cuda_work ampr__cuda_work;
ampr_status ampr__cuda_work_new(ampr__cuda *c, const ampr__cuda_hparams *hp,
                                ampr__cuda_work **out, ampr__err *err);
void ampr__cuda_work_free(ampr__cuda_work *w); /* NULL-safe */
/* Decode-like passes of one rank (n <= 32 tokens, logits for each, no
 * all-reduce) are captured as CUDA graphs on a shape's second pass and
 * replayed after; on by default unless AMPR_CUDA_GRAPHS=0 in the
 * environment at ampr__cuda_work_new. A graph is keyed by (model, pool, n,
 * stride, row map or not) and dropped when a buffer it uses moves
 * (work buffers, matmul scratch), or smooth factors / gemv_max change. Models
 * and pools must outlive the work (the keys are their addresses). */
void ampr__cuda_work_set_graphs(ampr__cuda_work *w, int on);
int ampr__cuda_work_graphs_live(const ampr__cuda_work *w); /* instantiated graphs */

/* One pass over n tokens (host arrays) on the n_ranks tensor-parallel ranks
 * this process drives: rank i holds shard m[i] (its hparams are the shard's:
 * n_heads, n_kv_heads and hidden_dim of the rank, forward/tp.h), its KV pool
 * kv[i] and work buffers w[i]. After each row-parallel matmul (wo, w_down)
 * the partial sums are all-reduced over the group with red (NULL when the
 * group has one rank in all), then added to the residual stream, which every
 * rank keeps whole. Logits come from rank 0 of this process.
 * Token i is tokens[i] at position
 * pos[i] of sequence row_seq[i] (row_seq NULL: all of sequence 0), whose
 * block table is blocks[row_seq[i] * stride .. + stride) (host, n_seqs rows;
 * every position a token attends to must be covered). Every K/V is stored
 * before any attention, so a sequence's later tokens see its earlier ones.
 * The logits of the last n_logits tokens go to logits (host,
 * [n_logits][vocab]): every row when want is NULL, else what want[i] asks
 * of row i (sampler.h, ampr__row_want): the row, or only its argmax
 * (want[i].argmax is set for every row), or its m largest (computed on the
 * device; the row comes instead when they cannot decide the draw). Rows not
 * asked for are not copied. Returns after the device finished. */
typedef struct ampr__cuda_reduce ampr__cuda_reduce;
ampr_status ampr__cuda_forward_paged(ampr__cuda_model *const *m, ampr__cuda_kvpool *const *kv,
                                     ampr__cuda_work *const *w, int n_ranks,
                                     ampr__cuda_reduce *red, const int32_t *tokens,
                                     const int32_t *pos, const int32_t *row_seq, int32_t n,
                                     const int32_t *blocks, int32_t n_seqs, int32_t stride,
                                     int32_t n_logits, float *logits, ampr__row_want *want,
                                     ampr__err *err);

/* ---- tensor parallelism (NCCL) ---------------------------------------------- */

typedef struct ampr__cuda_comm ampr__cuda_comm;
#define AMPR__CUDA_COMM_ID_BYTES (AMPR_TP_ID_LEN / 2) /* = sizeof(ncclUniqueId) */

/* 1 when this build has NCCL. Without it every comm call is UNSUPPORTED. */
int ampr__cuda_have_nccl(void);
/* A fresh id for ampr__cuda_comm_init_rank (rank 0 makes it, others receive it). */
ampr_status ampr__cuda_comm_id_new(unsigned char id[AMPR__CUDA_COMM_ID_BYTES], ampr__err *err);
/* One rank per process (collective over n_ranks processes). With NCCL 2.14+
 * the communicator is nonblocking: when not every rank has joined within
 * timeout_ms (> 0; 0 waits for ever) init is aborted and this fails with
 * AMPR_ERR_BACKEND; while it waits, cancel (when not NULL) is asked about
 * every 100 ms, and a nonzero answer aborts with AMPR_ERR_CANCELLED. */
typedef int (*ampr__cuda_cancel_fn)(void *user);
ampr_status ampr__cuda_comm_init_rank(ampr__cuda *c, int n_ranks, int rank,
                                      const unsigned char id[AMPR__CUDA_COMM_ID_BYTES],
                                      int64_t timeout_ms, ampr__cuda_cancel_fn cancel,
                                      void *cancel_user, ampr__cuda_comm **out, ampr__err *err);
/* One process driving n contexts (one per GPU): out[0..n). */
ampr_status ampr__cuda_comm_init_all(ampr__cuda *const *ctxs, int n, ampr__cuda_comm **out,
                                     ampr__err *err);
void ampr__cuda_comm_free(ampr__cuda_comm *comm); /* NULL-safe */
/* Abort it: its collectives stop, every later call on it fails (BACKEND). */
void ampr__cuda_comm_abort(ampr__cuda_comm *comm);
/* Wait for the comm's stream: for a process-per-rank communicator by
 * polling, so that a rank that fails or stops answering (past timeout_ms)
 * aborts the group with AMPR_ERR_BACKEND instead of a wait for ever. */
ampr_status ampr__cuda_comm_wait(ampr__cuda_comm *comm, ampr__err *err);
/* In-place sum over ranks of count fp32 values, on the comm's context stream. */
ampr_status ampr__cuda_allreduce_sum(ampr__cuda_comm *comm, float *buf, size_t count,
                                     ampr__err *err);
/* The same for n comms of one process at once (grouped, no deadlock). */
ampr_status ampr__cuda_allreduce_sum_group(ampr__cuda_comm *const *comms, float *const *bufs,
                                           int n, size_t count, ampr__err *err);

/* The all-reduce of a tensor-parallel group (the sum after wo and w_down).
 * Two kinds:
 *   NCCL  ncclAllReduce on every rank's stream (grouped when one process
 *         drives several ranks); the ranks' devices must differ.
 *   copy  one process, ranks on any devices (the same GPU allowed, as the
 *         GPU check uses to test sharding on one card; or a build without
 *         NCCL): rank 0's stream gathers the partials with peer copies, sums
 *         them in rank order 0..n-1 -- the CPU backend's order, so the sums
 *         match it bit for bit -- and copies the result back to every rank;
 *         events order the ranks' streams around it. */
/* One process driving n >= 2 ranks; ctxs[i] is rank i (kept, not owned). */
ampr_status ampr__cuda_reduce_local(ampr__cuda *const *ctxs, int n, int use_nccl,
                                    ampr__cuda_reduce **out, ampr__err *err);
/* Rank `rank` of n_ranks processes, one rank each (NCCL; id from
 * ampr__cuda_comm_id_new on one of them, shared out of band). Collective: every
 * rank must call it, within timeout_ms of each other (see comm_init_rank). */
ampr_status ampr__cuda_reduce_rank(ampr__cuda *c, int n_ranks, int rank,
                                   const unsigned char id[AMPR__CUDA_COMM_ID_BYTES],
                                   int64_t timeout_ms, ampr__cuda_cancel_fn cancel,
                                   void *cancel_user, ampr__cuda_reduce **out, ampr__err *err);
void ampr__cuda_reduce_free(ampr__cuda_reduce *r); /* NULL-safe */
/* A process-per-rank group: wait for the rank's stream as
 * ampr__cuda_comm_wait does (call it before a plain sync or download of a
 * pass that all-reduced). Others: nothing to do. */
ampr_status ampr__cuda_reduce_wait(ampr__cuda_reduce *r, ampr__err *err);
/* A process-per-rank group: *all_ok = every rank passed ok != 0 (a
 * collective: each rank calls it once, e.g. at the end of its open). Other
 * groups (NULL r included): *all_ok = ok. */
ampr_status ampr__cuda_reduce_agree(ampr__cuda_reduce *r, int ok, int *all_ok, ampr__err *err);
/* A process-per-rank group: abort this rank's communicator, so that the other
 * ranks' collectives fail (NCCL reports the lost peer, or their wait reaches
 * "tp_timeout_ms") and this rank's later ones fail at once. Nothing for a
 * group of one process's ranks, or NULL. */
void ampr__cuda_reduce_abort(ampr__cuda_reduce *r);
/* bufs[i]: count fp32 values on local rank i's device; each becomes the sum
 * over every rank of the group. Enqueued on the ranks' streams. */
ampr_status ampr__cuda_reduce_sum(ampr__cuda_reduce *r, float *const *bufs, size_t count,
                                  ampr__err *err);
const char *ampr__cuda_reduce_kind(const ampr__cuda_reduce *r); /* "nccl" or "copy" */

#ifdef __cplusplus
}
#endif

#endif
