/*
 * cuda_emu.cc -- the CPU emulation of the CUDA runtime, cuBLASLt and NCCL that
 * tests/emu/cuda_emu.h describes: fibers for a block's threads, barriers and
 * warp collectives between them, device memory with guard pages, streams,
 * events and graphs in issue order, a loop matmul, and an all-reduce between one
 * process's communicators or, through shared memory, between processes.
 *
 * Environment:
 *   AMPR_EMU_DEVICES=N   emulated GPUs (default 1; 0: none, as without a driver)
 *   AMPR_EMU_SMS=N       multiprocessors each reports (default 4)
 *   AMPR_EMU_ORDER=reverse  run a block's threads, and a grid's blocks, last first;
 *                        random: in an order drawn from AMPR_EMU_SEED (default 1)
 *   AMPR_EMU_MEM_MB=N    device memory each GPU has (default 16384)
 *   AMPR_EMU_ABORT=1     abort() at the first fault (for a debugger)
 *   AMPR_EMU_STACK_KB=N  stack of each GPU thread (default 64)
 *   AMPR_EMU_PROFILE=1   at exit, the kernels that took the most time, to stderr
 *   AMPR_EMU_FAIL_ALLOC=N  the Nth cudaMalloc of the process fails (out of memory), once
 *   AMPR_EMU_FAIL_HANDLE=N  the Nth creation of a stream, event, graph (instantiated),
 *                        cuBLASLt handle, descriptor, layout or preference, or NCCL
 *                        communicator fails, once
 *   AMPR_EMU_NCCL_EXIT_AT=N  the process ends (_exit(7)) at its Nth all-reduce over a
 *                        communicator across processes: a rank lost mid-run
 *   AMPR_EMU_NCCL_WAIT_MS=N  such an all-reduce gives up (ncclRemoteError, reported)
 *                        after waiting N ms for a rank (default: waits for ever, as
 *                        NCCL does; the library's tp_timeout_ms cannot run meanwhile)
 *   AMPR_EMU_REPORT=1    at exit, to stderr: how many cudaMalloc calls and handle
 *                        creations there were, and the device allocations and handles
 *                        still live (a leak once contexts are closed)
 * Faults (a deadlock, a collective whose lanes disagree, a bad launch or copy)
 * are printed to stderr with the kernel, block and thread, and the call (or the
 * next synchronization) returns an error, as on a GPU.
 */
#include "include/cublasLt.h"
#include "include/cuda_runtime.h"
#include "include/nccl.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <map>
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
/* fiber stacks given back to the system must not keep ASan's poisoned redzones:
 * the addresses come back as device memory */
#define EMU_UNPOISON(p, n) __asan_unpoison_memory_region((p), (n))
#else
#define EMU_UNPOISON(p, n) ((void)0)
#endif
#include <mutex>
#include <string>
#include <vector>

/* ---- fibers ----------------------------------------------------------------------- */

/* ampr_emu_switch(save, to): push the callee-saved registers, store the stack
 * pointer in *save, load `to`, pop and return into the other fiber. */
extern "C" void ampr_emu_switch(void **save, void *to);
__asm__(".text\n"
        ".globl ampr_emu_switch\n"
        ".hidden ampr_emu_switch\n"
        ".type ampr_emu_switch,@function\n"
        "ampr_emu_switch:\n"
        "    pushq %rbp\n"
        "    pushq %rbx\n"
        "    pushq %r12\n"
        "    pushq %r13\n"
        "    pushq %r14\n"
        "    pushq %r15\n"
        "    movq %rsp, (%rdi)\n"
        "    movq %rsi, %rsp\n"
        "    popq %r15\n"
        "    popq %r14\n"
        "    popq %r13\n"
        "    popq %r12\n"
        "    popq %rbx\n"
        "    popq %rbp\n"
        "    ret\n"
        ".size ampr_emu_switch,.-ampr_emu_switch\n");

