/*
 * cuda_ops.cu -- the element-wise and attention ops of the CUDA backend:
 * embedding lookup, RMSNorm, RoPE, SwiGLU, residual add, paged KV store,
 * paged causal GQA attention, argmax. Each mirrors lib/forward/forward.c.
 */
#include "cuda_err.h"

#include <math.h>

/* ---- embedding ---------------------------------------------------------------- */

__device__ __forceinline__ float nf4_value(unsigned code) {
    /* a copy of the bitsandbytes table: keeps this file free of relocatable
     * device code */
    const float t[16] = {-1.0f, -0.6961928009986877f, -0.5250730514526367f,
                         -0.39491748809814453f, -0.28444138169288635f, -0.18477343022823334f,
                         -0.09105003625154495f, 0.0f, 0.07958029955625534f, 0.16093020141124725f,
                         0.24611230194568634f, 0.33791524171829224f, 0.44070982251167297f,
                         0.5626170039176941f, 0.7229568362236023f, 1.0f};
    return t[code & 15u];
}

/* Element e of the table (row * cols + column) as a float */
__device__ __forceinline__ float embed_value(int fmt, const void *__restrict__ data, const float *__restrict__ sc,
                                             int64_t row, int64_t e) {
    if (fmt == AMPR__Q_F16) return __half2float(((const __half *)data)[e]);
    if (fmt == AMPR__Q_INT8) return (float)((const int8_t *)data)[e] * sc[row];
    uint8_t b = ((const uint8_t *)data)[e / 2];
    unsigned code = (e & 1) ? (b & 15u) : (unsigned)(b >> 4);
    return nf4_value(code) * sc[e / 64];
}

/* A block a token. A thread reads EMBED_U of its elements before it stores
 * them (as a loop of one load and one store, each load waited for the one
 * before: 16 trips at dim 4096). */
#define EMBED_U 8
__global__ void embed_kernel(int fmt, const void *__restrict__ data, const float *__restrict__ sc,
                             int64_t cols, const int32_t *__restrict__ tokens, void *out,
                             int out_f16) {
    AMPR__PDL_ENTER();
    int64_t row = tokens[blockIdx.x];
    const int64_t bd = blockDim.x;
    for (int64_t c0 = threadIdx.x; c0 < cols; c0 += EMBED_U * bd) {
        float v[EMBED_U];
#pragma unroll
        for (int u = 0; u < EMBED_U; u++)
            v[u] = c0 + u * bd < cols ? embed_value(fmt, data, sc, row, row * cols + c0 + u * bd) : 0.0f;
#pragma unroll
        for (int u = 0; u < EMBED_U; u++) {
            int64_t c = c0 + u * bd;
            if (c >= cols) break;
            size_t o = (size_t)blockIdx.x * (size_t)cols + (size_t)c;
            if (out_f16) ((__half *)out)[o] = __float2half_rn(v[u]);
            else ((float *)out)[o] = v[u];
        }
    }
}

ampr_status ampr__cuda_embed(ampr__cuda *c, const ampr__cuda_mat *table, const int32_t *d_tokens,
                             int32_t n, void *out, ampr__cuda_dtype out_type, ampr__err *err) {
    if (n <= 0) return AMPR_OK;
    ampr__launch(c, "embed_kernel", embed_kernel, (unsigned)n, 256, 0,
        (int)table->type, table->data, table->scales, table->cols, d_tokens, out,
        out_type == AMPR__CUDA_F16);
    AMPR__CU_LAUNCHED(err, "embed");
    return AMPR_OK;
}

/* ---- RMSNorm ------------------------------------------------------------------ */

/* With y: x += y first (written back), then out = rmsnorm(x) * w -- the
 * residual add and the norm that follows it in one pass over x, a block a
 * row (ampr__add_rmsnorm_row, cuda_err.h). y and out are not __restrict__:
 * they may be the same rows. */
__global__ void rmsnorm_kernel(float *x, const float *y, const float *__restrict__ w, float *out,
                               int32_t dim, float eps) {
    AMPR__PDL_ENTER();
    __shared__ float red[32];
    size_t o = (size_t)blockIdx.x * dim;
    ampr__add_rmsnorm_row<AMPR__NORM_THREADS>(x + o, y ? y + o : NULL, w, out + o, dim, eps, red);
}

ampr_status ampr__cuda_add_rmsnorm(ampr__cuda *c, float *x, const float *y, const float *w,
                                   float *out, int32_t n, int32_t dim, float eps, ampr__err *err) {
    if (n <= 0) return AMPR_OK;
    ampr__launch(c, "rmsnorm_kernel", rmsnorm_kernel, (unsigned)n, AMPR__NORM_THREADS, 0, x, y, w, out, dim,
                 eps);
    AMPR__CU_LAUNCHED(err, "rmsnorm");
    return AMPR_OK;
}

ampr_status ampr__cuda_rmsnorm(ampr__cuda *c, const float *x, const float *w, float *out,
                               int32_t n, int32_t dim, float eps, ampr__err *err) {
    /* without y the kernel only reads x */
    return ampr__cuda_add_rmsnorm(c, (float *)x, NULL, w, out, n, dim, eps, err);
}

/* ---- SwiGLU, add -------------------------------------------------------------- */

__global__ void swiglu_kernel(const float *__restrict__ gu, float *__restrict__ out, int32_t n,
                              int32_t hidden) {
    AMPR__PDL_ENTER();
    size_t total = (size_t)n * (size_t)hidden;
    for (size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (size_t)gridDim.x * blockDim.x) {
        size_t i = e / (size_t)hidden, j = e % (size_t)hidden;
        const float *g = gu + i * 2 * (size_t)hidden;
        out[e] = ampr__silu_mul(g[j], g[(size_t)hidden + j]);
    }
}

ampr_status ampr__cuda_swiglu(ampr__cuda *c, const float *gu, float *out, int32_t n,
                              int32_t hidden, ampr__err *err) {
    size_t total = (size_t)n * (size_t)hidden;
    if (!total) return AMPR_OK;
    ampr__launch(c, "swiglu_kernel", swiglu_kernel, ampr__cuda_grid(total, 256), 256, 0,
        gu, out, n, hidden);
    AMPR__CU_LAUNCHED(err, "swiglu");
    return AMPR_OK;
}

__global__ void add_kernel(float *x, const float *__restrict__ y, size_t count) {
    AMPR__PDL_ENTER();
    for (size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x; e < count;
         e += (size_t)gridDim.x * blockDim.x)
        x[e] += y[e];
}

ampr_status ampr__cuda_add(ampr__cuda *c, float *x, const float *y, int64_t count, ampr__err *err) {
    if (count <= 0) return AMPR_OK;
    ampr__launch(c, "add_kernel", add_kernel, ampr__cuda_grid((size_t)count, 256), 256, 0,
        x, y, (size_t)count);
    AMPR__CU_LAUNCHED(err, "add");
    return AMPR_OK;
}

/* ---- paged KV ---------------------------------------------------------------- */

__device__ __forceinline__ float from_kv(float v) { return v; }
__device__ __forceinline__ float from_kv(__half v) { return __half2float(v); }

/* RoPE and the KV store in one pass (ampr__rope_kv_item, cuda_err.h: the
 * same body as the QKV matmuls that do it themselves, AMPR_CUDA_FUSE_TAIL). */
template <typename T>
__global__ void rope_kv_kernel(float *x, int64_t ld, int32_t n, int32_t nq, int32_t nkv,
                               int32_t hd, const int32_t *__restrict__ pos,
                               const float *__restrict__ cs, const float *__restrict__ sn,
                               int interleaved, int rope, T *kc, T *vc,
                               const int32_t *__restrict__ blocks, int32_t n_layers,
                               int32_t layer, int32_t bs, const int32_t *__restrict__ row_seq,
                               int32_t stride) {
    AMPR__PDL_ENTER();
    size_t total = (size_t)n * (size_t)(nq + 2 * nkv) * (size_t)(hd / 2);
    for (size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (size_t)gridDim.x * blockDim.x)
        ampr__rope_kv_item<T>(e, x, ld, nq, nkv, hd, pos, cs, sn, interleaved, rope, kc, vc, blocks,
                              n_layers, layer, bs, row_seq, stride);
}

static ampr_status rope_kv(ampr__cuda *c, const ampr__cuda_kv_view *kv, float *x, int64_t ld,
                           int32_t n, int32_t nq, int32_t nkv, int32_t hd, const int32_t *d_pos,
                           const float *cos_tab, const float *sin_tab, int interleaved, int rope,
                           ampr__err *err) {
    size_t total = (size_t)n * (size_t)(nq + 2 * nkv) * (size_t)(hd / 2);
    if (!total) return AMPR_OK;
    unsigned g = ampr__cuda_grid(total, 256);
    if (kv && kv->dtype == AMPR__CUDA_F16)
        ampr__launch(c, "rope_kv_kernel", rope_kv_kernel<__half>, g, 256, 0,
            x, ld, n, nq, nkv, hd, d_pos, cos_tab, sin_tab, interleaved, rope, (__half *)kv->k,
            (__half *)kv->v, kv->d_blocks, kv->n_layers, kv->layer, kv->block_size,
            kv->d_row_seq, kv->blocks_stride);
    else
        ampr__launch(c, "rope_kv_kernel", rope_kv_kernel<float>, g, 256, 0,
            x, ld, n, nq, nkv, hd, d_pos, cos_tab, sin_tab, interleaved, rope,
            kv ? (float *)kv->k : NULL, kv ? (float *)kv->v : NULL, kv ? kv->d_blocks : NULL,
            kv ? kv->n_layers : 0, kv ? kv->layer : 0, kv ? kv->block_size : 1,
            kv ? kv->d_row_seq : NULL, kv ? kv->blocks_stride : 0);
    AMPR__CU_LAUNCHED(err, "rope_kv");
    return AMPR_OK;
}

