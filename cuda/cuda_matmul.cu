/*
 * cuda_matmul.cu -- y = W x for the three device weight formats.
 *
 * Decode (n <= gemv_max tokens): one fused GEMV kernel per format. One warp
 * owns one output row; each lane reads 16 bytes of the row at a time
 * (8 halves, 16 int8 or 32 NF4 codes), so a warp reads 512 contiguous bytes
 * per step, and multiplies them with up to 8 tokens' activations.
 *   F16:  fp32 activations, fp32 sums.
 *   INT8: activations quantized per token first, int8 dot products (dp4a),
 *         int32 sums, then ((float)acc * wscale[r]) * xscale[i].
 *   NF4:  the 16-entry code table lives in shared memory; one absmax per
 *         16-byte load (cols % 32 == 0, so 32 codes never straddle a block).
 * NF4 of 1..32 tokens on tensor cores (AMPR_CUDA_NF4_MMA and _NF4_BATCH,
 * on: gemv_nf4_mma_kernel up to 8, gemm_nf4_mma_kernel up to 32), reading
 * the 4-bit weights themselves. FP16 batches from 2 tokens and INT8 from 4
 * on large matrices (lt_batch): cuBLASLt, which was faster there.
 * Prefill (larger n): cuBLASLt. F16 rounds activations to half and
 * accumulates in fp32; NF4 first dequantizes the weights to half in scratch;
 * INT8 runs int8 x int8 -> int32 (IMMA, "TN" layout, tokens padded to a
 * multiple of 4) and a small kernel applies the row and token scales.
 *
 * Row-major W [rows][cols] is, to column-major cuBLASLt, a cols x rows matrix
 * A with lda = cols; we ask for op(A) = A^T. Row-major X [n][cols] is a
 * cols x n matrix B (op N), and row-major Y [n][ldy] a rows x n matrix C with
 * ldc = ldy: C = A^T B is exactly Y = X W^T.
 */
#include "cuda_err.h"

#include <float.h>

/* bitsandbytes NF4 code values, code 0 .. 15 */
__constant__ float k_nf4[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982251167297f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};

#define GEMV_WARPS 8
static_assert(GEMV_WARPS * 32 == AMPR__NORM_THREADS, "a fused norm tail (ampr__tail_last) reduces as rmsnorm_kernel does");

/* ---- small kernels ------------------------------------------------------- */

/* The INT8 activation rule of lib/quant/quant.h for one token, by a whole
 * block: absmax (exact: the order of a max does not matter), or NaN when
 * the token holds an inf or a NaN; then x -> q and the token's scale. A
 * thread loads I8_U of its elements before it compares them (as a loop of
 * one load and one compare, each load waited for the one before: at 14336
 * columns and 256 threads, 56 trips to L2 in a row, while every block of
 * the one-token GEMV waits for them before its first weight). */
#define I8_U 8
/* v = a thread's batch of a token's elements: x[c0 + u * bd], 0 past cols */
__device__ __forceinline__ void int8_batch(const float *__restrict__ x, int64_t c0, int64_t bd, int64_t cols,
                                           float (&v)[I8_U]) {
#pragma unroll
    for (int u = 0; u < I8_U; u++) v[u] = c0 + u * bd < cols ? x[c0 + u * bd] : 0.0f;
}

__device__ float int8_token_absmax(const float *__restrict__ x, int64_t cols, float *red) {
    float m = 0.0f;
    int bad = 0;
    const int64_t bd = blockDim.x;
    for (int64_t c0 = threadIdx.x; c0 < cols; c0 += I8_U * bd) {
        float v[I8_U];
        int8_batch(x, c0, bd, cols, v);
#pragma unroll
        for (int u = 0; u < I8_U; u++) { /* 0 for a column past the end: changes neither */
            float a = fabsf(v[u]);
            bad |= !(a <= FLT_MAX);
            m = fmaxf(m, a);
        }
    }
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = m;
    bad = __syncthreads_or(bad); /* also orders red's writes before the reads */
    m = 0.0f;
    for (int w = 0; w < (int)(blockDim.x >> 5); w++) m = fmaxf(m, red[w]);
    __syncthreads(); /* red may be reused by the caller */
    return bad ? __int_as_float(0x7fc00000) : m;
}

/* inv = absmax > 0 ? 127/absmax : 0; q = clamp(rint_even(x * inv), -127, 127);
 * a token with absmax NaN (an inf or NaN in it): q = 0 */
__device__ __forceinline__ int8_t int8_quant(float x, float absmax, float inv) {
    if (isnan(absmax)) return 0;
    int v = __float2int_rn(__fmul_rn(x, inv)); /* round half to even */
    return (int8_t)(v < -127 ? -127 : v > 127 ? 127 : v);
}

__device__ __forceinline__ float int8_inv(float absmax) {
    return absmax > 0.0f ? __fdiv_rn(127.0f, absmax) : 0.0f;
}

/* q[c] = int8_quant(x[c]) for a token's cols, by a whole block, I8_U loads
 * in flight a thread (q: global or shared memory) */
__device__ __forceinline__ void int8_quant_row(const float *__restrict__ x, int64_t cols, float absmax,
                                               float inv, int8_t *q) {
    const int64_t bd = blockDim.x;
    for (int64_t c0 = threadIdx.x; c0 < cols; c0 += I8_U * bd) {
        float v[I8_U];
        int8_batch(x, c0, bd, cols, v);
#pragma unroll
        for (int u = 0; u < I8_U; u++)
            if (c0 + u * bd < cols) q[c0 + u * bd] = int8_quant(v[u], absmax, inv);
    }
}

/* One block per token, the CPU rule (lib/quant/quant.h) bit for bit:
 * s = absmax / 127 (NaN for a token with an inf or NaN, whose q are 0). */
__global__ void quant_act_kernel(const float *__restrict__ x, int32_t cols, int8_t *__restrict__ q,
                                 float *__restrict__ s) {
    AMPR__PDL_ENTER();
    __shared__ float red[32];
    const float *xr = x + (size_t)blockIdx.x * cols;
    float absmax = int8_token_absmax(xr, cols, red);
    int8_quant_row(xr, cols, absmax, int8_inv(absmax), q + (size_t)blockIdx.x * cols);
    if (threadIdx.x == 0) s[blockIdx.x] = __fdiv_rn(absmax, 127.0f);
}

__global__ void f32_to_f16_kernel(const float *__restrict__ x, __half *__restrict__ y, size_t n) {
    AMPR__PDL_ENTER();
    for (size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x; e < n;
         e += (size_t)gridDim.x * blockDim.x)
        y[e] = ampr__to_half_sat(x[e]);
}

/* NF4 weights to fp16 for cuBLASLt (the matrix's cols % 64 == 0 there), a
 * 16-byte load a thread: 32 codes of one 64-element block (chunk i:
 * elements 32i .. 32i + 31, absmax[i / 2]), four 16-byte stores; the table
 * in shared memory (16 entries in 16 banks: lanes that look up different
 * codes never conflict). */
__global__ void nf4_dequant32_kernel(const uint4 *__restrict__ w, const float *__restrict__ absmax,
                                     uint4 *__restrict__ out, size_t chunks) {
    AMPR__PDL_ENTER();
    __shared__ float code[16];
    if (threadIdx.x < 16) code[threadIdx.x] = k_nf4[threadIdx.x];
    __syncthreads();
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < chunks;
         i += (size_t)gridDim.x * blockDim.x) {
        uint4 v = __ldg(w + i);
        float a = __ldg(absmax + i / 2);
        const uint32_t words[4] = {v.x, v.y, v.z, v.w};
        uint32_t o[16];
#pragma unroll
        for (int b = 0; b < 16; b++) {
            uint32_t byte = (words[b / 4] >> (8 * (b % 4))) & 0xffu; /* elements 2b, 2b + 1 */
            __half2 h = __halves2half2(__float2half_rn(code[byte >> 4] * a),
                                       __float2half_rn(code[byte & 15u] * a));
            memcpy(&o[b], &h, sizeof o[b]);
        }
#pragma unroll
        for (int q = 0; q < 4; q++)
            out[4 * i + q] = make_uint4(o[4 * q], o[4 * q + 1], o[4 * q + 2], o[4 * q + 3]);
    }
}

/* y[i*ldy + r] = ((float)acc[i*rows + r] * ws[r]) * xs[i], for cuBLASLt's
 * int32 results (rows % 4 == 0: its rows are multiples of 64; acc and ws
 * are allocations of their own, so 16-byte aligned). Grid (tokens,
 * groups of INT8_SCALE_THREADS x 4 rows): a thread takes 4 rows of one token
 * with one 16-byte load of acc and of ws, and stores them as one when y's
 * row is 16-byte aligned. (It was a grid-stride loop over rows x n with a
 * 64-bit division and remainder an element: at 512 tokens of a 28672-row
 * matrix 14.7M of them.) */
#define INT8_SCALE_THREADS 256
__global__ void int8_scale_kernel(const int32_t *__restrict__ acc, const float *__restrict__ ws,
                                  const float *__restrict__ xs, int64_t rows, int32_t n,
                                  float *__restrict__ y, int64_t ldy) {
    AMPR__PDL_ENTER();
    int64_t i = blockIdx.x, q = (int64_t)blockIdx.y * blockDim.x + threadIdx.x; /* rows 4q .. 4q + 3 */
    if (q >= rows / 4) return;
    int4 a = __ldg((const int4 *)(acc + i * rows) + q);
    float4 w = __ldg((const float4 *)ws + q);
    float s = __ldg(xs + i);
    float4 v = make_float4(((float)a.x * w.x) * s, ((float)a.y * w.y) * s, ((float)a.z * w.z) * s,
                           ((float)a.w * w.w) * s);
    float *yr = y + i * ldy + 4 * q;
    if (((uintptr_t)yr & 15) == 0) {
        *(float4 *)yr = v;
    } else {
        yr[0] = v.x;
        yr[1] = v.y;
        yr[2] = v.z;
        yr[3] = v.w;
    }
}

