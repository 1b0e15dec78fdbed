/*
 * cuda_emu.h -- runs the CUDA backend's own sources on the CPU, for checking
 * their logic on machines without a GPU (`make check-emu`, tests/emu/README.md).
 *
 * The sources in cuda/ are compiled by the host C++ compiler after
 * tests/emu/lower.py has turned `kernel<<<grid, block, smem, stream>>>(args)`
 * into `ampr_emu_launch(kernel, "kernel", ampr_emu_cfg(grid, block, smem,
 * stream), args)` and `extern __shared__ T name[]` into a pointer to the
 * launch's dynamic shared memory. tests/emu/include/ holds cuda_runtime.h,
 * cuda_fp16.h, cublasLt.h and nccl.h, which include this file instead of the
 * toolkit's.
 *
 * The model: every launch runs to completion when it is issued, on the calling
 * thread, block after block; a block's threads are fibers (one stack each) that
 * run in turn until they reach __syncthreads or a warp collective (shuffle,
 * ballot, match, __syncwarp). A barrier releases when every thread that has not
 * exited has reached it; a warp collective when every lane its mask names has,
 * and naming a lane that has exited, or a collective no lane pair agrees on, is
 * reported as a fault of the launch (the GPU's behaviour would be undefined).
 * `__shared__` variables are per-OS-thread statics, so a block's fibers share
 * them. Streams, events and graphs keep their order (graphs record and replay
 * launches and copies); cuBLASLt's matmul and NCCL's all-reduce are plain loops.
 *
 * What this checks: indexing, synchronization (AMPR_EMU_ORDER=reverse runs the
 * fibers of a block and the blocks of a grid in the other order, so a read
 * that is not ordered after its write by a barrier sees another value), launch
 * configurations (grid and block limits, dynamic shared memory over 48 KiB
 * without the opt-in), device pointers handed to copies (they must lie in one
 * allocation), reads past the end of a device allocation (each ends at a guard
 * page) and uninitialized device memory (filled with 0xff bytes: NaN floats).
 * Not checked: speed, the memory model of real hardware, approximate
 * intrinsics (__expf and friends are the libm functions here).
 */
#ifndef AMPR_CUDA_EMU_H
#define AMPR_CUDA_EMU_H

#ifndef __cplusplus
#error "cuda_emu.h is C++"
#endif

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <functional>
#include <memory>
#include <tuple>
#include <type_traits>
#include <utility>

#define AMPR_CUDA_EMU 1
#define CUDART_VERSION 12000

/* ---- the language ----------------------------------------------------------------- */

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __shared__ static thread_local
#define __constant__ static
#define __align__(n) __attribute__((aligned(n)))
#define __managed__ static

struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
    unsigned x, y, z;
};

struct __attribute__((aligned(8))) float2 { float x, y; };
struct __attribute__((aligned(16))) float4 { float x, y, z, w; };
struct __attribute__((aligned(8))) int2 { int x, y; };
struct __attribute__((aligned(16))) int4 { int x, y, z, w; };
struct __attribute__((aligned(8))) uint2 { unsigned x, y; };
struct __attribute__((aligned(16))) uint4 { unsigned x, y, z, w; };
struct __attribute__((aligned(4))) char4 { signed char x, y, z, w; };
struct __attribute__((aligned(4))) uchar4 { unsigned char x, y, z, w; };
struct __attribute__((aligned(4))) short2 { short x, y; };
struct __attribute__((aligned(4))) ushort2 { unsigned short x, y; };
struct __attribute__((aligned(16))) double2 { double x, y; };
static inline float2 make_float2(float x, float y) { return {x, y}; }
static inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
static inline int2 make_int2(int x, int y) { return {x, y}; }
static inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }
static inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
static inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) {
    return {x, y, z, w};
}
static inline char4 make_char4(signed char x, signed char y, signed char z, signed char w) {
    return {x, y, z, w};
}