ampr_status ampr__cuda_rope_kv(ampr__cuda *c, const ampr__cuda_kv_view *kv, float *qkv,
                               int64_t ld, int32_t n, int32_t n_heads, int32_t n_kv_heads,
                               int32_t head_dim, const int32_t *d_pos, const float *cos_tab,
                               const float *sin_tab, int interleaved, ampr__err *err) {
    /* the kernel lays cache rows out n_kv_heads * head_dim wide, as attention
     * reads them (kv->kv_dim) */
    if (kv && kv->kv_dim != n_kv_heads * head_dim)
        return ampr__fail(err, AMPR_ERR_INTERNAL, "CUDA RoPE+KV: cache rows of %d for %d x %d",
                          kv->kv_dim, n_kv_heads, head_dim);
    return rope_kv(c, kv, qkv, ld, n, n_heads, n_kv_heads, head_dim, d_pos, cos_tab, sin_tab,
                   interleaved, 1, err);
}

ampr_status ampr__cuda_rope(ampr__cuda *c, float *v, int64_t ld, int32_t n, int32_t n_heads,
                            int32_t head_dim, const int32_t *d_pos, const float *cos_tab,
                            const float *sin_tab, int interleaved, ampr__err *err) {
    return rope_kv(c, NULL, v, ld, n, n_heads, 0, head_dim, d_pos, cos_tab, sin_tab, interleaved,
                   1, err);
}

ampr_status ampr__cuda_kv_store(ampr__cuda *c, const ampr__cuda_kv_view *kv, const float *kv_rows,
                                int64_t ld, int32_t n, const int32_t *d_pos, ampr__err *err) {
    if (kv->kv_dim % 2)
        return ampr__fail(err, AMPR_ERR_UNSUPPORTED, "CUDA KV store: odd kv_dim %d", kv->kv_dim);
    /* without rotation any split of kv_dim into "heads" stores the same
     * values: pairs (head_dim 2), kv_dim / 2 of them; the kernel only reads */
    return rope_kv(c, kv, (float *)kv_rows, ld, n, 0, kv->kv_dim / 2, 2, d_pos, NULL, NULL, 1, 0,
                   err);
}

/* ---- attention ------------------------------------------------------------------
 * Grid (head, query row, split). A split is a contiguous range of the row's
 * positions 0..pos[i]: a decode step has only n_heads rows of work, so the
 * positions are split across blocks (flash-decoding) until the GPU is full;
 * a prefill has enough rows and runs one split.
 *
 * In a block, warp w takes tiles of 32 positions w, w+4, ... of its split.
 * Lane j scores position t0+j (q . K[t] over head_dim, q in shared memory),
 * the warp folds the tile into its running (max m, sum l, output o) -- online
 * softmax -- and accumulates o[d] += p_t * V[t][d], lane j holding dims j,
 * j+32, ... (head_dim <= 256: 8 per lane). The warps' (m, l, o) merge through
 * shared memory; with one split the block writes the normalized output,
 * otherwise its (m, l, o) go to scratch and attention_merge_kernel combines
 * the splits. With HDV (AMPR_CUDA_ATT_DEC: head_dim HDV = 64 or 128) the V
 * loop reads 16 bytes a load (below) and the last split of a (row, head) to
 * finish does the merge itself, counted in c->att_cnt: no merge launch. */

#define ATT_WARPS 4
#define ATT_HD_MAX AMPR__CUDA_HD_MAX /* 32 lanes x up to 8 dims (PL) each */

__device__ __forceinline__ float warp_max_f(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
__device__ __forceinline__ float warp_sum_f(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* the block's largest v (red: 32 floats of shared memory, reusable after) */
__device__ float block_max(float v, float *red) {
    v = warp_max_f(v);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    if (threadIdx.x < 32) {
        int nw = (int)(blockDim.x >> 5);
        v = warp_max_f((int)threadIdx.x < nw ? red[threadIdx.x] : -INFINITY);
        if (threadIdx.x == 0) red[0] = v;
    }
    __syncthreads();
    float r = red[0];
    __syncthreads();
    return r;
}

/* q . K row (hd values at k), q in shared memory */
__device__ __forceinline__ float dot_q(const float *sq, const float *k, int32_t hd) {
    float s = 0.0f;
    if ((hd & 3) == 0) {
        const float4 *k4 = (const float4 *)k;
#pragma unroll 8
        for (int32_t d = 0; d < hd / 4; d++) {
            float4 v = __ldg(k4 + d);
            s += sq[4 * d] * v.x + sq[4 * d + 1] * v.y + sq[4 * d + 2] * v.z + sq[4 * d + 3] * v.w;
        }
    } else {
        for (int32_t d = 0; d < hd; d++) s += sq[d] * k[d];
    }
    return s;
}
__device__ __forceinline__ float dot_q(const float *sq, const __half *k, int32_t hd) {
    float s = 0.0f;
    if ((hd & 7) == 0) {
        const uint4 *k8 = (const uint4 *)k;
#pragma unroll 8
        for (int32_t d = 0; d < hd / 8; d++) {
            uint4 v = __ldg(k8 + d);
            const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
            for (int u = 0; u < 4; u++) {
                float lo = __half2float(__ushort_as_half((unsigned short)(words[u] & 0xffffu)));
                float hi = __half2float(__ushort_as_half((unsigned short)(words[u] >> 16)));
                s += sq[8 * d + 2 * u] * lo + sq[8 * d + 2 * u + 1] * hi;
            }
        }
    } else {
        for (int32_t d = 0; d < hd; d++) s += sq[d] * __half2float(k[d]);
    }
    return s;
}

/* out[i][h] = the splits' outputs, each weighted by exp(m_s - M), over the
 * sum of their l_s * exp(m_s - M): pr the (row, head)'s parts, the whole block
 * calls it. Thread s loads split s's (m_s, l_s) into shared memory (one trip
 * to L2 for all of them) and computes its weight from there; then every
 * thread sums its dims in split order, skipping empty splits (l_s = 0). The
 * l_s were loaded in each loop before (each load waited for before the next:
 * three loops of as many trips to L2 as splits, 17 at 32 heads on 132 SMs, on
 * the critical path of every decode attention); with them in shared memory
 * nvcc issues the dims' loads 4 splits at a time (SASS, sm_90a). The parts
 * are read through L2 (__ldcg): with the merge in the attention kernel they
 * were written by other blocks of the same launch.
 * part: [rows][n_heads][splits][hd + 2]; out: [rows][n_heads][hd]. */
__device__ void merge_splits(const float *part, int32_t i, int32_t h, int32_t n_heads,
                             int32_t splits, int32_t hd, float *out) {
    const float *pr = part + ((size_t)i * n_heads + h) * splits * (size_t)(hd + 2);
    float *orow = out + (int64_t)i * n_heads * hd + (int64_t)h * hd;
    __shared__ float wgt[AMPR__CUDA_ATT_SPLITS], sm[AMPR__CUDA_ATT_SPLITS], sl[AMPR__CUDA_ATT_SPLITS];
    __shared__ float L;
    if ((int32_t)threadIdx.x < splits) {
        const float *ps = pr + (size_t)threadIdx.x * (hd + 2);
        float m = __ldcg(ps), l = __ldcg(ps + 1);
        sm[threadIdx.x] = m;
        sl[threadIdx.x] = l;
    }
    __syncthreads();
    if ((int32_t)threadIdx.x < splits) {
        float M = -INFINITY;
        for (int32_t s = 0; s < splits; s++)
            if (sl[s] > 0.0f) M = fmaxf(M, sm[s]);
        wgt[threadIdx.x] = sl[threadIdx.x] > 0.0f ? expf(sm[threadIdx.x] - M) : 0.0f;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        float l = 0.0f;
        for (int32_t s = 0; s < splits; s++)
            if (sl[s] > 0.0f) l += sl[s] * wgt[s];
        L = l;
    }
    __syncthreads();
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float acc = 0.0f;
        for (int32_t s = 0; s < splits; s++)
            if (sl[s] > 0.0f) acc += __ldcg(pr + (size_t)s * (hd + 2) + 2 + d) * wgt[s];
        orow[d] = acc / L;
    }
}

/* 16 bytes of the cache (4 floats or 8 halves) as fp32 */
__device__ __forceinline__ void kv_to_f32(const float *src, float *dst) {
    float4 v = __ldg((const float4 *)src);
    dst[0] = v.x;
    dst[1] = v.y;
    dst[2] = v.z;
    dst[3] = v.w;
}
__device__ __forceinline__ void kv_to_f32(const __half *src, float *dst) {
    uint4 v = __ldg((const uint4 *)src);
    const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int u = 0; u < 4; u++) {
        dst[2 * u] = __half2float(__ushort_as_half((unsigned short)(words[u] & 0xffffu)));
        dst[2 * u + 1] = __half2float(__ushort_as_half((unsigned short)(words[u] >> 16)));
    }
}

