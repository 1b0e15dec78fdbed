/*
 * cuda_err.h -- the one place where CUDA runtime, cuBLASLt and NCCL errors
 * become ampr_status values, and the internal state of a device context.
 *
 * Mapping:
 *   out of memory (cudaErrorMemoryAllocation, CUBLAS_STATUS_ALLOC_FAILED)  -> AMPR_ERR_NOMEM
 *   no driver or device (cudaErrorNoDevice, cudaErrorInsufficientDriver,
 *     cudaErrorInvalidDevice)                                               -> AMPR_ERR_NO_DEVICE
 *   anything else                                                           -> AMPR_ERR_BACKEND
 * The message names the failing call, the error's name and text, and file:line.
 */
#ifndef AMPR_CUDA_ERR_H
#define AMPR_CUDA_ERR_H

#include <cublasLt.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <string.h> /* memcpy in device code: register reinterpretation */

#include "ampr_cuda.h"
#include "forward/tp.h" /* AMPR__TP_MAX: the most ranks, here and on the CPU */

ampr_status ampr__cuda_fail(ampr__err *err, cudaError_t e, const char *what, const char *file,
                            int line);
ampr_status ampr__cublas_fail(ampr__err *err, cublasStatus_t s, const char *what,
                              const char *file, int line);

#define AMPR__CU(err, call)                                                          \
    do {                                                                             \
        cudaError_t ampr__e_ = (call);                                               \
        if (ampr__e_ != cudaSuccess)                                                 \
            return ampr__cuda_fail((err), ampr__e_, #call, __FILE__, __LINE__);      \
    } while (0)

/* After a kernel launch: launch-configuration errors are reported here, faults
 * inside the kernel at the next synchronization. */
#define AMPR__CU_LAUNCHED(err, name) AMPR__CU(err, cudaGetLastError())

#define AMPR__CUBLAS(err, call)                                                      \
    do {                                                                             \
        cublasStatus_t ampr__s_ = (call);                                            \
        if (ampr__s_ != CUBLAS_STATUS_SUCCESS)                                       \
            return ampr__cublas_fail((err), ampr__s_, #call, __FILE__, __LINE__);    \
    } while (0)

#ifdef AMPR_HAVE_NCCL
#include <nccl.h>
ampr_status ampr__nccl_fail(ampr__err *err, ncclResult_t r, const char *what, const char *file,
                            int line);
#define AMPR__NCCL(err, call)                                                        \
    do {                                                                             \
        ncclResult_t ampr__r_ = (call);                                              \
        if (ampr__r_ != ncclSuccess)                                                 \
            return ampr__nccl_fail((err), ampr__r_, #call, __FILE__, __LINE__);      \
    } while (0)
#endif

/* ---- context internals (shared by the files in cuda/) ------------------- */

#define AMPR__CUDA_MAX_PLANS 128
#define AMPR__CUDA_GEMV_MAX 8
#define AMPR__CUDA_ATT_SPLITS 32  /* most position splits of one attention row */
#define AMPR__CUDA_HD_MAX 256     /* largest head_dim the attention kernels take */

typedef struct ampr__cuda_plan {
    int used;
    int kind;                 /* ampr__qtype of the weights (NF4 runs as F16) */
    int64_t m, n, k;          /* rows, tokens (padded), cols */
    int64_t ldc;
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, cd;
    cublasLtMatmulAlgo_t algo;
} ampr__cuda_plan;

struct ampr__cuda {
    int device;
    int cc;                   /* major*10 + minor */
    int sm_count;
    char name[256];
    cudaStream_t stream;
    cublasLtHandle_t lt;
    void *lt_ws;              /* cuBLASLt workspace */
    size_t lt_ws_bytes;
    ampr__cuda_plan plans[AMPR__CUDA_MAX_PLANS];
    int plan_next;            /* round-robin victim when the cache is full */
    int gemv_max;
    int64_t dq_rows;          /* NF4 prefill: rows dequantized a GEMM (0: by size, cuda_matmul.cu) */
    int dq_waves;             /* DQ_WIDE's waves of tiles a chunk (0: AMPR__CUDA_DQ_WAVES) */
    int sw[AMPR__CUDA_N_SWITCHES]; /* the kernel switches (ampr_cuda.h), 0 or 1 */
    int nf4_gemv1;            /* ampr__cuda_set_nf4_gemv1: R * 10 + U, 0 by shape */
    unsigned nf4_xs_attr;     /* gemv_nf4_mma_kernel<KS, FUSE, x staged> allowed its shared memory */
    int nf4_ring;             /* ampr__cuda_set_nf4_ring: the ring's stages (4 or 8), 0 by size */
    unsigned nf4_ring_attr;   /* gemv_nf4_ring_kernel<KS, FUSE, S> allowed its shared memory */
    int big_pass;             /* in a pass of more than gemv_max tokens: no PDL (ampr__launch) */
    /* ampr__cuda_set_probe: kernels whose launch name contains this are
     * launched probe_times times, 0 or 2 (the GPU check's in-step cost of a
     * kernel); "" none */
    char probe[48];
    int probe_times;
    unsigned long probe_launches; /* launches that matched it (each counted once) */
    /* matmul scratch, grown by ensure_scratch() */
    __half *xh;               /* activations as half [n][cols] */
    size_t xh_bytes;
    int8_t *xq;               /* activations as int8 [npad][cols] */
    size_t xq_bytes;
    float *xs;                /* per-token scales [npad] */
    size_t xs_bytes;
    int32_t *acc;             /* int32 results [n][rows] */
    size_t acc_bytes;
    __half *wdq;              /* NF4 weights dequantized to half */
    size_t wdq_bytes;
    /* NF4 prefill's chunks on two streams of their own (AMPR__CUDA_DQ_PIPE,
     * cuda_matmul.cu nf4_pipe), made at first use (dq_pipe 1; -1: could
     * not be, the chunks stay on the stream): chunk j on dq_side[j % 2],
     * side 0 with wdq and lt_ws (the main stream waits meanwhile), side 1
     * with dq_buf and dq_ws; dq_ev[0] holds the sides until the main stream
     * is there, dq_ev[1 + s] the main stream until side s is done */
    int dq_pipe;
    cudaStream_t dq_side[2];
    cudaEvent_t dq_ev[3];
    __half *dq_buf;
    size_t dq_buf_bytes;
    void *dq_ws;
    float *nf4b_part;         /* NF4 batch matmul: each column split's sums */
    size_t nf4b_part_bytes;
    int32_t *nf4b_cnt;        /* ... and per row block the splits done (the last resets it) */
    size_t nf4b_cnt_bytes;
    uint64_t scratch_gen;     /* bumped whenever a scratch buffer above moves (graphs) */
    /* split attention's per-split (m, l, o[head_dim]); fixed size, made at
     * open (graphs keep its address): 8 blocks per SM of head_dim AMPR__CUDA_HD_MAX */
    float *att_part;
    size_t att_part_bytes;
    /* per (row, head) of a split attention: how many splits have written their
     * part (AMPR_CUDA_ATT_DEC: the last one merges and sets it back to 0);
     * 4 * sm_count of them (more rows x heads run unsplit) */
    int32_t *att_cnt;
    /* a matmul's blocks done, when its last one does the op after it
     * (ampr__tail_last, AMPR_CUDA_FUSE_TAIL; that block sets it back to 0) */
    int32_t *tail_cnt;
};

/* d += a b: mma.sync m16n8k16, fp16 inputs, fp32 sums (sm_80 and newer); the
 * emulation (tests/emu) computes the same fragments on the CPU */
__device__ __forceinline__ void ampr__mma_16816(float (&d)[4], uint32_t a0, uint32_t a1,
                                                uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1) {
#ifdef AMPR_CUDA_EMU
    ampr_emu_mma_16816(d, a0, a1, a2, a3, b0, b1);
#else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#endif
}

/* SwiGLU of one pair: silu(g) * u, one expression for swiglu_kernel and the
 * fused gate/up GEMVs, so that both give the same floats */
__device__ __forceinline__ float ampr__silu_mul(float g, float u) {
    return g * (1.0f / (1.0f + expf(-g))) * u;
}

/* The sum of v over the block's threads, for every thread (red: 32 floats of
 * shared memory, free again on return) */
__device__ __forceinline__ float ampr__block_sum(float v, float *red) {
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

/* One row by one block: with y, x += y first (written back), then out =
 * rmsnorm(x) * w. One body for rmsnorm_kernel and the matmuls that end with
 * the norm (AMPR_CUDA_FUSE_TAIL), so that both give the same floats with the
 * same block size. y is read through L2 (__ldcg): in the fused case other
 * blocks of the same kernel wrote it. y and out may be the same row.
 * BD > 0 (rmsnorm_kernel, launched with BD threads): rows of up to BD x
 * AMPR__NORM_REG elements are held in registers, and a thread issues all its
 * loads of x, y and w before any store, so they are in flight together (one
 * trip to memory; BD a constant, so their addresses are one base and
 * constant offsets).
 * Written as one loop (load, add, store, next element), each element waits
 * for the one before it, because the store might alias the next loads: 2 x
 * dim / blockDim trips a row, 32 at dim 4096 with 256 threads. The fused
 * tails (BD 0: a __noinline__ function the GEMVs call) take that loop: held in
 * registers there, the row would raise every GEMV's register count to the
 * tail's. Both visit a thread's elements in the same order: the same floats. */
#define AMPR__NORM_REG 16
/* rmsnorm_kernel's threads; the GEMVs whose last block does the norm
 * (ampr__tail_last) run this many too, so both reduce alike */
#define AMPR__NORM_THREADS 256
template <int BD>
__device__ __forceinline__ void ampr__add_rmsnorm_row(float *xr, const float *yr,
                                                      const float *__restrict__ w, float *o,
                                                      int32_t dim, float eps, float *red) {
    const int32_t bd = BD > 0 ? BD : (int32_t)blockDim.x, tid = (int32_t)threadIdx.x;
    float ss = 0.0f;
    if (BD > 0 && dim <= BD * AMPR__NORM_REG) {
        float v[AMPR__NORM_REG], wv[AMPR__NORM_REG];
#pragma unroll
        for (int k = 0; k < AMPR__NORM_REG; k++) {
            int32_t j = tid + k * bd;
            v[k] = j < dim ? xr[j] : 0.0f;
            wv[k] = j < dim ? w[j] : 0.0f;
        }
        if (yr) {
#pragma unroll
            for (int k = 0; k < AMPR__NORM_REG; k++) {
                int32_t j = tid + k * bd;
                if (j < dim) v[k] += __ldcg(yr + j);
            }
        }
#pragma unroll
        for (int k = 0; k < AMPR__NORM_REG; k++) {
            int32_t j = tid + k * bd;
            if (j >= dim) continue;
            if (yr) xr[j] = v[k];
            ss += v[k] * v[k];
        }
        ss = ampr__block_sum(ss, red);
        ss = ss / (float)dim + eps;
        float inv = 1.0f / sqrtf(ss);
#pragma unroll
        for (int k = 0; k < AMPR__NORM_REG; k++) {
            int32_t j = tid + k * bd;
            if (j < dim) o[j] = wv[k] * (inv * v[k]);
        }
        return;
    }
    if (yr) {
        for (int32_t j = tid; j < dim; j += bd) {
            float v = xr[j] + __ldcg(yr + j);
            xr[j] = v;
            ss += v * v;
        }
    } else {
        for (int32_t j = tid; j < dim; j += bd) ss += xr[j] * xr[j];
    }
    ss = ampr__block_sum(ss, red);
    ss = ss / (float)dim + eps;
    float inv = 1.0f / sqrtf(ss);
    for (int32_t j = tid; j < dim; j += bd) o[j] = w[j] * (inv * xr[j]);
}

/* ---- paged KV ---------------------------------------------------------------- */

/* Element offset of (layer, position, element 0) in a K or V arena. */
__device__ __forceinline__ size_t ampr__kv_off(const int32_t *blocks, int32_t n_layers, int32_t layer,
                                               int32_t bs, int32_t kv_dim, int32_t p) {
    size_t page = (size_t)blocks[p / bs];
    return ((page * (size_t)n_layers + (size_t)layer) * (size_t)bs + (size_t)(p % bs)) *
           (size_t)kv_dim;
}

/* The block table of query/token row i: row row_seq[i] of a [seqs][stride]
 * table, or the single table when row_seq is NULL. */
__device__ __forceinline__ const int32_t *ampr__row_blocks(const int32_t *blocks, const int32_t *row_seq,
                                                           int32_t stride, int32_t i) {
    return row_seq ? blocks + (size_t)row_seq[i] * (size_t)stride : blocks;
}

template <typename T> __device__ __forceinline__ T ampr__to_kv(float v);
template <> __device__ __forceinline__ float ampr__to_kv<float>(float v) { return v; }
template <> __device__ __forceinline__ __half ampr__to_kv<__half>(float v) { return __float2half_rn(v); }

/* One work item of RoPE and the KV store (rope_kv_kernel, and the QKV
 * matmuls that do it themselves). A row of x holds nq query heads, then nkv
 * key heads, then nkv value heads (hd values each; the fused QKV layout).
 * Item e = (row i, head h, pair k) covers the pair (a, b) -- (2k, 2k+1)
 * interleaved, (k, k + hd/2) half-split:
 *   rope:  Q and K heads rotate in place by position pos[i];
 *   store: K (after the rotation) and V go to the row's page at pos[i].
 * Rotation: x0*c - x1*s, x0*s + x1*c, each product rounded (no FMA), as the
 * CPU's forward computes it. */
template <typename T>
__device__ __forceinline__ void ampr__rope_kv_item(size_t e, float *x, int64_t ld, int32_t nq, int32_t nkv,
                                                   int32_t hd, const int32_t *pos, const float *cs,
                                                   const float *sn, int interleaved, int rope, T *kc, T *vc,
                                                   const int32_t *blocks, int32_t n_layers, int32_t layer,
                                                   int32_t bs, const int32_t *row_seq, int32_t stride) {
    int32_t half = hd / 2, heads = nq + 2 * nkv, kv_dim = nkv * hd;
    size_t per_row = (size_t)heads * (size_t)half;
    int32_t i = (int32_t)(e / per_row), r = (int32_t)(e % per_row);
    int32_t h = r / half, k = r % half;
    int32_t a = interleaved ? 2 * k : k, b = interleaved ? 2 * k + 1 : k + half;
    float *xh = x + (int64_t)i * ld + (int64_t)h * hd;
    float y0 = __ldcg(xh + a), y1 = __ldcg(xh + b); /* through L2: in a tail, other blocks wrote x */
    if (rope && h < nq + nkv) {
        size_t t = (size_t)pos[i] * (size_t)half + (size_t)k;
        float c0 = cs[t], s0 = sn[t];
        float x0 = y0, x1 = y1;
        y0 = __fsub_rn(__fmul_rn(x0, c0), __fmul_rn(x1, s0));
        y1 = __fadd_rn(__fmul_rn(x0, s0), __fmul_rn(x1, c0));
        xh[a] = y0;
        xh[b] = y1;
    }
    if (kc && h >= nq) {
        const int32_t *bt = ampr__row_blocks(blocks, row_seq, stride, i);
        size_t o = ampr__kv_off(bt, n_layers, layer, bs, kv_dim, pos[i]);
        T *dst = h < nq + nkv ? kc + o + (size_t)(h - nq) * hd : vc + o + (size_t)(h - nq - nkv) * hd;
        dst[a] = ampr__to_kv<T>(y0);
        dst[b] = ampr__to_kv<T>(y1);
    }
}

/* ---- a matmul's tail ----------------------------------------------------------
 * The small op that follows a decode matmul, done by the matmul kernel's last
 * block instead of a launch of its own (AMPR_CUDA_FUSE_TAIL):
 *   ADDNORM (ampr__cuda_matmul_addnorm, after wo and w_down): r [n][dim] += y,
 *           y = rmsnorm(r) * w (ampr__add_rmsnorm_row);
 *   ROPE_KV (ampr__cuda_matmul_rope_kv, after wqkv): y's rows are the QKV
 *           rows; rope_kv_kernel's work (ampr__rope_kv_item) with kv_f16
 *           choosing the cache's element type. */
enum { AMPR__TAIL_NONE, AMPR__TAIL_ADDNORM, AMPR__TAIL_ROPE_KV };
typedef struct ampr__tail {
    int kind;
    int32_t *cnt; /* the context's tail_cnt */
    float *r;
    const float *w;
    float eps;
    int32_t nq, nkv, hd;
    const int32_t *pos;
    const float *cs, *sn;
    int interleaved, kv_f16; /* the KV view's fields the tail uses, not the view: */
    void *kc, *vc;           /* with it, the GEMVs took 14-26 registers more (passed by value) */
    const int32_t *blocks, *row_seq;
    int32_t n_layers, layer, bs, stride;
} ampr__tail;

/* At the end of a matmul kernel whose blocks write y [n][dim] (each row
 * whole, by one block): the last block to finish, counted in t.cnt, does
 * the tail and sets the count back to 0 (graph-safe). Every thread of every
 * block must call it. Not inlined: inlined, the addition alone raised the
 * INT8 one-token GEMV from 56 to 64-74 registers (3 blocks an SM where 4
 * fit), switch on or off. */
static __device__ __noinline__ void ampr__tail_last(ampr__tail t, float *y, int32_t n, int32_t dim) {
    __shared__ int last;
    __shared__ float red[32];
    __threadfence(); /* this block's rows of y, visible before it is counted */
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(t.cnt, 1) == (int)(gridDim.x * gridDim.y * gridDim.z) - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    if (t.kind == AMPR__TAIL_ADDNORM) {
        for (int32_t i = 0; i < n; i++)
            ampr__add_rmsnorm_row<0>(t.r + (size_t)i * dim, y + (size_t)i * dim, t.w, y + (size_t)i * dim, dim,
                                  t.eps, red);
    } else {
        size_t total = (size_t)n * (size_t)(t.nq + 2 * t.nkv) * (size_t)(t.hd / 2);
        for (size_t e = threadIdx.x; e < total; e += blockDim.x) {
            if (t.kv_f16)
                ampr__rope_kv_item<__half>(e, y, dim, t.nq, t.nkv, t.hd, t.pos, t.cs, t.sn, t.interleaved, 1,
                                           (__half *)t.kc, (__half *)t.vc, t.blocks, t.n_layers, t.layer,
                                           t.bs, t.row_seq, t.stride);
            else
                ampr__rope_kv_item<float>(e, y, dim, t.nq, t.nkv, t.hd, t.pos, t.cs, t.sn, t.interleaved, 1,
                                          (float *)t.kc, (float *)t.vc, t.blocks, t.n_layers, t.layer, t.bs,
                                          t.row_seq, t.stride);
        }
    }
    if (threadIdx.x == 0) *t.cnt = 0;
}

/* v rounded to fp16, finite values saturated at +-65504 (no inf); a NaN
 * stays NaN (fminf / fmaxf alone would turn it into -65504, and a broken
 * activation into finite logits the fallback's check could not flag) */
__device__ __forceinline__ __half ampr__to_half_sat(float v) {
    return __float2half_rn(isnan(v) ? v : fminf(fmaxf(v, -65504.0f), 65504.0f));
}

/* two floats as one register of fp16 (lo in the low half), as ampr__to_half_sat */
__device__ __forceinline__ uint32_t ampr__half2_bits(float lo, float hi) {
    __half2 h = __halves2half2(ampr__to_half_sat(lo), ampr__to_half_sat(hi));
    uint32_t u;
    memcpy(&u, &h, sizeof u);
    return u;
}

/* ---- launches ----------------------------------------------------------------
 * Every kernel is launched by ampr__launch on the context's stream. With
 * c->sw[AMPR__CUDA_PDL] (programmatic dependent launch: Hopper and newer, AMPR_CUDA_PDL=1) a
 * launch may begin while the kernel before it in the stream is still running,
 * so each kernel's first global-memory access comes after ampr__pdl_wait(),
 * which returns once the previous kernel has completed and its writes are
 * visible (without PDL, or before sm_90, it does nothing). What a kernel does
 * before it (shared-memory tables from constants) overlaps the previous
 * kernel's tail; ampr__pdl_trigger() then lets the next kernel start its own
 * such prologue. The CPU emulation faults on a kernel launched this way whose
 * threads end without waiting. Passes of more than gemv_max tokens launch
 * without it (c->big_pass, cuda_forward.cu): on the H200 their kernels, early
 * resident and waiting, slowed prefill's large grids (by up to 20%). */
__device__ __forceinline__ void ampr__pdl_wait(void) {
#ifdef AMPR_CUDA_EMU
    ampr_emu_pdl_wait();
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void ampr__pdl_trigger(void) {
#if !defined(AMPR_CUDA_EMU) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
/* ampr__pdl_wait() then ampr__pdl_trigger(): the first line of most kernels */
#define AMPR__PDL_ENTER() (ampr__pdl_wait(), ampr__pdl_trigger())

/* Brings the 128-byte line holding p (global memory) into L2. A hint: no
 * value changes (L2 is where every write lands), so it may be issued for
 * memory the kernels before this one are still writing. The GEMVs use it for
 * their first weights before their PDL wait (AMPR__CUDA_PREFETCH); the CPU
 * emulation checks that p is in a device allocation. */
__device__ __forceinline__ void ampr__prefetch_l2(const void *p) {
#ifdef AMPR_CUDA_EMU
    ampr_emu_prefetch_l2(p);
#else
    asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
#endif
}

/* cp.async (sm_80 and newer): BYTES (4, 8 or 16; dst and src aligned to it)
 * from global src to shared dst without passing through registers, cached in
 * L1 and with L2 asked to fetch the whole 128-byte line (the next blocks of a
 * weight row are read soon after). ampr__cp_commit() closes the thread's
 * copies issued so far into a group, ampr__cp_wait<N>() returns once at most
 * the newest N groups are still in flight: the copies of the older ones are
 * then visible to this thread (to others after a barrier). The emulation
 * queues the copies and does them at that wait. */
template <int BYTES> __device__ __forceinline__ void ampr__cp_async(void *dst, const void *src) {
#ifdef AMPR_CUDA_EMU
    ampr_emu_cp_async(dst, src, BYTES);
#else
    unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.ca.shared.global.L2::128B [%0], [%1], %2;\n" ::"r"(d), "l"(src), "n"(BYTES)
                 : "memory");
#endif
}
__device__ __forceinline__ void ampr__cp_commit(void) {
#ifdef AMPR_CUDA_EMU
    ampr_emu_cp_commit();
#else
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
template <int N> __device__ __forceinline__ void ampr__cp_wait(void) {
#ifdef AMPR_CUDA_EMU
    ampr_emu_cp_wait(N);
#else
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

/* The block's threads prefetch, of each of nrows ranges, the bytes [0, bytes)
 * from start(i) (a const void *): a line a thread at a time. A block's share
 * is small (nrows * lines < 2^31): 32-bit indices, whose division nvcc
 * inlines (a 64-bit one is a call, and cost the INT8 GEMV a stack frame). */
template <typename StartFn>
__device__ __forceinline__ void ampr__prefetch_rows(int64_t nrows, size_t bytes, StartFn start) {
    int lines = (int)((bytes + 127) / 128), total = (int)nrows * lines;
    for (int e = (int)threadIdx.x; e < total; e += (int)blockDim.x)
        ampr__prefetch_l2((const uint8_t *)start(e / lines) + (size_t)(e % lines) * 128);
}

template <typename... P, typename... A>
static inline void ampr__launch(ampr__cuda *c, const char *name, void (*k)(P...), dim3 grid,
                                dim3 block, size_t smem, A... a) {
    if (c->probe[0] && strstr(name, c->probe)) { /* the GPU check's probe: left out, or once more first */
        c->probe_launches++;
        if (!c->probe_times) return;
        char keep = c->probe[0];
        c->probe[0] = 0;
        ampr__launch(c, name, k, grid, block, smem, a...);
        c->probe[0] = keep;
    }
#ifdef AMPR_CUDA_EMU
    ::ampr_emu::config cfg = ampr_emu_cfg(grid, block, smem, c->stream);
    cfg.pdl = c->sw[AMPR__CUDA_PDL] && !c->big_pass;
    ampr_emu_launch(k, name, cfg, a...);
#else
    (void)name;
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = c->stream;
    cfg.attrs = at;
    cfg.numAttrs = c->sw[AMPR__CUDA_PDL] && !c->big_pass ? 1 : 0;
    (void)cudaLaunchKernelEx(&cfg, k, static_cast<P>(a)...); /* AMPR__CU_LAUNCHED reads the error */
#endif
}

/* Blocks for a grid-stride kernel over n elements, block threads each: one per
 * block of elements, at most 65535*8 (the loops stride over the rest). */
static inline unsigned ampr__cuda_grid(size_t n, unsigned block) {
    size_t g = (n + block - 1) / block;
    if (g > 65535u * 8u) g = 65535u * 8u;
    return (unsigned)(g ? g : 1);
}

/* Free a plan's descriptors (those that exist) and mark it unused. */
void ampr__cuda_plan_destroy(ampr__cuda_plan *p);
/* Is the context's stream being captured into a graph right now? */
int ampr__cuda_capturing(ampr__cuda *c);

#endif