/* ---- fused GEMV kernels --------------------------------------------------- */

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ int warp_sum_i(int v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* ---- 2..8 tokens (decode batches), FP16 and INT8 ------------------------------
 * gemvn_kernel<FMT, NT>: a warp a row; each lane first issues GEMVN_U 16-byte
 * loads of its row (chunks j, j + 32, ..., as many bytes in flight as the
 * one-token kernel's), then multiplies each chunk with the tokens' (NT: n
 * rounded up to 2, 4 or 8; tokens from n on skipped). A lane sums its chunks
 * in order, then the warp sums its lanes (warp_sum), per token. F16: fp32
 * activations, fp32 sums; INT8: the tokens quantized before
 * (ampr__cuda_quant_act: xq, xs), dp4a, int32 sums scaled as
 * ((float)acc * wscale[r]) * xscale[t]. A warp a row with rows / 8 blocks (no
 * grid stride: the 8B shape's 4096-row matrices fill the GPU that way).
 * tail.kind: the last block does the op after the matmul (ampr__tail_last). */
#define GEMVN_U 4
template <int FMT, int NT>
__global__ void __launch_bounds__(GEMV_WARPS * 32)
gemvn_kernel(const void *__restrict__ W, const float *__restrict__ ws, int64_t rows, int64_t cols,
             const float *__restrict__ x, const int8_t *__restrict__ xq, const float *__restrict__ xs,
             int32_t n, float *__restrict__ y, int64_t ldy, ampr__tail tail) {
    AMPR__PDL_ENTER();
    const int E = FMT == AMPR__Q_F16 ? 8 : 16, U = GEMVN_U; /* elements a 16-byte chunk */
    int64_t r = (int64_t)blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (r < rows) {
        const uint4 *wr = (const uint4 *)((const uint8_t *)W + (size_t)r * (size_t)cols * (FMT == AMPR__Q_F16 ? 2 : 1));
        int64_t chunks = cols / E;
        float acc[NT];
        int iacc[NT];
#pragma unroll
        for (int t = 0; t < NT; t++) {
            acc[t] = 0.0f;
            iacc[t] = 0;
        }
        for (int64_t j0 = lane; j0 < chunks; j0 += 32 * U) {
            uint4 wv[U];
#pragma unroll
            for (int u = 0; u < U; u++) {
                int64_t j = j0 + 32 * u;
                wv[u] = j < chunks ? __ldg(wr + j) : make_uint4(0, 0, 0, 0);
            }
#pragma unroll
            for (int u = 0; u < U; u++) {
                int64_t j = j0 + 32 * u;
                if (j >= chunks) break;
                if (FMT == AMPR__Q_F16) {
                    const __half2 *h = (const __half2 *)&wv[u];
                    float2 w0 = __half22float2(h[0]), w1 = __half22float2(h[1]);
                    float2 w2 = __half22float2(h[2]), w3 = __half22float2(h[3]);
#pragma unroll
                    for (int t = 0; t < NT; t++) {
                        if (t >= n) break;
                        const float4 *xv = (const float4 *)(x + (int64_t)t * cols + j * 8);
                        float4 a = __ldg(xv), b = __ldg(xv + 1);
                        acc[t] += w0.x * a.x + w0.y * a.y + w1.x * a.z + w1.y * a.w + w2.x * b.x +
                                  w2.y * b.y + w3.x * b.z + w3.y * b.w;
                    }
                } else {
#pragma unroll
                    for (int t = 0; t < NT; t++) {
                        if (t >= n) break;
                        int4 xv = __ldg((const int4 *)(xq + (int64_t)t * cols) + j);
                        int a = iacc[t];
                        a = __dp4a((int)wv[u].x, xv.x, a);
                        a = __dp4a((int)wv[u].y, xv.y, a);
                        a = __dp4a((int)wv[u].z, xv.z, a);
                        a = __dp4a((int)wv[u].w, xv.w, a);
                        iacc[t] = a;
                    }
                }
            }
        }
#pragma unroll
        for (int t = 0; t < NT; t++) {
            if (t >= n) break;
            if (FMT == AMPR__Q_F16) {
                float v = warp_sum(acc[t]);
                if (lane == 0) y[(int64_t)t * ldy + r] = v;
            } else {
                int v = warp_sum_i(iacc[t]);
                if (lane == 0) y[(int64_t)t * ldy + r] = ((float)v * ws[r]) * xs[t];
            }
        }
    }
    if (tail.kind) ampr__tail_last(tail, y, n, (int32_t)rows); /* ldy == rows */
}

template <int FMT>
static void gemvn(ampr__cuda *c, const ampr__cuda_mat *w, const float *x, const int8_t *xq,
                  const float *xs, int32_t n, float *y, int64_t ldy, ampr__tail tail) {
    unsigned blocks = (unsigned)((w->rows + GEMV_WARPS - 1) / GEMV_WARPS);
    if (n <= 2)
        ampr__launch(c, "gemvn_kernel", gemvn_kernel<FMT, 2>, blocks, GEMV_WARPS * 32, 0, w->data,
            w->scales, w->rows, w->cols, x, xq, xs, n, y, ldy, tail);
    else if (n <= 4)
        ampr__launch(c, "gemvn_kernel", gemvn_kernel<FMT, 4>, blocks, GEMV_WARPS * 32, 0, w->data,
            w->scales, w->rows, w->cols, x, xq, xs, n, y, ldy, tail);
    else
        ampr__launch(c, "gemvn_kernel", gemvn_kernel<FMT, 8>, blocks, GEMV_WARPS * 32, 0, w->data,
            w->scales, w->rows, w->cols, x, xq, xs, n, y, ldy, tail);
}

/* Row r of the NF4 GEMV of up to 8 tokens: one warp's work (code: the
 * table in shared memory) */
__device__ __forceinline__ void gemv_nf4_row(const uint8_t *__restrict__ W, const float *__restrict__ absmax,
                                             int64_t r, int64_t cols, const float *__restrict__ x, int32_t n,
                                             float *__restrict__ y, int64_t ldy, int lane, const float *code) {
    const uint4 *wr = (const uint4 *)(W + r * cols / 2);
    int64_t chunks = cols / 32;
    float acc[AMPR__CUDA_GEMV_MAX];
#pragma unroll
    for (int t = 0; t < AMPR__CUDA_GEMV_MAX; t++) acc[t] = 0.0f;
#pragma unroll 2
    for (int64_t j = lane; j < chunks; j += 32) {
        uint4 wv = __ldg(wr + j);
        float a = __ldg(absmax + (r * cols + j * 32) / 64);
        float w[32];
        const uint32_t words[4] = {wv.x, wv.y, wv.z, wv.w};
#pragma unroll
        for (int b = 0; b < 16; b++) {
            uint32_t byte = (words[b / 4] >> (8 * (b % 4))) & 0xffu; /* little-endian bytes */
            w[2 * b] = code[byte >> 4];
            w[2 * b + 1] = code[byte & 15u];
        }
#pragma unroll
        for (int t = 0; t < AMPR__CUDA_GEMV_MAX; t++) {
            if (t < n) {
                const float4 *xv = (const float4 *)(x + (int64_t)t * cols + j * 32);
                float s = 0.0f;
#pragma unroll
                for (int q = 0; q < 8; q++) {
                    float4 v = __ldg(xv + q);
                    s += w[4 * q] * v.x + w[4 * q + 1] * v.y + w[4 * q + 2] * v.z +
                         w[4 * q + 3] * v.w;
                }
                acc[t] += a * s;
            }
        }
    }
#pragma unroll
    for (int t = 0; t < AMPR__CUDA_GEMV_MAX; t++) {
        if (t < n) {
            float s = warp_sum(acc[t]);
            if (lane == 0) y[(int64_t)t * ldy + r] = s;
        }
    }
}

__global__ void __launch_bounds__(GEMV_WARPS * 32)
gemv_nf4_kernel(const uint8_t *__restrict__ W, const float *__restrict__ absmax, int64_t rows,
                int64_t cols, const float *__restrict__ x, int32_t n, float *__restrict__ y,
                int64_t ldy, ampr__tail tail) {
    AMPR__PDL_ENTER();
    __shared__ float code[16];
    if (threadIdx.x < 16) code[threadIdx.x] = k_nf4[threadIdx.x];
    __syncthreads();
    int64_t r = (int64_t)blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (r < rows) gemv_nf4_row(W, absmax, r, cols, x, n, y, ldy, lane, code);
    if (tail.kind) ampr__tail_last(tail, y, n, (int32_t)rows); /* ldy == rows */
}

/* ---- one token (batch-1 decode) ------------------------------------------
 * gemv1_kernel<FMT, R, U, KS>: a block's 8 warps take 8/KS groups of R rows;
 * the KS warps of a group split the row's 16-byte chunks between them
 * (chunk j to warp j/32 % KS), and sum their parts through shared memory.
 * Blocks walk the rows grid-stride (a few blocks per SM, so warps live long
 * and keep loads streaming). Each lane issues U loads per row before any
 * arithmetic: R*U*512 bytes in flight per warp.
 *   R > 1: the activations of a chunk are read once for R rows (NF4 reads 128
 *          bytes of x per 16 bytes of codes: without the reuse those reads,
 *          not the weights, would bound it).
 *   KS > 1: a matrix with few rows still gets enough warps to hide latency.
 * INT8 quantizes the token itself, per block, into shared memory
 * (quant_act_kernel's rule), instead of a separate launch. pf
 * (AMPR__CUDA_PREFETCH): the block first prefetches its first rows' first
 * loads into L2; tail.kind: the last block does the op after the matmul
 * (ampr__tail_last, AMPR__CUDA_FUSE_TAIL). */

/* INT8 quantizes into shared memory: up to the default 48 KiB less the
 * static arrays */
#define GEMV1_INT8_MAX_COLS 40960

template <int FMT> struct gemv1_fmt;
template <> struct gemv1_fmt<AMPR__Q_F16> { enum { per_chunk = 8 }; };
template <> struct gemv1_fmt<AMPR__Q_INT8> { enum { per_chunk = 16 }; };
template <> struct gemv1_fmt<AMPR__Q_NF4> { enum { per_chunk = 32 }; };

/* The matrix row of a fused GEMV's walk row r: gate j, up j, gate j + 1, ...
 * of a gate/up matrix (gate rows, then up rows); r itself unfused. */
template <bool FUSE> __device__ __forceinline__ int64_t walk_row(int64_t r, int64_t rows) {
    return FUSE ? ((r & 1) ? rows / 2 + (r >> 1) : r >> 1) : r;
}

/* FUSE (the gate/up matrix, rows = 2 half: gate rows, then up rows): the
 * kernel walks the rows interleaved, gate j then up j, so that each pair sits
 * in one group (R even), and writes y[j] = silu(gate j) * up j
 * (ampr__silu_mul, as swiglu_kernel) instead of both. Each row's sum is the
 * same as unfused with the same KS.
 * XG (INT8, AMPR__CUDA_I8_ONCE): x was quantized once, by quant_act_kernel
 * (xqg, xsg: the same rule, so the same bytes and scale), and the blocks
 * read it from global memory instead of each quantizing it first. */
template <int FMT, int R, int U, int KS, bool FUSE = false, bool XG = false>
__global__ void __launch_bounds__(GEMV_WARPS * 32)
gemv1_kernel(const void *__restrict__ W, const float *__restrict__ sc, int64_t rows,
             int64_t cols, const float *__restrict__ x, const int8_t *__restrict__ xqg,
             const float *__restrict__ xsg, float *__restrict__ y, int pf, ampr__tail tail) {
    static_assert(!XG || FMT == AMPR__Q_INT8, "only INT8 quantizes x");
    static_assert(!FUSE || R % 2 == 0, "a fused group holds whole gate/up pairs");
    auto phys = [rows](int64_t r) { return walk_row<FUSE>(r, rows); };
    const int E = gemv1_fmt<FMT>::per_chunk;
    const int GROUPS = GEMV_WARPS / KS; /* row groups per block */
    const size_t row_bytes = (size_t)cols * (FMT == AMPR__Q_F16 ? 2 : 1) / (FMT == AMPR__Q_NF4 ? 2 : 1);
    const int64_t per_block = (int64_t)GROUPS * R;
    if (pf) { /* the block's first rows, as far as its warps' first loads reach */
        int64_t rb = (int64_t)blockIdx.x * per_block, nr = rows - rb < per_block ? rows - rb : per_block;
        size_t first = (size_t)32 * KS * U * 16;
        first = first < row_bytes ? first : row_bytes;
        ampr__prefetch_rows(nr, first, [&](int64_t i) {
            return (const uint8_t *)W + (size_t)phys(rb + i) * row_bytes; });
        if (FMT == AMPR__Q_NF4) /* and their block scales: 4 bytes a 64 codes */
            ampr__prefetch_rows(nr, first / 8, [&](int64_t i) { return sc + phys(rb + i) * cols / 64; });
    }
    AMPR__PDL_ENTER();
    __shared__ float code[16];
    __shared__ float red[32];
    __shared__ float part_f[GEMV_WARPS][R];
    __shared__ int part_i[GEMV_WARPS][R];
    extern __shared__ int4 xq_smem[]; /* INT8: the quantized activations [cols] */
    const int8_t *xq = XG ? xqg : (const int8_t *)xq_smem;
    float xscale = 0.0f;
    if (FMT == AMPR__Q_NF4) {
        if (threadIdx.x < 16) code[threadIdx.x] = k_nf4[threadIdx.x];
        __syncthreads();
    }
    if (FMT == AMPR__Q_INT8 && XG) xscale = __ldg(xsg);
    if (FMT == AMPR__Q_INT8 && !XG) {
        float m = int8_token_absmax(x, cols, red);
        int8_quant_row(x, cols, m, int8_inv(m), (int8_t *)xq_smem);
        xscale = __fdiv_rn(m, 127.0f);
        __syncthreads();
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int group = warp / KS, kp = warp % KS;
    int64_t chunks = cols / E;
    for (int64_t rb = (int64_t)blockIdx.x * per_block; rb < rows; rb += (int64_t)gridDim.x * per_block) {
        int64_t r0 = rb + (int64_t)group * R;
        float acc[R];
        int iacc[R];
#pragma unroll
        for (int k = 0; k < R; k++) {
            acc[k] = 0.0f;
            iacc[k] = 0;
        }
        for (int64_t j0 = (int64_t)kp * 32 + lane; j0 < chunks; j0 += 32 * KS * U) {
            uint4 wv[R][U];
            float am[R][U]; /* NF4: each chunk's block scale, loaded with it */
#pragma unroll
            for (int k = 0; k < R; k++) {
                int64_t r = phys(r0 + k < rows ? r0 + k : rows - 1); /* tail rows repeat the last */
                const uint4 *wr = (const uint4 *)((const uint8_t *)W + (size_t)r * row_bytes);
#pragma unroll
                for (int u = 0; u < U; u++) {
                    int64_t j = j0 + 32 * KS * u;
                    wv[k][u] = j < chunks ? __ldg(wr + j) : make_uint4(0, 0, 0, 0);
                    am[k][u] = FMT == AMPR__Q_NF4 && j < chunks ? __ldg(sc + (r * cols + j * 32) / 64)
                                                                : 0.0f;
                }
            }
#pragma unroll
            for (int u = 0; u < U; u++) {
                int64_t j = j0 + 32 * KS * u;
                if (j >= chunks) continue;
                if (FMT == AMPR__Q_F16) {
                    const float4 *xv = (const float4 *)(x + j * 8);
                    float4 a = __ldg(xv), b = __ldg(xv + 1);
#pragma unroll
                    for (int k = 0; k < R; k++) {
                        const __half2 *h = (const __half2 *)&wv[k][u];
                        float2 w0 = __half22float2(h[0]), w1 = __half22float2(h[1]);
                        float2 w2 = __half22float2(h[2]), w3 = __half22float2(h[3]);
                        acc[k] += w0.x * a.x + w0.y * a.y + w1.x * a.z + w1.y * a.w + w2.x * b.x +
                                  w2.y * b.y + w3.x * b.z + w3.y * b.w;
                    }
                } else if (FMT == AMPR__Q_INT8) {
                    int4 xv = XG ? __ldg((const int4 *)xq + j) : ((const int4 *)xq)[j];
#pragma unroll
                    for (int k = 0; k < R; k++) {
                        int a = iacc[k];
                        a = __dp4a((int)wv[k][u].x, xv.x, a);
                        a = __dp4a((int)wv[k][u].y, xv.y, a);
                        a = __dp4a((int)wv[k][u].z, xv.z, a);
                        a = __dp4a((int)wv[k][u].w, xv.w, a);
                        iacc[k] = a;
                    }
                } else {
                    float xv[32];
                    const float4 *x4 = (const float4 *)(x + j * 32);
#pragma unroll
                    for (int q = 0; q < 8; q++) {
                        float4 v = __ldg(x4 + q);
                        xv[4 * q] = v.x;
                        xv[4 * q + 1] = v.y;
                        xv[4 * q + 2] = v.z;
                        xv[4 * q + 3] = v.w;
                    }
#pragma unroll
                    for (int k = 0; k < R; k++) {
                        const uint32_t words[4] = {wv[k][u].x, wv[k][u].y, wv[k][u].z, wv[k][u].w};
                        float sum = 0.0f;
#pragma unroll
                        for (int q = 0; q < 8; q++) {
                            uint32_t w2 = words[q / 2] >> (16 * (q % 2)); /* bytes 2q, 2q+1 */
                            sum += code[(w2 >> 4) & 15u] * xv[4 * q] +
                                   code[w2 & 15u] * xv[4 * q + 1] +
                                   code[(w2 >> 12) & 15u] * xv[4 * q + 2] +
                                   code[(w2 >> 8) & 15u] * xv[4 * q + 3];
                        }
                        acc[k] += am[k][u] * sum;
                    }
                }
            }
        }
        /* each warp's part of each row, then (KS > 1) the group's parts summed
         * in warp order */
#pragma unroll
        for (int k = 0; k < R; k++) {
            if (FMT == AMPR__Q_INT8) iacc[k] = warp_sum_i(iacc[k]);
            else acc[k] = warp_sum(acc[k]);
        }
        if (KS == 1) {
            float v[R];
#pragma unroll
            for (int k = 0; k < R; k++)
                v[k] = FMT == AMPR__Q_INT8 && r0 + k < rows ? ((float)iacc[k] * sc[phys(r0 + k)]) * xscale
                                                            : acc[k];
#pragma unroll
            for (int k = 0; k < R; k += FUSE ? 2 : 1) {
                if (lane != 0 || r0 + k >= rows) continue;
                if (FUSE) y[(r0 + k) / 2] = ampr__silu_mul(v[k], v[k + 1]);
                else y[r0 + k] = v[k];
            }
            continue;
        }
        if (lane == 0) {
#pragma unroll
            for (int k = 0; k < R; k++) {
                part_f[warp][k] = acc[k];
                part_i[warp][k] = iacc[k];
            }
        }
        __syncthreads();
        const int PER = FUSE ? 2 : 1; /* rows a thread finishes */
        if (threadIdx.x < GROUPS * R / PER) {
            int g = threadIdx.x / (R / PER), k = PER * (threadIdx.x % (R / PER));
            int64_t r = rb + (int64_t)g * R + k;
            if (r < rows) {
                float v[PER];
                for (int e = 0; e < PER; e++) {
                    if (FMT == AMPR__Q_INT8) {
                        int s = 0;
                        for (int w = 0; w < KS; w++) s += part_i[g * KS + w][k + e];
                        v[e] = ((float)s * sc[phys(r + e)]) * xscale;
                    } else {
                        float s = 0.0f;
                        for (int w = 0; w < KS; w++) s += part_f[g * KS + w][k + e];
                        v[e] = s;
                    }
                }
                if (FUSE) y[r / 2] = ampr__silu_mul(v[0], v[PER - 1]);
                else y[r] = v[0];
            }
        }
        __syncthreads(); /* the parts are rewritten by the next rows */
    }
    if (!FUSE && tail.kind) ampr__tail_last(tail, y, 1, (int32_t)rows);
}

template <int FMT, int R, int U, int KS, bool FUSE, bool XG>
static void gemv1_launch(ampr__cuda *c, const ampr__cuda_mat *w, const float *x, float *y,
                         ampr__tail tail) {
    int64_t per_block = (int64_t)(GEMV_WARPS / KS) * R;
    int64_t blocks = (w->rows + per_block - 1) / per_block;
    int64_t cap = 4 * (int64_t)c->sm_count; /* the grid-stride loop takes the rest */
    int64_t grid = blocks < cap ? blocks : cap;
    size_t smem = FMT == AMPR__Q_INT8 && !XG ? (size_t)(w->cols + 15) / 16 * 16 : 0;
    const char *name = FUSE ? "gemv1_kernel (SwiGLU)" : "gemv1_kernel";
    ampr__launch(c, name, gemv1_kernel<FMT, R, U, KS, FUSE, XG>,
        (unsigned)grid, GEMV_WARPS * 32, smem, w->data, w->scales,
        w->rows, w->cols, x, c->xq, c->xs, y, c->sw[AMPR__CUDA_PREFETCH], tail);
}

/* Warps per row: the fewest (1, 2, 4, 8) that give the GPU about 32 warps
 * per SM, as long as each warp keeps at least one chunk per lane. RK: the R
 * the rule counts groups with (a fused call passes its unfused R, so that
 * both split the rows alike and give the same sums). XG: INT8 with x
 * quantized into c->xq / c->xs before (gemv1_kernel). */
template <int FMT, int R, int U, bool FUSE = false, int RK = R, bool XG = false>
static void gemv1(ampr__cuda *c, const ampr__cuda_mat *w, const float *x, float *y,
                  ampr__tail tail) {
    int64_t want = 32 * (int64_t)c->sm_count, groups = (w->rows + RK - 1) / RK;
    int64_t chunks = w->cols / gemv1_fmt<FMT>::per_chunk;
    int ks = 1;
    while (ks < GEMV_WARPS && groups * ks < want && chunks / (2 * ks) >= 32) ks *= 2;
    switch (ks) {
    case 1: gemv1_launch<FMT, R, U, 1, FUSE, XG>(c, w, x, y, tail); break;
    case 2: gemv1_launch<FMT, R, U, 2, FUSE, XG>(c, w, x, y, tail); break;
    case 4: gemv1_launch<FMT, R, U, 4, FUSE, XG>(c, w, x, y, tail); break;
    default: gemv1_launch<FMT, R, U, 8, FUSE, XG>(c, w, x, y, tail); break;
    }
}

/* ---- NF4 on tensor cores (decode, 1..8 tokens) ------------------------------
 * gemv_nf4_mma_kernel<KS>: a warp owns a tile of 16 rows and multiplies it with
 * up to 8 tokens by mma.sync m16n8k16 (fp16 inputs, fp32 sums): the weights are
 * the 16 x 16 A operand, the tokens the 16 x 8 B operand (one column a token;
 * with one token, 7 columns are zero: tensor cores have the throughput to
 * spare, and the CUDA cores are the limit of the fp32 kernel: a shift, a
 * shared-memory lookup and an FMA per weight).
 *
 * Lane (g = lane / 4, t = lane % 4) holds A's rows g and g + 8 at k-slots
 * {2t, 2t+1, 2t+8, 2t+9} and B's column g at the same slots (the PTX ISA's
 * fragment layout). Which matrix columns a k-slot stands for is ours to
 * choose, as long as A and B agree: for a 64-column NF4 block (one absmax a
 * row), lane t takes its 16 columns [16t, 16t + 16) as one 8-byte load a row;
 * the block's 4 mma steps s take bytes 2s and 2s + 1 (columns 16t + 4s ..
 * 16t + 4s + 3): slots 2t, 2t+1 <- byte 2s (high nibble first), 2t+8, 2t+9 <-
 * byte 2s + 1, and B's column g reads token g's x at the same columns.
 * A block's 4 mmas start from zero, so their sum covers exactly one block of
 * each row and is scaled by that row's absmax in fp32 (acc += sum * absmax),
 * as the CPU scales a block's sum.
 *
 * A byte becomes its two codes as one fp16 pair by one shared-memory load: a
 * 256-entry table of pairs, one copy per lane (pairs[byte][lane], 32 KiB), so
 * the 32 lanes' lookups never share a bank. The codes and x are rounded to
 * fp16 (x saturated at +-65504, NaN kept), the products are exact and summed in fp32:
 * the rounding of the prefill path (cuBLASLt on dequantized weights), not the
 * fp32 kernels'. KS warps split a tile's blocks and sum their parts through
 * shared memory in warp order (deterministic). Needs cols % 64 == 0 (a block
 * never spans two rows); rows past the end repeat the last row, unstored. */
#define NF4MMA_U 4 /* blocks a warp loads before it multiplies */

/* The per-lane table of code pairs: pairs[byte * 32 + lane] = (code of the
 * high nibble, code of the low nibble) as one fp16 pair (low half first).
 * Built from constants, before the kernel's PDL wait. */
__device__ __forceinline__ void nf4_pairs_fill(uint32_t *pairs) {
    for (int i = threadIdx.x; i < 256 * 32; i += blockDim.x) {
        int b = i >> 5;
        pairs[i] = ampr__half2_bits(k_nf4[b >> 4], k_nf4[b & 15]);
    }
    __syncthreads();
}

/* The pair of the byte at bit sh (0, 8, 16 or 24; a constant) of w from the
 * table: pl[byte * 32], pl = pairs + lane (the lane's column). The byte by
 * one byte permute (the other three bytes zero), its address by one shift-add
 * onto the column's shared-memory address: two integer instructions a lookup.
 * (Written as pl[byte * 32], nvcc rebuilt the address from the lane each
 * time, (byte * 32 + lane) * 4 + table, three or four; the load is ours, so
 * the column's address is computed once.) No volatile: the table is constant
 * once filled, and the bytes come from loads after the fill's barrier. */
__device__ __forceinline__ uint32_t nf4_pair(const uint32_t *pl, uint32_t w, int sh) {
    uint32_t b = __byte_perm(w, 0u, 0x4440u | (uint32_t)(sh >> 3));
#ifdef AMPR_CUDA_EMU
    return pl[b * 32u];
#else
    uint32_t v, a = (uint32_t)__cvta_generic_to_shared(pl) + (b << 7);
    asm("ld.shared.u32 %0, [%1];" : "=r"(v) : "r"(a));
    return v;
#endif
}

/* A's fragment for mma step s (0..3) of a 64-column block, from the lane's
 * 8-byte loads of its rows g (va) and g + 8 (vc): slots 2t, 2t+1 <- byte 2s,
 * slots 2t+8, 2t+9 <- byte 2s + 1 (a0, a1: rows g, g + 8 at the low slots;
 * a2, a3: at the high ones). pl: the table's column of this lane, pairs + lane. */
__device__ __forceinline__ void nf4_a_frag(const uint32_t *pl, uint2 va, uint2 vc, int s, uint32_t (&a)[4]) {
    uint32_t wA = s < 2 ? va.x : va.y, wC = s < 2 ? vc.x : vc.y;
    int sh = 16 * (s & 1);
    a[0] = nf4_pair(pl, wA, sh);
    a[2] = nf4_pair(pl, wA, sh + 8);
    a[1] = nf4_pair(pl, wC, sh);
    a[3] = nf4_pair(pl, wC, sh + 8);
}

/* AMPR__CUDA_PREFETCH in the NF4 tensor-core kernels: of nr rows from rb (as
 * walk_row maps them), the 64-column blocks [j0, j0 + nb): their codes (32
 * bytes a block) and their scales (4 bytes) */
template <bool FUSE>
__device__ __forceinline__ void nf4_prefetch_blocks(const uint8_t *W, const float *absmax, int64_t rows,
                                                    int64_t cols, int64_t rb, int64_t nr, int64_t j0,
                                                    int64_t nb) {
    int64_t nblk = cols / 64;
    ampr__prefetch_rows(nr, (size_t)nb * 32, [&](int64_t i) {
        return W + (size_t)walk_row<FUSE>(rb + i, rows) * (size_t)(cols / 2) + (size_t)j0 * 32; });
    ampr__prefetch_rows(nr, (size_t)nb * 4, [&](int64_t i) {
        return absmax + walk_row<FUSE>(rb + i, rows) * nblk + j0; });
}

/* One 64-column block of a tile into acc: its 4 mma steps from zero (B's
 * fragment of step s from bfrag(s, b0, b1), which leaves zeros for tokens
 * past n), then acc += the sums times the absmax of rows g (sa) and g + 8 (sc) */
template <typename BFrag>
__device__ __forceinline__ void nf4_block_acc(const uint32_t *pl, uint2 va, uint2 vc,
                                              float sa, float sc, float (&acc)[4], BFrag bfrag) {
    float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
    for (int s = 0; s < 4; s++) {
        uint32_t a[4];
        nf4_a_frag(pl, va, vc, s, a);
        uint32_t b0 = 0, b1 = 0;
        bfrag(s, b0, b1);
        ampr__mma_16816(d, a[0], a[1], a[2], a[3], b0, b1);
    }
    acc[0] += d[0] * sa;
    acc[1] += d[1] * sa;
    acc[2] += d[2] * sc;
    acc[3] += d[3] * sc;
}

/* A staged token's row in shared memory, in fp16 pairs: cols / 2 of them,
 * padded by 8 bytes so that the lanes of different tokens reading the same
 * columns hit different banks. The launches size x's shared memory by it
 * (n x this x 4 bytes), the kernels index it. */
__host__ __device__ __forceinline__ int32_t nf4_xs_stride(int64_t cols) { return (int32_t)(cols / 2) + 2; }

/* XS: the n tokens' x [n][cols] rounded to fp16 pairs into shared memory,
 * [n][nf4_xs_stride(cols)], then a barrier. A thread loads NF4_XS_U pairs
 * before it stores them (as a loop of one load and one store, each load
 * waited for the one before: 28 trips to L2 in a row at 14336 columns, in
 * every block before its first multiply). */
#define NF4_XS_U 8
__device__ __forceinline__ void nf4_stage_x(uint32_t *xh, const float *__restrict__ x, int32_t n,
                                            int64_t cols) {
    const int32_t xstride = nf4_xs_stride(cols), half = (int32_t)(cols / 2), total = n * half;
    const int32_t bd = (int32_t)blockDim.x;
    const float2 *x2 = (const float2 *)x; /* token i's pair p: x2[i * half + p] */
    for (int32_t e0 = (int32_t)threadIdx.x; e0 < total; e0 += NF4_XS_U * bd) {
        float2 v[NF4_XS_U];
#pragma unroll
        for (int u = 0; u < NF4_XS_U; u++)
            v[u] = e0 + u * bd < total ? __ldg(x2 + e0 + u * bd) : make_float2(0.0f, 0.0f);
#pragma unroll
        for (int u = 0; u < NF4_XS_U; u++) {
            int32_t e = e0 + u * bd;
            if (e < total) xh[e / half * xstride + e % half] = ampr__half2_bits(v[u].x, v[u].y);
        }
    }
    __syncthreads();
}

/* The tensor-core GEMV's sums to y, by every thread of the block (it has a
 * barrier): lane (g, t) of the warp holds its tile's rows g, g + 8 for
 * tokens 2t, 2t + 1; KS > 1 warps a tile add their parts in warp order.
 * rb: the block's first row, of GEMV_WARPS / KS tiles. */
template <int KS, bool FUSE>
__device__ __forceinline__ void nf4_tile_store(const float (&acc)[4], float (*part)[16][8], int64_t rb,
                                               int64_t rows, int32_t n, float *__restrict__ y, int64_t ldy) {
    const int GROUPS = GEMV_WARPS / KS;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int g = lane >> 2, t = lane & 3;
    if (KS == 1) {
        int64_t r0 = rb + (int64_t)warp * 16;
        float up[4]; /* FUSE: the up row's sums, from the lanes of g + 1 */
#pragma unroll
        for (int q = 0; q < 4; q++) up[q] = FUSE ? __shfl_down_sync(0xffffffffu, acc[q], 4) : 0.0f;
        if (r0 < rows && (!FUSE || g % 2 == 0)) {
#pragma unroll
            for (int q = 0; q < 4; q++) {
                int64_t r = r0 + g + 8 * (q >> 1);
                int tok = 2 * t + (q & 1);
                if (r >= rows || tok >= n) continue;
                if (FUSE) y[(int64_t)tok * ldy + r / 2] = ampr__silu_mul(acc[q], up[q]);
                else y[(int64_t)tok * ldy + r] = acc[q];
            }
        }
    } else {
#pragma unroll
        for (int q = 0; q < 4; q++) part[warp][g + 8 * (q >> 1)][2 * t + (q & 1)] = acc[q];
        __syncthreads();
        for (int e = threadIdx.x; e < GROUPS * 16 * 8; e += blockDim.x) {
            int gr = e / 128, m = (e / 8) % 16, tok = e % 8;
            int64_t r = rb + (int64_t)gr * 16 + m;
            if (r < rows && tok < n && (!FUSE || m % 2 == 0)) {
                float s = 0.0f, su = 0.0f;
                for (int w = 0; w < KS; w++) s += part[gr * KS + w][m][tok];
                if (FUSE)
                    for (int w = 0; w < KS; w++) su += part[gr * KS + w][m + 1][tok];
                if (FUSE) y[(int64_t)tok * ldy + r / 2] = ampr__silu_mul(s, su);
                else y[(int64_t)tok * ldy + r] = s;
            }
        }
        __syncthreads(); /* the parts are rewritten by the next tiles */
    }
}

template <int KS, bool FUSE = false, bool XS = false>
__global__ void __launch_bounds__(GEMV_WARPS * 32)
gemv_nf4_mma_kernel(const uint8_t *__restrict__ W, const float *__restrict__ absmax, int64_t rows,
                    int64_t cols, const float *__restrict__ x, int32_t n, float *__restrict__ y,
                    int64_t ldy, int pf, ampr__tail tail) {
    /* FUSE: as gemv1_kernel's, rows walked gate j, up j; a pair's two rows are
     * tile rows 2m, 2m + 1 (lanes 4 apart), y[tok][j] = silu(gate) * up */
    auto phys = [rows](int64_t r) { return walk_row<FUSE>(r, rows); };
    const int GROUPS = GEMV_WARPS / KS; /* 16-row tiles per block */
    int64_t nblk = cols / 64;
    const int64_t per_block = (int64_t)GROUPS * 16;
    if (pf) { /* the block's first tiles' first blocks of each row */
        int64_t rb = (int64_t)blockIdx.x * per_block, nr = rows - rb < per_block ? rows - rb : per_block;
        int64_t first = (int64_t)KS * NF4MMA_U < nblk ? (int64_t)KS * NF4MMA_U : nblk;
        nf4_prefetch_blocks<FUSE>(W, absmax, rows, cols, rb, nr, 0, first);
    }
    __shared__ uint32_t pairs[256 * 32];
    __shared__ float part[GEMV_WARPS][16][8];
    extern __shared__ uint2 xs_smem[]; /* XS: the tokens as fp16 pairs [n][xstride] */
    nf4_pairs_fill(pairs);
    AMPR__PDL_ENTER(); /* the table overlaps the previous kernel's tail */
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int g = lane >> 2, t = lane & 3;
    int group = warp / KS, kp = warp % KS;
    const uint32_t *pl = pairs + lane;
    /* XS: x rounded to fp16 once a block (not once a tile and step); a
     * token's row padded by 8 bytes, so that the lanes of different tokens
     * (g) reading the same columns hit different banks. Lanes of tokens past
     * n read token 0: their B columns only reach outputs never stored. */
    const int32_t xstride = nf4_xs_stride(cols);
    uint32_t *xh = (uint32_t *)xs_smem;
    if (XS) nf4_stage_x(xh, x, n, cols);
    const uint32_t *xr = xh + (g < n ? g : 0) * xstride + 8 * t;
    for (int64_t rb = (int64_t)blockIdx.x * per_block; rb < rows; rb += (int64_t)gridDim.x * per_block) {
        int64_t r0 = rb + (int64_t)group * 16;
        int64_t ra = phys(r0 + g < rows ? r0 + g : rows - 1);
        int64_t rc = phys(r0 + g + 8 < rows ? r0 + g + 8 : rows - 1);
        const uint2 *wa = (const uint2 *)(W + (size_t)ra * (size_t)(cols / 2));
        const uint2 *wc = (const uint2 *)(W + (size_t)rc * (size_t)(cols / 2));
        const float *xg = x + (int64_t)(g < n ? g : 0) * cols + 16 * t;
        float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (int64_t j0 = kp; j0 < nblk && r0 < rows; j0 += KS * NF4MMA_U) {
            uint2 va[NF4MMA_U], vc[NF4MMA_U];
            float sa[NF4MMA_U], sc[NF4MMA_U];
#pragma unroll
            for (int u = 0; u < NF4MMA_U; u++) {
                int64_t j = j0 + KS * u;
                bool in = j < nblk;
                va[u] = in ? __ldg(wa + 4 * j + t) : make_uint2(0, 0);
                vc[u] = in ? __ldg(wc + 4 * j + t) : make_uint2(0, 0);
                sa[u] = in ? __ldg(absmax + ra * nblk + j) : 0.0f;
                sc[u] = in ? __ldg(absmax + rc * nblk + j) : 0.0f;
            }
#pragma unroll
            for (int u = 0; u < NF4MMA_U; u++) {
                int64_t j = j0 + KS * u;
                if (j >= nblk) break; /* the same for the whole warp */
                nf4_block_acc(pl, va[u], vc[u], sa[u], sc[u], acc, [&](int s, uint32_t &b0, uint32_t &b1) {
                    if (XS) {
                        uint2 bv = *(const uint2 *)(xr + 32 * j + 2 * s);
                        b0 = bv.x;
                        b1 = bv.y;
                    } else if (g < n) {
                        float4 xv = __ldg((const float4 *)(xg + 64 * j + 4 * s));
                        b0 = ampr__half2_bits(xv.x, xv.y);
                        b1 = ampr__half2_bits(xv.z, xv.w);
                    }
                });
            }
        }
        nf4_tile_store<KS, FUSE>(acc, part, rb, rows, n, y, ldy);
    }
    if (!FUSE && tail.kind) ampr__tail_last(tail, y, n, (int32_t)rows); /* ldy == rows */
}

/* x staged in shared memory (XS) up to this many bytes: with the table, the
 * parts and the tail's (37 KB) three blocks an SM; larger (more tokens of
 * long rows) each step rounds its own x from global memory */
#define NF4MMA_XS_MAX (48 * 1024)

/* 0..3 for KS 1, 2, 4, 8: a kernel's place in the "allowed its shared
 * memory" bit masks of the context (nf4_xs_attr, nf4_ring_attr) */
static constexpr int nf4_ks_index(int ks) { return ks == 1 ? 0 : ks == 2 ? 1 : ks == 4 ? 2 : 3; }

template <int KS, bool FUSE, bool XS>
static void gemv_nf4_mma_launch(ampr__cuda *c, const ampr__cuda_mat *w, const float *x, int32_t n,
                                float *y, int64_t ldy, ampr__tail tail, unsigned grid, size_t smem) {
    /* XS takes the block past the default 48 KB: each staging kernel is
     * allowed NF4MMA_XS_MAX once a context (a refusal fails the launch, which
     * AMPR__CU_LAUNCHED reports, and is asked again next time) */
    unsigned bit = 1u << (2 * nf4_ks_index(KS) + FUSE);
    if (XS && !(c->nf4_xs_attr & bit) &&
        cudaFuncSetAttribute(gemv_nf4_mma_kernel<KS, FUSE, XS>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             NF4MMA_XS_MAX) == cudaSuccess)
        c->nf4_xs_attr |= bit;
    ampr__launch(c, FUSE ? "gemv_nf4_mma_kernel (SwiGLU)" : "gemv_nf4_mma_kernel",
        gemv_nf4_mma_kernel<KS, FUSE, XS>, grid, GEMV_WARPS * 32, smem, (const uint8_t *)w->data,
        w->scales, w->rows, w->cols, x, n, y, ldy, c->sw[AMPR__CUDA_PREFETCH], tail);
}

/* xs: the staged x's bytes (gemv_nf4_mma) */
template <int KS, bool FUSE>
static void gemv_nf4_mma_xs(ampr__cuda *c, const ampr__cuda_mat *w, const float *x, int32_t n,
                            float *y, int64_t ldy, ampr__tail tail, unsigned grid, size_t xs) {
    if (xs <= NF4MMA_XS_MAX) gemv_nf4_mma_launch<KS, FUSE, true>(c, w, x, n, y, ldy, tail, grid, xs);
    else gemv_nf4_mma_launch<KS, FUSE, false>(c, w, x, n, y, ldy, tail, grid, 0);
}

/* ---- NF4 on tensor cores: the weights through a ring (AMPR__CUDA_NF4_RING) ----
 * gemv_nf4_ring_kernel<KS, FUSE, S>: gemv_nf4_mma_kernel with x staged (XS)
 * whose weights reach registers through a ring of S stages a warp in shared
 * memory, filled by cp.async. The register kernel loads NF4MMA_U blocks,
 * waits for all of them, multiplies, and only then loads the next ones, so
 * that on average a warp has about half of them in flight (Nsight Compute on
 * the H200, 2026-11-28: it waits on its loads, with 13-38% of DRAM's
 * bandwidth in use); here a warp keeps S - 1 blocks in flight at every step,
 * and the first S - 1 are issued before the PDL wait (weights are never
 * written by a kernel), overlapping the kernel before.
 * A lane copies only what it reads: its 8 bytes of rows g and g + 8 of the
 * block and their two absmax, 24 bytes a stage (codes[stage][lane] as one
 * 16-byte load, am[stage][lane] one 8-byte), so no lane waits for another's
 * copies and a stage is refilled by the lane that just read it.
 * The warps take the same blocks in the same order and sum them as
 * gemv_nf4_mma_kernel does (nf4_block_acc, nf4_tile_store): the same floats.
 * One tile a warp group (the grid covers every row block), so that each
 * warp's ring runs once through its part of the tile's row. */
#define NF4RING_STAGE_BYTES (GEMV_WARPS * 32 * (16 + 8)) /* a stage of the block's warps */

template <int KS, bool FUSE, int S>
__global__ void __launch_bounds__(GEMV_WARPS * 32)
gemv_nf4_ring_kernel(const uint8_t *__restrict__ W, const float *__restrict__ absmax, int64_t rows,
                     int64_t cols, const float *__restrict__ x, int32_t n, float *__restrict__ y,
                     int64_t ldy, ampr__tail tail) {
    auto phys = [rows](int64_t r) { return walk_row<FUSE>(r, rows); };
    const int GROUPS = GEMV_WARPS / KS;
    const int64_t nblk = cols / 64, rb = (int64_t)blockIdx.x * GROUPS * 16;
    __shared__ uint32_t pairs[256 * 32];
    __shared__ float part[GEMV_WARPS][16][8];
    /* [ring codes: warps][S][32] uint4, [ring absmax: warps][S][32] float2, x [n][cols / 2 + 2] */
    extern __shared__ uint4 ring_smem[];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int g = lane >> 2, t = lane & 3;
    int group = warp / KS, kp = warp % KS;
    uint4 *codes = ring_smem + warp * S * 32 + lane;
    float2 *am = (float2 *)(ring_smem + GEMV_WARPS * S * 32) + warp * S * 32 + lane;
    uint32_t *xh = (uint32_t *)(ring_smem + GEMV_WARPS * S * 32 * 3 / 2);
    int64_t r0 = rb + (int64_t)group * 16;
    int64_t ra = phys(r0 + g < rows ? r0 + g : rows - 1);
    int64_t rc = phys(r0 + g + 8 < rows ? r0 + g + 8 : rows - 1);
    const uint2 *wa = (const uint2 *)(W + (size_t)ra * (size_t)(cols / 2)) + t;
    const uint2 *wc = (const uint2 *)(W + (size_t)rc * (size_t)(cols / 2)) + t;
    const float *sa = absmax + ra * nblk, *sc = absmax + rc * nblk;
    /* this warp's blocks: j = kp + KS i, i < cnt (the same for its lanes) */
    int32_t cnt = r0 < rows && kp < nblk ? (int32_t)((nblk - kp + KS - 1) / KS) : 0;
    auto issue = [&](int32_t i) {
        int64_t j = kp + (int64_t)KS * i;
        int slot = (i % S) * 32;
        ampr__cp_async<8>(&codes[slot].x, wa + 4 * j);
        ampr__cp_async<8>(&codes[slot].z, wc + 4 * j);
        ampr__cp_async<4>(&am[slot].x, sa + j);
        ampr__cp_async<4>(&am[slot].y, sc + j);
    };
    /* a group per block, empty past cnt, so that "group i is done" is
     * always "at most S - 2 newer ones pending" */
    for (int32_t i = 0; i < S - 1; i++) {
        if (i < cnt) issue(i);
        ampr__cp_commit();
    }
    nf4_pairs_fill(pairs);
    AMPR__PDL_ENTER();
    nf4_stage_x(xh, x, n, cols);
    const uint32_t *xr = xh + (g < n ? g : 0) * nf4_xs_stride(cols) + 8 * t;
    const uint32_t *pl = pairs + lane;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int32_t i = 0; i < cnt; i++) {
        ampr__cp_wait<S - 2>(); /* block i is in shared memory */
        int slot = (i % S) * 32;
        uint4 v = codes[slot];
        float2 s2 = am[slot];
        /* the stage read at i - 1 (this lane's own, read into registers
         * above in program order) takes block i + S - 1 */
        if (i + S - 1 < cnt) issue(i + S - 1);
        ampr__cp_commit();
        const uint32_t *xj = xr + 32 * (kp + (int64_t)KS * i);
        nf4_block_acc(pl, make_uint2(v.x, v.y), make_uint2(v.z, v.w), s2.x, s2.y, acc,
                      [&](int s, uint32_t &b0, uint32_t &b1) {
                          uint2 bv = *(const uint2 *)(xj + 2 * s);
                          b0 = bv.x;
                          b1 = bv.y;
                      });
    }
    ampr__cp_wait<0>(); /* only empty groups are left; none stays in flight past the kernel */
    nf4_tile_store<KS, FUSE>(acc, part, rb, rows, n, y, ldy);
    if (!FUSE && tail.kind) ampr__tail_last(tail, y, n, (int32_t)rows); /* ldy == rows */
}

/* The ring kernel's dynamic shared memory at most: 8 stages and x up to
 * NF4MMA_XS_MAX (with the table and the parts, 132 KB: one block an SM) */
#define NF4RING_SMEM_MAX (8 * NF4RING_STAGE_BYTES + NF4MMA_XS_MAX)

template <int KS, bool FUSE, int S>
static void gemv_nf4_ring_launch(ampr__cuda *c, const ampr__cuda_mat *w, const float *x, int32_t n,
                                 float *y, int64_t ldy, ampr__tail tail, size_t xs) {
    unsigned bit = 1u << (2 * nf4_ks_index(KS) + FUSE + 8 * (S == 8));
    if (!(c->nf4_ring_attr & bit) &&
        cudaFuncSetAttribute(gemv_nf4_ring_kernel<KS, FUSE, S>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             NF4RING_SMEM_MAX) == cudaSuccess)
        c->nf4_ring_attr |= bit;
    int64_t per_block = (int64_t)(GEMV_WARPS / KS) * 16;
    unsigned grid = (unsigned)((w->rows + per_block - 1) / per_block);
    ampr__launch(c, FUSE ? "gemv_nf4_ring_kernel (SwiGLU)" : "gemv_nf4_ring_kernel",
        gemv_nf4_ring_kernel<KS, FUSE, S>, grid, GEMV_WARPS * 32, (size_t)S * NF4RING_STAGE_BYTES + xs,
        (const uint8_t *)w->data, w->scales, w->rows, w->cols, x, n, y, ldy, tail);
}

/* Stages: c->nf4_ring when set (ampr__cuda_set_nf4_ring), else 8 while the
 * ring and x take at most 64 KB (with the table and parts, two blocks fit an
 * SM of 228 KB), 4 beyond (the 8B shape's w_down, 28 KB of x a token). Warps
 * a tile: the fewest that give every SM two blocks of 8 warps, each warp at
 * least 2 blocks of its row. */
template <bool FUSE>
static void gemv_nf4_ring(ampr__cuda *c, const ampr__cuda_mat *w, const float *x, int32_t n,
                          float *y, int64_t ldy, ampr__tail tail, size_t xs) {
    int stages = c->nf4_ring ? c->nf4_ring : (8 * (size_t)NF4RING_STAGE_BYTES + xs <= 64 * 1024 ? 8 : 4);
    int64_t want = 16 * (int64_t)c->sm_count, tiles = (w->rows + 15) / 16, nblk = w->cols / 64;
    int ks = 1;
    while (ks < GEMV_WARPS && tiles * ks < want && nblk / (2 * ks) >= 2) ks *= 2;
#define RING(KS) (stages == 8 ? gemv_nf4_ring_launch<KS, FUSE, 8>(c, w, x, n, y, ldy, tail, xs) \
                              : gemv_nf4_ring_launch<KS, FUSE, 4>(c, w, x, n, y, ldy, tail, xs))
    switch (ks) {
    case 1: RING(1); break;
    case 2: RING(2); break;
    case 4: RING(4); break;
    default: RING(8); break;
    }
#undef RING
}

/* Warps a tile: the fewest (1, 2, 4, 8) that give the GPU about 32 warps per
 * SM while each warp keeps at least NF4MMA_U blocks of a row (the same for a
 * fused call, which walks the same rows in another order). */
template <bool FUSE>
static void gemv_nf4_mma(ampr__cuda *c, const ampr__cuda_mat *w, const float *x, int32_t n,
                         float *y, int64_t ldy, ampr__tail tail) {
    size_t xs = (size_t)n * (size_t)nf4_xs_stride(w->cols) * 4; /* x staged, if it fits */
    if (c->sw[AMPR__CUDA_NF4_RING] && xs <= NF4MMA_XS_MAX) {
        gemv_nf4_ring<FUSE>(c, w, x, n, y, ldy, tail, xs);
        return;
    }
    int64_t want = 32 * (int64_t)c->sm_count, tiles = (w->rows + 15) / 16, nblk = w->cols / 64;
    int ks = 1;
    while (ks < GEMV_WARPS && tiles * ks < want && nblk / (2 * ks) >= NF4MMA_U) ks *= 2;
    int64_t per_block = (int64_t)(GEMV_WARPS / ks) * 16;
    int64_t blocks = (w->rows + per_block - 1) / per_block, cap = 4 * (int64_t)c->sm_count;
    unsigned grid = (unsigned)(blocks < cap ? blocks : cap);
    switch (ks) {
    case 1: gemv_nf4_mma_xs<1, FUSE>(c, w, x, n, y, ldy, tail, grid, xs); break;
    case 2: gemv_nf4_mma_xs<2, FUSE>(c, w, x, n, y, ldy, tail, grid, xs); break;
    case 4: gemv_nf4_mma_xs<4, FUSE>(c, w, x, n, y, ldy, tail, grid, xs); break;
    default: gemv_nf4_mma_xs<8, FUSE>(c, w, x, n, y, ldy, tail, grid, xs); break;
    }
}

/* ---- NF4 on tensor cores, batches (9..32 tokens) ----------------------------
 * gemm_nf4_mma_kernel<NT, FUSE>: decode batches of more tokens than the GEMV
 * takes, without the prefill path's dequantization of the whole matrix to
 * fp16 (which writes and reads again 4 bytes for each half byte of weights).
 * The mma steps are the tensor-core GEMV's (nf4_a_frag, the same k-slots),
 * with NT tiles of 8 tokens each multiplied by every A fragment, and:
 *   - a block owns 256 rows (8 warps x 2 tiles of 16), so that 256 rows share
 *     each activation they read: per stage of NF4B_SB 64-column blocks, the
 *     block converts the tokens' activations to fp16 once, into shared memory
 *     in fragment order (bfrag[block][step][token tile][lane]: one 8-byte,
 *     conflict-free load per fragment), while the warps' weight loads for the
 *     stage are in flight;
 *   - the columns are split over gridDim.y blocks (a split: per_split NF4
 *     blocks) so that short matrices still give every SM work; each split
 *     writes its sums to scratch (part) and the last split of a row block to
 *     finish, counted in cnt, adds them in split order and stores y (and sets
 *     the count back to 0): the same floats whichever split ends last.
 * Rounding as the tensor-core GEMV: codes and x to fp16 (saturated, NaN
 * kept), fp32 sums, each 64-column block's sum scaled by its absmax. FUSE:
 * rows walked gate j, up j (walk_row), y[tok][j] = silu(gate) * up; each row's
 * sum is the same as unfused. cols % 64 == 0; rows past the end repeat the
 * last row, unstored; tokens n .. 8 NT - 1 are zeros. */
#define NF4B_ROWS 256 /* rows a block */
#define NF4B_SB 2     /* 64-column blocks a stage */

/* a warp's sums: 2 row tiles x NT token tiles x its 4 of each 16 x 8 */
template <int NT> __device__ __forceinline__ void tiles_zero(float (&a)[2][NT][4]) {
#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
        for (int q = 0; q < NT; q++)
#pragma unroll
            for (int i = 0; i < 4; i++) a[mt][q][i] = 0.0f;
}

template <int NT, bool FUSE>
__global__ void __launch_bounds__(GEMV_WARPS * 32, 2) /* two blocks an SM: 128 registers */
gemm_nf4_mma_kernel(const uint8_t *__restrict__ W, const float *__restrict__ absmax, int64_t rows,
                    int64_t cols, const float *__restrict__ x, int32_t n, float *__restrict__ y,
                    int64_t ldy, int32_t per_split, float *__restrict__ part,
                    int32_t *__restrict__ cnt, int pf) {
    auto phys = [rows](int64_t r) { return walk_row<FUSE>(r, rows); };
    const int NTOK = 8 * NT;
    int64_t nblk = cols / 64, rb = (int64_t)blockIdx.x * NF4B_ROWS;
    int32_t splits = (int32_t)gridDim.y, sp = (int32_t)blockIdx.y;
    int64_t j_begin = (int64_t)sp * per_split;
    int64_t j_end = j_begin + per_split < nblk ? j_begin + per_split : nblk;
    if (pf) { /* the split's first 8 stages of the block's rows */
        int64_t nr = rows - rb < NF4B_ROWS ? rows - rb : NF4B_ROWS;
        int64_t first = j_end - j_begin < 8 * NF4B_SB ? j_end - j_begin : 8 * NF4B_SB;
        nf4_prefetch_blocks<FUSE>(W, absmax, rows, cols, rb, nr, j_begin, first);
    }
    __shared__ uint32_t pairs[256 * 32];
    __shared__ uint2 bfrag[NF4B_SB][4][NT][32];
    nf4_pairs_fill(pairs);
    AMPR__PDL_ENTER();
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int g = lane >> 2, t = lane & 3;
    const uint32_t *pl = pairs + lane;
    const uint2 *wa[2], *wc[2];
    int64_t ra[2], rc[2];
#pragma unroll
    for (int mt = 0; mt < 2; mt++) {
        int64_t r = rb + 32 * warp + 16 * mt + g;
        ra[mt] = phys(r < rows ? r : rows - 1);
        rc[mt] = phys(r + 8 < rows ? r + 8 : rows - 1);
        wa[mt] = (const uint2 *)(W + (size_t)ra[mt] * (size_t)(cols / 2));
        wc[mt] = (const uint2 *)(W + (size_t)rc[mt] * (size_t)(cols / 2));
    }
    float acc[2][NT][4];
    tiles_zero(acc);
    for (int64_t j0 = j_begin; j0 < j_end; j0 += NF4B_SB) {
        /* this stage's weights: their loads are in flight while x is staged */
        uint2 va[2][NF4B_SB], vc[2][NF4B_SB];
        float sa[2][NF4B_SB], sc[2][NF4B_SB];
#pragma unroll
        for (int mt = 0; mt < 2; mt++)
#pragma unroll
            for (int sb = 0; sb < NF4B_SB; sb++) {
                int64_t j = j0 + sb;
                bool in = j < j_end;
                va[mt][sb] = in ? __ldg(wa[mt] + 4 * j + t) : make_uint2(0, 0);
                vc[mt][sb] = in ? __ldg(wc[mt] + 4 * j + t) : make_uint2(0, 0);
                sa[mt][sb] = in ? __ldg(absmax + ra[mt] * nblk + j) : 0.0f;
                sc[mt][sb] = in ? __ldg(absmax + rc[mt] * nblk + j) : 0.0f;
            }
        /* the stage's activations as B fragments: element (token, 4 columns
         * from 16 t + 4 s of block sb) -> bfrag[sb][s][token / 8][4 (token % 8) + t] */
        for (int e = threadIdx.x; e < NTOK * 16 * NF4B_SB; e += blockDim.x) {
            int tok = e / (16 * NF4B_SB), k4 = e % (16 * NF4B_SB);
            int sb = k4 / 16, tt = (k4 / 4) % 4, s = k4 % 4;
            int64_t j = j0 + sb;
            uint2 v = make_uint2(0, 0);
            if (tok < n && j < j_end) {
                float4 xv = __ldg((const float4 *)(x + (int64_t)tok * cols + 64 * j + 16 * tt + 4 * s));
                v = make_uint2(ampr__half2_bits(xv.x, xv.y), ampr__half2_bits(xv.z, xv.w));
            }
            bfrag[sb][s][tok / 8][4 * (tok % 8) + tt] = v;
        }
        __syncthreads();
#pragma unroll
        for (int sb = 0; sb < NF4B_SB; sb++) {
            if (j0 + sb >= j_end) break; /* the same for the whole block */
            float d[2][NT][4];
            tiles_zero(d);
#pragma unroll
            for (int s = 0; s < 4; s++) {
                uint32_t a[2][4];
#pragma unroll
                for (int mt = 0; mt < 2; mt++) nf4_a_frag(pl, va[mt][sb], vc[mt][sb], s, a[mt]);
#pragma unroll
                for (int q = 0; q < NT; q++) {
                    uint2 b = bfrag[sb][s][q][lane];
#pragma unroll
                    for (int mt = 0; mt < 2; mt++)
                        ampr__mma_16816(d[mt][q], a[mt][0], a[mt][1], a[mt][2], a[mt][3], b.x, b.y);
                }
            }
#pragma unroll
            for (int mt = 0; mt < 2; mt++)
#pragma unroll
                for (int q = 0; q < NT; q++) {
                    acc[mt][q][0] += d[mt][q][0] * sa[mt][sb];
                    acc[mt][q][1] += d[mt][q][1] * sa[mt][sb];
                    acc[mt][q][2] += d[mt][q][2] * sc[mt][sb];
                    acc[mt][q][3] += d[mt][q][3] * sc[mt][sb];
                }
        }
        __syncthreads(); /* bfrag is rewritten by the next stage */
    }
    /* lane (g, t) holds, per tile mt and token tile q, the block's rows
     * 32 warp + 16 mt + g (+ 8) for tokens 8 q + 2 t (+ 1) */
    if (splits == 1) {
#pragma unroll
        for (int mt = 0; mt < 2; mt++)
#pragma unroll
            for (int q = 0; q < NT; q++) {
                float up[4]; /* FUSE: the up row's sums, from the lanes of g + 1 */
#pragma unroll
                for (int i = 0; i < 4; i++)
                    up[i] = FUSE ? __shfl_down_sync(0xffffffffu, acc[mt][q][i], 4) : 0.0f;
                if (FUSE && g % 2) continue;
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    int64_t r = rb + 32 * warp + 16 * mt + g + 8 * (i >> 1);
                    int tok = 8 * q + 2 * t + (i & 1);
                    if (r >= rows || tok >= n) continue;
                    if (FUSE) y[(int64_t)tok * ldy + r / 2] = ampr__silu_mul(acc[mt][q][i], up[i]);
                    else y[(int64_t)tok * ldy + r] = acc[mt][q][i];
                }
            }
        return;
    }
    /* this split's sums: part[(row block, split)][token][row of the block] */
    float *mine = part + ((size_t)blockIdx.x * splits + sp) * (size_t)(NF4B_ROWS * NTOK);
#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
        for (int q = 0; q < NT; q++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                int lr = 32 * warp + 16 * mt + g + 8 * (i >> 1);
                mine[(8 * q + 2 * t + (i & 1)) * NF4B_ROWS + lr] = acc[mt][q][i];
            }
    __shared__ int last;
    __threadfence(); /* the sums, visible before they are counted */
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(cnt + blockIdx.x, 1) == splits - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    const float *all = part + (size_t)blockIdx.x * splits * (size_t)(NF4B_ROWS * NTOK);
    const int PER = FUSE ? 2 : 1; /* rows a thread finishes */
    for (int e = threadIdx.x; e < n * (NF4B_ROWS / PER); e += blockDim.x) {
        int tok = e / (NF4B_ROWS / PER), lr = PER * (e % (NF4B_ROWS / PER));
        int64_t r = rb + lr;
        if (r >= rows) continue;
        float v[PER];
#pragma unroll
        for (int k = 0; k < PER; k++) {
            float s = 0.0f;
            for (int32_t p = 0; p < splits; p++)
                s += __ldcg(all + (size_t)p * (NF4B_ROWS * NTOK) + tok * NF4B_ROWS + lr + k);
            v[k] = s;
        }
        if (FUSE) y[(int64_t)tok * ldy + r / 2] = ampr__silu_mul(v[0], v[PER - 1]);
        else y[(int64_t)tok * ldy + r] = v[0];
    }
    if (threadIdx.x == 0) cnt[blockIdx.x] = 0;
}

static ampr_status grow(ampr__cuda *c, void **p, size_t *have, size_t need, const char *what,
                        ampr__err *err);

/* The batch kernel's scratch: its splits' sums and per row block the splits
 * done. Splits are chosen so that row blocks x splits <= 2 blocks per SM
 * whenever there is more than one. */
static ampr_status nf4b_scratch(ampr__cuda *c, ampr__err *err) {
    size_t blocks = (size_t)2 * (size_t)c->sm_count;
    AMPR__TRY(grow(c, (void **)&c->nf4b_part, &c->nf4b_part_bytes,
                   blocks * NF4B_ROWS * AMPR__CUDA_NF4_BATCH_MAX * sizeof(float), "NF4 batch partials", err));
    return grow(c, (void **)&c->nf4b_cnt, &c->nf4b_cnt_bytes, blocks * sizeof(int32_t), "NF4 batch counts", err);
}

/* NF4 prefill dequantizes the matrix to fp16 for cuBLASLt a chunk of rows at
 * a time: the scratch stays at 16 MB whatever the matrix (the 8B shape's
 * output matrix whole would be 1 GB), and a chunk that was just written may
 * still be in L2 when cuBLASLt reads it (H100 / H200: 50 MB). But a chunk's
 * GEMM has rows x n / (128 x 128) tiles: at the 8B shape (cols 4096, 2048
 * rows a chunk) and 128 tokens 16 for 132 SMs. With AMPR__CUDA_DQ_WIDE a
 * chunk has rows enough for DQ_WAVES tiles an SM, up to DQ_WIDE_MAX
 * elements, and a matrix's chunks are of one size. Rows a chunk: a multiple
 * of 64 (cuBLASLt's rows are), c->dq_rows when set (the GPU check). */
#define AMPR__CUDA_DQ_ELEMS ((int64_t)8 << 20)
#define AMPR__CUDA_DQ_WAVES 4
#define AMPR__CUDA_DQ_WIDE_MAX ((int64_t)128 << 20)
static int64_t dq_rows(const ampr__cuda *c, int64_t rows, int64_t cols, int32_t n) {
    int64_t ch = c->dq_rows > 0 ? c->dq_rows : AMPR__CUDA_DQ_ELEMS / cols / 64 * 64;
    if (ch < 64) ch = 64;
    if (c->dq_rows <= 0 && c->sw[AMPR__CUDA_DQ_WIDE]) {
        /* as few chunks as chunks of `want` rows would be (at least the 16 MB
         * ones, at most the cap), all of one size */
        int64_t tiles = (int64_t)(c->dq_waves > 0 ? c->dq_waves : AMPR__CUDA_DQ_WAVES) * c->sm_count * 128 * 128;
        int64_t want = (tiles / (n > 0 ? n : 1) + 63) / 64 * 64, most = AMPR__CUDA_DQ_WIDE_MAX / cols / 64 * 64;
        want = AMPR__MAX(ch, AMPR__MIN(want, most));
        int64_t k = (rows + want - 1) / want;
        ch = ((rows + k - 1) / k + 63) / 64 * 64;
    }
    return ch < rows ? ch : rows;
}

int64_t ampr__cuda_dequant_elems(const ampr__cuda *c, int64_t rows, int64_t cols) {
    return dq_rows(c, rows, cols, 1) * cols; /* the fewest tokens take the most rows */
}

int64_t ampr__cuda_dequant_rows(const ampr__cuda *c, int64_t rows, int64_t cols, int32_t n) {
    return dq_rows(c, rows, cols, n);
}

void ampr__cuda_set_dequant_rows(ampr__cuda *c, int64_t rows) {
    c->dq_rows = rows > 0 ? (rows + 63) / 64 * 64 : 0;
}

void ampr__cuda_set_dequant_waves(ampr__cuda *c, int waves) { c->dq_waves = waves > 0 ? waves : 0; }

/* The batch kernel takes this matmul (AMPR__CUDA_NF4_BATCH on, more tokens
 * than the GEMV, at most AMPR__CUDA_NF4_BATCH_MAX; gemv_max = 0 still
 * forces cuBLASLt) */
static int nf4_batch_ok(const ampr__cuda *c, const ampr__cuda_mat *w, const float *x, int32_t n) {
    return w->type == AMPR__Q_NF4 && c->sw[AMPR__CUDA_NF4_BATCH] && c->gemv_max > 0 &&
           n > AMPR__CUDA_GEMV_MAX && n <= AMPR__CUDA_NF4_BATCH_MAX && w->cols % 64 == 0 &&
           (uintptr_t)x % 16 == 0;
}

/* Splits: about two blocks per SM, each split at least one stage. */
template <bool FUSE>
static ampr_status gemm_nf4_mma(ampr__cuda *c, const ampr__cuda_mat *w, const float *x,
                                int32_t n, float *y, int64_t ldy, ampr__err *err) {
    int64_t rblocks = (w->rows + NF4B_ROWS - 1) / NF4B_ROWS, nblk = w->cols / 64;
    int64_t want = 2 * (int64_t)c->sm_count;
    int64_t splits = rblocks >= want / 2 ? 1 : want / rblocks;
    int64_t most = (nblk + NF4B_SB - 1) / NF4B_SB;
    if (splits > most) splits = most;
    int64_t per = (nblk + splits - 1) / splits;
    per = (per + NF4B_SB - 1) / NF4B_SB * NF4B_SB;
    splits = (nblk + per - 1) / per;
    if (splits > 1) AMPR__TRY(nf4b_scratch(c, err));
    dim3 grid((unsigned)rblocks, (unsigned)splits);
    const uint8_t *W = (const uint8_t *)w->data;
    const char *name = FUSE ? "gemm_nf4_mma_kernel (SwiGLU)" : "gemm_nf4_mma_kernel";
    if (n <= 16)
        ampr__launch(c, name, gemm_nf4_mma_kernel<2, FUSE>, grid, GEMV_WARPS * 32, 0, W, w->scales,
            w->rows, w->cols, x, n, y, ldy, (int32_t)per, c->nf4b_part, c->nf4b_cnt,
            c->sw[AMPR__CUDA_PREFETCH]);
    else
        ampr__launch(c, name, gemm_nf4_mma_kernel<4, FUSE>, grid, GEMV_WARPS * 32, 0, W, w->scales,
            w->rows, w->cols, x, n, y, ldy, (int32_t)per, c->nf4b_part, c->nf4b_cnt,
            c->sw[AMPR__CUDA_PREFETCH]);
    AMPR__CU_LAUNCHED(err, FUSE ? "gemm_nf4_mma_swiglu" : "gemm_nf4_mma");
    return AMPR_OK;
}

/* Any shape, any alignment, any n: one warp per (row, group of up to 8
 * tokens), one element per lane per step. Element (r, c) of the flattened
 * matrix is e = r*cols + c: NF4 byte e/2 (high nibble when e is even),
 * absmax[e/64]. INT8 takes activations quantized by quant_act_kernel
 * (xq [n][cols], xs [n]) and reproduces the CPU's int32 sum exactly. */
__global__ void __launch_bounds__(GEMV_WARPS * 32)
gemv_any_kernel(int fmt, const void *__restrict__ W, const float *__restrict__ sc, int64_t rows,
                int64_t cols, const float *__restrict__ x, const int8_t *__restrict__ xq,
                const float *__restrict__ xs, int32_t n, float *__restrict__ y, int64_t ldy) {
    AMPR__PDL_ENTER();
    int64_t r = (int64_t)blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    int32_t t0 = (int32_t)blockIdx.y * AMPR__CUDA_GEMV_MAX;
    int lane = threadIdx.x & 31;
    if (r >= rows) return;
    int32_t nt = min(n - t0, (int32_t)AMPR__CUDA_GEMV_MAX);
    float acc[AMPR__CUDA_GEMV_MAX];
    int iacc[AMPR__CUDA_GEMV_MAX];
#pragma unroll
    for (int t = 0; t < AMPR__CUDA_GEMV_MAX; t++) {
        acc[t] = 0.0f;
        iacc[t] = 0;
    }
    for (int64_t c = lane; c < cols; c += 32) {
        int64_t e = r * cols + c;
        if (fmt == AMPR__Q_INT8) {
            int w = (int)((const int8_t *)W)[e];
#pragma unroll
            for (int t = 0; t < AMPR__CUDA_GEMV_MAX; t++)
                if (t < nt) iacc[t] += w * (int)xq[(int64_t)(t0 + t) * cols + c];
            continue;
        }
        float w;
        if (fmt == AMPR__Q_F16) {
            w = __half2float(((const __half *)W)[e]);
        } else {
            uint8_t b = ((const uint8_t *)W)[e >> 1];
            unsigned code = (e & 1) ? (b & 15u) : (unsigned)(b >> 4);
            w = k_nf4[code] * sc[e / 64];
        }
#pragma unroll
        for (int t = 0; t < AMPR__CUDA_GEMV_MAX; t++)
            if (t < nt) acc[t] += w * x[(int64_t)(t0 + t) * cols + c];
    }
#pragma unroll
    for (int t = 0; t < AMPR__CUDA_GEMV_MAX; t++) {
        if (t < nt) {
            if (fmt == AMPR__Q_INT8) {
                int s = warp_sum_i(iacc[t]);
                if (lane == 0) y[(int64_t)(t0 + t) * ldy + r] = ((float)s * sc[r]) * xs[t0 + t];
            } else {
                float s = warp_sum(acc[t]);
                if (lane == 0) y[(int64_t)(t0 + t) * ldy + r] = s;
            }
        }
    }
}

/* ---- scratch ---------------------------------------------------------------- */

static ampr_status grow(ampr__cuda *c, void **p, size_t *have, size_t need, const char *what,
                        ampr__err *err) {
    if (need <= *have) return AMPR_OK;
    if (ampr__cuda_capturing(c))
        return ampr__fail(err, AMPR_ERR_INTERNAL,
                          "CUDA %s scratch must grow to %zu bytes during graph capture "
                          "(call ampr__cuda_reserve first)",
                          what, need);
    need = (need + ((size_t)1 << 20) - 1) & ~(((size_t)1 << 20) - 1);
    AMPR__CU(err, cudaSetDevice(c->device));
    AMPR__CU(err, cudaStreamSynchronize(c->stream));
    cudaFree(*p);
    *p = NULL;
    *have = 0;
    c->scratch_gen++;
    AMPR__CU(err, cudaMalloc(p, need));
    /* padded int8 token rows are read by cuBLASLt: keep them defined */
    AMPR__CU(err, cudaMemsetAsync(*p, 0, need, c->stream));
    *have = need;
    return AMPR_OK;
}

static int64_t pad4(int64_t n) { return (n + 3) & ~(int64_t)3; }

ampr_status ampr__cuda_reserve(ampr__cuda *c, int32_t max_n, int64_t max_rows, int64_t max_cols,
                               int64_t nf4_elems, ampr__err *err) {
    size_t n = (size_t)pad4(max_n), rows = (size_t)max_rows, cols = (size_t)max_cols;
    AMPR__TRY(grow(c, (void **)&c->xh, &c->xh_bytes, n * cols * 2, "half activation", err));
    AMPR__TRY(grow(c, (void **)&c->xq, &c->xq_bytes, n * cols, "int8 activation", err));
    AMPR__TRY(grow(c, (void **)&c->xs, &c->xs_bytes, n * sizeof(float), "token scale", err));
    AMPR__TRY(grow(c, (void **)&c->acc, &c->acc_bytes, n * rows * 4, "int32 result", err));
    if (nf4_elems > 0) {
        AMPR__TRY(grow(c, (void **)&c->wdq, &c->wdq_bytes, (size_t)nf4_elems * 2, "NF4 dequant",
                       err));
        AMPR__TRY(nf4b_scratch(c, err)); /* decode batches on tensor cores (gemm_nf4_mma) */
    }
    return AMPR_OK;
}

/* ---- cuBLASLt plans ------------------------------------------------------- */

static ampr_status plan_make(ampr__cuda *c, ampr__cuda_plan *p, int kind, int64_t m, int64_t n,
                             int64_t k, int64_t ldc, ampr__err *err) {
    int is_i8 = kind == AMPR__Q_INT8;
    cudaDataType_t ab = is_i8 ? CUDA_R_8I : CUDA_R_16F;
    cudaDataType_t cd = is_i8 ? CUDA_R_32I : CUDA_R_32F;
    cublasComputeType_t ct = is_i8 ? CUBLAS_COMPUTE_32I : CUBLAS_COMPUTE_32F;
    cudaDataType_t st = is_i8 ? CUDA_R_32I : CUDA_R_32F;
    memset(p, 0, sizeof *p);
    p->used = 1;
    p->kind = kind;
    p->m = m;
    p->n = n;
    p->k = k;
    p->ldc = ldc;
    AMPR__CUBLAS(err, cublasLtMatmulDescCreate(&p->op, ct, st));
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    AMPR__CUBLAS(err, cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta,
                                                     sizeof ta));
    AMPR__CUBLAS(err, cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb,
                                                     sizeof tb));
    AMPR__CUBLAS(err, cublasLtMatrixLayoutCreate(&p->a, ab, (uint64_t)k, (uint64_t)m, k));
    AMPR__CUBLAS(err, cublasLtMatrixLayoutCreate(&p->b, ab, (uint64_t)k, (uint64_t)n, k));
    AMPR__CUBLAS(err, cublasLtMatrixLayoutCreate(&p->cd, cd, (uint64_t)m, (uint64_t)n, ldc));
    cublasLtMatmulPreference_t pref = NULL;
    AMPR__CUBLAS(err, cublasLtMatmulPreferenceCreate(&pref));
    cublasLtMatmulHeuristicResult_t res;
    memset(&res, 0, sizeof res);
    int found = 0;
    cublasStatus_t s = cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &c->lt_ws_bytes, sizeof c->lt_ws_bytes);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulAlgoGetHeuristic(c->lt, p->op, p->a, p->b, p->cd, p->cd, pref, 1, &res,
                                           &found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (s != CUBLAS_STATUS_SUCCESS)
        return ampr__cublas_fail(err, s, "cublasLtMatmulAlgoGetHeuristic", __FILE__, __LINE__);
    if (found < 1)
        return ampr__fail(err, AMPR_ERR_BACKEND,
                          "cuBLASLt has no %s algorithm for m=%lld n=%lld k=%lld",
                          is_i8 ? "int8" : "fp16", (long long)m, (long long)n, (long long)k);
    p->algo = res.algo;
    return AMPR_OK;
}

