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

__global__ void embed_kernel(int fmt, const void *__restrict__ data, const float *__restrict__ sc,
                             int64_t cols, const int32_t *__restrict__ tokens, void *out,
                             int out_f16) {
    int64_t row = tokens[blockIdx.x];
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
        int64_t e = row * cols + c;
        float v;
        if (fmt == AMPR__Q_F16) {
            v = __half2float(((const __half *)data)[e]);
        } else if (fmt == AMPR__Q_INT8) {
            v = (float)((const int8_t *)data)[e] * sc[row];
        } else {
            uint8_t b = ((const uint8_t *)data)[e / 2];
            unsigned code = (e & 1) ? (b & 15u) : (unsigned)(b >> 4);
            v = nf4_value(code) * sc[e / 64];
        }
        size_t o = (size_t)blockIdx.x * (size_t)cols + (size_t)c;
        if (out_f16) ((__half *)out)[o] = __float2half_rn(v);
        else ((float *)out)[o] = v;
    }
}

ampr_status ampr__cuda_embed(ampr__cuda *c, const ampr__cuda_mat *table, const int32_t *d_tokens,
                             int32_t n, void *out, ampr__cuda_dtype out_type, ampr__err *err) {
    if (n <= 0) return AMPR_OK;
    embed_kernel<<<(unsigned)n, 256, 0, c->stream>>>((int)table->type, table->data, table->scales,
                                                     table->cols, d_tokens, out,
                                                     out_type == AMPR__CUDA_F16);
    AMPR__CU_LAUNCHED(err, "embed");
    return AMPR_OK;
}

/* ---- RMSNorm ------------------------------------------------------------------ */

__device__ float block_sum(float v, float *red) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    if (threadIdx.x < 32) {
        int nw = (int)(blockDim.x >> 5);
        v = (int)threadIdx.x < nw ? red[threadIdx.x] : 0.0f;
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        if (threadIdx.x == 0) red[0] = v;
    }
    __syncthreads();
    float r = red[0];
    __syncthreads(); /* red may be reused by the caller */
    return r;
}

__global__ void rmsnorm_kernel(const float *__restrict__ x, const float *__restrict__ w,
                               float *__restrict__ out, int32_t dim, float eps) {
    __shared__ float red[32];
    const float *xr = x + (size_t)blockIdx.x * dim;
    float *o = out + (size_t)blockIdx.x * dim;
    float ss = 0.0f;
    for (int32_t j = threadIdx.x; j < dim; j += blockDim.x) ss += xr[j] * xr[j];
    ss = block_sum(ss, red);
    ss = ss / (float)dim + eps;
    float inv = 1.0f / sqrtf(ss);
    for (int32_t j = threadIdx.x; j < dim; j += blockDim.x) o[j] = w[j] * (inv * xr[j]);
}

ampr_status ampr__cuda_rmsnorm(ampr__cuda *c, const float *x, const float *w, float *out,
                               int32_t n, int32_t dim, float eps, ampr__err *err) {
    if (n <= 0) return AMPR_OK;
    rmsnorm_kernel<<<(unsigned)n, 256, 0, c->stream>>>(x, w, out, dim, eps);
    AMPR__CU_LAUNCHED(err, "rmsnorm");
    return AMPR_OK;
}

/* ---- RoPE --------------------------------------------------------------------- */

__global__ void rope_kernel(float *v, int64_t ld, int32_t n, int32_t n_heads, int32_t hd,
                            const int32_t *__restrict__ pos, const float *__restrict__ cs,
                            const float *__restrict__ sn, int interleaved) {
    int32_t half = hd / 2;
    size_t total = (size_t)n * (size_t)n_heads * (size_t)half;
    for (size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (size_t)gridDim.x * blockDim.x) {
        int32_t k = (int32_t)(e % (size_t)half);
        int32_t h = (int32_t)((e / (size_t)half) % (size_t)n_heads);
        int32_t i = (int32_t)(e / ((size_t)half * (size_t)n_heads));
        float *x = v + (int64_t)i * ld + (int64_t)h * hd;
        int32_t a = interleaved ? 2 * k : k, b = interleaved ? 2 * k + 1 : k + half;
        size_t t = (size_t)pos[i] * (size_t)half + (size_t)k;
        float c0 = cs[t], s0 = sn[t];
        float x0 = x[a], x1 = x[b];
        x[a] = x0 * c0 - x1 * s0;
        x[b] = x0 * s0 + x1 * c0;
    }
}

