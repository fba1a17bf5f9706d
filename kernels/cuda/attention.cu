// attention.cu: bidirectional multi-head attention over a packed, padding-free batch.
//
//   for each sequence s (tokens cu_seqlens[s] .. cu_seqlens[s+1]-1) and head h:
//     out[s, h] = softmax(Q K^T * scale) V,    scale = 1 / sqrt(head_dim)
//
// Shapes: qkv (T, 3H) T, the fused projection: row t is [Q | K | V], head h of each at columns
// h*D .. h*D+D-1 of its third; out (T, H) T; cu_seqlens (n+1,) int32. No padding and no mask:
// a query sees exactly the keys of its own sequence. Softmax and accumulation in float32.
// Numpy twin: NumpyOps.attention in tinyembed/engine/ops/numpy_ops.py.
//
// Versions, simple to fast:
//   attention_naive   one warp per (query token, head). Each lane owns D/32 of the head's
//                     dimensions: per key, a partial dot product, a warp-shuffle sum, then the
//                     online-softmax update (running max m, running sum l, rescaled
//                     accumulator) in float32. K and V come straight from global memory (L2),
//                     so the same keys are re-read by every query. Any D <= 256, any dtype;
//                     it is also the float32 path.
//   attention_d{32,64,128}
//                     flash-attention-2 style, fp16/bf16 only. A block of 4 warps owns 64
//                     queries of one (sequence, head); each warp owns 16 query rows whose Q
//                     fragments stay in registers for the whole key loop. K and V tiles of BN
//                     keys are copied to shared memory with cp.async, double-buffered so the
//                     next tile streams in while this one is used. S = Q K^T and O += P V run on
//                     the tensor cores (mma.sync m16n8k16, fp32 accumulators; K via ldmatrix,
//                     V via ldmatrix.trans); P never leaves registers: the S accumulator layout
//                     is re-packed as the A operand of the P V product. Softmax is online
//                     (exp2 with the scale folded into log2 e), keys past the sequence's end
//                     are masked to -inf and their K/V rows are zero-filled by cp.async.
//                     Grid: (ceil(max_len / 64), heads, sequences); blocks past a sequence's
//                     end return at once (and a block loops over tiles if the grid is short).
//                     Needs H % 8 == 0 (16-byte cp.async rows).
//                     Shared memory: 2 stages * (K + V) * BN * (D + 8) * 2 bytes =
//                     20 KiB (D=32, BN=64), 36 KiB (D=64, BN=64), 34 KiB (D=128, BN=32): static,
//                     under the 48 KiB that needs no opt-in. The +8 pad makes the row stride an
//                     odd multiple of 16 bytes, so ldmatrix's 8 row reads hit 8 distinct
//                     16-byte bank groups.
// Lengths 1 .. 8192 (any length: nothing is sized by it). FLOPs: 4 * sum(L_s^2) * H.
//
// Test: python -m pytest tests/test_ops_cuda.py -k attention
// Bench: python bench/gpu.py --only kernels         (TFLOP/s against cuBLAS fp16 peak)
#include "common.cuh"

// ---------------------------------------------------------------------------------------------
// v1: naive. blockDim = 128 (4 warps), grid = ceil(T * heads / 4).
#define NAIVE_CHUNKS 8  // D <= 32 * NAIVE_CHUNKS = 256