template <typename T, int PL, int HDV = 0>
__global__ void __launch_bounds__(ATT_WARPS * 32)
attention_kernel(const T *__restrict__ kc, const T *__restrict__ vc,
                 const int32_t *__restrict__ blocks, int32_t n_layers, int32_t layer, int32_t bs,
                 int32_t kv_dim, const float *__restrict__ q, int64_t ldq,
                 const int32_t *__restrict__ pos, int32_t n_heads, int32_t group, int32_t hd,
                 float scale, float *__restrict__ out, const int32_t *__restrict__ row_seq,
                 int32_t stride, float *__restrict__ part, int32_t *__restrict__ cnt) {
    AMPR__PDL_ENTER();
    __shared__ float sq[ATT_HD_MAX];
    __shared__ float sm_m[ATT_WARPS], sm_l[ATT_WARPS];
    __shared__ float sm_o[ATT_WARPS][ATT_HD_MAX];
    int32_t h = (int32_t)blockIdx.x, i = (int32_t)blockIdx.y, sp = (int32_t)blockIdx.z;
    int32_t splits = (int32_t)gridDim.z;
    int32_t kvh = h / group;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int32_t len = pos[i] + 1;
    /* whole tiles, and at least one per warp */
    int32_t chunk = max((len + splits - 1) / splits, 32 * ATT_WARPS);
    chunk = (chunk + 31) & ~31;
    int32_t t_begin = sp * chunk, t_end = min(len, t_begin + chunk);
    const int32_t *bt = ampr__row_blocks(blocks, row_seq, stride, i);
    const float *qr = q + (int64_t)i * ldq + (int64_t)h * hd;
    for (int32_t d = threadIdx.x; d < hd; d += blockDim.x) sq[d] = qr[d];
    __syncthreads();
    float o[PL];
#pragma unroll
    for (int j = 0; j < PL; j++) o[j] = 0.0f;
    /* HDV: the V loop of attention_kernel's HDV > 0 form (below) */
    const int DPL = HDV > 0 ? HDV / 8 : 1, VEC = 16 / (int)sizeof(T);
    const int UB = DPL * (int)sizeof(T) <= 16 ? 8 : 4; /* positions a lane loads at once */
    float ov[DPL];
#pragma unroll
    for (int j = 0; j < DPL; j++) ov[j] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    for (int32_t t0 = t_begin + 32 * warp; t0 < t_end; t0 += 32 * ATT_WARPS) {
        int32_t t = t0 + lane;
        bool valid = t < t_end;
        int64_t base = valid ? (int64_t)ampr__kv_off(bt, n_layers, layer, bs, kv_dim, t) +
                                   (int64_t)kvh * hd
                             : 0;
        float s = valid ? dot_q(sq, kc + base, hd) * scale : -INFINITY;
        float mn = fmaxf(m, warp_max_f(s)); /* finite: lane 0's position is valid */
        float p = valid ? expf(s - mn) : 0.0f;
        float corr = expf(m - mn);          /* 0 on the first tile (m = -inf) */
        l = l * corr + warp_sum_f(p);
#pragma unroll
        for (int j = 0; j < PL; j++) o[j] *= corr;
        if constexpr (HDV > 0) {
            /* lane = (position group pg, dim chunk dc): positions 8pg .. 8pg + 7
             * of the tile, dims DPL dc .. DPL dc + DPL - 1, 16-byte loads, UB
             * positions' loads in flight; the groups are summed at the end */
            int pg = lane >> 3, dc = lane & 7;
#pragma unroll
            for (int j = 0; j < DPL; j++) ov[j] *= corr;
#pragma unroll
            for (int k0 = 0; k0 < 8; k0 += UB) {
                float pu[UB], vf[UB][DPL];
#pragma unroll
                for (int k = 0; k < UB; k++) {
                    int u = 8 * pg + k0 + k;
                    pu[k] = __shfl_sync(0xffffffffu, p, u);
                    int64_t bu = __shfl_sync(0xffffffffu, base, u);
#pragma unroll
                    for (int c2 = 0; c2 < DPL; c2 += VEC) {
                        if (t0 + u < t_end) {
                            kv_to_f32(vc + bu + DPL * dc + c2, &vf[k][c2]);
                        } else {
#pragma unroll
                            for (int x = 0; x < VEC; x++) vf[k][c2 + x] = 0.0f;
                        }
                    }
                }
#pragma unroll
                for (int k = 0; k < UB; k++)
#pragma unroll
                    for (int j = 0; j < DPL; j++) ov[j] += pu[k] * vf[k][j];
            }
            m = mn;
            continue;
        }
        /* o += p_u V[u] over the tile's positions, 8 positions' loads at a
         * time (they are independent; one at a time each waits on memory) */
        int32_t cnt = min(32, t_end - t0);
        for (int32_t u0 = 0; u0 < cnt; u0 += 8) {
            float pu[8];
            T vv[8][PL];
#pragma unroll
            for (int k = 0; k < 8; k++) {
                pu[k] = __shfl_sync(0xffffffffu, p, u0 + k); /* u0 + k <= 31 */
                int64_t bu = __shfl_sync(0xffffffffu, base, u0 + k);
#pragma unroll
                for (int j = 0; j < PL; j++) {
                    int d = lane + 32 * j;
                    vv[k][j] = u0 + k < cnt && d < hd ? vc[bu + d] : ampr__to_kv<T>(0.0f);
                }
            }
#pragma unroll
            for (int k = 0; k < 8; k++)
#pragma unroll
                for (int j = 0; j < PL; j++) o[j] += pu[k] * from_kv(vv[k][j]);
        }
        m = mn;
    }
    if (lane == 0) {
        sm_m[warp] = m;
        sm_l[warp] = l;
    }
    if constexpr (HDV > 0) { /* the four position groups' sums, in lanes 0..7 */
#pragma unroll
        for (int j = 0; j < DPL; j++) {
            ov[j] += __shfl_xor_sync(0xffffffffu, ov[j], 8);
            ov[j] += __shfl_xor_sync(0xffffffffu, ov[j], 16);
            if (lane < 8) sm_o[warp][DPL * lane + j] = ov[j];
        }
    } else {
#pragma unroll
        for (int j = 0; j < PL; j++) sm_o[warp][lane + 32 * j] = o[j];
    }
    __syncthreads();
    float M = -INFINITY;
    for (int w = 0; w < ATT_WARPS; w++) M = fmaxf(M, sm_m[w]);
    float L = 0.0f, wgt[ATT_WARPS];
#pragma unroll
    for (int w = 0; w < ATT_WARPS; w++) {
        wgt[w] = sm_l[w] > 0.0f ? expf(sm_m[w] - M) : 0.0f;
        L += sm_l[w] * wgt[w];
    }
    if (splits == 1) {
        float *orow = out + (int64_t)i * n_heads * hd + (int64_t)h * hd;
        for (int d = threadIdx.x; d < hd; d += blockDim.x) {
            float acc = 0.0f;
#pragma unroll
            for (int w = 0; w < ATT_WARPS; w++) acc += sm_o[w][d] * wgt[w];
            orow[d] = acc / L;
        }
        return;
    }
    /* this split's (m, l, unnormalized o); an empty split has l = 0 */
    float *pr = part + (((size_t)i * n_heads + h) * splits + sp) * (size_t)(hd + 2);
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float acc = 0.0f;
#pragma unroll
        for (int w = 0; w < ATT_WARPS; w++) acc += sm_o[w][d] * wgt[w];
        pr[2 + d] = L > 0.0f ? acc : 0.0f;
    }
    if (threadIdx.x == 0) {
        pr[0] = M;
        pr[1] = L;
    }
    if constexpr (HDV > 0) {
        /* the last of the (row, head)'s splits to finish merges them all, in
         * split order, and sets the count back for the next launch */
        __shared__ int last;
        __threadfence(); /* this block's part, visible before it is counted */
        __syncthreads();
        int32_t *cn = cnt + (size_t)i * n_heads + h;
        if (threadIdx.x == 0) last = atomicAdd(cn, 1) == splits - 1;
        __syncthreads();
        if (!last) return;
        __threadfence();
        merge_splits(part, i, h, n_heads, splits, hd, out);
        if (threadIdx.x == 0) *cn = 0;
    }
}

/* The splits' parts merged, after the attention kernel; grid (head, row). */
__global__ void attention_merge_kernel(const float *__restrict__ part, int32_t splits,
                                       int32_t n_heads, int32_t hd, float *__restrict__ out) {
    AMPR__PDL_ENTER();
    merge_splits(part, (int32_t)blockIdx.y, (int32_t)blockIdx.x, n_heads, splits, hd, out);
}

/* Splits for rows x heads blocks: enough for about four blocks per SM, at
 * most AMPR__CUDA_ATT_SPLITS, and within the partials' scratch. */
static int32_t att_splits(const ampr__cuda *c, int32_t n, int32_t n_heads, int32_t hd) {
    int64_t rows = (int64_t)n * n_heads, target = 4 * (int64_t)c->sm_count;
    if (rows >= target) return 1;
    int64_t s = (target + rows - 1) / rows;
    if (s > AMPR__CUDA_ATT_SPLITS) s = AMPR__CUDA_ATT_SPLITS;
    while (s > 1 && (size_t)(rows * s) * (size_t)(hd + 2) * sizeof(float) > c->att_part_bytes) s--;
    return (int32_t)s;
}

/* PL: output dims per lane (head_dim <= 32 * PL) */
template <typename T, int PL, int HDV = 0>
static void att_launch(ampr__cuda *c, const ampr__cuda_kv_view *kv, const float *q, int64_t ldq,
                       const int32_t *d_pos, int32_t n_heads, int32_t group, int32_t hd,
                       float *out, dim3 grid) {
    float scale = 1.0f / sqrtf((float)hd);
    ampr__launch(c, "attention_kernel", attention_kernel<T, PL, HDV>, grid, ATT_WARPS * 32, 0,
        (const T *)kv->k, (const T *)kv->v, kv->d_blocks, kv->n_layers, kv->layer, kv->block_size,
        kv->kv_dim, q, ldq, d_pos, n_heads, group, hd, scale, out, kv->d_row_seq,
        kv->blocks_stride, c->att_part, c->att_cnt);
}

/* ---- prefill attention: query tiles ------------------------------------------
 * With many query rows of one sequence (a prefill: one block table, row_seq
 * NULL) the kernel above reads each K and V row once per query row and head,
 * and is bound by those reads. Here a block takes ATQ query rows of one head
 * and walks the positions in tiles of ATK: the tile's K and V (as fp32) and
 * the block's Q rows sit in shared memory, so each K/V value read from the
 * cache serves ATQ rows.
 *
 * Warp w owns rows 8w..8w+7 of the tile. Scores: lane j takes position t0+j
 * for its 8 rows (q . K over head_dim, 4 dims per shared-memory load; K rows
 * padded by 4 floats so the lanes' loads hit different banks), masked past
 * each row's own position. Each row's (max m, sum l, output o) updates by
 * online softmax; the probabilities go through shared memory to the
 * accumulation o[d] += p_t V[t][d], lane j holding dims j, j+32, ... */

#define ATQ 32 /* query rows per block */
#define ATK 32 /* positions per K/V tile */
#define ATT_TILE_HD_MAX 128

static size_t att_tile_smem(int32_t hd) {
    size_t hdp = (size_t)hd + 4;
    return ((size_t)ATQ * hdp + (size_t)ATK * hdp + (size_t)ATK * hd + (size_t)ATT_WARPS * 8 * ATK) *
           sizeof(float);
}