static ampr_status plan_get(ampr__cuda *c, int kind, int64_t m, int64_t n, int64_t k, int64_t ldc,
                            ampr__cuda_plan **out, ampr__err *err) {
    for (int i = 0; i < AMPR__CUDA_MAX_PLANS; i++) {
        ampr__cuda_plan *p = &c->plans[i];
        if (p->used && p->kind == kind && p->m == m && p->n == n && p->k == k && p->ldc == ldc) {
            *out = p;
            return AMPR_OK;
        }
    }
    int slot = -1;
    for (int i = 0; i < AMPR__CUDA_MAX_PLANS && slot < 0; i++)
        if (!c->plans[i].used) slot = i;
    if (slot < 0) {
        slot = c->plan_next;
        c->plan_next = (c->plan_next + 1) % AMPR__CUDA_MAX_PLANS;
    }
    ampr__cuda_plan *p = &c->plans[slot];
    /* descriptors are read when cublasLtMatmul enqueues, so an evicted plan
     * is not needed by work already queued */
    ampr__cuda_plan_destroy(p);
    ampr_status st = plan_make(c, p, kind, m, n, k, ldc, err);
    if (st != AMPR_OK) {
        ampr__cuda_plan_destroy(p);
        return st;
    }
    *out = p;
    return AMPR_OK;
}

