// emu_warp.h: warp collectives (shuffles, votes) and the C++ twins of the attention kernel's
// inline PTX (ldmatrix, mma.sync m16n8k16, cp.async), from the PTX ISA's fragment tables.
//
// A collective: each lane writes its operands into the warp's exchange buffer, all lanes of the
// mask meet (emu_runtime.h), then each lane computes its own result from every lane's operands.
// Two exchange buffers are used in turn, so a lane that runs ahead to the next collective never
// overwrites operands a slower lane has still to read (it cannot pass the next meeting alone).
#pragma once

#include "emu_runtime.h"

namespace te {

enum Op { OP_SHFL = 1, OP_VOTE, OP_SYNCWARP, OP_LDMATRIX, OP_MMA };

inline Exchange& exchange() {
    Runtime& r = rt();
    Thread& t = *r.current;
    return r.warps[t.warp].xchg[t.phase];
}

// Wait until every lane of `mask` has reached a collective; checks that they reach the same one.
inline void warp_meet(int op, unsigned mask, const char* file, int line) {
    Runtime& r = rt();
    Thread& t = *r.current;
    Warp& w = r.warps[t.warp];
    const unsigned present = w.lanes == 32 ? 0xffffffffu : ((1u << w.lanes) - 1u);
    if (!(mask >> t.lane & 1u)) fail("warp collective at %s:%d with mask 0x%08x that excludes its own lane %d", file, line, mask, t.lane);
    if (mask & ~present)
        fail("warp collective at %s:%d: mask 0x%08x names lanes that do not exist (this warp has %d lanes)", file, line,
             mask, w.lanes);
    for (int l = 0; l < 32; ++l)
        if ((mask >> l & 1u) && r.threads[t.warp * 32 + l].state == DONE)
            fail("warp collective at %s:%d: lane %d of mask 0x%08x has exited", file, line, l, mask);
    if (w.waiting == 0) w.expected = mask;
    else if (w.expected != mask) fail("lanes meet at %s:%d with masks 0x%08x and 0x%08x", file, line, mask, w.expected);
    t.state = AT_WARP;
    t.op = op;
    t.file = file;
    t.line = line;
    if (++w.waiting == __builtin_popcount(mask)) {
        for (int l = 0; l < 32; ++l) {
            if (!(mask >> l & 1u)) continue;
            Thread& o = r.threads[t.warp * 32 + l];
            if (o.op != op || o.line != line || o.file != file)
                fail("divergent warp collective: lane %d at %s:%d, lane %d at %s:%d", t.lane, file, line, l, o.file, o.line);
            o.state = READY;
            r.next.push_back(&o);
        }
        w.waiting = 0;
    }
    yield();
}

inline void finish_collective() { rt().current->phase ^= 1; }

template <typename V>
inline V shuffle(unsigned mask, V v, int src, const char* file, int line) {
    static_assert(sizeof(V) <= 8, "shuffle of more than 8 bytes");
    Exchange& x = exchange();
    const int lane = rt().current->lane;
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof(V));
    x.value[lane] = bits;
    warp_meet(OP_SHFL, mask, file, line);
    if (!(mask >> src & 1u)) fail("shuffle at %s:%d reads lane %d, outside mask 0x%08x", file, line, src, mask);
    bits = x.value[src];
    finish_collective();
    V out;
    memcpy(&out, &bits, sizeof(V));
    return out;
}

inline unsigned vote(unsigned mask, bool pred, const char* file, int line) {
    Exchange& x = exchange();
    x.value[rt().current->lane] = pred;
    warp_meet(OP_VOTE, mask, file, line);
    unsigned ballot = 0;
    for (int l = 0; l < 32; ++l)
        if ((mask >> l & 1u) && x.value[l]) ballot |= 1u << l;
    finish_collective();
    return ballot;
}