/* A tile's K and V values at position p (16 bytes of the cache each, from
 * column col of the layer's rows) as fp32; zeros past tmax */
template <typename T>
__device__ __forceinline__ void kv_tile_load(const T *__restrict__ kc, const T *__restrict__ vc,
                                             const int32_t *__restrict__ blocks, int32_t n_layers,
                                             int32_t layer, int32_t bs, int32_t kv_dim, int32_t p,
                                             int32_t tmax, size_t col, float *kf, float *vf) {
    const int VEC = 16 / (int)sizeof(T);
    if (p <= tmax) {
        size_t off = ampr__kv_off(blocks, n_layers, layer, bs, kv_dim, p) + col;
        kv_to_f32(kc + off, kf);
        kv_to_f32(vc + off, vf);
    } else {
#pragma unroll
        for (int x = 0; x < VEC; x++) kf[x] = vf[x] = 0.0f;
    }
}

template <typename T, int PL>
__global__ void __launch_bounds__(ATT_WARPS * 32)
attention_tile_kernel(const T *__restrict__ kc, const T *__restrict__ vc,
                      const int32_t *__restrict__ blocks, int32_t n_layers, int32_t layer,
                      int32_t bs, int32_t kv_dim, const float *__restrict__ q, int64_t ldq,
                      const int32_t *__restrict__ pos, int32_t n, int32_t n_heads, int32_t group,
                      int32_t hd, float scale, float *__restrict__ out) {
    AMPR__PDL_ENTER();
    const int VEC = 16 / (int)sizeof(T); /* cache values per 16-byte load */
    extern __shared__ float4 att_smem[];
    __shared__ int32_t spos[ATQ];
    int32_t hdp = hd + 4;
    float *sQ = (float *)att_smem, *sK = sQ + ATQ * hdp, *sV = sK + ATK * hdp, *sP = sV + ATK * hd;
    int32_t h = (int32_t)blockIdx.x, i0 = (int32_t)blockIdx.y * ATQ, kvh = h / group;
    int32_t rows = min(ATQ, n - i0);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (threadIdx.x < ATQ) spos[threadIdx.x] = (int32_t)threadIdx.x < rows ? pos[i0 + threadIdx.x] : -1;
    for (int32_t e = threadIdx.x; e < ATQ * hd; e += blockDim.x) {
        int32_t r = e / hd, d = e % hd;
        sQ[r * hdp + d] = r < rows ? q[(int64_t)(i0 + r) * ldq + (int64_t)h * hd + d] : 0.0f;
    }
    __syncthreads();
    int32_t tmax = -1;
    for (int r = 0; r < ATQ; r++) tmax = max(tmax, spos[r]);
    float m[8], l[8], o[8][PL];
#pragma unroll
    for (int k = 0; k < 8; k++) {
        m[k] = -INFINITY;
        l[k] = 0.0f;
#pragma unroll
        for (int j = 0; j < PL; j++) o[k][j] = 0.0f;
    }
    float *myP = sP + warp * 8 * ATK;
    for (int32_t t0 = 0; t0 <= tmax; t0 += ATK) {
        __syncthreads(); /* the last tile's K, V and P are no longer read */
        for (int32_t e = threadIdx.x * VEC; e < ATK * hd; e += blockDim.x * VEC) {
            int32_t u = e / hd, d = e % hd, t = t0 + u;
            float kf[VEC], vf[VEC];
            kv_tile_load(kc, vc, blocks, n_layers, layer, bs, kv_dim, t, tmax, (size_t)kvh * hd + d, kf, vf);
#pragma unroll
            for (int x = 0; x < VEC; x++) {
                sK[u * hdp + d + x] = kf[x];
                sV[u * hd + d + x] = vf[x];
            }
        }
        __syncthreads();
        float s[8];
#pragma unroll
        for (int k = 0; k < 8; k++) s[k] = 0.0f;
        for (int32_t d = 0; d < hd; d += 4) {
            float4 kk = *(const float4 *)&sK[lane * hdp + d];
#pragma unroll
            for (int k = 0; k < 8; k++) {
                float4 qq = *(const float4 *)&sQ[(warp * 8 + k) * hdp + d];
                s[k] += qq.x * kk.x + qq.y * kk.y + qq.z * kk.z + qq.w * kk.w;
            }
        }
        int32_t t = t0 + lane;
#pragma unroll
        for (int k = 0; k < 8; k++) {
            bool valid = t <= spos[warp * 8 + k];
            float sk = valid ? s[k] * scale : -INFINITY;
            float mx = warp_max_f(sk);
            float p = 0.0f;
            if (mx != -INFINITY) { /* warp-uniform: some position of the tile is visible */
                float mn = fmaxf(m[k], mx);
                p = valid ? expf(sk - mn) : 0.0f;
                float corr = expf(m[k] - mn); /* 0 on the row's first tile */
                l[k] = l[k] * corr + warp_sum_f(p);
#pragma unroll
                for (int j = 0; j < PL; j++) o[k][j] *= corr;
                m[k] = mn;
            }
            myP[k * ATK + lane] = p;
        }
        __syncwarp();
        int32_t cnt = min(ATK, tmax - t0 + 1);
        for (int32_t u = 0; u < cnt; u++) {
            float v[PL];
#pragma unroll
            for (int j = 0; j < PL; j++) {
                int d = lane + 32 * j;
                v[j] = d < hd ? sV[u * hd + d] : 0.0f;
            }
#pragma unroll
            for (int k = 0; k < 8; k++) {
                float pk = myP[k * ATK + u];
#pragma unroll
                for (int j = 0; j < PL; j++) o[k][j] += pk * v[j];
            }
        }
        __syncwarp();
    }
#pragma unroll
    for (int k = 0; k < 8; k++) {
        int32_t r = warp * 8 + k;
        if (r >= rows) continue;
        float *orow = out + (int64_t)(i0 + r) * n_heads * hd + (int64_t)h * hd;
#pragma unroll
        for (int j = 0; j < PL; j++) {
            int d = lane + 32 * j;
            if (d < hd) orow[d] = o[k][j] / l[k];
        }
    }
}