extern "C" __global__ void attention_naive(const T* __restrict__ qkv, const int* __restrict__ cu_seqlens,
                                           int num_seqs, T* __restrict__ out, int tokens, int num_heads,
                                           int head_dim, float scale) {
    const long long warp_id = (blockIdx.x * (long long)blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (warp_id >= (long long)tokens * num_heads) return;  // whole warps leave together
    const int token = (int)(warp_id / num_heads), head = (int)(warp_id % num_heads);
    // The sequence holding `token`: the last s with cu_seqlens[s] <= token (binary search).
    int lo = 0, hi = num_seqs - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;
        if (cu_seqlens[mid] <= token) lo = mid; else hi = mid - 1;
    }
    const int start = cu_seqlens[lo], end = cu_seqlens[lo + 1];
    const int width = num_heads * head_dim;
    const long long stride = 3LL * width;
    const T* q = qkv + token * stride + head * head_dim;
    float qr[NAIVE_CHUNKS], acc[NAIVE_CHUNKS];
#pragma unroll
    for (int i = 0; i < NAIVE_CHUNKS; ++i) {
        const int d = lane + 32 * i;
        qr[i] = d < head_dim ? to_f(q[d]) * scale : 0.0f;
        acc[i] = 0.0f;
    }
    float m = TE_NEG_INF, l = 0.0f;
    for (int key = start; key < end; ++key) {
        const T* k = qkv + key * stride + width + head * head_dim;
        const T* v = k + width;
        float s = 0.0f;
#pragma unroll
        for (int i = 0; i < NAIVE_CHUNKS; ++i) {
            const int d = lane + 32 * i;
            if (d < head_dim) s += qr[i] * to_f(k[d]);
        }
        s = warp_sum(s);  // every lane now holds q . k
        const float m_new = fmaxf(m, s);
        const float alpha = __expf(m - m_new);  // 0 on the first key (m = -inf)
        const float p = __expf(s - m_new);
        l = l * alpha + p;
#pragma unroll
        for (int i = 0; i < NAIVE_CHUNKS; ++i) {
            const int d = lane + 32 * i;
            if (d < head_dim) acc[i] = acc[i] * alpha + p * to_f(v[d]);
        }
        m = m_new;
    }
    T* o = out + (long long)token * width + head * head_dim;
    const float inv_l = 1.0f / l;  // l >= 1: the maximal key contributes exp(0)
#pragma unroll
    for (int i = 0; i < NAIVE_CHUNKS; ++i) {
        const int d = lane + 32 * i;
        if (d < head_dim) o[d] = from_f<T>(acc[i] * inv_l);
    }
}

// ---------------------------------------------------------------------------------------------
// v2: tensor cores (fp16 / bf16 storage only).
#if TE_DTYPE != 0

#define TC_BM 64        // queries per block
#define TC_WARPS 4      // 16 query rows per warp
#define TC_THREADS (TC_WARPS * 32)
#define TC_PAD 8        // elements of padding per shared-memory row

__device__ __forceinline__ unsigned smem_addr(const void* p) {
    return (unsigned)__cvta_generic_to_shared(p);
}

// 16 bytes global -> shared, asynchronous. `valid` false writes 16 zero bytes and reads nothing.
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
                 "r"(valid ? 16 : 0)
                 : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }

// Four 8x8 b16 matrices from shared memory; lane l gives the address of row (l & 7) of matrix
// (l >> 3). Without .trans lane l receives row l/4, columns 2(l%4), 2(l%4)+1 of each matrix;
// with .trans, rows 2(l%4), 2(l%4)+1 of column l/4.
__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p))
                 : "memory");
}
__device__ __forceinline__ void ldmatrix_x4_trans(unsigned (&r)[4], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p))
                 : "memory");
}