ampr_status ampr__cuda_rope(ampr__cuda *c, float *v, int64_t ld, int32_t n, int32_t n_heads,
                            int32_t head_dim, const int32_t *d_pos, const float *cos_tab,
                            const float *sin_tab, int interleaved, ampr__err *err) {
    size_t total = (size_t)n * (size_t)n_heads * (size_t)(head_dim / 2);
    if (!total) return AMPR_OK;
    rope_kernel<<<ampr__cuda_grid(total, 256), 256, 0, c->stream>>>(v, ld, n, n_heads, head_dim, d_pos,
                                                              cos_tab, sin_tab, interleaved);
    AMPR__CU_LAUNCHED(err, "rope");
    return AMPR_OK;
}

/* ---- SwiGLU, add -------------------------------------------------------------- */

__global__ void swiglu_kernel(const float *__restrict__ gu, float *__restrict__ out, int32_t n,
                              int32_t hidden) {
    size_t total = (size_t)n * (size_t)hidden;
    for (size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (size_t)gridDim.x * blockDim.x) {
        size_t i = e / (size_t)hidden, j = e % (size_t)hidden;
        const float *g = gu + i * 2 * (size_t)hidden;
        float gv = g[j];
        out[e] = gv * (1.0f / (1.0f + expf(-gv))) * g[(size_t)hidden + j];
    }
}

ampr_status ampr__cuda_swiglu(ampr__cuda *c, const float *gu, float *out, int32_t n,
                              int32_t hidden, ampr__err *err) {
    size_t total = (size_t)n * (size_t)hidden;
    if (!total) return AMPR_OK;
    swiglu_kernel<<<ampr__cuda_grid(total, 256), 256, 0, c->stream>>>(gu, out, n, hidden);
    AMPR__CU_LAUNCHED(err, "swiglu");
    return AMPR_OK;
}

__global__ void add_kernel(float *x, const float *__restrict__ y, size_t count) {
    for (size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x; e < count;
         e += (size_t)gridDim.x * blockDim.x)
        x[e] += y[e];
}

ampr_status ampr__cuda_add(ampr__cuda *c, float *x, const float *y, int64_t count, ampr__err *err) {
    if (count <= 0) return AMPR_OK;
    add_kernel<<<ampr__cuda_grid((size_t)count, 256), 256, 0, c->stream>>>(x, y, (size_t)count);
    AMPR__CU_LAUNCHED(err, "add");
    return AMPR_OK;
}

/* ---- paged KV ---------------------------------------------------------------- */

/* Element offset of (layer, position, element 0) in a K or V arena. */
__device__ __forceinline__ size_t kv_off(const int32_t *blocks, int32_t n_layers, int32_t layer,
                                         int32_t bs, int32_t kv_dim, int32_t p) {
    size_t page = (size_t)blocks[p / bs];
    return ((page * (size_t)n_layers + (size_t)layer) * (size_t)bs + (size_t)(p % bs)) *
           (size_t)kv_dim;
}

/* The block table of query/token row i: row row_seq[i] of a [seqs][stride]
 * table, or the single table when row_seq is NULL. */
__device__ __forceinline__ const int32_t *row_blocks(const int32_t *blocks, const int32_t *row_seq,
                                                     int32_t stride, int32_t i) {
    return row_seq ? blocks + (size_t)row_seq[i] * (size_t)stride : blocks;
}

template <typename T> __device__ __forceinline__ T to_kv(float v);
template <> __device__ __forceinline__ float to_kv<float>(float v) { return v; }
template <> __device__ __forceinline__ __half to_kv<__half>(float v) { return __float2half_rn(v); }
__device__ __forceinline__ float from_kv(float v) { return v; }
__device__ __forceinline__ float from_kv(__half v) { return __half2float(v); }