template <typename T, int PL>
static ampr_status att_tile_launch(ampr__cuda *c, const ampr__cuda_kv_view *kv, const float *q,
                                   int64_t ldq, int32_t n, const int32_t *d_pos, int32_t n_heads,
                                   int32_t group, int32_t hd, float *out, ampr__err *err) {
    size_t smem = att_tile_smem(hd);
    if (smem > 48 * 1024)
        AMPR__CU(err, cudaFuncSetAttribute(attention_tile_kernel<T, PL>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    dim3 grid((unsigned)n_heads, (unsigned)((n + ATQ - 1) / ATQ));
    ampr__launch(c, "attention_tile_kernel", attention_tile_kernel<T, PL>, grid, ATT_WARPS * 32, smem,
        (const T *)kv->k, (const T *)kv->v, kv->d_blocks, kv->n_layers, kv->layer, kv->block_size,
        kv->kv_dim, q, ldq, d_pos, n, n_heads, group, hd, 1.0f / sqrtf((float)hd), out);
    AMPR__CU_LAUNCHED(err, "attention_tile");
    return AMPR_OK;
}

/* ---- prefill attention on tensor cores ----------------------------------------
 * attention_mma_kernel<T, HD> (head_dim HD = 64 or 128): flash attention with
 * mma.sync m16n8k16. A block takes AMQ = 64 query rows of one head, a warp 16
 * of them, and walks the positions in tiles of AMK = 64: the tile's K rows
 * and V (transposed: sVt[dim][position]) go to shared memory as fp16, then
 *   S = Q K^T   (A: the warp's Q rows as fp16, held in registers; B: K rows)
 *   online softmax per row in fp32 (scale applied to S; positions past a row's
 *   own masked), the probabilities rounded to fp16 as the next A operand
 *   O += P V   (B: V^T rows), fp32 sums
 * A lane (g = lane / 4, t = lane % 4) holds S and O of rows g and g + 8 at
 * columns 8j + 2t, 8j + 2t + 1 of each 8-wide tile j: a row's max and sum are
 * its own 16 values then a shuffle across the 4 lanes of its quad; the C
 * layout of two adjacent S tiles is exactly the A layout of one 16-position
 * step of P V. Row padding (k-slot strides of HD + 8 and AMK + 8 halves) puts
 * the 32 lanes of every fragment load in 32 banks.
 * Rounding: Q, K, V and P to fp16, sums fp32 (the SIMT kernels keep fp32). */
#define AMQ 64
#define AMK 64

/* A lane's B fragment (k-slots 2t, 2t + 1 and 2t + 8, 2t + 9 of its column)
 * from fp16 in shared memory, p at slot 2t */
__device__ __forceinline__ void b_frag(const __half *p, uint32_t &b0, uint32_t &b1) {
    memcpy(&b0, p, 4);
    memcpy(&b1, p + 8, 4);
}

template <typename T, int HD>
__global__ void __launch_bounds__(128)
attention_mma_kernel(const T *__restrict__ kc, const T *__restrict__ vc,
                     const int32_t *__restrict__ blocks, int32_t n_layers, int32_t layer,
                     int32_t bs, int32_t kv_dim, const float *__restrict__ q, int64_t ldq,
                     const int32_t *__restrict__ pos, int32_t n, int32_t n_heads, int32_t group,
                     float scale, float *__restrict__ out) {
    AMPR__PDL_ENTER();
    const int VEC = 16 / (int)sizeof(T);
    const int KP = HD + 8, VP = AMK + 8; /* padded row lengths in halves */
    __shared__ __half sK[AMK * KP];
    __shared__ __half sVt[HD * VP];
    __shared__ int32_t spos[AMQ];
    int32_t h = (int32_t)blockIdx.x, i0 = (int32_t)blockIdx.y * AMQ, kvh = h / group;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    if (threadIdx.x < AMQ) {
        int32_t i = i0 + (int32_t)threadIdx.x;
        spos[threadIdx.x] = i < n ? pos[i] : -1;
    }
    /* the warp's Q rows r0 + g and r0 + g + 8 as A fragments, HD / 16 steps */
    int32_t r0 = i0 + warp * 16, ra = r0 + g, rb = r0 + g + 8;
    uint32_t qa[HD / 16][4];
#pragma unroll
    for (int kk = 0; kk < HD / 16; kk++) {
#pragma unroll
        for (int half = 0; half < 2; half++) { /* k-slots 2t.. and 2t + 8.. */
            int d = 16 * kk + 8 * half + 2 * t;
            float2 xa = ra < n ? *(const float2 *)(q + (int64_t)ra * ldq + (int64_t)h * HD + d)
                               : make_float2(0.0f, 0.0f);
            float2 xb = rb < n ? *(const float2 *)(q + (int64_t)rb * ldq + (int64_t)h * HD + d)
                               : make_float2(0.0f, 0.0f);
            qa[kk][2 * half] = ampr__half2_bits(xa.x, xa.y);
            qa[kk][2 * half + 1] = ampr__half2_bits(xb.x, xb.y);
        }
    }
    __syncthreads();
    int32_t tmax = -1;
    for (int r = 0; r < AMQ; r++) tmax = max(tmax, spos[r]);
    int32_t pa = spos[warp * 16 + g], pb = spos[warp * 16 + g + 8], pw = -1;
    for (int r = 0; r < 16; r++) pw = max(pw, spos[warp * 16 + r]);
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
    float o[HD / 8][4];
#pragma unroll
    for (int j = 0; j < HD / 8; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
    for (int32_t t0 = 0; t0 <= tmax; t0 += AMK) {
        __syncthreads(); /* the last tile is no longer read */
        for (int32_t e = threadIdx.x * VEC; e < AMK * HD; e += blockDim.x * VEC) {
            int32_t u = e / HD, d = e % HD, p = t0 + u;
            float kf[VEC], vf[VEC];
            kv_tile_load(kc, vc, blocks, n_layers, layer, bs, kv_dim, p, tmax, (size_t)kvh * HD + d, kf, vf);
#pragma unroll
            for (int x = 0; x < VEC; x += 2) {
                uint32_t kw = ampr__half2_bits(kf[x], kf[x + 1]);
                memcpy(&sK[u * KP + d + x], &kw, sizeof kw);
                sVt[(d + x) * VP + u] = ampr__to_half_sat(vf[x]);
                sVt[(d + x + 1) * VP + u] = ampr__to_half_sat(vf[x + 1]);
            }
        }
        __syncthreads();
        if (t0 > pw) continue; /* none of the warp's rows sees this tile */
        /* S = Q K^T: AMK / 8 tiles of 8 positions */
        float s[AMK / 8][4];
#pragma unroll
        for (int j = 0; j < AMK / 8; j++) {
            s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < HD / 16; kk++) {
                uint32_t b0, b1;
                b_frag(&sK[(8 * j + g) * KP + 16 * kk + 2 * t], b0, b1);
                ampr__mma_16816(s[j], qa[kk][0], qa[kk][1], qa[kk][2], qa[kk][3], b0, b1);
            }
        }
        /* online softmax: rows a (c0, c1) and b (c2, c3) */
        float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int j = 0; j < AMK / 8; j++) {
#pragma unroll
            for (int c = 0; c < 4; c++) {
                int32_t p = t0 + 8 * j + 2 * t + (c & 1);
                bool ok = p <= (c < 2 ? pa : pb);
                s[j][c] = ok ? s[j][c] * scale : -INFINITY;
                mx[c >> 1] = fmaxf(mx[c >> 1], s[j][c]);
            }
        }
        float corr[2], sum[2] = {0.0f, 0.0f};
#pragma unroll
        for (int r = 0; r < 2; r++) {
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
            float mn = fmaxf(m[r], mx[r]);
            corr[r] = mn == -INFINITY ? 1.0f : expf(m[r] - mn); /* 0 on a row's first tile */
            m[r] = mn;
        }
        uint32_t pf[AMK / 8][2]; /* P as fp16 pairs: rows a, b */
#pragma unroll
        for (int j = 0; j < AMK / 8; j++) {
            float e[4];
#pragma unroll
            for (int c = 0; c < 4; c++) {
                float mr = m[c >> 1];
                e[c] = mr == -INFINITY ? 0.0f : expf(s[j][c] - mr);
                sum[c >> 1] += e[c];
            }
            pf[j][0] = ampr__half2_bits(e[0], e[1]);
            pf[j][1] = ampr__half2_bits(e[2], e[3]);
        }
#pragma unroll
        for (int r = 0; r < 2; r++) {
            sum[r] += __shfl_xor_sync(0xffffffffu, sum[r], 1);
            sum[r] += __shfl_xor_sync(0xffffffffu, sum[r], 2);
            l[r] = l[r] * corr[r] + sum[r];
        }
#pragma unroll
        for (int j = 0; j < HD / 8; j++) {
            o[j][0] *= corr[0];
            o[j][1] *= corr[0];
            o[j][2] *= corr[1];
            o[j][3] *= corr[1];
        }
        /* O += P V: 16 positions a step; B = V^T rows (dims 8j + g) */
#pragma unroll
        for (int kk = 0; kk < AMK / 16; kk++) {
#pragma unroll
            for (int j = 0; j < HD / 8; j++) {
                uint32_t b0, b1;
                b_frag(&sVt[(8 * j + g) * VP + 16 * kk + 2 * t], b0, b1);
                ampr__mma_16816(o[j], pf[2 * kk][0], pf[2 * kk][1], pf[2 * kk + 1][0],
                                pf[2 * kk + 1][1], b0, b1);
            }
        }
    }
#pragma unroll
    for (int j = 0; j < HD / 8; j++) {
        int d = 8 * j + 2 * t;
        if (ra < n)
            *(float2 *)(out + (int64_t)ra * n_heads * HD + (int64_t)h * HD + d) =
                make_float2(o[j][0] / l[0], o[j][1] / l[0]);
        if (rb < n)
            *(float2 *)(out + (int64_t)rb * n_heads * HD + (int64_t)h * HD + d) =
                make_float2(o[j][2] / l[1], o[j][3] / l[1]);
    }
}

template <typename T, int HD>
static ampr_status att_mma_launch(ampr__cuda *c, const ampr__cuda_kv_view *kv, const float *q,
                                  int64_t ldq, int32_t n, const int32_t *d_pos, int32_t n_heads,
                                  int32_t group, float *out, ampr__err *err) {
    dim3 grid((unsigned)n_heads, (unsigned)((n + AMQ - 1) / AMQ));
    ampr__launch(c, "attention_mma_kernel", attention_mma_kernel<T, HD>, grid, 128, 0,
        (const T *)kv->k, (const T *)kv->v, kv->d_blocks, kv->n_layers, kv->layer, kv->block_size,
        kv->kv_dim, q, ldq, d_pos, n, n_heads, group, 1.0f / sqrtf((float)HD), out);
    AMPR__CU_LAUNCHED(err, "attention_mma");
    return AMPR_OK;
}

/* The query-tile kernel: one sequence, rows enough to fill the GPU without
 * splits, head_dim a multiple of a 16-byte load of the cache, up to 128. */
static int att_tile_ok(const ampr__cuda *c, const ampr__cuda_kv_view *kv, int32_t n,
                       int32_t n_heads, int32_t hd) {
    int vec = kv->dtype == AMPR__CUDA_F16 ? 8 : 4;
    return !kv->d_row_seq && hd % vec == 0 && hd <= ATT_TILE_HD_MAX &&
           (int64_t)n * n_heads >= 4 * (int64_t)c->sm_count && n >= ATQ;
}

ampr_status ampr__cuda_attention(ampr__cuda *c, const ampr__cuda_kv_view *kv, const float *q,
                                 int64_t ldq, int32_t n, const int32_t *d_pos, int32_t n_heads,
                                 int32_t n_kv_heads, int32_t head_dim, float *out,
                                 ampr__err *err) {
    if (n <= 0) return AMPR_OK;
    if (head_dim <= 0 || head_dim > ATT_HD_MAX || n_kv_heads <= 0 || n_heads % n_kv_heads)
        return ampr__fail(err, AMPR_ERR_UNSUPPORTED,
                          "CUDA attention: head_dim %d (max %d), heads %d / kv heads %d",
                          head_dim, ATT_HD_MAX, n_heads, n_kv_heads);
    int32_t group = n_heads / n_kv_heads;
    if (c->sw[AMPR__CUDA_ATT_MMA] && att_tile_ok(c, kv, n, n_heads, head_dim) &&
        (head_dim == 64 || head_dim == 128) && ldq % 2 == 0 && (uintptr_t)q % 8 == 0) {
        if (kv->dtype == AMPR__CUDA_F16)
            return head_dim == 64 ? att_mma_launch<__half, 64>(c, kv, q, ldq, n, d_pos, n_heads, group, out, err)
                                  : att_mma_launch<__half, 128>(c, kv, q, ldq, n, d_pos, n_heads, group, out, err);
        return head_dim == 64 ? att_mma_launch<float, 64>(c, kv, q, ldq, n, d_pos, n_heads, group, out, err)
                              : att_mma_launch<float, 128>(c, kv, q, ldq, n, d_pos, n_heads, group, out, err);
    }
    if (att_tile_ok(c, kv, n, n_heads, head_dim)) {
        int tpl = head_dim <= 32 ? 1 : head_dim <= 64 ? 2 : 4;
        if (kv->dtype == AMPR__CUDA_F16)
            return tpl == 1   ? att_tile_launch<__half, 1>(c, kv, q, ldq, n, d_pos, n_heads, group, head_dim, out, err)
                   : tpl == 2 ? att_tile_launch<__half, 2>(c, kv, q, ldq, n, d_pos, n_heads, group, head_dim, out, err)
                              : att_tile_launch<__half, 4>(c, kv, q, ldq, n, d_pos, n_heads, group, head_dim, out, err);
        return tpl == 1   ? att_tile_launch<float, 1>(c, kv, q, ldq, n, d_pos, n_heads, group, head_dim, out, err)
               : tpl == 2 ? att_tile_launch<float, 2>(c, kv, q, ldq, n, d_pos, n_heads, group, head_dim, out, err)
                          : att_tile_launch<float, 4>(c, kv, q, ldq, n, d_pos, n_heads, group, head_dim, out, err);
    }
    int32_t splits = att_splits(c, n, n_heads, head_dim);
    dim3 grid((unsigned)n_heads, (unsigned)n, (unsigned)splits);
    int pl = head_dim <= 32 ? 1 : head_dim <= 64 ? 2 : head_dim <= 128 ? 4 : 8;
    /* the 16-byte V loop, whose last split merges (att_cnt) */
    int dec = c->sw[AMPR__CUDA_ATT_DEC] && (head_dim == 64 || head_dim == 128);
    if (dec) {
        int f16 = kv->dtype == AMPR__CUDA_F16;
        if (head_dim == 64 && f16) att_launch<__half, 2, 64>(c, kv, q, ldq, d_pos, n_heads, group, head_dim, out, grid);
        else if (head_dim == 64) att_launch<float, 2, 64>(c, kv, q, ldq, d_pos, n_heads, group, head_dim, out, grid);
        else if (f16) att_launch<__half, 4, 128>(c, kv, q, ldq, d_pos, n_heads, group, head_dim, out, grid);
        else att_launch<float, 4, 128>(c, kv, q, ldq, d_pos, n_heads, group, head_dim, out, grid);
    } else if (kv->dtype == AMPR__CUDA_F16) {
        if (pl == 1) att_launch<__half, 1>(c, kv, q, ldq, d_pos, n_heads, group, head_dim, out, grid);
        else if (pl == 2) att_launch<__half, 2>(c, kv, q, ldq, d_pos, n_heads, group, head_dim, out, grid);
        else if (pl == 4) att_launch<__half, 4>(c, kv, q, ldq, d_pos, n_heads, group, head_dim, out, grid);
        else att_launch<__half, 8>(c, kv, q, ldq, d_pos, n_heads, group, head_dim, out, grid);
    } else {
        if (pl == 1) att_launch<float, 1>(c, kv, q, ldq, d_pos, n_heads, group, head_dim, out, grid);
        else if (pl == 2) att_launch<float, 2>(c, kv, q, ldq, d_pos, n_heads, group, head_dim, out, grid);
        else if (pl == 4) att_launch<float, 4>(c, kv, q, ldq, d_pos, n_heads, group, head_dim, out, grid);
        else att_launch<float, 8>(c, kv, q, ldq, d_pos, n_heads, group, head_dim, out, grid);
    }
    AMPR__CU_LAUNCHED(err, "attention");
    if (splits > 1 && !dec) {
        ampr__launch(c, "attention_merge_kernel", attention_merge_kernel,
            dim3((unsigned)n_heads, (unsigned)n), 128, 0, c->att_part, splits, n_heads, head_dim, out);
        AMPR__CU_LAUNCHED(err, "attention_merge");
    }
    return AMPR_OK;
}

/* ---- the sampler's exps ---------------------------------------------------------
 * ampr__exp_det (lib/fallback/logits.h), the same operations: a nucleus's
 * mass and a temperature-only walk are the host's, bit for bit per exp. */
__device__ __forceinline__ float exp_det(float d) {
    if (!(d >= -87.0f)) return 0.0f;
    float n = rintf(d * 1.44269504088896341f);
    float r = __fmaf_rn(-n, 0.693359375f, d);
    r = __fmaf_rn(-n, -2.12194440e-4f, r);
    float p = 1.0f / 5040.0f;
    p = __fmaf_rn(p, r, 1.0f / 720.0f);
    p = __fmaf_rn(p, r, 1.0f / 120.0f);
    p = __fmaf_rn(p, r, 1.0f / 24.0f);
    p = __fmaf_rn(p, r, 1.0f / 6.0f);
    p = __fmaf_rn(p, r, 0.5f);
    p = __fmaf_rn(p, r, 1.0f);
    p = __fmaf_rn(p, r, 1.0f);
    return __fmul_rn(p, __int_as_float(((int)n + 127) << 23));
}

/* ---- candidate lists ---------------------------------------------------------
 * One block per requested row: the m largest logits by (value desc, id asc)
 * as lib/sampler's ampr__topk_cands makes them on the host. Values become
 * unsigned keys that order as the floats do (NaN as -inf, -0 as +0); four
 * passes of an 8-bit radix select (a histogram of the next 8 key bits among
 * the keys that match the bits chosen so far; warp-aggregated atomics, as
 * most of a row shares its top bits) find the key T of the m-th largest and
 * how many of it to take; a fifth pass gathers the keys above T and the ids
 * of those equal to it, of which the smallest are taken; the m candidates
 * are ranked by comparison. Then whether the list decides a top-k draw at
 * temperature t: the m-th's value / t below the k-th's (or m = cols).
 * A nucleus without top-k (k = 0) also needs the row's mass: a last pass
 * sums the row's exps (exp_det) in double, and one thread adds the list's
 * probabilities in the host's order, as the host's draw adds them
 * (ampr__nucleus_cands). */

#define CAND_THREADS 1024
#define CAND_EQ_MAX 1024 /* more values equal to the m-th: the row is needed */
/* Elements a thread loads before it counts, gathers or sums them: one trip to
 * memory for CAND_U (each pass over a 128k row: 16 trips, not 125); a
 * thread's elements are taken in the same order either way */
#define CAND_U 8

/* The CAND_U elements of this thread's batch at j0: j0 + u * CAND_THREADS
 * (0 past the row, whose index says so) */
__device__ __forceinline__ void cand_load(const float *__restrict__ xr, int32_t cols, int32_t j0,
                                          float (&v)[CAND_U]) {
#pragma unroll
    for (int u = 0; u < CAND_U; u++) {
        int32_t j = j0 + u * CAND_THREADS;
        v[u] = j < cols ? xr[j] : 0.0f;
    }
}

__device__ __forceinline__ uint32_t cand_key(float v) {
    if (v != v) v = -INFINITY;
    if (v == 0.0f) v = 0.0f;
    uint32_t u = __float_as_uint(v);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__global__ void __launch_bounds__(CAND_THREADS, 1) /* up to 64 registers: one row a block, few rows */
topk_cands_kernel(const float *__restrict__ x, int32_t cols, const ampr__cuda_cand_req *__restrict__ req,
                  int32_t m_max, float *__restrict__ vals, int32_t *__restrict__ ids,
                  int32_t *__restrict__ n_out, double *__restrict__ mass) {
    AMPR__PDL_ENTER();
    __shared__ uint32_t hist[256];
    __shared__ uint32_t s_prefix, s_mask;
    __shared__ int32_t s_need, s_above, s_eq;
    __shared__ float cv[AMPR__CANDS_MAX];
    __shared__ int32_t ci[AMPR__CANDS_MAX];
    __shared__ uint32_t ck[AMPR__CANDS_MAX];
    __shared__ int32_t eq[CAND_EQ_MAX];
    __shared__ float s_vk, s_vm;
    __shared__ float sv[AMPR__CANDS_MAX], sp[AMPR__CANDS_MAX]; /* a nucleus's x / T, probabilities */
    __shared__ double s_z[32];
    const ampr__cuda_cand_req q = req[blockIdx.x];
    const float *xr = x + (size_t)q.row * (size_t)cols;
    const int32_t m = q.m, tid = (int32_t)threadIdx.x, lane = tid & 31;
    if (tid == 0) {
        s_prefix = 0;
        s_mask = 0;
        s_need = m;
        s_above = 0;
        s_eq = 0;
    }
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int b = tid; b < 256; b += (int)blockDim.x) hist[b] = 0;
        __syncthreads();
        const uint32_t prefix = s_prefix, mask = s_mask;
        /* whole warps per step (j0 - tid the same for a warp's lanes), so
         * that every lane takes part in the match */
        for (int32_t j0 = tid; j0 - lane < cols; j0 += CAND_U * CAND_THREADS) {
            float v[CAND_U];
            cand_load(xr, cols, j0, v);
#pragma unroll
            for (int u = 0; u < CAND_U; u++) {
                int32_t j = j0 + u * CAND_THREADS;
                uint32_t bin = 256; /* none */
                if (j < cols) {
                    uint32_t key = cand_key(v[u]);
                    if ((key & mask) == prefix) bin = (key >> shift) & 255u;
                }
                unsigned peers = __match_any_sync(0xffffffffu, bin);
                if (bin < 256 && lane == __ffs(peers) - 1) atomicAdd(&hist[bin], (uint32_t)__popc(peers));
            }
        }
        __syncthreads();
        if (tid == 0) { /* the bin holding the need-th largest, from the top */
            uint32_t need = (uint32_t)s_need, cum = 0;
            int b = 255;
            for (; b > 0 && cum + hist[b] < need; b--) cum += hist[b];
            s_need = (int32_t)(need - cum);
            s_prefix = prefix | ((uint32_t)b << shift);
            s_mask = mask | (255u << shift);
        }
        __syncthreads();
    }
    const uint32_t T = s_prefix;
    const int32_t take_eq = s_need; /* >= 1: how many of the keys equal to T */
    for (int32_t j0 = tid; j0 < cols; j0 += CAND_U * CAND_THREADS) {
        float vb[CAND_U];
        cand_load(xr, cols, j0, vb);
#pragma unroll
        for (int u = 0; u < CAND_U; u++) {
            int32_t j = j0 + u * CAND_THREADS;
            if (j >= cols) break;
            float v = vb[u];
            uint32_t key = cand_key(v);
            if (key > T) {
                int32_t p = atomicAdd(&s_above, 1);
                cv[p] = v;
                ci[p] = j;
                ck[p] = key;
            } else if (key == T) {
                int32_t p = atomicAdd(&s_eq, 1);
                if (p < CAND_EQ_MAX) eq[p] = j;
            }
        }
    }
    __syncthreads();
    const int32_t na = s_above, ne = s_eq; /* na + take_eq = m */
    if (ne > CAND_EQ_MAX) { /* (uniform: every thread read the same ne) */
        if (tid == 0) {
            n_out[blockIdx.x] = 0;
            mass[blockIdx.x] = 0;
        }
        return;
    }
    for (int32_t i = tid; i < ne; i += (int32_t)blockDim.x) { /* the smallest ids of T */
        int32_t id = eq[i], r = 0;
        for (int32_t o = 0; o < ne; o++) r += eq[o] < id;
        if (r < take_eq) {
            cv[na + r] = xr[id];
            ci[na + r] = id;
            ck[na + r] = T;
        }
    }
    __syncthreads();
    float *ov = vals + (size_t)blockIdx.x * (size_t)m_max;
    int32_t *oi = ids + (size_t)blockIdx.x * (size_t)m_max;
    for (int32_t i = tid; i < m; i += (int32_t)blockDim.x) {
        uint32_t kk = ck[i];
        int32_t id = ci[i], r = 0;
        for (int32_t o = 0; o < m; o++) r += ck[o] > kk || (ck[o] == kk && ci[o] < id);
        ov[r] = cv[i];
        oi[r] = id;
        float v = cv[i] / q.t; /* x / T, NaN as -inf (sampler.c scaled_or_ninf) */
        if (v != v) v = -INFINITY;
        if (r == q.k - 1) s_vk = v;
        if (r == m - 1) s_vm = v;
    }
    __syncthreads();
    if (q.k > 0) {
        if (tid == 0) {
            n_out[blockIdx.x] = (m == cols || s_vm < s_vk) ? m : 0;
            mass[blockIdx.x] = 0;
        }
        return;
    }
    /* a nucleus: x / T (into sp for now), in the whole row's order (value
     * desc, id asc) into sv */
    for (int32_t i = tid; i < m; i += (int32_t)blockDim.x) sp[i] = __fdiv_rn(cv[i], q.t);
    __syncthreads();
    for (int32_t i = tid; i < m; i += (int32_t)blockDim.x) {
        float v = sp[i];
        int32_t id = ci[i], r = 0;
        for (int32_t o = 0; o < m; o++) r += sp[o] > v || (sp[o] == v && ci[o] < id);
        sv[r] = v;
    }
    __syncthreads();
    const float mx = sv[0]; /* the row's largest x / T (a NaN row is undecided below) */
    double z = 0;
    int nan = 0;
    for (int32_t j0 = tid; j0 < cols; j0 += CAND_U * CAND_THREADS) {
        float vb[CAND_U];
        cand_load(xr, cols, j0, vb);
#pragma unroll
        for (int u = 0; u < CAND_U; u++) { /* in j order, as one element a step */
            if (j0 + u * CAND_THREADS >= cols) break;
            float v = __fdiv_rn(vb[u], q.t);
            nan |= v != v;
            z += (double)exp_det(__fsub_rn(v, mx));
        }
    }
    nan = __syncthreads_or(nan);
    for (int o = 16; o > 0; o >>= 1) z += __shfl_down_sync(0xffffffffu, z, o);
    if (lane == 0) s_z[tid >> 5] = z;
    __syncthreads();
    if (tid == 0) {
        double t = 0;
        for (int i = 0; i < (int)(blockDim.x >> 5); i++) t += s_z[i];
        s_z[0] = t;
    }
    __syncthreads();
    z = s_z[0];
    const float sum = __double2float_rn(z);
    for (int32_t i = tid; i < m; i += (int32_t)blockDim.x) sp[i] = __fdiv_rn(exp_det(__fsub_rn(sv[i], mx)), sum);
    __syncthreads();
    if (tid != 0) return;
    mass[blockIdx.x] = z;
    const double margin = AMPR__MASS_MARGIN(cols);
    int ok = !nan && isfinite(mx) && z > 0 && isfinite(z) &&
             __double2float_rn(z * (1 - margin)) == __double2float_rn(z * (1 + margin));
    float cum = 0.0f;
    int32_t j = 0;
    while (ok && j < m) { /* as the host's nucleus_keep */
        cum = __fadd_rn(cum, sp[j++]);
        if (cum >= q.top_p) break;
    }
    n_out[blockIdx.x] = ok && cum >= q.top_p && (m == cols || sv[m - 1] < sv[j - 1]) ? m : 0;
}