// D(16x8, f32) += A(16x16, row) * B(16x8, col). With g = lane / 4, t = lane % 4:
//   a[0] = A[g][2t..2t+1]   a[1] = A[g+8][2t..2t+1]   a[2] = A[g][2t+8..]   a[3] = A[g+8][2t+8..]
//   b0 = B[2t..2t+1][g]     b1 = B[2t+8..2t+9][g]
//   c[0..1] = D[g][2t..2t+1]   c[2..3] = D[g+8][2t..2t+1]
__device__ __forceinline__ void mma_16816(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
#if TE_DTYPE == 1
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

// Two floats -> two T in one 32-bit register, the first in the low half (the lower column).
__device__ __forceinline__ unsigned pack2(float lo, float hi) {
#if TE_DTYPE == 1
    __half2 h = __floats2half2_rn(lo, hi);
#else
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
#endif
    return *reinterpret_cast<unsigned*>(&h);
}

template <int D, int BN>
__device__ __forceinline__ void attention_tc(const T* __restrict__ qkv, const int* __restrict__ cu_seqlens,
                                             T* __restrict__ out, int num_heads, float scale_log2) {
    static_assert(D % 16 == 0 && BN % 16 == 0, "tiles are whole mma steps");
    constexpr int DS = D + TC_PAD;       // shared row stride in elements (a multiple of 8)
    constexpr int NT = BN / 8;           // n-tiles of S per key tile
    constexpr int DT = D / 8;            // n-tiles of O
    constexpr int KQ = D / 16;           // k-steps of Q K^T
    constexpr int CHUNKS = BN * (D / 8); // 16-byte pieces in one K (or V) tile
    __shared__ __align__(128) T ks[2][BN][DS];
    __shared__ __align__(128) T vs[2][BN][DS];

    const int seq = blockIdx.z, head = blockIdx.y;
    const int start = cu_seqlens[seq];
    const int len = cu_seqlens[seq + 1] - start;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int g = lane >> 2, t = lane & 3;
    const int width = num_heads * D;
    const long long stride = 3LL * width;
    const T* q_base = qkv + (long long)start * stride + head * D;
    const T* k_base = q_base + width;
    const T* v_base = q_base + 2 * width;

    auto load_kv = [&](int tile, int buf) {
        const int kv0 = tile * BN;
#pragma unroll
        for (int c = tid; c < CHUNKS; c += TC_THREADS) {
            const int r = c / (D / 8), col = (c % (D / 8)) * 8;
            const bool ok = kv0 + r < len;
            const long long off = (long long)(ok ? kv0 + r : 0) * stride + col;  // row 0 is valid
            cp_async_16(&ks[buf][r][col], k_base + off, ok);
            cp_async_16(&vs[buf][r][col], v_base + off, ok);
        }
        cp_async_commit();
    };

    // One 64-query tile per iteration; normally the grid has one block per tile and this runs once,
    // but a grid sized from a too-small max_len still covers every query.
    const int n_tiles = (len + BN - 1) / BN;
    for (int q_tile = blockIdx.x * TC_BM; q_tile < len; q_tile += gridDim.x * TC_BM) {
        load_kv(0, 0);  // the first tile streams in while Q is read

        // This warp's 16 query rows as mma A fragments, straight from global memory (rows past the
        // sequence's end read as 0; they are computed and never stored).
        const int row0 = q_tile + warp * 16 + g, row1 = row0 + 8;
        unsigned qa[KQ][4];
#pragma unroll
        for (int kq = 0; kq < KQ; ++kq) {
            const int c0 = kq * 16 + 2 * t;
            const unsigned* p0 = reinterpret_cast<const unsigned*>(q_base + (long long)row0 * stride + c0);
            const unsigned* p1 = reinterpret_cast<const unsigned*>(q_base + (long long)row1 * stride + c0);
            qa[kq][0] = row0 < len ? p0[0] : 0u;
            qa[kq][1] = row1 < len ? p1[0] : 0u;
            qa[kq][2] = row0 < len ? p0[4] : 0u;  // +8 elements = +4 words
            qa[kq][3] = row1 < len ? p1[4] : 0u;
        }

        float o[DT][4];
#pragma unroll
        for (int i = 0; i < DT; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
        float m[2] = {TE_NEG_INF, TE_NEG_INF};  // running max of rows g and g+8, in log2 units
        float l[2] = {0.0f, 0.0f};            // running sum (this thread's columns only)

        // ldmatrix lane addressing (see ldmatrix_x4): matrix mi = lane >> 3, row lane & 7.
        const int mi = lane >> 3, mr = lane & 7;

        for (int tile = 0; tile < n_tiles; ++tile) {
            const int buf = tile & 1;
            if (tile + 1 < n_tiles) {
                load_kv(tile + 1, buf ^ 1);  // its buffer was released by the barrier ending tile-1
                cp_async_wait<1>();          // this thread's copies of `tile` are done
            } else {
                cp_async_wait<0>();
            }
            __syncthreads();  // ... and everyone's

            // S = Q K^T: 16 x BN per warp, fp32.
            float s[NT][4];
#pragma unroll
            for (int i = 0; i < NT; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.0f;
#pragma unroll
            for (int kq = 0; kq < KQ; ++kq) {
#pragma unroll
                for (int n2 = 0; n2 < NT / 2; ++n2) {
                    // matrices: keys n2*16 + {0,0,8,8} + mr, dims kq*16 + {0,8,0,8}
                    unsigned b[4];
                    ldmatrix_x4(b, &ks[buf][n2 * 16 + (mi >> 1) * 8 + mr][kq * 16 + (mi & 1) * 8]);
                    mma_16816(s[2 * n2], qa[kq], b[0], b[1]);
                    mma_16816(s[2 * n2 + 1], qa[kq], b[2], b[3]);
                }
            }

            // Online softmax over this tile, rows g (regs 0,1) and g+8 (regs 2,3).
            const int kv0 = tile * BN;
            const bool partial = kv0 + BN > len;
#pragma unroll
            for (int i = 0; i < NT; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    const int key = kv0 + i * 8 + 2 * t + (j & 1);
                    s[i][j] = (partial && key >= len) ? TE_NEG_INF : s[i][j] * scale_log2;
                }
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                float mx = TE_NEG_INF;
#pragma unroll
                for (int i = 0; i < NT; ++i) mx = fmaxf(mx, fmaxf(s[i][2 * r], s[i][2 * r + 1]));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));  // the 4 lanes of a row
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                const float m_new = fmaxf(m[r], mx);  // finite: key 0 of tile 0 is always valid
                const float alpha = exp2f(m[r] - m_new);
                m[r] = m_new;
                float sum = 0.0f;
#pragma unroll
                for (int i = 0; i < NT; ++i) {
                    s[i][2 * r] = exp2f(s[i][2 * r] - m_new);
                    s[i][2 * r + 1] = exp2f(s[i][2 * r + 1] - m_new);
                    sum += s[i][2 * r] + s[i][2 * r + 1];
                }
                l[r] = l[r] * alpha + sum;
#pragma unroll
                for (int i = 0; i < DT; ++i) {
                    o[i][2 * r] *= alpha;
                    o[i][2 * r + 1] *= alpha;
                }
            }

            // O += P V. P's A fragment for keys kk*16..kk*16+15 is S tiles 2kk and 2kk+1 re-packed.
#pragma unroll
            for (int kk = 0; kk < BN / 16; ++kk) {
                unsigned pa[4];
                pa[0] = pack2(s[2 * kk][0], s[2 * kk][1]);
                pa[1] = pack2(s[2 * kk][2], s[2 * kk][3]);
                pa[2] = pack2(s[2 * kk + 1][0], s[2 * kk + 1][1]);
                pa[3] = pack2(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
                for (int d2 = 0; d2 < D / 16; ++d2) {
                    // matrices: keys kk*16 + {0,8,0,8} + mr, dims d2*16 + {0,0,8,8}; transposed
                    unsigned b[4];
                    ldmatrix_x4_trans(b, &vs[buf][kk * 16 + (mi & 1) * 8 + mr][d2 * 16 + (mi >> 1) * 8]);
                    mma_16816(o[2 * d2], pa, b[0], b[1]);
                    mma_16816(o[2 * d2 + 1], pa, b[2], b[3]);
                }
            }
            __syncthreads();  // everyone is done with `buf` before tile+2 is loaded into it
        }

        // Normalize and store: row sums are split over the 4 lanes of each row.
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            float sum = l[r];
            sum += __shfl_xor_sync(0xffffffffu, sum, 1);
            sum += __shfl_xor_sync(0xffffffffu, sum, 2);
            const float inv = 1.0f / sum;
            const int row = r == 0 ? row0 : row1;
            if (row < len) {
                T* dst = out + (long long)(start + row) * width + head * D + 2 * t;
#pragma unroll
                for (int i = 0; i < DT; ++i)
                    *reinterpret_cast<unsigned*>(dst + i * 8) = pack2(o[i][2 * r] * inv, o[i][2 * r + 1] * inv);
            }
        }
    }  // q_tile: the key loop's closing barrier released both buffers for the next tile's loads
}

// Registers (RESOURCES=1), spill-free everywhere: sm_90 d32 108, d64 130, d128 167 (4 / 3 / 3
// blocks of 128 threads per SM); sm_80 102 / 132 / 167; sm_89 128 / 174 / 207. A min-blocks hint in __launch_bounds__ made them worse (the
// compiler grows to the cap) or spilled (d64 at 4 blocks): an experiment for a device run.
#define TC_KERNEL(D, BN)                                                                              \
    extern "C" __global__ void __launch_bounds__(TC_THREADS)                                          \
        attention_d##D(const T* __restrict__ qkv, const int* __restrict__ cu_seqlens, T* __restrict__ out, \
                       int num_heads, float scale_log2) {                                             \
        attention_tc<D, BN>(qkv, cu_seqlens, out, num_heads, scale_log2);                             \
    }
TC_KERNEL(32, 64)
TC_KERNEL(64, 64)
TC_KERNEL(128, 32)

#endif  // TE_DTYPE != 0