namespace ampr_emu {

static int env_int(const char *name, int def) {
    const char *s = getenv(name);
    return s && *s ? atoi(s) : def;
}
/* AMPR_EMU_ORDER: forward (0), reverse (1) or random (2, AMPR_EMU_SEED) */
static int g_order = [] {
    const char *s = getenv("AMPR_EMU_ORDER");
    return !s ? 0 : !strcmp(s, "reverse") ? 1 : !strcmp(s, "random") ? 2 : 0;
}();
static const bool g_reverse = g_order == 1;
static thread_local uint64_t g_rng = 0;
static uint64_t rnd(void) { /* xorshift64*, seeded per OS thread */
    if (!g_rng) g_rng = 0x9e3779b97f4a7c15ull * (uint64_t)(env_int("AMPR_EMU_SEED", 1) | 1);
    g_rng ^= g_rng >> 12, g_rng ^= g_rng << 25, g_rng ^= g_rng >> 27;
    return g_rng * 0x2545f4914f6cdd1dull;
}

struct block_run;
static thread_local block_run *g_block = nullptr;
static thread_local const char *g_kernel = "?";

struct group {
    bool used;
    unsigned mask, arrived;
    coll_op op;
    int width;
};

struct block_run {
    std::vector<fiber> *f = nullptr;
    unsigned n = 0, live = 0;
    unsigned bar_arrived = 0, bar_acc = 0;
    int bar_kind = 0;
    std::vector<unsigned> exited; /* per warp: lanes that have exited */
    std::vector<group> groups;    /* per warp: 4 pending collectives */
    void *sched_sp = nullptr;
    const std::function<void()> *body = nullptr;
    bool aborted = false;
    std::string msg;
};

static const char *op_name(coll_op op) {
    static const char *n[] = {"__shfl_sync", "__shfl_xor_sync", "__shfl_down_sync", "__shfl_up_sync",
                              "__ballot_sync", "__any_sync", "__all_sync", "__match_any_sync",
                              "__syncwarp", "mma.sync m16n8k16"};
    return n[op];
}

/* A fault inside a GPU thread: the block stops, the launch fails. */
void fault(const char *fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    block_run *b = g_block;
    fiber *f = g_cur;
    if (!b || !f) {
        fprintf(stderr, "ampr-emu: %s\n", buf);
        abort();
    }
    b->msg = buf;
    b->aborted = true;
    for (;;) ampr_emu_switch(&f->sp, b->sched_sp);
}

/* The fiber that runs next: the first ready one after the current in the
 * block's order (round robin), or the scheduler when none is. */
static void *next_sp(void) {
    block_run *b = g_block;
    unsigned n = b->n, i = g_cur->lin;
    fiber *fs = b->f->data();
    if (g_order == 2) i = (unsigned)(rnd() % n); /* random: the first ready one after a random thread */
    for (unsigned k = 1; k <= n; k++) {
        unsigned j = g_reverse ? (i + n - k) % n : (i + k) % n;
        if (fs[j].state == 0) {
            g_cur = &fs[j];
            threadIdx = fs[j].tid;
            return fs[j].sp;
        }
    }
    return b->sched_sp;
}

static void yield_fiber(void) {
    fiber *f = g_cur;
    ampr_emu_switch(&f->sp, next_sp());
}

static void release_barrier(block_run *b) {
    for (unsigned i = 0; i < b->n; i++) {
        fiber &t = (*b->f)[i];
        if (t.state == 1 && t.out[3] == 1) { /* out[3] 1: waits at the block barrier */
            t.state = 0;
            t.out[3] = 0;
            t.out[0] = b->bar_acc;
        }
    }
    b->bar_arrived = 0;
}

int block_barrier(int pred, int kind) {
    block_run *b = g_block;
    fiber *f = g_cur;
    if (b->bar_arrived == 0) {
        b->bar_kind = kind;
        b->bar_acc = kind == 2 ? 1u : 0u;
    } else if (b->bar_kind != kind) {
        fault("threads of the block meet at different barriers (__syncthreads%s and __syncthreads%s)",
              kind == 1 ? "_or" : kind == 2 ? "_and" : kind == 3 ? "_count" : "",
              b->bar_kind == 1 ? "_or" : b->bar_kind == 2 ? "_and" : b->bar_kind == 3 ? "_count" : "");
    }
    if (kind == 1) b->bar_acc |= (unsigned)pred;
    else if (kind == 2) b->bar_acc &= (unsigned)pred;
    else if (kind == 3) b->bar_acc += (unsigned)pred;
    b->bar_arrived++;
    f->state = 1;
    f->out[3] = 1;
    if (b->bar_arrived == b->live) release_barrier(b);
    else yield_fiber();
    return (int)f->out[0];
}

static uint32_t lo_half_bits(uint64_t reg, int hi) { return (uint32_t)(reg >> (hi ? 16 : 0)) & 0xffffu; }

static void complete(block_run *b, unsigned w, group &g) {
    fiber *lanes = &(*b->f)[w * 32];
    unsigned mask = g.mask;
    int width = g.width;
    if (g.op == C_MMA16816) {
        /* A 16x16 (row), B 16x8 (col), C/D 16x8 f32, the PTX ISA's fragments */
        float A[16][16], B[16][8], C[16][8];
        for (int l = 0; l < 32; l++) {
            int gid = l >> 2, t = l & 3;
            const uint64_t *in = lanes[l].in;
            for (int r = 0; r < 4; r++) {
                int row = gid + (r & 1 ? 8 : 0), col = t * 2 + (r & 2 ? 8 : 0);
                A[row][col] = ampr_emu_h2f((unsigned short)lo_half_bits(in[r], 0));
                A[row][col + 1] = ampr_emu_h2f((unsigned short)lo_half_bits(in[r], 1));
            }
            for (int r = 0; r < 2; r++) {
                int k = t * 2 + (r ? 8 : 0);
                B[k][gid] = ampr_emu_h2f((unsigned short)lo_half_bits(in[4 + r], 0));
                B[k + 1][gid] = ampr_emu_h2f((unsigned short)lo_half_bits(in[4 + r], 1));
            }
            for (int r = 0; r < 4; r++) {
                int row = gid + (r & 2 ? 8 : 0), col = t * 2 + (r & 1);
                C[row][col] = ampr_emu_from_bits<float>(in[6 + r]);
            }
        }
        for (int l = 0; l < 32; l++) {
            int gid = l >> 2, t = l & 3;
            float d[4];
            for (int r = 0; r < 4; r++) {
                int row = gid + (r & 2 ? 8 : 0), col = t * 2 + (r & 1);
                float s = C[row][col];
                for (int k = 0; k < 16; k++) s += A[row][k] * B[k][col];
                d[r] = s;
            }
            lanes[l].out[0] = ampr_emu_bits(d[0]) | (ampr_emu_bits(d[1]) << 32);
            lanes[l].out[1] = ampr_emu_bits(d[2]) | (ampr_emu_bits(d[3]) << 32);
        }
    } else if (g.op == C_BALLOT || g.op == C_ANY || g.op == C_ALL || g.op == C_MATCH) {
        unsigned votes = 0;
        for (int l = 0; l < 32; l++)
            if ((mask >> l & 1u) && lanes[l].in[0]) votes |= 1u << l;
        for (int l = 0; l < 32; l++) {
            if (!(mask >> l & 1u)) continue;
            uint64_t o = votes;
            if (g.op == C_ANY) o = votes != 0;
            if (g.op == C_ALL) o = votes == mask;
            if (g.op == C_MATCH) {
                unsigned m = 0;
                for (int k = 0; k < 32; k++)
                    if ((mask >> k & 1u) && lanes[k].in[0] == lanes[l].in[0]) m |= 1u << k;
                o = m;
            }
            lanes[l].out[0] = o;
        }
    } else if (g.op != C_SYNCWARP) {
        if (width <= 0 || width > 32 || (width & (width - 1)))
            fault("%s with width %d (a power of two up to 32)", op_name(g.op), width);
        for (int l = 0; l < 32; l++) {
            if (!(mask >> l & 1u)) continue;
            int base = l & ~(width - 1), arg = (int)(int64_t)lanes[l].in[1], src = l;
            if (g.op == C_SHFL) src = base + (arg & (width - 1));
            else if (g.op == C_XOR) src = ((l ^ arg) & ~(width - 1)) == base ? (l ^ arg) : l;
            else if (g.op == C_DOWN) src = l + arg < base + width ? l + arg : l;
            else if (g.op == C_UP) src = l - arg >= base ? l - arg : l;
            if (src < 0 || src > 31 || !(mask >> src & 1u))
                fault("%s: lane %d reads lane %d, which the mask %08x does not name", op_name(g.op), l,
                      src, mask);
            lanes[l].out[0] = lanes[src].in[0];
        }
    }
    for (int l = 0; l < 32; l++)
        if (mask >> l & 1u) lanes[l].state = 0;
    g.used = false;
}

void warp_collective(coll_op op, unsigned mask, int width) {
    block_run *b = g_block;
    fiber *f = g_cur;
    unsigned lane = f->lin & 31u, w = f->lin >> 5;
    unsigned n_in_warp = b->n - w * 32 < 32 ? b->n - w * 32 : 32;
    unsigned valid = n_in_warp == 32 ? 0xffffffffu : (1u << n_in_warp) - 1u;
    if (!(mask >> lane & 1u)) fault("%s by lane %u with mask %08x, which does not name it", op_name(op), lane, mask);
    if (mask & ~valid) fault("%s with mask %08x in a warp of %u threads", op_name(op), mask, n_in_warp);
    if (mask & b->exited[w]) fault("%s with mask %08x names lanes that have exited (%08x)", op_name(op), mask, b->exited[w] & mask);
    group *gs = &b->groups[w * 4], *g = nullptr;
    for (int i = 0; i < 4; i++) {
        if (!gs[i].used) continue;
        if (gs[i].mask == mask) g = &gs[i];
        else if (gs[i].mask & mask)
            fault("lanes of warp %u wait at collectives with overlapping masks %08x and %08x", w, gs[i].mask, mask);
    }
    if (!g) {
        for (int i = 0; i < 4 && !g; i++)
            if (!gs[i].used) g = &gs[i];
        if (!g) fault("more than 4 collectives pending in warp %u", w);
        *g = group{true, mask, 0, op, width};
    } else if (g->op != op || (op != C_SYNCWARP && g->width != width)) {
        fault("lanes of warp %u meet at different collectives: %s (width %d) and %s (width %d)", w,
              op_name(g->op), g->width, op_name(op), width);
    }
    g->arrived |= 1u << lane;
    f->state = 1;
    f->out[3] = 2;
    if (g->arrived == mask) complete(b, w, *g);
    else yield_fiber();
}

static void fiber_exit(block_run *b, fiber *f) {
    unsigned lane = f->lin & 31u, w = f->lin >> 5;
    if (g_launch && g_launch->pdl && !f->pdl_waited)
        fault("thread %u ends without ampr__pdl_wait (griddepcontrol.wait), launched with programmatic "
              "dependent launch: it may have run before the previous kernel finished", f->lin);
    if (f->cp_n)
        fault("thread %u ends with %u cp.async copies not waited for (cp.async.wait_group)", f->lin, f->cp_n);
    f->state = 2;
    b->live--;
    b->exited[w] |= 1u << lane;
    for (int i = 0; i < 4; i++) {
        group &g = b->groups[w * 4 + i];
        if (g.used && (g.mask >> lane & 1u))
            fault("lane %u exits while lanes %08x wait for it at %s", lane, g.arrived, op_name(g.op));
    }
    if (b->bar_arrived && b->bar_arrived == b->live) release_barrier(b);
}

static void fiber_entry(void) {
    block_run *b = g_block;
    (*b->body)();
    fiber *self = g_cur; /* before next_sp() moves g_cur on */
    fiber_exit(b, self);
    for (;;) ampr_emu_switch(&self->sp, next_sp()); /* never resumed */
}

/* Stacks: a mapping of `count` stacks, each below a guard page, per OS thread. */
struct stacks {
    char *base = nullptr, *alt = nullptr;
    size_t each = 0, count = 0;
    ~stacks() {
        if (base) EMU_UNPOISON(base, (each + 4096) * count), munmap(base, (each + 4096) * count);
        if (alt) {
            stack_t ss;
            memset(&ss, 0, sizeof ss);
            ss.ss_flags = SS_DISABLE;
            sigaltstack(&ss, nullptr);
            free(alt);
        }
    }
    char *top(size_t i) { return base + (each + 4096) * i + 4096 + each; }
    void need(size_t n) {
        if (n <= count) return;
        if (base) EMU_UNPOISON(base, (each + 4096) * count), munmap(base, (each + 4096) * count);
        each = (size_t)env_int("AMPR_EMU_STACK_KB", 64) * 1024;
        count = n;
        base = (char *)mmap(nullptr, (each + 4096) * n, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (base == MAP_FAILED) {
            perror("ampr-emu: mmap of fiber stacks");
            abort();
        }
        for (size_t i = 0; i < n; i++) mprotect(base + (each + 4096) * i, 4096, PROT_NONE);
        if (!alt) { /* where the fault handler runs when a fiber's stack overflowed */
            alt = (char *)malloc(65536);
            stack_t ss;
            memset(&ss, 0, sizeof ss);
            ss.ss_sp = alt;
            ss.ss_size = 65536;
            sigaltstack(&ss, nullptr);
        }
    }
};
static thread_local stacks g_stacks;
static thread_local std::vector<fiber> g_fibers;

/* Run one block; false (with b.msg) on a fault. */
static thread_local block_run g_br; /* reused: a launch runs thousands of blocks */

static bool run_block(const std::function<void()> &body, unsigned n, const dim3 &bd, std::string &msg) {
    block_run &b = g_br;
    g_block_gen++; /* static shared memory: each block starts it afresh */
    b.bar_arrived = b.bar_acc = 0;
    b.bar_kind = 0;
    b.aborted = false;
    if (g_fibers.size() < n) g_fibers.resize(n);
    g_stacks.need(n);
    b.f = &g_fibers;
    b.n = b.live = n;
    b.body = &body;
    b.exited.assign((n + 31) / 32, 0);
    b.groups.assign((n + 31) / 32 * 4, group{false, 0, 0, C_SYNCWARP, 0});
    for (unsigned i = 0; i < n; i++) {
        fiber &t = g_fibers[i];
        t.lin = i;
        t.tid = uint3{i % bd.x, (i / bd.x) % bd.y, i / (bd.x * bd.y)};
        t.state = 0;
        t.pdl_waited = false;
        t.cp_n = t.cp_groups = 0;
        t.out[3] = 0;
        void **sp = (void **)g_stacks.top(i);
        *--sp = nullptr;               /* the entry's return address slot: keeps the ABI alignment */
        *--sp = (void *)&fiber_entry;  /* where ampr_emu_switch returns to */
        for (int r = 0; r < 6; r++) *--sp = nullptr;
        t.sp = sp;
    }
    g_block = &b;
    while (b.live > 0 && !b.aborted) {
        /* the fibers hand over to each other; the scheduler starts the first
         * ready one and is back when none is */
        bool ran = false;
        for (unsigned k = 0; k < n && !ran; k++) {
            unsigned i = g_reverse ? n - 1 - k : k;
            fiber &t = g_fibers[i];
            if (t.state != 0) continue;
            g_cur = &t;
            threadIdx = t.tid;
            ampr_emu_switch(&b.sched_sp, t.sp);
            ran = true;
        }
        if (!ran && b.live > 0 && !b.aborted) {
            unsigned at_bar = 0, at_warp = 0;
            for (unsigned i = 0; i < n; i++) {
                if (g_fibers[i].state != 1) continue;
                if (g_fibers[i].out[3] == 1) at_bar++;
                else at_warp++;
            }
            char buf[256];
            snprintf(buf, sizeof buf,
                     "deadlock: %u of %u threads wait at __syncthreads, %u at warp collectives that "
                     "never complete", at_bar, b.live, at_warp);
            b.msg = buf;
            b.aborted = true;
        }
    }
    g_block = nullptr;
    g_cur = nullptr;
    if (b.aborted) {
        msg = b.msg;
        return false;
    }
    return true;
}

/* ---- devices, errors ---------------------------------------------------------------- */

static std::mutex g_mu;
static int g_devices = -1;
static size_t g_mem_limit;
static size_t g_mem_used[16];
static thread_local int g_device = 0;
static thread_local cudaError_t g_last = cudaSuccess;
static cudaError_t g_sticky = cudaSuccess;

static void on_fault_signal(int sig, siginfo_t *si, void *);

static void init(void) {
    std::lock_guard<std::mutex> l(g_mu);
    if (g_devices >= 0) return;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fault_signal;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESETHAND;
    sigaction(SIGSEGV, &sa, nullptr);
    sigaction(SIGBUS, &sa, nullptr);
    g_devices = env_int("AMPR_EMU_DEVICES", 1);
    if (g_devices > 16) g_devices = 16;
    g_mem_limit = (size_t)env_int("AMPR_EMU_MEM_MB", 16384) << 20;
}

static cudaError_t set_err(cudaError_t e) {
    if (e != cudaSuccess) g_last = e;
    return e;
}

void report(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void report(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "ampr-emu: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    if (env_int("AMPR_EMU_ABORT", 0)) abort();
}

/* ---- memory ------------------------------------------------------------------------- */

struct alloc {
    size_t bytes;
    char *map;
    size_t map_len;
    int device;
    bool host;
};
static std::map<uintptr_t, alloc> g_allocs;
static long g_malloc_calls = 0;
static long g_fail_at = -1; /* the cudaMalloc call that fails; -1: AMPR_EMU_FAIL_ALLOC not read yet */

/* handles: creations so far, the one that fails, and how many of each kind live */
enum { H_STREAM, H_EVENT, H_GRAPH, H_EXEC, H_LT, H_COMM, H_KINDS };
static const char *const k_handle_names[H_KINDS] = {"streams", "events", "graphs", "graph execs",
                                                     "cuBLASLt objects", "NCCL communicators"};
static long g_handle_calls = 0, g_fail_handle = -1, g_live[H_KINDS];

/* a creation of a `kind` handle: false when this one is to fail */
static bool handle_new(int kind) {
    std::lock_guard<std::mutex> l(g_mu);
    if (g_fail_handle < 0) g_fail_handle = env_int("AMPR_EMU_FAIL_HANDLE", 0);
    if (++g_handle_calls == g_fail_handle) return false;
    g_live[kind]++;
    return true;
}
static void handle_gone(int kind) {
    std::lock_guard<std::mutex> l(g_mu);
    g_live[kind]--;
}

/* AMPR_EMU_REPORT: at exit (destroyed before g_allocs, constructed after it) */
struct alloc_report {
    ~alloc_report() {
        if (!env_int("AMPR_EMU_REPORT", 0)) return;
        size_t live = 0, bytes = 0;
        for (auto &e : g_allocs)
            if (!e.second.host) live++, bytes += e.second.bytes;
        fprintf(stderr, "ampr-emu: %ld cudaMalloc calls; %zu device allocations (%zu bytes) live at exit\n",
                g_malloc_calls, live, bytes);
        long handles = 0;
        for (int k = 0; k < H_KINDS; k++) handles += g_live[k];
        fprintf(stderr, "ampr-emu: %ld handle creations; %ld handles live at exit", g_handle_calls, handles);
        for (int k = 0; k < H_KINDS; k++)
            if (g_live[k]) fprintf(stderr, ", %ld %s", g_live[k], k_handle_names[k]);
        fprintf(stderr, "\n");
    }
};
static alloc_report g_alloc_report;

/* The allocation holding [p, p + bytes), or none. */
static const alloc *find_alloc(const void *p, size_t bytes, uintptr_t *start) {
    std::lock_guard<std::mutex> l(g_mu);
    auto it = g_allocs.upper_bound((uintptr_t)p);
    if (it == g_allocs.begin()) return nullptr;
    --it;
    if ((uintptr_t)p < it->first || (uintptr_t)p + bytes > it->first + it->second.bytes) return nullptr;
    if (start) *start = it->first;
    return &it->second;
}

/* SIGSEGV or SIGBUS: name the kernel, block and thread, and the allocation
 * whose guard page the address is in, then die of the signal. */
static void on_fault_signal(int sig, siginfo_t *si, void *) {
    char buf[512];
    int n;
    uintptr_t a = (uintptr_t)si->si_addr;
    if (g_launch && g_cur)
        n = snprintf(buf, sizeof buf, "ampr-emu: %s at %p in %s, block (%u,%u,%u), thread (%u,%u,%u)",
                     sig == SIGSEGV ? "SIGSEGV" : "SIGBUS", si->si_addr, g_kernel, blockIdx.x, blockIdx.y,
                     blockIdx.z, threadIdx.x, threadIdx.y, threadIdx.z);
    else
        n = snprintf(buf, sizeof buf, "ampr-emu: %s at %p outside a kernel", sig == SIGSEGV ? "SIGSEGV" : "SIGBUS",
                     si->si_addr);
    if (g_mu.try_lock()) {
        for (auto &e : g_allocs) {
            uintptr_t end = (uintptr_t)e.second.map + e.second.map_len;
            if (a >= end - 4096 && a < end && n < (int)sizeof buf)
                n += snprintf(buf + n, sizeof buf - (size_t)n,
                              ": %zu bytes past the start of a %s allocation of %zu bytes at %p (its guard page)",
                              (size_t)(a - e.first), e.second.host ? "host" : "device", e.second.bytes,
                              (void *)e.first);
        }
        g_mu.unlock();
    }
    if (n > (int)sizeof buf - 2) n = (int)sizeof buf - 2;
    buf[n++] = '\n';
    if (write(2, buf, (size_t)n) < 0) {
    }
    raise(sig);
}

static cudaError_t do_alloc(void **p, size_t bytes, bool host) {
    init();
    *p = nullptr;
    if (!host && g_devices <= 0) return set_err(cudaErrorNoDevice);
    size_t page = 4096, len = ((bytes ? bytes : 1) + 255) & ~(size_t)255;
    size_t body = (len + page - 1) & ~(page - 1), map_len = body + page;
    {
        std::lock_guard<std::mutex> l(g_mu);
        if (!host) {
            if (g_fail_at < 0) g_fail_at = env_int("AMPR_EMU_FAIL_ALLOC", 0);
            if (++g_malloc_calls == g_fail_at) return set_err(cudaErrorMemoryAllocation);
            if (g_mem_used[g_device] + body > g_mem_limit) return set_err(cudaErrorMemoryAllocation);
            g_mem_used[g_device] += body;
        }
    }
    char *m = (char *)mmap(nullptr, map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) {
        std::lock_guard<std::mutex> l(g_mu);
        if (!host) g_mem_used[g_device] -= body;
        return set_err(cudaErrorMemoryAllocation);
    }
    mprotect(m + body, page, PROT_NONE);
    char *ptr = m + (body - len);
    memset(ptr, 0xff, len); /* uninitialized device memory reads as NaN */
    std::lock_guard<std::mutex> l(g_mu);
    g_allocs[(uintptr_t)ptr] = alloc{bytes, m, map_len, g_device, host};
    *p = ptr;
    return cudaSuccess;
}

static cudaError_t do_free(void *p, bool host) {
    if (!p) return cudaSuccess;
    std::lock_guard<std::mutex> l(g_mu);
    auto it = g_allocs.find((uintptr_t)p);
    if (it == g_allocs.end() || it->second.host != host) {
        report("%s(%p): not the start of a live %s allocation", host ? "cudaFreeHost" : "cudaFree", p,
               host ? "host" : "device");
        return set_err(cudaErrorInvalidValue);
    }
    if (!host) g_mem_used[it->second.device] -= it->second.map_len - 4096;
    munmap(it->second.map, it->second.map_len);
    g_allocs.erase(it);
    return cudaSuccess;
}

static bool is_device(const void *p) {
    const alloc *a = find_alloc(p, 1, nullptr);
    return a && !a->host;
}

static std::atomic<unsigned long> g_prefetches{0};
void prefetch(const void *p) {
    if (!is_device(p)) fault("prefetch of %p, which is not in a device allocation", p);
    g_prefetches++;
}
unsigned long prefetches(void) { return g_prefetches.load(); }

void cp_async(void *dst, const void *src, unsigned bytes) {
    fiber *f = g_cur;
    if (bytes != 4 && bytes != 8 && bytes != 16) fault("cp.async of %u bytes (4, 8 or 16)", bytes);
    if ((uintptr_t)dst % bytes || (uintptr_t)src % bytes)
        fault("cp.async of %u bytes from %p to %p: not aligned to its size", bytes, src, dst);
    const alloc *a = find_alloc(src, bytes, nullptr);
    if (!a || a->host) fault("cp.async from %p (%u bytes), which is not in one device allocation", src, bytes);
    if (f->cp_n == sizeof f->cp / sizeof f->cp[0]) fault("thread %u: more than %zu cp.async copies pending", f->lin,
                                                         sizeof f->cp / sizeof f->cp[0]);
    f->cp[f->cp_n++] = fiber::cp_op{dst, src, bytes, f->cp_groups};
}
void cp_commit(void) { g_cur->cp_groups++; }
void cp_wait(unsigned n) {
    fiber *f = g_cur;
    unsigned keep = 0;
    for (unsigned i = 0; i < f->cp_n; i++) {
        fiber::cp_op &op = f->cp[i];
        if (op.group + n < f->cp_groups) memcpy(op.dst, op.src, op.bytes); /* complete */
        else f->cp[keep++] = op; /* one of the newest n groups, or not committed */
    }
    f->cp_n = keep;
}

/* a copy's pointers: each that the kind names device memory must lie in one
 * device allocation, with all its bytes */
static cudaError_t check_copy(const char *what, void *dst, const void *src, size_t bytes, cudaMemcpyKind kind) {
    if (!bytes) return cudaSuccess;
    bool dd = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
    bool sd = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
    if (kind == cudaMemcpyDefault) {
        dd = is_device(dst);
        sd = is_device(src);
    }
    const alloc *a;
    if (dd && (!(a = find_alloc(dst, bytes, nullptr)) || a->host)) {
        report("%s: destination %p + %zu bytes is not inside one device allocation", what, dst, bytes);
        return set_err(cudaErrorInvalidValue);
    }
    if (sd && (!(a = find_alloc(src, bytes, nullptr)) || a->host)) {
        report("%s: source %p + %zu bytes is not inside one device allocation", what, src, bytes);
        return set_err(cudaErrorInvalidValue);
    }
    if (!dd && is_device(dst)) {
        report("%s: destination %p is device memory but the kind says host", what, dst);
        return set_err(cudaErrorInvalidValue);
    }
    if (!sd && is_device(src)) {
        report("%s: source %p is device memory but the kind says host", what, src);
        return set_err(cudaErrorInvalidValue);
    }
    return cudaSuccess;
}

} // namespace ampr_emu

/* ---- streams, events, graphs ------------------------------------------------------- */

struct ampr_emu_graph {
    std::vector<std::function<void()>> nodes;
    bool invalid = false;
};
struct ampr_emu_stream {
    int device;
    ampr_emu_graph *capture = nullptr;
    ampr_emu_stream *origin = nullptr; /* a stream forked into another's capture */
};
struct ampr_emu_event {
    int device;
    double t = 0;
    bool recorded = false;
    ampr_emu_graph *capture = nullptr;
    ampr_emu_stream *capture_stream = nullptr;
};

namespace ampr_emu {

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

/* Run `op` now, or record it into the stream's capture. */
static cudaError_t enqueue(cudaStream_t s, std::function<void()> op) {
    if (g_sticky) return g_sticky;
    if (s && s->capture) {
        s->capture->nodes.push_back(std::move(op));
        return cudaSuccess;
    }
    op();
    return g_sticky;
}

static std::map<const void *, int> g_max_dyn_smem;

/* AMPR_EMU_PROFILE: launches and milliseconds per kernel name */
struct profile {
    std::map<std::string, std::pair<long, double>> k;
    ~profile() {
        if (k.empty()) return;
        std::vector<std::pair<double, std::string>> v;
        double total = 0;
        for (auto &e : k) v.push_back({e.second.second, e.first}), total += e.second.second;
        std::sort(v.rbegin(), v.rend());
        fprintf(stderr, "ampr-emu: %.0f ms in kernels; the most:\n", total);
        for (size_t i = 0; i < v.size() && i < 15; i++)
            fprintf(stderr, "  %9.1f ms %7ld launches  %s\n", v[i].first, k[v[i].second].first, v[i].second.c_str());
    }
};
static profile g_profile;
static bool g_profiling = env_int("AMPR_EMU_PROFILE", 0) != 0;

/* A block's shared memory, static (the declarations it reached) and dynamic,
 * against what a GPU allows the kernel: 48 KiB in all, or with the opt-in
 * attribute its value for the dynamic part and the device's 227 KiB in all;
 * a GPU refuses the launch otherwise. */
static int dyn_smem_optin(const void *fn) { /* the kernel's attribute, or -1: none */
    std::lock_guard<std::mutex> l(g_mu);
    auto it = g_max_dyn_smem.find(fn);
    return it == g_max_dyn_smem.end() ? -1 : it->second;
}

static const char *smem_over(const void *fn, size_t st, size_t dyn, char *buf, size_t len) {
    int attr = dyn_smem_optin(fn);
    if (attr < 0 && st + dyn > 48 * 1024)
        snprintf(buf, len, "%zu bytes of static and %zu of dynamic shared memory: over 48 KiB without "
                 "cudaFuncAttributeMaxDynamicSharedMemorySize", st, dyn);
    else if (attr >= 0 && st + (size_t)attr > 232448)
        snprintf(buf, len, "%zu bytes of static shared memory and an opt-in of %d for the dynamic part: "
                 "over the device's 232448", st, attr);
    else
        return nullptr;
    return buf;
}

static std::atomic<unsigned long> g_kernels_run{0};
unsigned long kernels_run(void) { return g_kernels_run.load(); }

static cudaError_t run_launch(const char *name, const void *fn, const config &c,
                              const std::function<void()> &body) {
    g_kernels_run++;
    unsigned n = c.block.x * c.block.y * c.block.z;
    std::vector<unsigned char> smem(c.smem + 128);
    launch_state ls;
    ls.dyn_smem = (void *)(((uintptr_t)smem.data() + 127) & ~(uintptr_t)127);
    ls.pdl = c.pdl;
    g_launch = &ls;
    g_kernel = name;
    gridDim = c.grid;
    blockDim = c.block;
    uint64_t blocks = (uint64_t)c.grid.x * c.grid.y * c.grid.z;
    std::string msg;
    double t0 = g_profiling ? now_ms() : 0;
    std::vector<uint64_t> perm; /* random order: a shuffle of the blocks */
    if (g_order == 2) {
        perm.resize(blocks);
        for (uint64_t k = 0; k < blocks; k++) perm[k] = k;
        for (uint64_t k = blocks; k > 1; k--) std::swap(perm[k - 1], perm[rnd() % k]);
    }
    for (uint64_t k = 0; k < blocks; k++) {
        uint64_t i = g_order == 2 ? perm[k] : g_reverse ? blocks - 1 - k : k;
        blockIdx = uint3{(unsigned)(i % c.grid.x), (unsigned)((i / c.grid.x) % c.grid.y),
                         (unsigned)(i / ((uint64_t)c.grid.x * c.grid.y))};
        memset(ls.dyn_smem, 0xff, c.smem); /* shared memory starts undefined */
        ls.static_smem = 0;
        bool ok = run_block(body, n, c.block, msg);
        char over[256];
        if (ok && smem_over(fn, ls.static_smem, c.smem, over, sizeof over)) {
            msg = over;
            ok = false;
        }
        if (!ok) {
            report("fault in %s, block (%u,%u,%u) of (%u,%u,%u), %u threads: %s", name, blockIdx.x, blockIdx.y,
                   blockIdx.z, c.grid.x, c.grid.y, c.grid.z, n, msg.c_str());
            g_sticky = cudaErrorLaunchFailure;
            break;
        }
    }
    if (g_profiling) {
        std::lock_guard<std::mutex> l(g_mu);
        auto &e = g_profile.k[name];
        e.first++;
        e.second += now_ms() - t0;
    }
    g_launch = nullptr;
    g_kernel = "?";
    return g_sticky;
}

int launch(const char *name, const void *fn, const config &c, std::function<void()> body) {
    init();
    if (g_devices <= 0) return set_err(cudaErrorNoDevice);
    const dim3 &g = c.grid, &b = c.block;
    uint64_t threads = (uint64_t)b.x * b.y * b.z;
    if (!g.x || !g.y || !g.z || !b.x || !b.y || !b.z || threads > 1024 || b.z > 64 || g.y > 65535 ||
        g.z > 65535 || g.x > 0x7fffffffu) {
        report("launch of %s with grid (%u,%u,%u) block (%u,%u,%u): invalid configuration", name, g.x, g.y, g.z,
               b.x, b.y, b.z);
        return set_err(cudaErrorInvalidConfiguration);
    }
    if (c.smem > 48 * 1024) {
        int attr = dyn_smem_optin(fn);
        if (attr < 0 || (size_t)attr < c.smem) {
            report("launch of %s with %zu bytes of dynamic shared memory: over 48 KiB without "
                   "cudaFuncAttributeMaxDynamicSharedMemorySize (%d)", name, c.smem, attr < 0 ? 0 : attr);
            return set_err(cudaErrorInvalidValue);
        }
    }
    cudaStream_t s = (cudaStream_t)c.stream;
    if (s && s->device != g_device) {
        report("launch of %s on a stream of device %d while device %d is current", name, s->device, g_device);
        return set_err(cudaErrorInvalidResourceHandle);
    }
    config cc = c;
    std::string nm = name;
    return set_err(enqueue(s, [cc, nm, fn, body]() { run_launch(nm.c_str(), fn, cc, body); }));
}

} // namespace ampr_emu

using namespace ampr_emu;

cudaError_t ampr_emu_func_set_attribute(const void *fn, cudaFuncAttribute a, int value) {
    if (a == cudaFuncAttributeMaxDynamicSharedMemorySize) {
        if (value < 0 || value > 232448) return set_err(cudaErrorInvalidValue);
        std::lock_guard<std::mutex> l(g_mu);
        g_max_dyn_smem[fn] = value;
    }
    return cudaSuccess;
}

cudaError_t cudaGetDeviceCount(int *n) {
    init();
    *n = g_devices > 0 ? g_devices : 0;
    return g_devices > 0 ? cudaSuccess : set_err(cudaErrorNoDevice);
}
cudaError_t cudaSetDevice(int d) {
    init();
    if (d < 0 || d >= g_devices) return set_err(cudaErrorInvalidDevice);
    g_device = d;
    return cudaSuccess;
}
cudaError_t cudaGetDevice(int *d) {
    *d = g_device;
    return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int d) {
    init();
    if (d < 0 || d >= g_devices) return set_err(cudaErrorInvalidDevice);
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "ampr-emu (CUDA on the CPU)");
    p->totalGlobalMem = g_mem_limit;
    p->sharedMemPerBlock = 48 * 1024;
    p->sharedMemPerBlockOptin = 232448;
    p->sharedMemPerMultiprocessor = 233472;
    p->regsPerBlock = 65536;
    p->warpSize = 32;
    p->maxThreadsPerBlock = 1024;
    p->maxThreadsDim[0] = p->maxThreadsDim[1] = 1024;
    p->maxThreadsDim[2] = 64;
    p->maxGridSize[0] = 0x7fffffff;
    p->maxGridSize[1] = p->maxGridSize[2] = 65535;
    p->clockRate = 1000000;
    p->memoryClockRate = 1000000;
    p->memoryBusWidth = 1024;
    p->l2CacheSize = 50 << 20;
    p->major = 9;
    p->minor = 0;
    p->multiProcessorCount = env_int("AMPR_EMU_SMS", 4);
    p->maxThreadsPerMultiProcessor = 2048;
    p->pciBusID = d;
    return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize(void) { return g_sticky; }
cudaError_t cudaGetLastError(void) {
    cudaError_t e = g_last;
    g_last = cudaSuccess;
    return g_sticky ? g_sticky : e;
}
cudaError_t cudaPeekAtLastError(void) { return g_sticky ? g_sticky : g_last; }
const char *cudaGetErrorName(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorStreamCaptureUnsupported: return "cudaErrorStreamCaptureUnsupported";
    case cudaErrorStreamCaptureInvalidated: return "cudaErrorStreamCaptureInvalidated";
    default: return "cudaErrorUnknown";
    }
}
const char *cudaGetErrorString(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorMemoryAllocation: return "out of memory (emulated device)";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected (emulation with AMPR_EMU_DEVICES=0)";
    case cudaErrorLaunchFailure: return "unspecified launch failure (an emulated kernel faulted: see stderr)";
    default: return "an emulated CUDA call failed (see stderr)";
    }
}