/* C = A B on c->stream with workspace ws (lt_ws_bytes of it) */
static ampr_status lt_matmul_ws(ampr__cuda *c, int kind, const void *A, const void *B, void *C,
                                int64_t m, int64_t n, int64_t k, int64_t ldc, void *ws, ampr__err *err) {
    ampr__cuda_plan *p = NULL;
    AMPR__TRY(plan_get(c, kind, m, n, k, ldc, &p, err));
    float fone = 1.0f, fzero = 0.0f;
    int32_t ione = 1, izero = 0;
    const void *alpha = kind == AMPR__Q_INT8 ? (const void *)&ione : (const void *)&fone;
    const void *beta = kind == AMPR__Q_INT8 ? (const void *)&izero : (const void *)&fzero;
    AMPR__CUBLAS(err, cublasLtMatmul(c->lt, p->op, alpha, A, p->a, B, p->b, beta, C, p->cd, C,
                                     p->cd, &p->algo, ws, c->lt_ws_bytes, c->stream));
    return AMPR_OK;
}

static ampr_status lt_matmul(ampr__cuda *c, int kind, const void *A, const void *B, void *C,
                             int64_t m, int64_t n, int64_t k, int64_t ldc, ampr__err *err) {
    return lt_matmul_ws(c, kind, A, B, C, m, n, k, ldc, c->lt_ws, err);
}