template <typename T>
__global__ void kv_store_kernel(T *kc, T *vc, const int32_t *__restrict__ blocks, int32_t n_layers,
                                int32_t layer, int32_t bs, int32_t kv_dim,
                                const float *__restrict__ k, const float *__restrict__ v,
                                int64_t ld, int32_t n, const int32_t *__restrict__ pos,
                                const int32_t *__restrict__ row_seq, int32_t stride) {
    size_t total = (size_t)n * (size_t)kv_dim;
    for (size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (size_t)gridDim.x * blockDim.x) {
        int32_t i = (int32_t)(e / (size_t)kv_dim), d = (int32_t)(e % (size_t)kv_dim);
        const int32_t *bt = row_blocks(blocks, row_seq, stride, i);
        size_t o = kv_off(bt, n_layers, layer, bs, kv_dim, pos[i]) + (size_t)d;
        kc[o] = to_kv<T>(k[(int64_t)i * ld + d]);
        vc[o] = to_kv<T>(v[(int64_t)i * ld + d]);
    }
}

ampr_status ampr__cuda_kv_store(ampr__cuda *c, const ampr__cuda_kv_view *kv, const float *k,
                                const float *v, int64_t ld, int32_t n, const int32_t *d_pos,
                                ampr__err *err) {
    size_t total = (size_t)n * (size_t)kv->kv_dim;
    if (!total) return AMPR_OK;
    unsigned g = ampr__cuda_grid(total, 256);
    if (kv->dtype == AMPR__CUDA_F16)
        kv_store_kernel<__half><<<g, 256, 0, c->stream>>>(
            (__half *)kv->k, (__half *)kv->v, kv->d_blocks, kv->n_layers, kv->layer,
            kv->block_size, kv->kv_dim, k, v, ld, n, d_pos, kv->d_row_seq, kv->blocks_stride);
    else
        kv_store_kernel<float><<<g, 256, 0, c->stream>>>(
            (float *)kv->k, (float *)kv->v, kv->d_blocks, kv->n_layers, kv->layer,
            kv->block_size, kv->kv_dim, k, v, ld, n, d_pos, kv->d_row_seq, kv->blocks_stride);
    AMPR__CU_LAUNCHED(err, "kv_store");
    return AMPR_OK;
}

/* ---- attention ------------------------------------------------------------------
 * One block per (head, query row). Each warp walks positions warp, warp+W, ...
 * up to the row's own position with an online softmax: lane j holds output
 * dims j, j+32, ... (head_dim <= 256: 8 per lane). The warps' partial
 * (max, sum, output) are merged through shared memory at the end. */

#define ATT_WARPS 4
#define ATT_MAX_PER_LANE 8

template <typename T>
__global__ void __launch_bounds__(ATT_WARPS * 32)
attention_kernel(const T *__restrict__ kc, const T *__restrict__ vc,
                 const int32_t *__restrict__ blocks, int32_t n_layers, int32_t layer, int32_t bs,
                 int32_t kv_dim, const float *__restrict__ q, int64_t ldq,
                 const int32_t *__restrict__ pos, int32_t n_heads, int32_t group, int32_t hd,
                 float scale, float *__restrict__ out, const int32_t *__restrict__ row_seq,
                 int32_t stride) {
    __shared__ float sm_m[ATT_WARPS], sm_l[ATT_WARPS];
    __shared__ float sm_o[ATT_WARPS][ATT_MAX_PER_LANE * 32];
    int32_t h = (int32_t)blockIdx.x, i = (int32_t)blockIdx.y;
    int32_t kvh = h / group;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int32_t p_end = pos[i];
    const int32_t *bt = row_blocks(blocks, row_seq, stride, i);
    const float *qr = q + (int64_t)i * ldq + (int64_t)h * hd;
    float qv[ATT_MAX_PER_LANE], o[ATT_MAX_PER_LANE];
#pragma unroll
    for (int j = 0; j < ATT_MAX_PER_LANE; j++) {
        int d = lane + 32 * j;
        qv[j] = d < hd ? qr[d] : 0.0f;
        o[j] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    for (int32_t t = warp; t <= p_end; t += ATT_WARPS) {
        size_t base = kv_off(bt, n_layers, layer, bs, kv_dim, t) + (size_t)kvh * (size_t)hd;
        float s = 0.0f;
#pragma unroll
        for (int j = 0; j < ATT_MAX_PER_LANE; j++) {
            int d = lane + 32 * j;
            if (d < hd) s += qv[j] * from_kv(kc[base + (size_t)d]);
        }
        for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
        s *= scale;
        float mn = fmaxf(m, s);
        float corr = expf(m - mn), p = expf(s - mn);
        l = l * corr + p;
#pragma unroll
        for (int j = 0; j < ATT_MAX_PER_LANE; j++) {
            int d = lane + 32 * j;
            if (d < hd) o[j] = o[j] * corr + p * from_kv(vc[base + (size_t)d]);
        }
        m = mn;
    }
    if (lane == 0) {
        sm_m[warp] = m;
        sm_l[warp] = l;
    }
#pragma unroll
    for (int j = 0; j < ATT_MAX_PER_LANE; j++) sm_o[warp][lane + 32 * j] = o[j];
    __syncthreads();
    float M = -INFINITY;
    for (int w = 0; w < ATT_WARPS; w++) M = fmaxf(M, sm_m[w]);
    float L = 0.0f, wgt[ATT_WARPS];
#pragma unroll
    for (int w = 0; w < ATT_WARPS; w++) {
        wgt[w] = sm_l[w] > 0.0f ? expf(sm_m[w] - M) : 0.0f;
        L += sm_l[w] * wgt[w];
    }
    float *orow = out + (int64_t)i * n_heads * hd + (int64_t)h * hd;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float acc = 0.0f;
#pragma unroll
        for (int w = 0; w < ATT_WARPS; w++) acc += sm_o[w][d] * wgt[w];
        orow[d] = acc / L;
    }
}