ampr_status ampr__cuda_topk_cands(ampr__cuda *c, const float *x, int32_t cols,
                                  const ampr__cuda_cand_req *req, int32_t n, int32_t m_max,
                                  float *vals, int32_t *ids, int32_t *n_out, double *mass, ampr__err *err) {
    if (n <= 0) return AMPR_OK;
    if (m_max < 1 || m_max > AMPR__CANDS_MAX)
        return ampr__fail(err, AMPR_ERR_INTERNAL, "candidate lists of %d", m_max);
    AMPR__TRY(ampr__cuda_use(c, err));
    ampr__launch(c, "topk_cands_kernel", topk_cands_kernel, (unsigned)n, CAND_THREADS, 0,
        x, cols, req, m_max, vals, ids, n_out, mass);
    AMPR__CU_LAUNCHED(err, "topk_cands");
    return AMPR_OK;
}

/* ---- temperature-only draws ---------------------------------------------------
 * One block per row, DRAW_THREADS threads, each a contiguous chunk of the
 * row: the max of x / T (any NaN: undecided), the chunk's exps
 * (exp_det, ampr__exp_det's twin) summed in double, an exclusive scan of
 * the chunk sums in shared memory (edge[t] .. edge[t + 1] is chunk t's
 * share of the mass, so exactly one chunk holds u * total), and that
 * chunk's thread walks it as the host walks the row. Decided only
 * AMPR__DRAW_MARGIN * total away from a token's edge. */