cudaError_t cudaMalloc(void **p, size_t bytes) { return do_alloc(p, bytes, false); }
/* free = the current device's memory less what its allocations take */
cudaError_t cudaMemGetInfo(size_t *free_b, size_t *total) {
    std::lock_guard<std::mutex> l(g_mu);
    size_t used = g_mem_used[g_device];
    *total = g_mem_limit;
    *free_b = used < g_mem_limit ? g_mem_limit - used : 0;
    return cudaSuccess;
}
cudaError_t cudaFree(void *p) { return do_free(p, false); }
cudaError_t cudaMallocHost(void **p, size_t bytes) { return do_alloc(p, bytes, true); }
cudaError_t cudaHostAlloc(void **p, size_t bytes, unsigned) { return do_alloc(p, bytes, true); }
cudaError_t cudaFreeHost(void *p) { return do_free(p, true); }

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind, cudaStream_t s) {
    cudaError_t e = check_copy("cudaMemcpyAsync", dst, src, bytes, kind);
    if (e) return e;
    return set_err(enqueue(s, [=]() { memmove(dst, src, bytes); }));
}
cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind) {
    return cudaMemcpyAsync(dst, src, bytes, kind, 0);
}
cudaError_t cudaMemcpyPeerAsync(void *dst, int, const void *src, int, size_t bytes, cudaStream_t s) {
    return cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, s);
}
cudaError_t cudaMemsetAsync(void *p, int value, size_t bytes, cudaStream_t s) {
    if (bytes && (!find_alloc(p, bytes, nullptr) || !is_device(p))) {
        report("cudaMemsetAsync: %p + %zu bytes is not inside one device allocation", p, bytes);
        return set_err(cudaErrorInvalidValue);
    }
    return set_err(enqueue(s, [=]() { memset(p, value, bytes); }));
}
cudaError_t cudaMemset(void *p, int value, size_t bytes) { return cudaMemsetAsync(p, value, bytes, 0); }

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned) {
    init();
    if (g_devices <= 0) return set_err(cudaErrorNoDevice);
    *s = nullptr;
    if (!handle_new(H_STREAM)) return set_err(cudaErrorMemoryAllocation);
    *s = new ampr_emu_stream{g_device};
    return cudaSuccess;
}
cudaError_t cudaStreamCreate(cudaStream_t *s) { return cudaStreamCreateWithFlags(s, 0); }
cudaError_t cudaStreamDestroy(cudaStream_t s) {
    if (!s) return set_err(cudaErrorInvalidResourceHandle);
    if (s->capture && !s->origin) delete s->capture;
    handle_gone(H_STREAM);
    delete s;
    return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t s) {
    if (s && s->capture) {
        report("cudaStreamSynchronize on a stream that is capturing a graph");
        s->capture->invalid = true;
        return set_err(cudaErrorStreamCaptureUnsupported);
    }
    return g_sticky;
}
cudaError_t cudaStreamQuery(cudaStream_t s) {
    if (s && s->capture) return set_err(cudaErrorStreamCaptureUnsupported);
    return g_sticky;
}
cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode) {
    if (!s || s->capture) return set_err(cudaErrorInvalidValue);
    s->capture = new ampr_emu_graph;
    s->origin = nullptr;
    return cudaSuccess;
}
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t *g) {
    *g = nullptr;
    if (!s || !s->capture || s->origin) return set_err(cudaErrorInvalidValue);
    ampr_emu_graph *graph = s->capture;
    s->capture = nullptr;
    if (graph->invalid) {
        delete graph;
        return set_err(cudaErrorStreamCaptureInvalidated);
    }
    *g = graph;
    std::lock_guard<std::mutex> l(g_mu);
    g_live[H_GRAPH]++;
    return cudaSuccess;
}
cudaError_t cudaStreamIsCapturing(cudaStream_t s, cudaStreamCaptureStatus *st) {
    *st = s && s->capture ? cudaStreamCaptureStatusActive : cudaStreamCaptureStatusNone;
    return cudaSuccess;
}
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned) {
    if (!e) return set_err(cudaErrorInvalidResourceHandle);
    /* everything already ran in issue order; a wait on an event recorded in a
     * capture forks this stream into that capture */
    if (s && e->capture && !s->capture) {
        s->capture = e->capture;
        s->origin = e->capture_stream;
    }
    return cudaSuccess;
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned) {
    *e = nullptr;
    if (!handle_new(H_EVENT)) return set_err(cudaErrorMemoryAllocation);
    *e = new ampr_emu_event{g_device};
    return cudaSuccess;
}
cudaError_t cudaEventCreate(cudaEvent_t *e) { return cudaEventCreateWithFlags(e, 0); }
cudaError_t cudaEventDestroy(cudaEvent_t e) {
    if (!e) return set_err(cudaErrorInvalidResourceHandle);
    handle_gone(H_EVENT);
    delete e;
    return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
    if (!e) return set_err(cudaErrorInvalidResourceHandle);
    if (s && s->capture) {
        e->capture = s->capture;
        e->capture_stream = s->origin ? s->origin : s;
        /* a forked stream that records an event joins back when its origin waits */
        return enqueue(s, [e]() { e->t = now_ms(); });
    }
    e->capture = nullptr;
    e->recorded = true;
    e->t = now_ms();
    return g_sticky;
}
cudaError_t cudaEventSynchronize(cudaEvent_t e) { return e ? g_sticky : set_err(cudaErrorInvalidResourceHandle); }
cudaError_t cudaEventQuery(cudaEvent_t e) { return e ? g_sticky : set_err(cudaErrorInvalidResourceHandle); }
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b) {
    if (!a || !b || !a->recorded || !b->recorded) return set_err(cudaErrorInvalidResourceHandle);
    *ms = (float)(b->t - a->t);
    return cudaSuccess;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t *x, cudaGraph_t g, unsigned long long) {
    *x = nullptr;
    if (!g) return set_err(cudaErrorInvalidValue);
    if (!handle_new(H_EXEC)) return set_err(cudaErrorMemoryAllocation);
    *x = new ampr_emu_graph(*g);
    return cudaSuccess;
}
cudaError_t cudaGraphLaunch(cudaGraphExec_t x, cudaStream_t s) {
    if (!x) return set_err(cudaErrorInvalidValue);
    if (s && s->capture) {
        for (auto &n : x->nodes) s->capture->nodes.push_back(n);
        return cudaSuccess;
    }
    for (auto &n : x->nodes) {
        if (g_sticky) break;
        n();
    }
    return g_sticky;
}
cudaError_t cudaGraphDestroy(cudaGraph_t g) {
    if (!g) return set_err(cudaErrorInvalidValue);
    handle_gone(H_GRAPH);
    delete g;
    return cudaSuccess;
}
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t x) {
    if (!x) return set_err(cudaErrorInvalidValue);
    handle_gone(H_EXEC);
    delete x;
    return cudaSuccess;
}

