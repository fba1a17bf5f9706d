// emu_runtime.h: blocks, threads, barriers and the scheduler of the CUDA emulator.
//
// A launch runs its blocks one after another on the calling OS thread. Each block's threads are
// fibers (emu_fiber.h) that run until they meet: at __syncthreads (all live threads of the
// block) or at a warp collective (the lanes of the mask). The launch's order decides who runs
// between meetings:
//   forward, reversed  in rounds: every ready thread runs to its next meeting, by thread index
//                      (or reversed); warps advance in step, collective by collective;
//   shuffled (seed)    a random warp runs as far as it can (to a __syncthreads, its exit, or a
//                      collective waiting for lanes elsewhere), its ready lanes in random order,
//                      then another random warp: warps drift apart between barriers as far as
//                      the barriers allow, as they may on a GPU.
// Code whose result depends on the order (a missing barrier) gives different results. Checks, each an error for the launch (never a silent result):
//   * threads of one block waiting at different __syncthreads (by source line) or at a barrier
//     while others wait at a warp collective (a barrier in divergent code): a deadlock on a GPU;
//   * a warp collective whose mask names a lane that does not exist, has exited or is waiting
//     elsewhere, or lanes meeting at different collectives;
//   * faults found by the instruction twins (an ldmatrix address outside shared memory ...).
// Static __shared__ variables are the library's thread_local variables (cuda_emu.h): its TLS
// block, found with dl_iterate_phdr, is the block's shared memory. It is filled with 0xFF bytes
// (NaN in every float type) before each block, so a read of shared memory nobody wrote shows.
// (A linker section would be simpler, but GCC ignores section attributes on the static locals
// of templates, where attention.cu's tiles live.)
#pragma once

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <random>
#include <vector>
#include <link.h>

#include "emu_fiber.h"