namespace ampr_emu {

/* One GPU thread: a fiber. */
struct fiber {
    void *sp = nullptr;      /* saved stack pointer while switched out */
    uint3 tid{0, 0, 0};
    unsigned lin = 0;        /* linear index in the block */
    int state = 0;           /* 0 ready, 1 waiting, 2 exited */
    bool pdl_waited = false; /* called ampr_emu_pdl_wait (griddepcontrol.wait) */
    /* cp.async copies issued and not yet complete (ampr_emu_cp_async), each
     * with the group it is committed to: they are done at the
     * cp.async.wait_group that covers their group, so a read of the
     * destination before that sees the old bytes */
    struct cp_op {
        void *dst;
        const void *src;
        unsigned bytes, group;
    } cp[64];
    unsigned cp_n = 0, cp_groups = 0; /* copies pending, groups committed */
    uint64_t in[12];         /* a collective's inputs */
    uint64_t out[4];         /* and outputs */
};

/* The launch being run on this OS thread. */
/* (blockIdx, blockDim and gridDim are the globals below) */
struct launch_state {
    void *dyn_smem = nullptr;
    bool pdl = false;       /* launched with programmatic dependent launch */
    size_t static_smem = 0; /* bytes of the __shared__ declarations the block reached */
};

inline thread_local fiber *g_cur = nullptr;
inline thread_local launch_state *g_launch = nullptr;
inline thread_local uint64_t g_block_gen = 0; /* counts the blocks run on this thread */

/* collectives (cuda_emu.cc) */
enum coll_op { C_SHFL, C_XOR, C_DOWN, C_UP, C_BALLOT, C_ANY, C_ALL, C_MATCH, C_SYNCWARP, C_MMA16816 };
void warp_collective(coll_op op, unsigned mask, int width);
int block_barrier(int pred, int kind); /* kind 0 plain, 1 or, 2 and, 3 count */
void fault(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
/* prefetch.global.L2 of p: faults unless p is in a device allocation, and
 * counts it (prefetches()) */
void prefetch(const void *p);
unsigned long prefetches(void);
/* cp.async of bytes (4, 8 or 16) from src (device memory, the whole range in
 * one allocation, aligned to bytes) to dst (aligned to bytes): queued on the
 * thread; cp_commit closes the group; cp_wait(n) does the copies of all but
 * the newest n groups (cuda_emu.cc) */
void cp_async(void *dst, const void *src, unsigned bytes);
void cp_commit(void);
void cp_wait(unsigned n);
/* kernels run so far (launches and graph replays; a test's way to see that a
 * fused path launched one kernel where the other launches two) */
unsigned long kernels_run(void);

struct config {
    dim3 grid, block;
    size_t smem;
    void *stream;
    bool pdl; /* programmatic dependent launch: its threads must call ampr_emu_pdl_wait */
};

/* runs (or records, on a capturing stream) a launch; its cudaError_t */
int launch(const char *name, const void *fn, const config &c, std::function<void()> body);

} // namespace ampr_emu

/* The built-in variables: set by the scheduler before it switches to a fiber
 * (threadIdx) and before each block (the others). */
inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;
static constexpr int warpSize = 32;

static inline void *ampr_emu_dyn_smem(void) { return ::ampr_emu::g_launch->dyn_smem; }

/* A `__shared__` declaration (lower.py): storage of its own per call site (Tag is
 * a lambda's type) and OS thread, filled with 0xff bytes by the first thread of
 * each block that reaches it, so that a read before any write gives NaN floats
 * and all-ones integers, as shared memory holds garbage on a GPU. */
template <typename X, typename Tag> static inline X &ampr_emu_shared(Tag) {
    alignas(16) static thread_local unsigned char buf[sizeof(X)];
    static thread_local uint64_t gen = 0;
    if (gen != ::ampr_emu::g_block_gen) {
        memset(buf, 0xff, sizeof buf);
        gen = ::ampr_emu::g_block_gen;
        ::ampr_emu::g_launch->static_smem += sizeof(X);
    }
    return *reinterpret_cast<X *>(buf);
}

/* __launch_bounds__(n[, min blocks[, max cluster]]) (lower.py puts this first in
 * the kernel's body): a GPU refuses a launch with more threads a block than n */
static inline void ampr_emu_bounds(long n, long = 0, long = 0) {
    long t = (long)blockDim.x * blockDim.y * blockDim.z;
    if (t > n) ::ampr_emu::fault("a block of %ld threads, over the kernel's __launch_bounds__(%ld)", t, n);
}

/* ---- barriers and warp collectives ------------------------------------------------ */

static inline void __syncthreads(void) { (void)::ampr_emu::block_barrier(0, 0); }
static inline int __syncthreads_or(int p) { return ::ampr_emu::block_barrier(p != 0, 1); }
static inline int __syncthreads_and(int p) { return ::ampr_emu::block_barrier(p != 0, 2); }
static inline int __syncthreads_count(int p) { return ::ampr_emu::block_barrier(p != 0, 3); }
static inline void __syncwarp(unsigned mask = 0xffffffffu) {
    ::ampr_emu::warp_collective(::ampr_emu::C_SYNCWARP, mask, 32);
}
static inline void __threadfence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline void __threadfence_block(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

template <typename T> static inline uint64_t ampr_emu_bits(T v) {
    static_assert(sizeof(T) <= 8, "shuffle of a value over 8 bytes");
    uint64_t u = 0;
    memcpy(&u, &v, sizeof v);
    return u;
}
template <typename T> static inline T ampr_emu_from_bits(uint64_t u) {
    T v;
    memcpy(&v, &u, sizeof v);
    return v;
}
template <typename T>
static inline T ampr_emu_shfl(::ampr_emu::coll_op op, unsigned mask, T v, int arg, int width) {
    ::ampr_emu::fiber *f = ::ampr_emu::g_cur;
    f->in[0] = ampr_emu_bits(v);
    f->in[1] = (uint64_t)(int64_t)arg;
    ::ampr_emu::warp_collective(op, mask, width);
    return ampr_emu_from_bits<T>(f->out[0]);
}
template <typename T> static inline T __shfl_sync(unsigned m, T v, int src, int w = 32) {
    return ampr_emu_shfl(::ampr_emu::C_SHFL, m, v, src, w);
}
template <typename T> static inline T __shfl_xor_sync(unsigned m, T v, int lm, int w = 32) {
    return ampr_emu_shfl(::ampr_emu::C_XOR, m, v, lm, w);
}
template <typename T> static inline T __shfl_down_sync(unsigned m, T v, unsigned d, int w = 32) {
    return ampr_emu_shfl(::ampr_emu::C_DOWN, m, v, (int)d, w);
}
template <typename T> static inline T __shfl_up_sync(unsigned m, T v, unsigned d, int w = 32) {
    return ampr_emu_shfl(::ampr_emu::C_UP, m, v, (int)d, w);
}
static inline unsigned ampr_emu_vote(::ampr_emu::coll_op op, unsigned mask, uint64_t v) {
    ::ampr_emu::fiber *f = ::ampr_emu::g_cur;
    f->in[0] = v;
    ::ampr_emu::warp_collective(op, mask, 32);
    return (unsigned)f->out[0];
}
static inline unsigned __ballot_sync(unsigned m, int p) {
    return ampr_emu_vote(::ampr_emu::C_BALLOT, m, p != 0);
}
static inline int __any_sync(unsigned m, int p) {
    return (int)ampr_emu_vote(::ampr_emu::C_ANY, m, p != 0);
}
static inline int __all_sync(unsigned m, int p) {
    return (int)ampr_emu_vote(::ampr_emu::C_ALL, m, p != 0);
}
template <typename T> static inline unsigned __match_any_sync(unsigned m, T v) {
    return ampr_emu_vote(::ampr_emu::C_MATCH, m, ampr_emu_bits(v));
}
static inline unsigned __activemask(void) { return 0xffffffffu; }

/* griddepcontrol.wait: launches run one after another here, so the previous
 * kernel is always complete; what is checked is that a kernel launched with
 * programmatic dependent launch calls it in every thread (cuda_emu.cc) */
static inline void ampr_emu_pdl_wait(void) { ::ampr_emu::g_cur->pdl_waited = true; }
/* prefetch.global.L2: a hint that changes no value; here the address is
 * checked (on a GPU a prefetch of unmapped memory is not promised to be
 * harmless) and counted */
static inline void ampr_emu_prefetch_l2(const void *p) { ::ampr_emu::prefetch(p); }
/* cp.async.ca.shared.global, cp.async.commit_group, cp.async.wait_group */
static inline void ampr_emu_cp_async(void *dst, const void *src, unsigned bytes) {
    ::ampr_emu::cp_async(dst, src, bytes);
}
static inline void ampr_emu_cp_commit(void) { ::ampr_emu::cp_commit(); }
static inline void ampr_emu_cp_wait(unsigned n) { ::ampr_emu::cp_wait(n); }

/* mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 as the PTX ISA lays its
 * fragments out (a: 4 registers of fp16 pairs, b: 2, c/d: 4 floats a lane) */
static inline void ampr_emu_mma_16816(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                      uint32_t a3, uint32_t b0, uint32_t b1) {
    ::ampr_emu::fiber *f = ::ampr_emu::g_cur;
    f->in[0] = a0, f->in[1] = a1, f->in[2] = a2, f->in[3] = a3, f->in[4] = b0, f->in[5] = b1;
    for (int i = 0; i < 4; i++) f->in[6 + i] = ampr_emu_bits(d[i]);
    ::ampr_emu::warp_collective(::ampr_emu::C_MMA16816, 0xffffffffu, 32);
    for (int i = 0; i < 4; i++) {
        uint32_t u = (uint32_t)(f->out[i / 2] >> (32 * (i % 2)));
        memcpy(&d[i], &u, 4);
    }
}

/* ---- integer and float intrinsics --------------------------------------------------- */

static inline int __popc(unsigned x) { return __builtin_popcount(x); }
static inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
static inline int __ffs(int x) { return __builtin_ffs(x); }
static inline int __ffsll(long long x) { return __builtin_ffsll(x); }
static inline int __clz(int x) { return x ? __builtin_clz((unsigned)x) : 32; }
static inline int __clzll(long long x) { return x ? __builtin_clzll((unsigned long long)x) : 64; }
static inline unsigned __brev(unsigned x) {
    unsigned r = 0;
    for (int i = 0; i < 32; i++) r |= ((x >> i) & 1u) << (31 - i);
    return r;
}
static inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
    uint64_t v = ((uint64_t)y << 32) | x;
    unsigned r = 0;
    for (int i = 0; i < 4; i++) r |= (unsigned)((v >> (8 * ((s >> (4 * i)) & 7u))) & 0xffu) << (8 * i);
    return r;
}
static inline int __dp4a(int a, int b, int c) {
    for (int i = 0; i < 4; i++) c += (int)(int8_t)(a >> (8 * i)) * (int)(int8_t)(b >> (8 * i));
    return c;
}
static inline unsigned __dp4a(unsigned a, unsigned b, unsigned c) {
    for (int i = 0; i < 4; i++) c += ((a >> (8 * i)) & 0xffu) * ((b >> (8 * i)) & 0xffu);
    return c;
}
static inline int __dp4a(char4 a, char4 b, int c) {
    int ia, ib;
    memcpy(&ia, &a, 4);
    memcpy(&ib, &b, 4);
    return __dp4a(ia, ib, c);
}
static inline int __mul24(int a, int b) { return a * b; }
static inline int __mulhi(int a, int b) { return (int)(((int64_t)a * b) >> 32); }
static inline unsigned __umulhi(unsigned a, unsigned b) {
    return (unsigned)(((uint64_t)a * b) >> 32);
}

static inline float __int_as_float(int x) { return ampr_emu_from_bits<float>((uint32_t)x); }
static inline int __float_as_int(float x) { return (int)(uint32_t)ampr_emu_bits(x); }
static inline float __uint_as_float(unsigned x) { return ampr_emu_from_bits<float>(x); }
static inline unsigned __float_as_uint(float x) { return (uint32_t)ampr_emu_bits(x); }
static inline double __longlong_as_double(long long x) { return ampr_emu_from_bits<double>((uint64_t)x); }
static inline long long __double_as_longlong(double x) { return (long long)ampr_emu_bits(x); }

/* correctly rounded IEEE operations: what the host's do (no contraction here:
 * the emulated files are compiled with -ffp-contract=off) */
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
static inline float __frcp_rn(float a) { return 1.0f / a; }
static inline float __fsqrt_rn(float a) { return sqrtf(a); }
static inline double __dadd_rn(double a, double b) { return a + b; }
static inline double __dmul_rn(double a, double b) { return a * b; }
static inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }
static inline float __double2float_rn(double a) { return (float)a; }
static inline int __float2int_rn(float a) { return (int)nearbyintf(a); }
static inline int __float2int_rz(float a) { return (int)a; }
static inline int __float2int_rd(float a) { return (int)floorf(a); }
static inline int __float2int_ru(float a) { return (int)ceilf(a); }
static inline unsigned __float2uint_rn(float a) { return (unsigned)nearbyintf(a); }
static inline float __int2float_rn(int a) { return (float)a; }
/* approximate on the GPU; the libm functions here (macros: glibc declares
 * these names itself) */