/* ---- public entry points ------------------------------------------------------ */

ampr_status ampr__cuda_quant_act(ampr__cuda *c, const float *x, int32_t n, int32_t cols,
                                 int8_t *q, float *s, ampr__err *err) {
    if (n <= 0) return AMPR_OK;
    /* a few tokens (decode): a block each of 1024 threads, so that a row
     * takes few trips to memory; more: 256 (the same values either way) */
    unsigned threads = n < c->sm_count ? 1024 : 256;
    ampr__launch(c, "quant_act_kernel", quant_act_kernel, (unsigned)n, threads, 0, x, cols, q, s);
    AMPR__CU_LAUNCHED(err, "quant_act");
    return AMPR_OK;
}

static int gemv_ok(const ampr__cuda_mat *w, const float *x) {
    if ((uintptr_t)x % 16) return 0;
    switch (w->type) {
    case AMPR__Q_F16: return w->cols % 8 == 0;
    case AMPR__Q_INT8: return w->cols % 16 == 0;
    case AMPR__Q_NF4: return w->cols % 32 == 0;
    default: return 0;
    }
}

/* cuBLASLt for prefill only where it is known to be fast and supported:
 * both dimensions multiples of 64 (IMMA and 16-byte rows), large matrices
 * (small ones gain nothing and the fp32 kernel matches the CPU more
 * closely), 256-byte aligned W and y. gemv_max = 0 forces it where allowed. */
