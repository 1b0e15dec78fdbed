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
    int sw[AMPR__CUDA_N_SWITCHES]; /* the kernel switches (ampr_cuda.h), 0 or 1 */
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
 * threads end without waiting. */
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

template <typename... P, typename... A>
static inline void ampr__launch(const ampr__cuda *c, const char *name, void (*k)(P...), dim3 grid,
                                dim3 block, size_t smem, A... a) {
#ifdef AMPR_CUDA_EMU
    ::ampr_emu::config cfg = ampr_emu_cfg(grid, block, smem, c->stream);
    cfg.pdl = c->sw[AMPR__CUDA_PDL] != 0;
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
    cfg.numAttrs = c->sw[AMPR__CUDA_PDL] ? 1 : 0;
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