#define __expf expf
#define __logf logf
#define __log2f log2f
#define __powf powf
#define __sinf sinf
#define __cosf cosf
static inline float __fdividef(float a, float b) { return a / b; }
static inline float __saturatef(float a) { return a < 0.0f ? 0.0f : (a > 1.0f ? 1.0f : a); }
static inline float rsqrtf(float a) { return 1.0f / sqrtf(a); }
static inline double rsqrt(double a) { return 1.0 / sqrt(a); }

static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }
static inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
static inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
static inline unsigned min(int a, unsigned b) { return min((unsigned)a, b); }
static inline unsigned min(unsigned a, int b) { return min(a, (unsigned)b); }
static inline unsigned max(int a, unsigned b) { return max((unsigned)a, b); }
static inline unsigned max(unsigned a, int b) { return max(a, (unsigned)b); }
static inline long long min(long long a, long long b) { return a < b ? a : b; }
static inline long long max(long long a, long long b) { return a > b ? a : b; }
static inline long min(long a, long b) { return a < b ? a : b; }
static inline long max(long a, long b) { return a > b ? a : b; }
static inline unsigned long min(unsigned long a, unsigned long b) { return a < b ? a : b; }
static inline unsigned long max(unsigned long a, unsigned long b) { return a > b ? a : b; }
static inline unsigned long long min(unsigned long long a, unsigned long long b) {
    return a < b ? a : b;
}
static inline unsigned long long max(unsigned long long a, unsigned long long b) {
    return a > b ? a : b;
}
static inline float min(float a, float b) { return fminf(a, b); }
static inline float max(float a, float b) { return fmaxf(a, b); }
static inline double min(double a, double b) { return fmin(a, b); }
static inline double max(double a, double b) { return fmax(a, b); }