/* ---- cuBLASLt ------------------------------------------------------------------------ */

struct ampr_emu_lt {
    int device;
};
struct ampr_emu_lt_desc {
    cublasComputeType_t ct;
    cudaDataType_t scale;
    cublasOperation_t ta, tb;
};
struct ampr_emu_lt_layout {
    cudaDataType_t t;
    uint64_t rows, cols;
    int64_t ld;
};
struct ampr_emu_lt_pref {
    size_t ws;
};

/* A cuBLASLt object: counted as a handle, and the one AMPR_EMU_FAIL_HANDLE fails. */
template <typename T> static cublasStatus_t lt_new(T **out, const T &value) {
    *out = nullptr;
    if (!handle_new(H_LT)) return CUBLAS_STATUS_ALLOC_FAILED;
    *out = new T(value);
    return CUBLAS_STATUS_SUCCESS;
}
template <typename T> static cublasStatus_t lt_delete(T *p) {
    if (!p) return CUBLAS_STATUS_INVALID_VALUE;
    handle_gone(H_LT);
    delete p;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtCreate(cublasLtHandle_t *h) { return lt_new(h, ampr_emu_lt{g_device}); }
cublasStatus_t cublasLtDestroy(cublasLtHandle_t h) { return lt_delete(h); }
const char *cublasLtGetStatusName(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    default: return "CUBLAS_STATUS_INTERNAL_ERROR";
    }
}
const char *cublasLtGetStatusString(cublasStatus_t s) {
    return s == CUBLAS_STATUS_SUCCESS ? "success" : "an emulated cuBLASLt call failed (see stderr)";
}
cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t *d, cublasComputeType_t ct, cudaDataType_t scale) {
    return lt_new(d, ampr_emu_lt_desc{ct, scale, CUBLAS_OP_N, CUBLAS_OP_N});
}
cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t d) { return lt_delete(d); }
cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t a,
                                              const void *buf, size_t size) {
    if (size != sizeof(int32_t)) return CUBLAS_STATUS_INVALID_VALUE;
    int32_t v;
    memcpy(&v, buf, 4);
    if (a == CUBLASLT_MATMUL_DESC_TRANSA) d->ta = (cublasOperation_t)v;
    else if (a == CUBLASLT_MATMUL_DESC_TRANSB) d->tb = (cublasOperation_t)v;
    else return CUBLAS_STATUS_INVALID_VALUE;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t *l, cudaDataType_t t, uint64_t rows,
                                          uint64_t cols, int64_t ld) {
    *l = nullptr;
    if (ld < (int64_t)rows || ld < 1) return CUBLAS_STATUS_INVALID_VALUE;
    return lt_new(l, ampr_emu_lt_layout{t, rows, cols, ld});
}
cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t l) { return lt_delete(l); }
cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t *p) {
    return lt_new(p, ampr_emu_lt_pref{0});
}
cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t p) { return lt_delete(p); }
cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t p,
                                                    cublasLtMatmulPreferenceAttributes_t a,
                                                    const void *buf, size_t size) {
    if (a != CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES || size != sizeof(uint64_t))
        return CUBLAS_STATUS_INVALID_VALUE;
    memcpy(&p->ws, buf, 8);
    return CUBLAS_STATUS_SUCCESS;
}