ampr_status ampr__cuda_attention(ampr__cuda *c, const ampr__cuda_kv_view *kv, const float *q,
                                 int64_t ldq, int32_t n, const int32_t *d_pos, int32_t n_heads,
                                 int32_t n_kv_heads, int32_t head_dim, float *out,
                                 ampr__err *err) {
    if (n <= 0) return AMPR_OK;
    if (head_dim <= 0 || head_dim > 32 * ATT_MAX_PER_LANE || n_kv_heads <= 0 ||
        n_heads % n_kv_heads)
        return ampr__fail(err, AMPR_ERR_UNSUPPORTED,
                          "CUDA attention: head_dim %d (max %d), heads %d / kv heads %d",
                          head_dim, 32 * ATT_MAX_PER_LANE, n_heads, n_kv_heads);
    dim3 grid((unsigned)n_heads, (unsigned)n);
    float scale = 1.0f / sqrtf((float)head_dim);
    int32_t group = n_heads / n_kv_heads;
    if (kv->dtype == AMPR__CUDA_F16)
        attention_kernel<__half><<<grid, ATT_WARPS * 32, 0, c->stream>>>(
            (const __half *)kv->k, (const __half *)kv->v, kv->d_blocks, kv->n_layers, kv->layer,
            kv->block_size, kv->kv_dim, q, ldq, d_pos, n_heads, group, head_dim, scale, out,
            kv->d_row_seq, kv->blocks_stride);
    else
        attention_kernel<float><<<grid, ATT_WARPS * 32, 0, c->stream>>>(
            (const float *)kv->k, (const float *)kv->v, kv->d_blocks, kv->n_layers, kv->layer,
            kv->block_size, kv->kv_dim, q, ldq, d_pos, n_heads, group, head_dim, scale, out,
            kv->d_row_seq, kv->blocks_stride);
    AMPR__CU_LAUNCHED(err, "attention");
    return AMPR_OK;
}

/* ---- argmax ------------------------------------------------------------------- */

__global__ void argmax_kernel(const float *__restrict__ x, int32_t cols, int32_t *out) {
    __shared__ float sv[32];
    __shared__ int32_t si[32];
    const float *xr = x + (size_t)blockIdx.x * cols;
    float best = -INFINITY;
    int32_t bi = cols; /* "none yet": loses every tie below */
    for (int32_t j = threadIdx.x; j < cols; j += blockDim.x) {
        float v = xr[j];
        if (v > best || (bi == cols && !(v < best))) { best = v; bi = j; }
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
    argmax_kernel<<<(unsigned)n, 256, 0, c->stream>>>(x, cols, d_out);
    AMPR__CU_LAUNCHED(err, "argmax");
    return AMPR_OK;
}