#define DRAW_THREADS 1024
/* Elements of its chunk a thread loads before it divides, compares or adds
 * them (in order): one trip to memory for DRAW_U (the division's slow-path
 * branch had kept each load waiting for the one before it) */
#define DRAW_U 8

/* x[j .. j + DRAW_U) as far as j1, then fn(j, x[j]) for each in order; fn
 * returns false to stop (the walk found its token) */
template <typename Fn>
__device__ __forceinline__ void draw_chunk(const float *__restrict__ xr, int32_t j0, int32_t j1, Fn fn) {
    for (int32_t j = j0; j < j1; j += DRAW_U) {
        float v[DRAW_U];
#pragma unroll
        for (int u = 0; u < DRAW_U; u++) v[u] = j + u < j1 ? xr[j + u] : 0.0f;
#pragma unroll
        for (int u = 0; u < DRAW_U; u++)
            if (j + u >= j1 || !fn(j + u, v[u])) return;
    }
}

__global__ void __launch_bounds__(DRAW_THREADS)
temp_draw_kernel(const float *__restrict__ x, int32_t cols, const ampr__cuda_draw_req *__restrict__ req,
                 int32_t *__restrict__ out) {
    AMPR__PDL_ENTER();
    __shared__ double edge[DRAW_THREADS + 1];
    __shared__ float red[32];
    const ampr__cuda_draw_req q = req[blockIdx.x];
    const float *xr = x + (size_t)q.row * (size_t)cols;
    const int32_t tid = (int32_t)threadIdx.x, chunk = (cols + DRAW_THREADS - 1) / DRAW_THREADS;
    const int32_t j0 = min(cols, tid * chunk), j1 = min(cols, j0 + chunk);
    float mx = -INFINITY;
    int nan = 0;
    draw_chunk(xr, j0, j1, [&](int32_t, float xv) {
        float v = __fdiv_rn(xv, q.t); /* as the host's x / T */
        nan |= v != v;
        mx = fmaxf(mx, v);
        return true;
    });
    nan = __syncthreads_or(nan);
    mx = block_max(mx, red);
    if (nan || !isfinite(mx)) {
        if (tid == 0) out[blockIdx.x] = -1;
        return;
    }
    double z = 0;
    draw_chunk(xr, j0, j1, [&](int32_t, float xv) {
        z += (double)exp_det(__fsub_rn(__fdiv_rn(xv, q.t), mx));
        return true;
    });
    edge[tid + 1] = z;
    if (tid == 0) edge[0] = 0;
    __syncthreads();
    for (int off = 1; off < DRAW_THREADS; off <<= 1) { /* inclusive scan of edge[1..] */
        double add = tid >= off ? edge[tid + 1 - off] : 0.0;
        __syncthreads();
        edge[tid + 1] += add;
        __syncthreads();
    }
    const double total = edge[DRAW_THREADS];
    if (tid == 0) out[blockIdx.x] = -1; /* unless a chunk decides below */
    __syncthreads();
    if (!(total > 0) || !isfinite(total)) return;
    const double r = (double)q.u * total, eps = AMPR__DRAW_MARGIN * total;
    if (!(edge[tid] <= r && r < edge[tid + 1])) return;
    double acc = edge[tid];
    draw_chunk(xr, j0, j1, [&](int32_t j, float xv) {
        double prev = acc;
        acc += (double)exp_det(__fsub_rn(__fdiv_rn(xv, q.t), mx));
        if (!(r < acc)) return true;
        out[blockIdx.x] = r - prev > eps && acc - r > eps ? j : -1;
        return false;
    });
}

__global__ void exp_det_kernel(const float *__restrict__ d, int32_t n, float *__restrict__ out) {
    AMPR__PDL_ENTER();
    int32_t i = (int32_t)(blockIdx.x * blockDim.x + threadIdx.x);
    if (i < n) out[i] = exp_det(d[i]);
}

ampr_status ampr__cuda_exp_det(ampr__cuda *c, const float *d, int32_t n, float *out, ampr__err *err) {
    if (n <= 0) return AMPR_OK;
    AMPR__TRY(ampr__cuda_use(c, err));
    ampr__launch(c, "exp_det_kernel", exp_det_kernel, (unsigned)((n + 255) / 256), 256, 0, d, n, out);
    AMPR__CU_LAUNCHED(err, "exp_det");
    return AMPR_OK;
}