/* the shapes and types a matmul of these descriptors has, or why not */
static const char *lt_shape(cublasLtMatmulDesc_t op, cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                            cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t d, uint64_t *m,
                            uint64_t *n, uint64_t *k) {
    *m = op->ta == CUBLAS_OP_T ? a->cols : a->rows;
    *k = op->ta == CUBLAS_OP_T ? a->rows : a->cols;
    uint64_t kb = op->tb == CUBLAS_OP_T ? b->cols : b->rows;
    *n = op->tb == CUBLAS_OP_T ? b->rows : b->cols;
    if (kb != *k) return "op(A) and op(B) disagree on k";
    if (c->rows != *m || c->cols != *n || d->rows != *m || d->cols != *n) return "C or D is not m x n";
    bool f16 = a->t == CUDA_R_16F && b->t == CUDA_R_16F && c->t == CUDA_R_32F && d->t == CUDA_R_32F &&
               op->ct == CUBLAS_COMPUTE_32F && op->scale == CUDA_R_32F;
    bool i8 = a->t == CUDA_R_8I && b->t == CUDA_R_8I && c->t == CUDA_R_32I && d->t == CUDA_R_32I &&
              op->ct == CUBLAS_COMPUTE_32I && op->scale == CUDA_R_32I;
    if (!f16 && !i8) return "types other than f16 x f16 -> f32 or i8 x i8 -> i32";
    if (i8 && (op->ta != CUBLAS_OP_T || op->tb != CUBLAS_OP_N))
        return "int8 with a regular layout needs A transposed and B not (TN)";
    return nullptr;
}

cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t, cublasLtMatmulDesc_t op,
                                              cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                                              cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t d,
                                              cublasLtMatmulPreference_t, int requested,
                                              cublasLtMatmulHeuristicResult_t *res, int *returned) {
    uint64_t m, n, k;
    const char *why = lt_shape(op, a, b, c, d, &m, &n, &k);
    *returned = 0;
    if (why) {
        report("cublasLtMatmulAlgoGetHeuristic: %s", why);
        return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    if (requested < 1) return CUBLAS_STATUS_INVALID_VALUE;
    memset(res, 0, sizeof *res);
    res->state = CUBLAS_STATUS_SUCCESS;
    res->wavesCount = 1.0f;
    *returned = 1;
    return CUBLAS_STATUS_SUCCESS;
}

static float g_h2f_table[65536];
static bool g_h2f_ready = [] {
    for (unsigned i = 0; i < 65536; i++) g_h2f_table[i] = ampr_emu_h2f((unsigned short)i);
    return true;
}();

cublasStatus_t cublasLtMatmul(cublasLtHandle_t h, cublasLtMatmulDesc_t op, const void *alpha, const void *A,
                              cublasLtMatrixLayout_t a, const void *B, cublasLtMatrixLayout_t b,
                              const void *beta, const void *C, cublasLtMatrixLayout_t c, void *D,
                              cublasLtMatrixLayout_t d, const cublasLtMatmulAlgo_t *, void *, size_t,
                              cudaStream_t s) {
    uint64_t m, n, k;
    const char *why = lt_shape(op, a, b, c, d, &m, &n, &k);
    if (why) {
        report("cublasLtMatmul: %s", why);
        return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    if (h->device != g_device) {
        report("cublasLtMatmul with a handle of device %d while device %d is current", h->device, g_device);
        return CUBLAS_STATUS_EXECUTION_FAILED;
    }
    bool i8 = a->t == CUDA_R_8I;
    size_t es = i8 ? 1 : 2;
    /* every element the call reads or writes must lie in device memory */
    uint64_t a_span = (uint64_t)a->ld * (a->cols - 1) + a->rows, b_span = (uint64_t)b->ld * (b->cols - 1) + b->rows;
    uint64_t d_span = (uint64_t)d->ld * (n - 1) + m;
    int32_t ai = 0, bi = 0;
    float af = 0, bf = 0;
    if (i8) memcpy(&ai, alpha, 4), memcpy(&bi, beta, 4);
    else memcpy(&af, alpha, 4), memcpy(&bf, beta, 4);
    bool reads_c = i8 ? bi != 0 : bf != 0.0f;
    if (!find_alloc(A, a_span * es, nullptr) || !find_alloc(B, b_span * es, nullptr) ||
        !find_alloc(D, d_span * 4, nullptr) || (reads_c && !find_alloc(C, ((uint64_t)c->ld * (n - 1) + m) * 4, nullptr))) {
        report("cublasLtMatmul: an operand is not inside one device allocation (m %llu n %llu k %llu)",
               (unsigned long long)m, (unsigned long long)n, (unsigned long long)k);
        return CUBLAS_STATUS_EXECUTION_FAILED;
    }
    ampr_emu_lt_desc o = *op;
    ampr_emu_lt_layout la = *a, lb = *b, lc = *c, ld = *d;
    cudaError_t e = enqueue(s, [=]() {
        /* op(A) as m rows and op(B) as n columns, each contiguous in k */
        std::vector<float> fa(i8 ? 0 : m * k), fb(i8 ? 0 : n * k);
        std::vector<int32_t> ia(i8 ? m * k : 0), ib(i8 ? n * k : 0);
        for (uint64_t i = 0; i < m; i++)
            for (uint64_t l = 0; l < k; l++) {
                uint64_t at = o.ta == CUBLAS_OP_T ? l + i * (uint64_t)la.ld : i + l * (uint64_t)la.ld;
                if (i8) ia[i * k + l] = ((const int8_t *)A)[at];
                else fa[i * k + l] = g_h2f_table[((const uint16_t *)A)[at]];
            }
        for (uint64_t j = 0; j < n; j++)
            for (uint64_t l = 0; l < k; l++) {
                uint64_t bt = o.tb == CUBLAS_OP_T ? j + l * (uint64_t)lb.ld : l + j * (uint64_t)lb.ld;
                if (i8) ib[j * k + l] = ((const int8_t *)B)[bt];
                else fb[j * k + l] = g_h2f_table[((const uint16_t *)B)[bt]];
            }
        for (uint64_t j = 0; j < n; j++)
            for (uint64_t i = 0; i < m; i++) {
                uint64_t ci = i + j * (uint64_t)lc.ld, di = i + j * (uint64_t)ld.ld;
                if (i8) {
                    const int32_t *x = &ia[i * k], *y = &ib[j * k];
                    int64_t acc = 0;
                    for (uint64_t l = 0; l < k; l++) acc += (int64_t)x[l] * y[l];
                    ((int32_t *)D)[di] =
                        (int32_t)((int64_t)ai * acc + (bi ? (int64_t)bi * ((const int32_t *)C)[ci] : 0));
                } else {
                    const float *x = &fa[i * k], *y = &fb[j * k];
                    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0}; /* eight sums: the loop vectorizes */
                    uint64_t l = 0;
                    for (; l + 8 <= k; l += 8)
                        for (int u = 0; u < 8; u++) acc[u] += x[l + u] * y[l + u];
                    float v = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
                    for (; l < k; l++) v += x[l] * y[l];
                    v *= af;
                    if (bf != 0.0f) v += bf * ((const float *)C)[ci];
                    ((float *)D)[di] = v;
                }
            }
    });
    return e ? CUBLAS_STATUS_EXECUTION_FAILED : CUBLAS_STATUS_SUCCESS;
}

/* ---- NCCL ------------------------------------------------------------------------------- */

struct ampr_emu_clique {
    int n;
    int alive;
    struct op {
        const void *send;
        void *recv;
        size_t count;
        ncclDataType_t t;
        ncclRedOp_t red;
        bool set;
    };
    std::vector<op> pending;
};
/* Communicators across processes (ncclCommInitRank with n > 1): the ranks meet
 * in a file mapped shared, whose path is the unique id (in /dev/shm where
 * there is one, else $TMPDIR or /tmp; unlinked once all have joined, or by
 * the rank that gives up). Its header holds
 * the group's size, each rank's pid and how many barriers it has reached;
 * after it, a slot of XP_SLOT floats a rank. An all-reduce goes through the
 * slots a chunk at a time: each rank copies its chunk in, waits for all,
 * sums the slots in rank order (as the one-process all-reduce), waits for
 * all again (so no slot is rewritten while a rank still reads it). A wait
 * ends early when a rank aborts the group or a rank's process is gone, and
 * that rank's peers get ncclRemoteError, as NCCL reports a peer lost. */
enum { XP_MAX = 64, XP_SLOT = 1 << 16 };
struct xp_shm {
    int n;          /* 0 until the first rank sets it */
    int joined;     /* ranks that have joined */
    int aborted;    /* a rank aborted the group */
    int pid[XP_MAX];
    uint64_t bars[XP_MAX];   /* barriers each rank has reached */
    uint64_t count[XP_MAX];  /* each rank's all-reduce: count, type, operation */
    int type[XP_MAX], red[XP_MAX];
};
static const size_t k_xp_head = (sizeof(xp_shm) + 4095) & ~(size_t)4095;
static const size_t k_xp_len = k_xp_head + (size_t)XP_MAX * XP_SLOT * sizeof(float);
static const char k_xp_prefix[] = "/ampr-emu-nccl-";

struct ampr_emu_comm {
    ampr_emu_clique *q;
    int rank;
    int device;
    /* across processes (q == nullptr): */
    xp_shm *xp;
    char name[128]; /* the file's path; "" once unlinked */
    uint64_t bars; /* barriers this rank has reached */
    ncclResult_t async;
};
static thread_local int g_group = 0;
static thread_local std::vector<ampr_emu_clique *> g_group_cliques;

static ncclResult_t clique_run(ampr_emu_clique *q) {
    for (int r = 0; r < q->n; r++)
        if (!q->pending[r].set) return ncclInProgress;
    const auto &p0 = q->pending[0];
    for (int r = 1; r < q->n; r++) {
        if (q->pending[r].count != p0.count || q->pending[r].t != p0.t || q->pending[r].red != p0.red) {
            report("ncclAllReduce: the ranks disagree on count, type or operation");
            for (auto &p : q->pending) p.set = false;
            return ncclInvalidUsage;
        }
    }
    if (p0.t != ncclFloat32 || p0.red != ncclSum) {
        report("ncclAllReduce: only the float sum is emulated");
        return ncclInvalidUsage;
    }
    std::vector<float> sum(p0.count, 0.0f);
    for (int r = 0; r < q->n; r++)
        for (size_t i = 0; i < p0.count; i++) sum[i] += ((const float *)q->pending[r].send)[i];
    for (int r = 0; r < q->n; r++) memcpy(q->pending[r].recv, sum.data(), p0.count * 4);
    for (auto &p : q->pending) p.set = false;
    return ncclSuccess;
}

/* ---- across processes ---- */

template <class T> static T xp_load(const T *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
template <class T> static void xp_store(T *p, T v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }

/* whether the process pid has ended (gone, or a zombie nobody has reaped) */
static bool xp_pid_gone(int pid) {
    if (pid <= 0) return false;
    if (kill(pid, 0) != 0) return errno == ESRCH;
    char path[64], buf[256];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return false;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *rp = strrchr(buf, ')'); /* "pid (comm) S ..." */
    return rp && rp[1] == ' ' && (rp[2] == 'Z' || rp[2] == 'X');
}

/* the group's state as GetAsyncError sees it: aborted or a peer gone is a remote error */
static ncclResult_t xp_state(ampr_emu_comm *c) {
    if (c->async != ncclSuccess) return c->async;
    xp_shm *h = c->xp;
    if (xp_load(&h->aborted)) return c->async = ncclRemoteError;
    for (int r = 0; r < h->n; r++)
        if (r != c->rank && xp_pid_gone(xp_load(&h->pid[r]))) return c->async = ncclRemoteError;
    if (xp_load(&h->joined) < h->n) return ncclInProgress;
    if (c->name[0]) unlink(c->name); /* every rank has it mapped: the name is not needed again */
    c->name[0] = '\0';
    return ncclSuccess;
}

static void xp_nap(long polls) {
    if (polls < 1000) {
        sched_yield();
        return;
    }
    struct timespec ts = {0, 200000};
    nanosleep(&ts, nullptr);
}

/* every rank of the group reaches this barrier; false (c->async set) when one never will:
 * it aborted or its process ended, or (AMPR_EMU_NCCL_WAIT_MS) it did not come in time */
static bool xp_barrier(ampr_emu_comm *c) {
    static const long wait_ms = env_int("AMPR_EMU_NCCL_WAIT_MS", 0);
    xp_shm *h = c->xp;
    xp_store(&h->bars[c->rank], ++c->bars);
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long polls = 0;; polls++) {
        int r = 0;
        while (r < h->n && xp_load(&h->bars[r]) >= c->bars) r++;
        if (r == h->n) return true;
        if ((polls & 63) == 0 && xp_state(c) == ncclRemoteError) return false;
        if ((polls & 63) == 0 && wait_ms > 0) {
            struct timespec t;
            clock_gettime(CLOCK_MONOTONIC, &t);
            if ((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000 > wait_ms) {
                report("ncclAllReduce: rank %d waited %ld ms for rank %d (AMPR_EMU_NCCL_WAIT_MS; on a GPU the "
                       "library's tp_timeout_ms ends such a wait)", c->rank, wait_ms, r);
                c->async = ncclRemoteError;
                return false;
            }
        }
        xp_nap(polls);
    }
}

static ncclResult_t xp_init(ncclComm_t *comm, int n, const ncclUniqueId &id, int rank, bool blocking) {
    char name[128];
    memcpy(name, id.internal, sizeof name);
    name[sizeof name - 1] = '\0';
    if (name[0] != '/' || !strstr(name, k_xp_prefix)) {
        report("ncclCommInitRank: the id was not made by ncclGetUniqueId");
        return ncclInvalidArgument;
    }
    if (n > XP_MAX) {
        report("ncclCommInitRank: %d ranks (the emulation has room for %d)", n, XP_MAX);
        return ncclInvalidArgument;
    }
    if (!handle_new(H_COMM)) return ncclSystemError;
    int fd = open(name, O_RDWR | O_CREAT, 0600);
    void *map = MAP_FAILED;
    if (fd >= 0) {
        if (ftruncate(fd, (off_t)k_xp_len) == 0) /* sparse: slots take memory once written */
            map = mmap(nullptr, k_xp_len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        close(fd);
    }
    if (map == MAP_FAILED) {
        handle_gone(H_COMM);
        return ncclSystemError;
    }
    xp_shm *h = (xp_shm *)map;
    int zero = 0, mine = getpid();
    if (!__atomic_compare_exchange_n(&h->n, &zero, n, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE) && zero != n) {
        report("ncclCommInitRank: rank %d says the group has %d ranks, another rank said %d", rank, n, zero);
        munmap(map, k_xp_len);
        handle_gone(H_COMM);
        return ncclInvalidUsage;
    }
    zero = 0;
    if (!__atomic_compare_exchange_n(&h->pid[rank], &zero, mine, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        report("ncclCommInitRank: rank %d joined the group twice", rank);
        munmap(map, k_xp_len);
        handle_gone(H_COMM);
        return ncclInvalidUsage;
    }
    ampr_emu_comm *c = new ampr_emu_comm{nullptr, rank, g_device, h, {0}, 0, ncclSuccess};
    memcpy(c->name, name, sizeof name);
    __atomic_add_fetch(&h->joined, 1, __ATOMIC_ACQ_REL);
    *comm = c;
    if (!blocking) return ncclInProgress; /* GetAsyncError says when all have joined */
    for (long polls = 0;; polls++) { /* NCCL's blocking init waits for every rank, for ever */
        ncclResult_t r = xp_state(c);
        if (r != ncclInProgress) return r;
        xp_nap(polls);
    }
}

static ncclResult_t xp_all_reduce(ampr_emu_comm *c, const float *send, float *recv, size_t count,
                                  ncclDataType_t t, ncclRedOp_t red) {
    xp_shm *h = c->xp;
    if (c->async != ncclSuccess) return c->async;
    static std::atomic<long> calls{0};
    static const long exit_at = env_int("AMPR_EMU_NCCL_EXIT_AT", 0);
    if (++calls == exit_at) _exit(7); /* a rank lost mid-run, as a crash or a killed process */
    if (xp_load(&h->joined) < h->n) {
        report("ncclAllReduce: rank %d issued it before every rank had joined (the init is in progress)",
               c->rank);
        return ncclInvalidUsage;
    }
    if (t != ncclFloat32 || red != ncclSum) {
        report("ncclAllReduce: only the float sum is emulated");
        return ncclInvalidUsage;
    }
    h->count[c->rank] = count;
    h->type[c->rank] = (int)t;
    h->red[c->rank] = (int)red;
    float *slots = (float *)((char *)h + k_xp_head);
    std::vector<float> sum;
    size_t done = 0;
    do { /* one chunk a round; a count of 0 still meets the others once */
        size_t k = std::min(count - done, (size_t)XP_SLOT);
        memcpy(slots + (size_t)c->rank * XP_SLOT, send + done, k * sizeof(float));
        if (!xp_barrier(c)) return c->async;
        if (done == 0) {
            for (int r = 0; r < h->n; r++)
                if (h->count[r] != count || h->type[r] != (int)t || h->red[r] != (int)red) {
                    report("ncclAllReduce: the ranks disagree on count, type or operation");
                    return c->async = ncclInvalidUsage;
                }
        }
        sum.assign(k, 0.0f);
        for (int r = 0; r < h->n; r++)
            for (size_t i = 0; i < k; i++) sum[i] += slots[(size_t)r * XP_SLOT + i];
        if (!xp_barrier(c)) return c->async;
        memcpy(recv + done, sum.data(), k * sizeof(float));
        done += k;
    } while (done < count);
    return ncclSuccess;
}

static void xp_leave(ampr_emu_comm *c, bool abort) {
    if (abort) xp_store(&c->xp->aborted, 1);
    if (c->name[0]) unlink(c->name); /* a group that never completed: nobody else will come */
    munmap(c->xp, k_xp_len);
}

/* ---- the API ---- */

ncclResult_t ncclGetUniqueId(ncclUniqueId *id) {
    static std::atomic<unsigned> seq{0};
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    memset(id->internal, 0, sizeof id->internal);
    /* the file's path: in /dev/shm where there is one (memory), else $TMPDIR or /tmp */
    const char *dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : getenv("TMPDIR");
    if (!dir || !*dir || strlen(dir) > 40) dir = "/tmp";
    snprintf(id->internal, sizeof id->internal, "%s%s%d-%u-%llx", dir, k_xp_prefix, (int)getpid(), seq++,
             (unsigned long long)ts.tv_sec * 1000000000ull + (unsigned long long)ts.tv_nsec);
    return ncclSuccess;
}
ncclResult_t ncclCommInitAll(ncclComm_t *comms, int n, const int *devs) {
    init();
    if (n < 1) return ncclInvalidArgument;
    if (!handle_new(H_COMM)) return ncclSystemError;
    handle_gone(H_COMM); /* counted per rank below */
    for (int i = 0; i < n; i++)
        if ((devs ? devs[i] : i) < 0 || (devs ? devs[i] : i) >= g_devices) return ncclInvalidArgument;
    auto *q = new ampr_emu_clique{n, n, std::vector<ampr_emu_clique::op>((size_t)n)};
    for (int i = 0; i < n; i++) {
        comms[i] = new ampr_emu_comm{q, i, devs ? devs[i] : i, nullptr, {0}, 0, ncclSuccess};
        std::lock_guard<std::mutex> l(g_mu);
        g_live[H_COMM]++;
    }
    return ncclSuccess;
}
ncclResult_t ncclCommInitRankConfig(ncclComm_t *comm, int n, ncclUniqueId id, int rank, ncclConfig_t *config) {
    init();
    *comm = nullptr;
    if (n < 1 || rank < 0 || rank >= n) return ncclInvalidArgument;
    if (n == 1) return ncclCommInitAll(comm, 1, &g_device);
    return xp_init(comm, n, id, rank, !config || config->blocking);
}
ncclResult_t ncclCommInitRank(ncclComm_t *comm, int n, ncclUniqueId id, int rank) {
    return ncclCommInitRankConfig(comm, n, id, rank, nullptr);
}
ncclResult_t ncclCommFinalize(ncclComm_t) { return ncclSuccess; }
static ncclResult_t comm_end(ncclComm_t c, bool abort) {
    if (!c) return ncclInvalidArgument;
    if (c->xp) xp_leave(c, abort);
    else if (--c->q->alive == 0) delete c->q;
    handle_gone(H_COMM);
    delete c;
    return ncclSuccess;
}
ncclResult_t ncclCommDestroy(ncclComm_t c) { return comm_end(c, false); }
ncclResult_t ncclCommAbort(ncclComm_t c) { return comm_end(c, true); }
ncclResult_t ncclCommGetAsyncError(ncclComm_t c, ncclResult_t *r) {
    if (!c) return ncclInvalidArgument;
    *r = c->xp ? xp_state(c) : ncclSuccess;
    return ncclSuccess;
}
ncclResult_t ncclGroupStart(void) {
    g_group++;
    return ncclSuccess;
}
ncclResult_t ncclGroupEnd(void) {
    if (g_group <= 0) return ncclInvalidUsage;
    if (--g_group > 0) return ncclSuccess;
    ncclResult_t res = ncclSuccess;
    for (ampr_emu_clique *q : g_group_cliques) {
        ncclResult_t r = clique_run(q);
        if (r == ncclInProgress) {
            report("ncclGroupEnd: a group issued the all-reduce on only some of a communicator's ranks "
                   "(it would wait forever on a GPU)");
            for (auto &p : q->pending) p.set = false;
            r = ncclInvalidUsage;
        }
        if (r != ncclSuccess) res = r;
    }
    g_group_cliques.clear();
    return res;
}
ncclResult_t ncclAllReduce(const void *send, void *recv, size_t count, ncclDataType_t t, ncclRedOp_t red,
                           ncclComm_t comm, cudaStream_t s) {
    if (!comm) return ncclInvalidArgument;
    if (s && s->capture) {
        report("ncclAllReduce on a capturing stream: not emulated");
        return ncclInvalidUsage;
    }
    size_t es = t == ncclFloat32 || t == ncclInt32 ? 4 : t == ncclFloat16 ? 2 : 1;
    if (count && (!find_alloc(send, count * es, nullptr) || !find_alloc(recv, count * es, nullptr))) {
        report("ncclAllReduce: a buffer of %zu elements is not inside one device allocation", count);
        return ncclInvalidArgument;
    }
    if (comm->xp) {
        if (g_group > 0) {
            report("ncclAllReduce: a communicator across processes inside a group: not emulated");
            return ncclInvalidUsage;
        }
        return xp_all_reduce(comm, (const float *)send, (float *)recv, count, t, red);
    }
    ampr_emu_clique *q = comm->q;
    if (q->pending[(size_t)comm->rank].set) {
        report("ncclAllReduce: rank %d issued a second all-reduce before every rank issued the first", comm->rank);
        return ncclInvalidUsage;
    }
    q->pending[(size_t)comm->rank] = ampr_emu_clique::op{send, recv, count, t, red, true};
    if (g_group > 0) {
        bool known = false;
        for (auto *x : g_group_cliques) known |= x == q;
        if (!known) g_group_cliques.push_back(q);
        return ncclSuccess;
    }
    ncclResult_t r = clique_run(q);
    return r == ncclInProgress ? ncclSuccess : r;
}
const char *ncclGetErrorString(ncclResult_t r) {
    switch (r) {
    case ncclSuccess: return "no error";
    case ncclInvalidUsage: return "invalid usage (emulated NCCL: see stderr)";
    case ncclInvalidArgument: return "invalid argument";
    case ncclInProgress: return "operation in progress";
    case ncclRemoteError: return "remote process exited or there was a network error";
    default: return "an emulated NCCL call failed";
    }
}

/* ---- hooks for tests (tests/test_device.c declares them weak) ------------------------- */
/* Hidden like the library's internals: a test linked with libampr.a finds them,
 * libampr.so does not export them (tests/test_abi.sh). */

/* The n-th cudaMalloc from now fails (n >= 1), or none (n <= 0). */
extern "C" void ampr_emu_fail_alloc_in(long n) {
    std::lock_guard<std::mutex> l(g_mu);
    g_fail_at = n > 0 ? g_malloc_calls + n : 0;
}

/* Device allocations live now. */
extern "C" long ampr_emu_live_allocs(void) {
    std::lock_guard<std::mutex> l(g_mu);
    long n = 0;
    for (auto &e : g_allocs)
        if (!e.second.host) n++;
    return n;
}