// -- ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{,.trans}.shared.b16 ---------------------------------
// Lanes 8j..8j+7 give the row addresses of matrix j (16 bytes each, 16-byte aligned, shared).
// Register j of lane l: without .trans {M_j[l/4][2(l%4)], M_j[l/4][2(l%4)+1]}; with .trans
// {M_j[2(l%4)][l/4], M_j[2(l%4)+1][l/4]}; the lower-index element in the low half.
inline void ldmatrix(unsigned* r, int count, bool trans, const void* p, const char* file, int line) {
    Exchange& x = exchange();
    const int lane = rt().current->lane;
    x.ptr[lane] = p;
    warp_meet(OP_LDMATRIX, 0xffffffffu, file, line);
    for (int l = 0; l < 8 * count; ++l) {
        if (!in_shared(x.ptr[l], 16)) fail("ldmatrix at %s:%d: lane %d's row address %p is not in shared memory", file, line, l, x.ptr[l]);
        if ((uintptr_t)x.ptr[l] & 15u) fail("ldmatrix at %s:%d: lane %d's row address %p is not 16-byte aligned", file, line, l, x.ptr[l]);
    }
    for (int j = 0; j < count; ++j) {
        unsigned reg = 0;
        for (int e = 0; e < 2; ++e) {
            const int row = trans ? 2 * (lane % 4) + e : lane / 4;
            const int col = trans ? lane / 4 : 2 * (lane % 4) + e;
            const unsigned short v = ((const unsigned short*)x.ptr[8 * j + row])[col];
            reg |= (unsigned)v << (16 * e);
        }
        r[j] = reg;
    }
    finish_collective();
}

// -- mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32 -------------------------
// groupID g = lane / 4, t = lane % 4. A (16x16) a0..a7 (two per register, low half first):
// row g for i in {0,1,4,5} else g+8, col 2t + (i&1) (+8 for i >= 4). B (16x8) b0..b3: row
// 2t + (i&1) (+8 for i >= 2), col g. C/D (16x8) c0..c3: row g (+8 for i >= 2), col 2t + (i&1).
template <bool BF16>
inline float mma_element(unsigned reg, int half) {
    const unsigned short bits = (unsigned short)(reg >> (16 * half));
    return BF16 ? bf16_bits_to_f32(bits) : f16_bits_to_f32(bits);
}

template <bool BF16>
inline void mma_16816(float* c, const unsigned* a, const unsigned* b, const char* file, int line) {
    Exchange& x = exchange();
    const int lane = rt().current->lane;
    for (int i = 0; i < 4; ++i) x.regs[lane][i] = a[i];
    x.regs[lane][4] = b[0];
    x.regs[lane][5] = b[1];
    x.computed = false;  // every lane writes before the meeting, none computes before it
    warp_meet(OP_MMA, 0xffffffffu, file, line);
    if (!x.computed) {  // the first lane after the meeting assembles A and B from all 32 lanes
        float A[16][16], B[16][8];
        for (int l = 0; l < 32; ++l) {
            const int g = l >> 2, t = l & 3;
            for (int i = 0; i < 8; ++i) {
                const int row = (i == 0 || i == 1 || i == 4 || i == 5) ? g : g + 8;
                const int col = 2 * t + (i & 1) + (i >= 4 ? 8 : 0);
                A[row][col] = mma_element<BF16>(x.regs[l][i / 2], i & 1);
            }
            for (int i = 0; i < 4; ++i) B[2 * t + (i & 1) + (i >= 2 ? 8 : 0)][g] = mma_element<BF16>(x.regs[l][4 + i / 2], i & 1);
        }
        for (int row = 0; row < 16; ++row)
            for (int col = 0; col < 8; ++col) {
                float p = 0.0f;
                for (int k = 0; k < 16; ++k) p += A[row][k] * B[k][col];  // products are exact in float32
                x.product[row][col] = p;
            }
        x.computed = true;
    }
    const int g = lane >> 2, t = lane & 3;
    for (int i = 0; i < 4; ++i) c[i] += x.product[g + (i >= 2 ? 8 : 0)][2 * t + (i & 1)];
    finish_collective();
}