namespace te {

enum State { READY, AT_BARRIER, AT_WARP, DONE };
enum Order { FORWARD = 0, REVERSED = 1, SHUFFLED = 2 };

struct Copy {  // one pending cp.async
    void* dst;
    const void* src;
    int bytes, src_bytes;
};

struct Thread {
    Context ctx;
    Stack stack;
    dim3 idx;
    int linear = 0, lane = 0, warp = 0;
    State state = READY;
    const char* file = "";
    int line = 0;
    // warp collectives
    unsigned mask = 0;
    int op = 0;        // which collective (see emu_warp.h)
    int phase = 0;     // alternating exchange buffer
    // cp.async: copies issued and not yet performed, and the group boundaries
    std::vector<Copy> pending;
    std::vector<size_t> groups;  // pending.size() at each commit_group
};

struct Exchange {  // per warp, two of them used in turn (see emu_warp.h)
    uint64_t value[32];
    const void* ptr[32];
    unsigned regs[32][10];
    float product[16][8];  // mma: A * B, computed once by the first lane to need it
    bool computed;
};

struct Warp {
    int lanes = 0;    // lanes present in the block (the last warp may be partial)
    int waiting = 0;  // lanes at the current collective
    unsigned expected = 0;
    Exchange xchg[2];
};

struct Runtime {
    dim3 grid, block, block_idx;
    Thread* current = nullptr;
    Context scheduler;
    std::vector<Thread> threads;
    std::vector<Warp> warps;
    std::vector<Thread*> ready, next;
    int live = 0, at_barrier = 0;
    int order = FORWARD;
    unsigned long long seed = 0;
    std::mt19937_64 rng;
    char* dyn_shared = nullptr;
    size_t dyn_bytes = 0;
    std::vector<char> dyn_arena;
    bool failed = false;
    char error[1024] = {0};
    void (*body)(void*) = nullptr;  // runs the kernel with its arguments in the current thread
    void* body_arg = nullptr;
    size_t stack_bytes = 256 * 1024;
    std::vector<Stack> stacks;  // kept between launches
};

inline Runtime& rt() {
    static Runtime r;
    return r;
}

inline thread_local char tls_anchor = 0;  // touched so that this thread's TLS block exists

struct SharedRange {
    char* begin = nullptr;
    size_t bytes = 0;
};

inline int find_tls(dl_phdr_info* info, size_t, void* data) {
    const uintptr_t me = (uintptr_t)&find_tls;
    bool mine = false;
    const ElfW(Phdr)* tls = nullptr;
    for (int i = 0; i < info->dlpi_phnum; ++i) {
        const ElfW(Phdr)& p = info->dlpi_phdr[i];
        if (p.p_type == PT_LOAD && me >= info->dlpi_addr + p.p_vaddr && me < info->dlpi_addr + p.p_vaddr + p.p_memsz)
            mine = true;
        if (p.p_type == PT_TLS) tls = &p;
    }
    if (!mine) return 0;
    if (tls) *(SharedRange*)data = SharedRange{(char*)info->dlpi_tls_data, (size_t)tls->p_memsz};
    return 1;
}

// This OS thread's static shared memory (found again per launch: Python may launch from any thread).
inline SharedRange& shared_range() {
    static SharedRange range;
    return range;
}
inline void locate_shared() {
    *(volatile char*)&tls_anchor = 1;
    SharedRange r;
    dl_iterate_phdr(find_tls, &r);
    shared_range() = r;
}
inline char* shared_begin() { return shared_range().begin; }
inline char* shared_end() { return shared_range().begin + shared_range().bytes; }
inline bool in_shared(const void* p, size_t bytes) {
    const char* c = (const char*)p;
    if (shared_begin() && c >= shared_begin() && c + bytes <= shared_end()) return true;
    Runtime& r = rt();
    return r.dyn_shared && c >= r.dyn_shared && c + bytes <= r.dyn_shared + r.dyn_bytes;
}

// Stop the launch: record the first error and leave this thread for good.
[[noreturn]] inline void fail(const char* fmt, ...);
inline void yield();

inline void thread_exit_checks(Thread& t);
inline void release_barrier();

inline void thread_entry() {
    Runtime& r = rt();
    r.body(r.body_arg);
    Thread& t = *r.current;
    thread_exit_checks(t);
    t.state = DONE;
    --r.live;
    if (r.at_barrier && r.at_barrier == r.live) release_barrier();  // exited threads count as arrived
    context_switch(t.ctx, r.scheduler);
    __builtin_trap();  // a finished thread is never resumed
}

inline void vrecord(const char* fmt, va_list ap) {
    Runtime& r = rt();
    if (r.failed) return;
    r.failed = true;
    int n = snprintf(r.error, sizeof r.error, "block (%u,%u,%u)", r.block_idx.x, r.block_idx.y, r.block_idx.z);
    if (r.current) {
        const Thread& t = *r.current;
        n += snprintf(r.error + n, sizeof r.error - n, " thread (%u,%u,%u)", t.idx.x, t.idx.y, t.idx.z);
    }
    n += snprintf(r.error + n, sizeof r.error - n, ": ");
    vsnprintf(r.error + n, sizeof r.error - n, fmt, ap);
}

// Record an error from the scheduler (no thread to leave).
inline void record_error(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vrecord(fmt, ap);
    va_end(ap);
}

[[noreturn]] inline void fail(const char* fmt, ...) {
    Runtime& r = rt();
    va_list ap;
    va_start(ap, fmt);
    vrecord(fmt, ap);
    va_end(ap);
    if (r.current) {
        Thread& t = *r.current;
        t.state = DONE;
        context_switch(t.ctx, r.scheduler);
    }
    __builtin_trap();
}

inline void yield() {
    Runtime& r = rt();
    context_switch(r.current->ctx, r.scheduler);
    if (r.failed) fail("stopped");  // another thread failed while this one waited: leave too
}

// -- __syncthreads ----------------------------------------------------------------------------
inline void release_barrier() {
    Runtime& r = rt();
    const Thread* first = nullptr;
    for (Thread& t : r.threads) {
        if (t.state != AT_BARRIER) continue;
        if (!first) first = &t;
        else if (t.line != first->line || t.file != first->file)
            fail("__syncthreads in divergent code: thread %u waits at %s:%d, thread %u at %s:%d", first->linear,
                 first->file, first->line, t.linear, t.file, t.line);
    }
    for (Thread& t : r.threads)
        if (t.state == AT_BARRIER) {
            t.state = READY;
            r.next.push_back(&t);
        }
    r.at_barrier = 0;
}

inline void syncthreads(const char* file, int line) {
    Runtime& r = rt();
    Thread& t = *r.current;
    t.state = AT_BARRIER;
    t.file = file;
    t.line = line;
    if (++r.at_barrier == r.live) release_barrier();
    yield();
}

inline void check_block_progress() {
    // Every live thread waits, at a barrier or a collective, and none can be released.
    Runtime& r = rt();
    const Thread* bar = nullptr;
    const Thread* warp = nullptr;
    for (const Thread& t : r.threads) {
        if (t.state == AT_BARRIER && !bar) bar = &t;
        if (t.state == AT_WARP && !warp) warp = &t;
    }
    if (bar && warp)
        return record_error("deadlock: thread %u waits at __syncthreads (%s:%d) while thread %u waits at a warp collective "
             "(%s:%d) its warp never completes", bar->linear, bar->file, bar->line, warp->linear, warp->file,
             warp->line);
    if (warp)
        return record_error("deadlock: thread %u waits at a warp collective (%s:%d) that its lanes never reach",
                            warp->linear, warp->file, warp->line);
    record_error("deadlock: %d live threads and none can run", r.live);
}

inline void thread_exit_checks(Thread& t) {
    Runtime& r = rt();
    Warp& w = r.warps[t.warp];
    if (w.waiting && (w.expected >> t.lane & 1u))
        fail("exited while lanes of its warp wait for it at a collective (mask 0x%08x)", w.expected);
}

// -- running a block --------------------------------------------------------------------------
inline void order_ready(std::vector<Thread*>& v) {
    Runtime& r = rt();
    if (r.order == FORWARD) std::sort(v.begin(), v.end(), [](Thread* a, Thread* b) { return a->linear < b->linear; });
    else std::sort(v.begin(), v.end(), [](Thread* a, Thread* b) { return a->linear > b->linear; });
}

inline void run_thread(Thread* t) {
    Runtime& r = rt();
    r.current = t;
    context_switch(r.scheduler, t->ctx);
    r.current = nullptr;
}

// shuffled: random warps, each run until none of its lanes can run.
inline void run_warps_randomly() {
    Runtime& r = rt();
    std::vector<Thread*> lanes;
    while (r.live > 0 && !r.failed) {
        r.ready.insert(r.ready.end(), r.next.begin(), r.next.end());
        r.next.clear();
        if (r.ready.empty()) {
            check_block_progress();
            return;
        }
        const int warp = r.ready[std::uniform_int_distribution<size_t>(0, r.ready.size() - 1)(r.rng)]->warp;
        for (;;) {
            lanes.clear();
            auto keep = std::partition(r.ready.begin(), r.ready.end(), [&](Thread* t) { return t->warp != warp; });
            lanes.assign(keep, r.ready.end());
            r.ready.erase(keep, r.ready.end());
            if (lanes.empty()) break;
            std::shuffle(lanes.begin(), lanes.end(), r.rng);
            for (Thread* t : lanes) {
                run_thread(t);
                if (r.failed) return;
            }
            r.ready.insert(r.ready.end(), r.next.begin(), r.next.end());
            r.next.clear();
        }
    }
}

inline bool run_block(const dim3& bidx) {
    Runtime& r = rt();
    r.block_idx = bidx;
    const int n = (int)(r.block.x * r.block.y * r.block.z);
    if (shared_begin()) memset(shared_begin(), 0xff, (size_t)(shared_end() - shared_begin()));
    if (r.dyn_bytes) memset(r.dyn_shared, 0xff, r.dyn_bytes);
    while ((int)r.stacks.size() < n) {
        Stack s = stack_alloc(r.stack_bytes);
        if (!s.base) {
            snprintf(r.error, sizeof r.error, "out of memory for %d thread stacks", n);
            r.failed = true;
            return false;
        }
        r.stacks.push_back(s);
    }
    r.threads.assign(n, Thread());
    r.warps.assign((n + 31) / 32, Warp());
    r.ready.clear();
    r.next.clear();
    for (int i = 0; i < n; ++i) {
        Thread& t = r.threads[i];
        t.linear = i;
        t.idx = dim3(i % r.block.x, (i / r.block.x) % r.block.y, i / (r.block.x * r.block.y));
        t.lane = i & 31;
        t.warp = i >> 5;
        t.stack = r.stacks[i];
        context_init(t.ctx, t.stack, thread_entry);
        r.warps[t.warp].lanes++;
        r.ready.push_back(&t);
    }
    r.live = n;
    r.at_barrier = 0;
    r.rng.seed(r.seed * 0x9E3779B97F4A7C15ull + bidx.x + 65536ull * (bidx.y + 65536ull * bidx.z));
    if (r.order == SHUFFLED) run_warps_randomly();
    while (r.order != SHUFFLED && r.live > 0 && !r.failed) {
        if (r.ready.empty()) {
            check_block_progress();
            break;
        }
        order_ready(r.ready);
        for (Thread* t : r.ready) {
            run_thread(t);
            if (r.failed) break;
        }
        r.ready.swap(r.next);
        r.next.clear();
    }
    r.current = nullptr;
    return !r.failed;
}

}  // namespace te

// The built-in variables: the running fiber's record (not thread_local: every fiber of a block
// shares one OS thread).
#define threadIdx (te::rt().current->idx)
#define blockIdx (te::rt().block_idx)
#define blockDim (te::rt().block)
#define gridDim (te::rt().grid)
#define warpSize 32

__forceinline__ void __syncthreads_at(const char* file, int line) { te::syncthreads(file, line); }
#define __syncthreads() __syncthreads_at(__FILE__, __LINE__)
__forceinline__ void __threadfence() {}
__forceinline__ void __threadfence_block() {}
