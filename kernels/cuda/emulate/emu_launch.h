// emu_launch.h: the C entry points the Python launcher (tinyembed/engine/build/cuda_emu_*.py) calls.
//
// The kernel table is generated after the kernel file (see TE_KERNEL_TABLE): for every kernel
// its name, its address, an invoker that calls it with arguments packed as void* (as
// cuLaunchKernel takes them) and its signature as type codes ("p:f16,i32,f32"), which the
// launcher checks against the arguments it was given: the wrong scalar width or array dtype is
// an error here, where a GPU would read garbage.
#pragma once

#include <string>
#include <type_traits>
#include <utility>

#include "emu_warp.h"

#define TE_EXPORT extern "C" __attribute__((visibility("default")))

namespace te {

template <typename U> struct Code { static constexpr const char* value = "?"; };
#define TE_CODE(type, text) template <> struct Code<type> { static constexpr const char* value = text; };
TE_CODE(float, "f32")
TE_CODE(double, "f64")
TE_CODE(__half, "f16")
TE_CODE(__nv_bfloat16, "bf16")
TE_CODE(__half2, "f16x2")
TE_CODE(__nv_bfloat162, "bf16x2")
TE_CODE(float4, "f32x4")
TE_CODE(int, "i32")
TE_CODE(unsigned int, "u32")
TE_CODE(long long, "i64")
TE_CODE(unsigned long long, "u64")
TE_CODE(long, "i64")
TE_CODE(unsigned long, "u64")
TE_CODE(short, "i16")
TE_CODE(unsigned short, "u16")
TE_CODE(signed char, "i8")
TE_CODE(char, "i8")
TE_CODE(unsigned char, "u8")
TE_CODE(bool, "b8")
TE_CODE(void, "void")
#undef TE_CODE

template <typename A> std::string code() {
    using U = std::remove_cv_t<A>;
    if constexpr (std::is_pointer_v<U>) return "p:" + std::string(Code<std::remove_cv_t<std::remove_pointer_t<U>>>::value);
    else return Code<U>::value;
}

struct Entry {
    const char* name;
    void* fn;
    void (*invoke)(void* fn, void** argv);
    const char* (*signature)();
};

template <typename F> struct Kernel;
template <typename... A> struct Kernel<void (*)(A...)> {
    template <size_t... I> static void call(void* fn, void** argv, std::index_sequence<I...>) {
        reinterpret_cast<void (*)(A...)>(fn)(*static_cast<std::remove_cv_t<A>*>(argv[I])...);
    }
    static void invoke(void* fn, void** argv) { call(fn, argv, std::index_sequence_for<A...>{}); }
    static const char* signature() {
        static const std::string s = [] {
            std::string out;
            ((out += (out.empty() ? "" : ",") + code<A>()), ...);
            return out;
        }();
        return s.c_str();
    }
};

struct Call {
    const Entry* entry;
    void** argv;
};

inline void run_call(void* p) {
    const Call* c = static_cast<const Call*>(p);
    c->entry->invoke(c->entry->fn, c->argv);
}

inline int launch(const Entry& e, const unsigned* g, const unsigned* b, size_t shared_bytes, void** argv, int order,
                  unsigned long long seed, char* err, size_t errlen) {
    Runtime& r = rt();
    r.failed = false;
    r.error[0] = 0;
    r.current = nullptr;
    auto bad = [&](const char* why) {
        snprintf(err, errlen, "%s: launch rejected: %s (grid (%u,%u,%u), block (%u,%u,%u), %zu shared bytes)", e.name, why,
                 g[0], g[1], g[2], b[0], b[1], b[2], shared_bytes);
        return 1;
    };
    if (!g[0] || !g[1] || !g[2]) return bad("a grid dimension is 0");
    if (g[1] > 65535 || g[2] > 65535 || g[0] > 2147483647u) return bad("grid too large");
    if (!b[0] || !b[1] || !b[2]) return bad("a block dimension is 0");
    if (b[0] > 1024 || b[1] > 1024 || b[2] > 64 || (unsigned long long)b[0] * b[1] * b[2] > 1024) return bad("more than 1024 threads per block");
    if (shared_bytes > 48 * 1024) return bad("more than 48 KiB of dynamic shared memory (needs an opt-in on a GPU)");
    locate_shared();
    r.grid = dim3(g[0], g[1], g[2]);
    r.block = dim3(b[0], b[1], b[2]);
    r.order = order;
    r.seed = seed;
    r.dyn_arena.assign(shared_bytes + 16, 0);
    r.dyn_shared = shared_bytes ? (char*)(((uintptr_t)r.dyn_arena.data() + 15) & ~(uintptr_t)15) : nullptr;
    r.dyn_bytes = shared_bytes;
    Call call{&e, argv};
    r.body = run_call;
    r.body_arg = &call;
    const bool reversed = order == REVERSED;
    for (unsigned z = 0; z < g[2] && !r.failed; ++z)
        for (unsigned y = 0; y < g[1] && !r.failed; ++y)
            for (unsigned i = 0; i < g[0] && !r.failed; ++i)
                run_block(dim3(reversed ? g[0] - 1 - i : i, y, z));
    r.threads.clear();
    r.dyn_shared = nullptr;
    r.dyn_bytes = 0;
    if (r.failed) {
        snprintf(err, errlen, "%s: %s", e.name, r.error);
        return 1;
    }
    return 0;
}

}  // namespace te

// A kernel that needs dynamic shared memory declares it with TE_EXTERN_SHARED (common.cuh maps
// it to `extern __shared__` on a GPU); a plain `extern __shared__` does not compile here.
#define TE_EXTERN_SHARED(type, name) type* name = reinterpret_cast<type*>(te::rt().dyn_shared)

// The generated part after the kernel file: TE_KERNEL_TABLE(TE_KERNEL(a) TE_KERNEL(b) ...)
#define TE_KERNEL(name) te::Entry{#name, reinterpret_cast<void*>(&name), &te::Kernel<decltype(&name)>::invoke, &te::Kernel<decltype(&name)>::signature},
#define TE_KERNEL_TABLE(...)                                                                       \
    static const te::Entry te_table[] = {__VA_ARGS__};                                             \
    TE_EXPORT int te_kernel_count() { return (int)(sizeof te_table / sizeof te_table[0]); }        \
    TE_EXPORT const char* te_kernel_name(int i) { return te_table[i].name; }                       \
    TE_EXPORT const char* te_kernel_signature(int i) { return te_table[i].signature(); }           \
    TE_EXPORT int te_launch(int i, const unsigned* grid, const unsigned* block, size_t shared_bytes, void** argv, \
                            int order, unsigned long long seed, char* err, size_t errlen) {        \
        return te::launch(te_table[i], grid, block, shared_bytes, argv, order, seed, err, errlen); \
    }                                                                                              \
    TE_EXPORT size_t te_static_shared_bytes() {                                                    \
        te::locate_shared();                                                                       \
        return te::shared_range().bytes;                                                           \
    }