static int lt_fits(const ampr__cuda_mat *w, const float *y) {
    return w->rows % 64 == 0 && w->cols % 64 == 0 && (uintptr_t)y % 256 == 0 &&
           (uintptr_t)w->data % 256 == 0;
}
static int lt_ok(const ampr__cuda *c, const ampr__cuda_mat *w, int32_t n, const float *y) {
    if (!lt_fits(w, y)) return 0;
    if (c->gemv_max == 0) return 1;
    return n > c->gemv_max && w->rows >= 1024 && w->cols >= 1024;
}

/* Decode batches that cuBLASLt takes instead of the GEMV of several tokens,
 * where the H200 measured it faster (check --gemv on the 8B shape's
 * matrices, 2026-11-28: at 8 tokens 1.5-3.3x): FP16 from 2 tokens, INT8
 * from 4 (2: the GEMV was faster), once n x rows x cols >= 2^26 (below, the
 * GEMV is as fast). INT8 gives the same integer sums either way, so the same
 * floats; FP16 on cuBLASLt rounds the activations to half, as prefill does. */
static int lt_batch(const ampr__cuda *c, const ampr__cuda_mat *w, int32_t n, const float *y) {
    if (w->type == AMPR__Q_NF4 || n < (w->type == AMPR__Q_INT8 ? 4 : 2) || c->gemv_max == 0) return 0;
    return (double)n * (double)w->rows * (double)w->cols >= 67108864.0 && lt_fits(w, y);
}

