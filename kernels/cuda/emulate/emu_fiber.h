// emu_fiber.h: one CUDA thread = one fiber; a block's fibers run on one OS thread.
//
// Why fibers and not OS threads: a block is up to 1,024 threads that meet at every warp
// shuffle (32 lanes) and every __syncthreads. With fibers a meeting is a 20 ns stack switch and
// the scheduler decides the order in which threads run between meetings (forward, reversed or
// a seeded shuffle: the race checks); 1,024 OS threads would cost microseconds per meeting on a
// 2-core CI box and give no control over the order.
// Why our own switch and not Boost.Context or swapcontext: Boost.Context is one more apt
// package for 30 lines of assembly; swapcontext makes a sigprocmask system call per switch
// (about 20x slower, and the naive attention kernel switches ~10^7 times in a test). The
// ucontext version stays as the fallback for other CPUs and for the sanitizer build
// (AddressSanitizer understands swapcontext): -DTE_EMU_UCONTEXT selects it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <sys/mman.h>
#include <unistd.h>

#if !defined(__x86_64__) && !defined(TE_EMU_UCONTEXT)
#define TE_EMU_UCONTEXT 1
#endif
#ifdef TE_EMU_UCONTEXT
#include <ucontext.h>
#endif

namespace te {

struct Stack {
    char* base = nullptr;  // lowest mapped address (the guard page)
    size_t size = 0;
};

#ifdef TE_EMU_UCONTEXT
struct Context {
    ucontext_t uc;
};
#else
struct Context {
    void* sp = nullptr;
};
extern "C" void te_switch_x86(void** save_sp, void* new_sp);
// Saves the callee-saved registers, MXCSR and the x87 control word on the current stack, stores
// the stack pointer in *save_sp, loads new_sp and restores the same from there.
asm(R"(
    .text
    .p2align 4
    .hidden te_switch_x86
    .type te_switch_x86, @function
te_switch_x86:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size te_switch_x86, .-te_switch_x86
)");
#endif

inline Stack stack_alloc(size_t size) {
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size = (size + page - 1) / page * page;
    void* p = mmap(nullptr, size + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return Stack{};
    mprotect(p, page, PROT_NONE);  // a stack overflow faults instead of writing a neighbour
    return Stack{(char*)p, size + page};
}

// Prepare `ctx` so that switching to it calls entry() on `stack`; entry must never return.
inline void context_init(Context& ctx, Stack& stack, void (*entry)()) {
#ifdef TE_EMU_UCONTEXT
    getcontext(&ctx.uc);
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    ctx.uc.uc_stack.ss_sp = stack.base + page;
    ctx.uc.uc_stack.ss_size = stack.size - page;
    ctx.uc.uc_link = nullptr;
    makecontext(&ctx.uc, entry, 0);
#else
    uintptr_t top = ((uintptr_t)(stack.base + stack.size)) & ~(uintptr_t)15;
    uint64_t* sp = (uint64_t*)(top - 72);  // 8 (csr) + 6 registers + return address + fake caller
    uint32_t mxcsr;
    uint16_t fpucw;
    asm volatile("stmxcsr %0" : "=m"(mxcsr));
    asm volatile("fnstcw %0" : "=m"(fpucw));
    sp[0] = (uint64_t)mxcsr | ((uint64_t)fpucw << 32);
    for (int i = 1; i <= 6; ++i) sp[i] = 0;  // r15 r14 r13 r12 rbx rbp
    sp[7] = (uint64_t)(uintptr_t)entry;      // `ret` jumps here with rsp % 16 == 8, as after a call
    sp[8] = 0;
    ctx.sp = sp;
#endif
}

inline void context_switch(Context& from, Context& to) {
#ifdef TE_EMU_UCONTEXT
    swapcontext(&from.uc, &to.uc);
#else
    te_switch_x86(&from.sp, to.sp);
#endif
}

}  // namespace te