ampr_status ampr__cuda_temp_draw(ampr__cuda *c, const float *x, int32_t cols, const ampr__cuda_draw_req *req,
                                 int32_t n, int32_t *out, ampr__err *err) {
    if (n <= 0) return AMPR_OK;
    AMPR__TRY(ampr__cuda_use(c, err));
    ampr__launch(c, "temp_draw_kernel", temp_draw_kernel, (unsigned)n, DRAW_THREADS, 0, x, cols, req, out);
    AMPR__CU_LAUNCHED(err, "temp_draw");
    return AMPR_OK;
}

/* ---- repetition penalty -------------------------------------------------------- */

__global__ void penalize_kernel(float *x, int32_t cols, const ampr__cuda_pen *__restrict__ pen, int32_t n,
                                float *kept, int restore) {
    AMPR__PDL_ENTER();
    int32_t i = (int32_t)(blockIdx.x * blockDim.x + threadIdx.x);
    if (i >= n) return;
    const ampr__cuda_pen e = pen[i];
    float *p = x + (size_t)e.row * (size_t)cols + e.id;
    if (restore) {
        *p = kept[i];
    } else {
        float v = *p;
        kept[i] = v;
        *p = v > 0 ? v / e.penalty : v * e.penalty; /* ampr__penalize: IEEE division, as the host */
    }
}

ampr_status ampr__cuda_penalize(ampr__cuda *c, float *x, int32_t cols, const ampr__cuda_pen *pen,
                                int32_t n, float *kept, int restore, ampr__err *err) {
    if (n <= 0) return AMPR_OK;
    AMPR__TRY(ampr__cuda_use(c, err));
    ampr__launch(c, "penalize_kernel", penalize_kernel, (unsigned)((n + 255) / 256), 256, 0,
        x, cols, pen, n, kept, restore);
    AMPR__CU_LAUNCHED(err, "penalize");
    return AMPR_OK;
}

/* ---- argmax ------------------------------------------------------------------- */

/* One block a row (the greedy token of a decode step: the row is 128 K
 * logits at the 8B shape). A thread loads ARGMAX_U of its elements at once
 * and then compares them: as a loop of one load and one compare, each
 * element waited for the one before it (a row of 128256 over 256 threads:
 * 501 trips to memory in a row). The largest value with the smallest index
 * wins whatever the order or the block size. */
#define ARGMAX_THREADS 1024
#define ARGMAX_U 8
__global__ void __launch_bounds__(ARGMAX_THREADS) argmax_kernel(const float *__restrict__ x, int32_t cols,
                                                                int32_t *out) {
    AMPR__PDL_ENTER();
    __shared__ float sv[32];
    __shared__ int32_t si[32];
    const float *xr = x + (size_t)blockIdx.x * cols;
    const int32_t bd = ARGMAX_THREADS;
    float best = -INFINITY;
    int32_t bi = cols; /* "none yet": loses every tie below */
    for (int32_t j0 = (int32_t)threadIdx.x; j0 < cols; j0 += ARGMAX_U * bd) {
        float v[ARGMAX_U];
#pragma unroll
        for (int u = 0; u < ARGMAX_U; u++) v[u] = j0 + u * bd < cols ? xr[j0 + u * bd] : -INFINITY;
#pragma unroll
        for (int u = 0; u < ARGMAX_U; u++) { /* this thread's elements in ascending order */
            int32_t j = j0 + u * bd;
            float a = v[u] != v[u] ? -INFINITY : v[u]; /* a NaN never wins (ampr__argmax's rule) */
            if (j < cols && (a > best || (bi == cols && !(a < best)))) { best = a; bi = j; }
        }
    }
    for (int off = 16; off > 0; off >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, best, off);
        int32_t oi = __shfl_xor_sync(0xffffffffu, bi, off);
        if (ov > best || (ov == best && oi < bi)) { best = ov; bi = oi; }
    }
    if ((threadIdx.x & 31) == 0) { sv[threadIdx.x >> 5] = best; si[threadIdx.x >> 5] = bi; }
    __syncthreads();
    if (threadIdx.x < 32) {
        int nw = (int)(blockDim.x >> 5);
        best = (int)threadIdx.x < nw ? sv[threadIdx.x] : -INFINITY;
        bi = (int)threadIdx.x < nw ? si[threadIdx.x] : cols;
        for (int off = 16; off > 0; off >>= 1) {
            float ov = __shfl_xor_sync(0xffffffffu, best, off);
            int32_t oi = __shfl_xor_sync(0xffffffffu, bi, off);
            if (ov > best || (ov == best && oi < bi)) { best = ov; bi = oi; }
        }
        if (threadIdx.x == 0) out[blockIdx.x] = bi < cols ? bi : 0;
    }
}

ampr_status ampr__cuda_argmax(ampr__cuda *c, const float *x, int32_t n, int32_t cols,
                              int32_t *d_out, ampr__err *err) {
    if (n <= 0) return AMPR_OK;
    ampr__launch(c, "argmax_kernel", argmax_kernel, (unsigned)n, ARGMAX_THREADS, 0, x, cols, d_out);
    AMPR__CU_LAUNCHED(err, "argmax");
    return AMPR_OK;
}

/* ---- the fallback's monitor: entropy, KL against kept rows, keeping rows ------
 * Grid (requests, slices): each block takes one slice of one request's row
 * p and, with it, the same slice of the kept row q: its maxima, then its
 * sums relative to them (ampr__row_part, lib/fallback/logits.h, whose
 * ampr__row_part_get is the host's reference), and stores p into the keep
 * row. The host merges the slices in double (ampr__row_parts_merge). Every
 * element of q is read before the same thread overwrites it, so a row may be
 * compared with the slot it replaces. */

#define MON_THREADS 256
#define MON_U 8


__global__ void __launch_bounds__(MON_THREADS)
row_monitor_kernel(const float *__restrict__ x, int32_t cols, int32_t len,
                   const ampr__cuda_mon_req *__restrict__ req, ampr__row_part *__restrict__ part) {
    AMPR__PDL_ENTER();
    __shared__ float red[32];
    const ampr__cuda_mon_req rq = req[blockIdx.x];
    const float *p = x + (size_t)rq.row * (size_t)cols;
    const float *q = rq.q;
    float *keep = rq.keep;
    const int32_t j0 = (int32_t)blockIdx.y * len, j1 = min(cols, j0 + len);
    float mp = -INFINITY, mq = -INFINITY; /* fmaxf passes a NaN over, as the host's max */
    int bad = 0;                          /* a NaN or +inf in p: a broken tier */
    /* both loops: a thread's MON_U elements loaded, then used in order (as a
     * loop of one element, each load waited for the one before: 16 trips a
     * loop for a slice of 4096) */
    for (int32_t jb = j0 + (int32_t)threadIdx.x; jb < j1; jb += MON_U * MON_THREADS) {
        float pv[MON_U], qv[MON_U];
#pragma unroll
        for (int u = 0; u < MON_U; u++) {
            int32_t j = jb + u * MON_THREADS;
            pv[u] = j < j1 ? p[j] : -INFINITY;
            qv[u] = q && j < j1 ? q[j] : -INFINITY;
        }
#pragma unroll
        for (int u = 0; u < MON_U; u++) {
            if (jb + u * MON_THREADS >= j1) break;
            float v = pv[u];
            bad |= (v != v) | (v == INFINITY);
            mp = fmaxf(mp, v);
            if (q) mq = fmaxf(mq, qv[u]);
        }
    }
    bad = __syncthreads_or(bad);
    mp = block_max(mp, red);
    mq = q ? block_max(mq, red) : 0.0f;
    const bool has_p = mp > -INFINITY, has_q = q && mq > -INFINITY;
    float zp = 0.0f, sp = 0.0f, zq = 0.0f, a = 0.0f;
    for (int32_t jb = j0 + (int32_t)threadIdx.x; jb < j1; jb += MON_U * MON_THREADS) {
        float pv[MON_U], qv[MON_U];
#pragma unroll
        for (int u = 0; u < MON_U; u++) {
            int32_t j = jb + u * MON_THREADS;
            pv[u] = j < j1 ? p[j] : 0.0f;
            qv[u] = q && j < j1 ? q[j] : 0.0f;
        }
#pragma unroll
        for (int u = 0; u < MON_U; u++) {
            int32_t j = jb + u * MON_THREADS;
            if (j >= j1) break;
            float v = pv[u];
            float d = has_p ? v - mp : -INFINITY, e = expf(d);
            zp += e;
            if (e > 0.0f) sp += e * d;
            if (q) {
                float dq = has_q ? qv[u] - mq : -INFINITY;
                zq += expf(dq);
                if (e > 0.0f) a += e * (d - dq); /* q's -inf under p's mass: +inf */
            }
            if (keep) keep[j] = v;
        }
    }
    zp = ampr__block_sum(zp, red);
    sp = ampr__block_sum(sp, red);
    if (q) {
        zq = ampr__block_sum(zq, red);
        a = ampr__block_sum(a, red);
    }
    if (threadIdx.x == 0)
        part[(size_t)blockIdx.x * gridDim.y + blockIdx.y] = ampr__row_part{mp, zp, sp, mq, zq, a, bad};
}

ampr_status ampr__cuda_row_monitor(ampr__cuda *c, const float *x, int32_t cols,
                                   const ampr__cuda_mon_req *req, int32_t n, int32_t n_parts,
                                   ampr__row_part *parts, ampr__err *err) {
    if (n <= 0) return AMPR_OK;
    if (n_parts < 1 || n_parts > AMPR__CUDA_MON_PARTS || cols < 1)
        return ampr__fail(err, AMPR_ERR_INTERNAL, "row monitor: %d slices of %d columns", n_parts, cols);
    int32_t len = (cols + n_parts - 1) / n_parts;
    AMPR__TRY(ampr__cuda_use(c, err));
    ampr__launch(c, "row_monitor_kernel", row_monitor_kernel, dim3((unsigned)n, (unsigned)n_parts),
        MON_THREADS, 0, x, cols, len, req, parts);
    AMPR__CU_LAUNCHED(err, "row_monitor");
    return AMPR_OK;
}