// -- cp.async.cg.shared.global [dst], [src], 16, src_bytes; commit_group; wait_group N ---------
// The copy is queued and performed at the wait that covers its group; until then the
// destination holds 0xFF bytes (NaN), so a read before the wait (or by another thread before
// the barrier after it) shows. src_bytes < 16 zero-fills the rest (0: read nothing).
inline void cp_async(void* dst, const void* src, int bytes, int src_bytes, const char* file, int line) {
    if (!in_shared(dst, (size_t)bytes)) fail("cp.async at %s:%d: destination %p is not in shared memory", file, line, dst);
    if (((uintptr_t)dst | (uintptr_t)src) % (uintptr_t)bytes)
        fail("cp.async at %s:%d: addresses %p <- %p are not %d-byte aligned", file, line, dst, src, bytes);
    if (src_bytes < 0 || src_bytes > bytes) fail("cp.async at %s:%d: src-size %d outside 0..%d", file, line, src_bytes, bytes);
    memset(dst, 0xff, (size_t)bytes);
    rt().current->pending.push_back(Copy{dst, src, bytes, src_bytes});
}

inline void cp_async_commit() {
    Thread& t = *rt().current;
    t.groups.push_back(t.pending.size());
}

inline void cp_async_wait(int n) {
    Thread& t = *rt().current;
    if ((int)t.groups.size() <= n) return;
    const size_t done = t.groups[t.groups.size() - 1 - n];  // copies of every older group
    for (size_t i = 0; i < done; ++i) {
        const Copy& c = t.pending[i];
        memcpy(c.dst, c.src, (size_t)c.src_bytes);
        memset((char*)c.dst + c.src_bytes, 0, (size_t)(c.bytes - c.src_bytes));
    }
    t.pending.erase(t.pending.begin(), t.pending.begin() + (long)done);
    const size_t groups_done = t.groups.size() - n;
    t.groups.erase(t.groups.begin(), t.groups.begin() + (long)groups_done);
    for (size_t& g : t.groups) g -= done;
}

}  // namespace te

// The CUDA names. `width` splits the warp into segments as on the GPU.
#define TE_HERE __builtin_FILE(), __builtin_LINE()
template <typename V>
__forceinline__ V __shfl_sync(unsigned mask, V v, int src, int width = 32, const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
    const int lane = te::rt().current->lane, base = lane & ~(width - 1);
    return te::shuffle(mask, v, base + (src & (width - 1)), f, l);
}
template <typename V>
__forceinline__ V __shfl_xor_sync(unsigned mask, V v, int lane_mask, int width = 32, const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
    const int lane = te::rt().current->lane;
    int src = lane ^ lane_mask;
    if ((src & ~(width - 1)) != (lane & ~(width - 1))) src = lane;
    return te::shuffle(mask, v, src, f, l);
}
template <typename V>
__forceinline__ V __shfl_down_sync(unsigned mask, V v, unsigned delta, int width = 32, const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
    const int lane = te::rt().current->lane;
    int src = lane + (int)delta;
    if ((src & ~(width - 1)) != (lane & ~(width - 1))) src = lane;
    return te::shuffle(mask, v, src, f, l);
}
template <typename V>
__forceinline__ V __shfl_up_sync(unsigned mask, V v, unsigned delta, int width = 32, const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
    const int lane = te::rt().current->lane;
    int src = lane - (int)delta;
    if (src < (lane & ~(width - 1))) src = lane;
    return te::shuffle(mask, v, src, f, l);
}
__forceinline__ unsigned __ballot_sync(unsigned mask, int pred, const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
    return te::vote(mask, pred != 0, f, l);
}
__forceinline__ int __any_sync(unsigned mask, int pred, const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
    return te::vote(mask, pred != 0, f, l) != 0;
}
__forceinline__ int __all_sync(unsigned mask, int pred, const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
    return te::vote(mask, pred != 0, f, l) == mask;
}
__forceinline__ void __syncwarp(unsigned mask = 0xffffffffu, const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
    te::warp_meet(te::OP_SYNCWARP, mask, f, l);
    te::finish_collective();
}
__forceinline__ unsigned __activemask() { return 0xffffffffu; }