template <typename T> static inline T __ldg(const T *p) { return *p; }
template <typename T> static inline T __ldcs(const T *p) { return *p; }
template <typename T> static inline T __ldcg(const T *p) { return *p; }
template <typename T> static inline T __ldlu(const T *p) { return *p; }
template <typename T> static inline void __stcs(T *p, T v) { *p = v; }
template <typename T> static inline void __stcg(T *p, T v) { *p = v; }

/* Atomics: a launch's blocks run on one OS thread, and two launches running at
 * once on two threads never share memory here, but keep them atomic anyway. */
template <typename T> static inline T ampr_emu_atomic_rmw(T *p, T v, int op) {
    T old = *p;
    for (;;) {
        T nv = op == 0 ? (T)(old + v) : op == 1 ? (v > old ? v : old) : op == 2 ? (v < old ? v : old) : v;
        if (__atomic_compare_exchange(p, &old, &nv, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
            return old;
    }
}
template <typename T> static inline T atomicAdd(T *p, T v) { return ampr_emu_atomic_rmw(p, v, 0); }
template <typename T> static inline T atomicSub(T *p, T v) { return ampr_emu_atomic_rmw(p, (T)-v, 0); }
template <typename T> static inline T atomicMax(T *p, T v) { return ampr_emu_atomic_rmw(p, v, 1); }
template <typename T> static inline T atomicMin(T *p, T v) { return ampr_emu_atomic_rmw(p, v, 2); }
template <typename T> static inline T atomicExch(T *p, T v) { return ampr_emu_atomic_rmw(p, v, 3); }
template <typename T> static inline T atomicCAS(T *p, T cmp, T v) {
    __atomic_compare_exchange(p, &cmp, &v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return cmp;
}
template <typename T> static inline T atomicOr(T *p, T v) { return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST); }
template <typename T> static inline T atomicAnd(T *p, T v) { return __atomic_fetch_and(p, v, __ATOMIC_SEQ_CST); }

static inline long long clock64(void) { return (long long)__builtin_ia32_rdtsc(); }
static inline void __nanosleep(unsigned) {}

/* ---- launching ---------------------------------------------------------------------- */

static inline ::ampr_emu::config ampr_emu_cfg(dim3 grid, dim3 block, size_t smem = 0,
                                             const void *stream = nullptr) {
    return ::ampr_emu::config{grid, block, smem, const_cast<void *>(stream), false};
}

/* The arguments are converted to the kernel's parameter types once, as the
 * GPU's launch copies them; each thread calls the kernel with its own copy. */
template <typename... P, typename... A>
static inline int ampr_emu_launch(void (*k)(P...), const char *name, const ::ampr_emu::config &c,
                                  A &&...a) {
    auto args = std::make_shared<std::tuple<std::decay_t<P>...>>(std::forward<A>(a)...);
    return ::ampr_emu::launch(name, (const void *)k, c, [k, args]() { std::apply(k, *args); });
}

#endif /* AMPR_CUDA_EMU_H */