/* The decode GEMV (n <= gemv_max tokens, gemv_ok): the kernel for the format
 * and n. FUSE: w is the gate/up matrix and y gets silu(gate) * up
 * (ampr__cuda_matmul_swiglu), on the same paths with the same row splits,
 * so the same sums; where no path fuses SwiGLU (more tokens outside the
 * tensor-core NF4 GEMV, INT8 rows too long for its one-token kernel)
 * nothing is launched and *done stays 0. tail.kind: the kernel's last
 * block also does the op after the matmul (ampr__tail_last; ldy == rows),
 * which every path here takes. */
template <bool FUSE>
static ampr_status gemv(ampr__cuda *c, const ampr__cuda_mat *w, const float *x, int32_t n,
                        float *y, int64_t ldy, ampr__tail tail, int *done, ampr__err *err) {
    int64_t rows = w->rows, cols = w->cols;
    unsigned gblocks = (unsigned)((rows + GEMV_WARPS - 1) / GEMV_WARPS);
    const int R1 = FUSE ? 2 : 1; /* rows a group of the F16 / INT8 one-token kernel */
    *done = 1;
    switch (w->type) {
    case AMPR__Q_F16:
        if (n == 1) gemv1<AMPR__Q_F16, R1, 8, FUSE, 1>(c, w, x, y, tail);
        else if (FUSE) *done = 0;
        else gemvn<AMPR__Q_F16>(c, w, x, NULL, NULL, n, y, ldy, tail);
        break;
    case AMPR__Q_INT8:
        if (n == 1 && cols <= GEMV1_INT8_MAX_COLS && c->sw[AMPR__CUDA_I8_ONCE]) { /* x quantized once */
            AMPR__TRY(ampr__cuda_reserve(c, 1, 0, cols, 0, err));
            AMPR__TRY(ampr__cuda_quant_act(c, x, 1, (int32_t)cols, c->xq, c->xs, err));
            gemv1<AMPR__Q_INT8, R1, 8, FUSE, 1, true>(c, w, x, y, tail);
        } else if (n == 1 && cols <= GEMV1_INT8_MAX_COLS) { /* each block quantizes x itself */
            gemv1<AMPR__Q_INT8, R1, 8, FUSE, 1>(c, w, x, y, tail);
        } else if (FUSE) {
            *done = 0;
        } else {
            AMPR__TRY(ampr__cuda_reserve(c, n, 0, cols, 0, err));
            AMPR__TRY(ampr__cuda_quant_act(c, x, n, (int32_t)cols, c->xq, c->xs, err));
            gemvn<AMPR__Q_INT8>(c, w, NULL, c->xq, c->xs, n, y, ldy, tail);
        }
        break;
    default:
        /* 2..8 tokens on tensor cores (a token more costs next to nothing
         * there; the fp32 kernel multiplies each weight once a token): 1.8-6.5x
         * faster on the H200; one token too (AMPR__CUDA_NF4_MMA): 1.13-1.4x */
        if ((c->sw[AMPR__CUDA_NF4_MMA] || (n > 1 && c->sw[AMPR__CUDA_NF4_BATCH])) && cols % 64 == 0)
            gemv_nf4_mma<FUSE>(c, w, x, n, y, ldy, tail);
        else if (n == 1) {
            int ru = c->nf4_gemv1 ? c->nf4_gemv1 : rows >= 24 * (int64_t)c->sm_count ? 42 : 22;
            switch (ru) { /* 42: 4 rows a warp where they still fill the GPU */
            case 21: gemv1<AMPR__Q_NF4, 2, 1, FUSE>(c, w, x, y, tail); break;
            case 24: gemv1<AMPR__Q_NF4, 2, 4, FUSE>(c, w, x, y, tail); break;
            case 41: gemv1<AMPR__Q_NF4, 4, 1, FUSE>(c, w, x, y, tail); break;
            case 42: gemv1<AMPR__Q_NF4, 4, 2, FUSE>(c, w, x, y, tail); break;
            case 44: gemv1<AMPR__Q_NF4, 4, 4, FUSE>(c, w, x, y, tail); break;
            default: gemv1<AMPR__Q_NF4, 2, 2, FUSE>(c, w, x, y, tail); break;
            }
        }
        else if (FUSE)
            *done = 0;
        else
            ampr__launch(c, "gemv_nf4_kernel", gemv_nf4_kernel, gblocks, GEMV_WARPS * 32, 0,
                (const uint8_t *)w->data, w->scales, rows, cols, x, n, y, ldy, tail);
        break;
    }
    if (*done) AMPR__CU_LAUNCHED(err, FUSE ? "gemv_swiglu" : tail.kind ? "gemv_tail" : "gemv");
    return AMPR_OK;
}

ampr_status ampr__cuda_matmul_swiglu(ampr__cuda *c, const ampr__cuda_mat *w, const float *x,
                                     int32_t n, float *gu, float *out, ampr__err *err) {
    int64_t hidden = w->rows / 2;
    if (n <= 0) return AMPR_OK;
    if (c->sw[AMPR__CUDA_FUSE] && w->rows % 2 == 0) {
        int done = 0;
        ampr__tail none = {};
        if (n <= c->gemv_max && gemv_ok(w, x)) AMPR__TRY(gemv<true>(c, w, x, n, out, hidden, none, &done, err));
        else if (nf4_batch_ok(c, w, x, n)) return gemm_nf4_mma<true>(c, w, x, n, out, hidden, err);
        if (done) return AMPR_OK;
    }
    AMPR__TRY(ampr__cuda_matmul(c, w, x, n, gu, w->rows, err));
    return ampr__cuda_swiglu(c, gu, out, n, (int32_t)hidden, err);
}

/* The decode GEMV with a tail, where one takes the matmul (*done) */
static ampr_status gemv_tail(ampr__cuda *c, const ampr__cuda_mat *w, const float *x, int32_t n,
                             float *y, ampr__tail tail, int *done, ampr__err *err) {
    *done = 0;
    if (!c->sw[AMPR__CUDA_FUSE_TAIL] || n > c->gemv_max || !gemv_ok(w, x)) return AMPR_OK;
    tail.cnt = c->tail_cnt;
    return gemv<false>(c, w, x, n, y, w->rows, tail, done, err);
}

ampr_status ampr__cuda_matmul_addnorm(ampr__cuda *c, const ampr__cuda_mat *w, const float *x,
                                      int32_t n, float *y, float *r, const float *nw, float eps,
                                      ampr__err *err) {
    if (n <= 0) return AMPR_OK;
    ampr__tail tail = {};
    tail.kind = AMPR__TAIL_ADDNORM;
    tail.r = r;
    tail.w = nw;
    tail.eps = eps;
    int done;
    AMPR__TRY(gemv_tail(c, w, x, n, y, tail, &done, err));
    if (done) return AMPR_OK;
    AMPR__TRY(ampr__cuda_matmul(c, w, x, n, y, w->rows, err));
    return ampr__cuda_add_rmsnorm(c, r, y, nw, y, n, (int32_t)w->rows, eps, err);
}

ampr_status ampr__cuda_matmul_rope_kv(ampr__cuda *c, const ampr__cuda_mat *w, const float *x,
                                      int32_t n, float *qkv, const ampr__cuda_kv_view *kv,
                                      int32_t n_heads, int32_t n_kv_heads, int32_t head_dim,
                                      const int32_t *d_pos, const float *cos_tab,
                                      const float *sin_tab, int interleaved, ampr__err *err) {
    if (n <= 0) return AMPR_OK;
    if (w->rows == ((int64_t)n_heads + 2 * (int64_t)n_kv_heads) * head_dim &&
        kv->kv_dim == n_kv_heads * head_dim) { /* else ampr__cuda_rope_kv says why */
        ampr__tail tail = {};
        tail.kind = AMPR__TAIL_ROPE_KV;
        tail.nq = n_heads;
        tail.nkv = n_kv_heads;
        tail.hd = head_dim;
        tail.pos = d_pos;
        tail.cs = cos_tab;
        tail.sn = sin_tab;
        tail.interleaved = interleaved;
        tail.kv_f16 = kv->dtype == AMPR__CUDA_F16;
        tail.kc = kv->k;
        tail.vc = kv->v;
        tail.blocks = kv->d_blocks;
        tail.row_seq = kv->d_row_seq;
        tail.n_layers = kv->n_layers;
        tail.layer = kv->layer;
        tail.bs = kv->block_size;
        tail.stride = kv->blocks_stride;
        int done;
        AMPR__TRY(gemv_tail(c, w, x, n, qkv, tail, &done, err));
        if (done) return AMPR_OK;
    }
    AMPR__TRY(ampr__cuda_matmul(c, w, x, n, qkv, w->rows, err));
    return ampr__cuda_rope_kv(c, kv, qkv, w->rows, n, n_heads, n_kv_heads, head_dim, d_pos, cos_tab,
                              sin_tab, interleaved, err);
}

/* NF4 rows r0 .. r0 + m - 1 dequantized into buf, then their GEMM with
 * c->xh into y's rows, on c->stream with cuBLASLt workspace ws */
static ampr_status nf4_chunk(ampr__cuda *c, const ampr__cuda_mat *w, int64_t r0, int64_t m, int32_t n,
                             float *y, int64_t ldy, __half *buf, void *ws, ampr__err *err) {
    int64_t cols = w->cols;
    size_t chunks = (size_t)(m * cols / 32); /* 32 codes, 16 bytes */
    ampr__launch(c, "nf4_dequant32_kernel", nf4_dequant32_kernel, ampr__cuda_grid(chunks, 256), 256, 0,
        (const uint4 *)w->data + (size_t)r0 * (size_t)cols / 32, w->scales + r0 * cols / 64, (uint4 *)buf,
        chunks);
    AMPR__CU_LAUNCHED(err, "nf4_dequant");
    return lt_matmul_ws(c, AMPR__Q_F16, buf, c->xh, y + r0, m, n, cols, ldy, ws, err);
}

/* AMPR__CUDA_DQ_PIPE: the side streams, events, and side 1's cuBLASLt
 * workspace and chunk buffer of `bytes`, made or grown (side 0 takes the
 * context's own, c->wdq and c->lt_ws, which the caller has reserved); 0
 * (the chunks stay on the context's stream) when any cannot be: a pipeline
 * is worth no failure. The sides are idle here: every pipelined matmul ends
 * with the main stream waiting for them, and grow() synchronizes the main
 * stream. */
static int dq_pipe_ready(ampr__cuda *c, size_t bytes) {
    if (c->dq_pipe < 0) return 0;
    ampr__err e = {AMPR_OK, {0}};
    if (!c->dq_pipe) {
        c->dq_pipe = -1;
        for (int s = 0; s < 2; s++)
            if (cudaStreamCreateWithFlags(&c->dq_side[s], cudaStreamNonBlocking) != cudaSuccess) {
                (void)cudaGetLastError();
                return 0; /* what was made is freed at close */
            }
        if (cudaMalloc(&c->dq_ws, c->lt_ws_bytes) != cudaSuccess) {
            (void)cudaGetLastError();
            return 0;
        }
        for (int k = 0; k < 3; k++)
            if (cudaEventCreateWithFlags(&c->dq_ev[k], cudaEventDisableTiming) != cudaSuccess) {
                (void)cudaGetLastError();
                return 0;
            }
        c->dq_pipe = 1;
    }
    if (grow(c, (void **)&c->dq_buf, &c->dq_buf_bytes, bytes, "NF4 dequant (side stream)", &e) != AMPR_OK) {
        (void)cudaGetLastError();
        return 0; /* this matmul on one stream; a smaller one may fit later */
    }
    return 1;
}

/* The chunks of an NF4 prefill matmul alternately on the two side streams:
 * chunk j + 1's dequantization (memory-bound) runs beside chunk j's GEMM
 * (compute-bound; a chunk's GEMM alone may not fill the GPU), and each side's
 * next chunk waits for its GEMM in stream order before reusing its buffer.
 * Side 0 borrows the main stream's buffer and workspace: the main stream
 * has finished with them at dq_ev[0] and waits for side 0 before it uses
 * them again. The same chunks and GEMMs as on one stream, so the same
 * values. */
static ampr_status nf4_pipe(ampr__cuda *c, const ampr__cuda_mat *w, int32_t n, float *y, int64_t ldy,
                            int64_t ch, ampr__err *err) {
    cudaStream_t main = c->stream;
    AMPR__CU(err, cudaEventRecord(c->dq_ev[0], main)); /* x is in c->xh */
    for (int s = 0; s < 2; s++) AMPR__CU(err, cudaStreamWaitEvent(c->dq_side[s], c->dq_ev[0], 0));
    ampr_status st = AMPR_OK;
    int64_t rows = w->rows;
    for (int64_t r0 = 0, j = 0; r0 < rows && st == AMPR_OK; r0 += ch, j++) {
        int s = (int)(j & 1);
        c->stream = c->dq_side[s]; /* ampr__launch and cuBLASLt take c->stream */
        st = nf4_chunk(c, w, r0, rows - r0 < ch ? rows - r0 : ch, n, y, ldy, s ? c->dq_buf : c->wdq,
                       s ? c->dq_ws : c->lt_ws, err);
    }
    c->stream = main;
    /* join, also after a failure: nothing may go on on a side unseen */
    for (int s = 0; s < 2; s++) {
        cudaError_t e1 = cudaEventRecord(c->dq_ev[1 + s], c->dq_side[s]);
        cudaError_t e2 = cudaStreamWaitEvent(main, c->dq_ev[1 + s], 0);
        if (st == AMPR_OK && (e1 != cudaSuccess || e2 != cudaSuccess))
            st = ampr__cuda_fail(err, e1 != cudaSuccess ? e1 : e2, "the NF4 pipeline's join", __FILE__, __LINE__);
    }
    return st;
}

ampr_status ampr__cuda_matmul(ampr__cuda *c, const ampr__cuda_mat *w, const float *x, int32_t n,
                              float *y, int64_t ldy, ampr__err *err) {
    if (n <= 0) return AMPR_OK;
    if (ldy < w->rows)
        return ampr__fail(err, AMPR_ERR_INTERNAL, "matmul ldy %lld < rows %lld", (long long)ldy,
                          (long long)w->rows);
    int64_t rows = w->rows, cols = w->cols;
    unsigned gblocks = (unsigned)((rows + GEMV_WARPS - 1) / GEMV_WARPS);
    if (w->type != AMPR__Q_F16 && w->type != AMPR__Q_INT8 && w->type != AMPR__Q_NF4)
        return ampr__fail(err, AMPR_ERR_UNSUPPORTED, "no CUDA matmul for format %d", (int)w->type);
    int done;
    ampr__tail none = {};
    int small = n <= c->gemv_max && gemv_ok(w, x), batch_lt = small && lt_batch(c, w, n, y);
    if (small && !batch_lt) return gemv<false>(c, w, x, n, y, ldy, none, &done, err);
    if (nf4_batch_ok(c, w, x, n)) return gemm_nf4_mma<false>(c, w, x, n, y, ldy, err);
    /* cuBLASLt where lt_ok() says so and it has a plan for the shape (made
     * before anything is launched; cached); else the simple kernel, which
     * takes any shape: odd shapes, small matrices, gemv_max = 0, or a shape
     * without a cuBLASLt algorithm on this GPU (not while a graph is being
     * captured: there a missing plan is an error, as a scratch growth is) */
    int use_lt = batch_lt || lt_ok(c, w, n, y);
    int64_t ch = w->type == AMPR__Q_NF4 ? dq_rows(c, rows, cols, n) : rows; /* rows a GEMM */
    if (use_lt) {
        int i8 = w->type == AMPR__Q_INT8;
        ampr__cuda_plan *plan = NULL;
        ampr__err perr = {AMPR_OK, {0}};
        int64_t last = rows - (rows - 1) / ch * ch; /* NF4: the last chunk's rows */
        if (plan_get(c, i8 ? AMPR__Q_INT8 : AMPR__Q_F16, ch, i8 ? pad4(n) : n, cols,
                     i8 ? rows : ldy, &plan, &perr) != AMPR_OK ||
            (last != ch && plan_get(c, AMPR__Q_F16, last, n, cols, ldy, &plan, &perr) != AMPR_OK)) {
            if (batch_lt) return gemv<false>(c, w, x, n, y, ldy, none, &done, err); /* no plan */
            if (ampr__cuda_capturing(c)) return ampr__fail(err, perr.status, "%s", perr.msg);
            use_lt = 0;
        }
    }
    if (!use_lt) {
        if (w->type == AMPR__Q_INT8) {
            AMPR__TRY(ampr__cuda_reserve(c, n, 0, cols, 0, err));
            AMPR__TRY(ampr__cuda_quant_act(c, x, n, (int32_t)cols, c->xq, c->xs, err));
        }
        dim3 grid(gblocks, (unsigned)((n + AMPR__CUDA_GEMV_MAX - 1) / AMPR__CUDA_GEMV_MAX));
        ampr__launch(c, "gemv_any_kernel", gemv_any_kernel, grid, GEMV_WARPS * 32, 0,
            (int)w->type, w->data, w->scales, rows, cols, x, c->xq, c->xs, n, y, ldy);
        AMPR__CU_LAUNCHED(err, "gemv_any");
        return AMPR_OK;
    }
    AMPR__TRY(ampr__cuda_reserve(c, n, rows, cols, w->type == AMPR__Q_NF4 ? ch * cols : 0, err));
    if (w->type == AMPR__Q_INT8) {
        int64_t np = pad4(n);
        AMPR__TRY(ampr__cuda_quant_act(c, x, n, (int32_t)cols, c->xq, c->xs, err));
        AMPR__TRY(lt_matmul(c, AMPR__Q_INT8, w->data, c->xq, c->acc, rows, np, cols, rows, err));
        dim3 grid((unsigned)n, (unsigned)((rows / 4 + INT8_SCALE_THREADS - 1) / INT8_SCALE_THREADS));
        ampr__launch(c, "int8_scale_kernel", int8_scale_kernel, grid, INT8_SCALE_THREADS, 0,
            c->acc, w->scales, c->xs, rows, n, y, ldy);
        AMPR__CU_LAUNCHED(err, "int8_scale");
        return AMPR_OK;
    }
    size_t nx = (size_t)n * (size_t)cols;
    ampr__launch(c, "f32_to_f16_kernel", f32_to_f16_kernel, ampr__cuda_grid(nx, 256), 256, 0,
        x, c->xh, nx);
    AMPR__CU_LAUNCHED(err, "f32_to_f16");
    if (w->type == AMPR__Q_F16) return lt_matmul(c, AMPR__Q_F16, w->data, c->xh, y, rows, n, cols, ldy, err);
    /* NF4: a chunk of rows dequantized, then its GEMM into y's rows */
    if (c->sw[AMPR__CUDA_DQ_PIPE] && rows > ch && n > AMPR__CUDA_NF4_BATCH_MAX && !ampr__cuda_capturing(c) &&
        dq_pipe_ready(c, (size_t)(ch * cols) * 2))
        return nf4_pipe(c, w, n, y, ldy, ch, err);
    for (int64_t r0 = 0; r0 < rows; r0 += ch)
        AMPR__TRY(nf4_chunk(c, w, r0, rows - r0 < ch ? rows - r0 : ch, n, y, ldy, c->wdq, c->lt_ws, err));
    return AMPR_OK;
}
