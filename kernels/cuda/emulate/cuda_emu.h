// cuda_emu.h: compile a kernels/cuda/*.cu file, unmodified, with the host C++ compiler:
//
//   g++ -std=c++17 -O1 -fPIC -shared -fno-strict-aliasing -fvisibility=hidden -Wno-unknown-pragmas
//       -include kernels/cuda/emulate/cuda_emu.h -I kernels/cuda/emulate -DTE_DTYPE=1 kernel.cu table.cpp
//
// gives a CPU build of the same kernels (the Python side: tinyembed/engine/build/cuda_emu_*.py). The
// stub cuda_fp16.h / cuda_bf16.h beside this file are empty: the types come from here.
//   emu_types.h    __half, __nv_bfloat16 (round to nearest even), float4, math, atomics
//   emu_fiber.h    the stack switch: one fiber per CUDA thread
//   emu_runtime.h  blocks, built-in variables, __syncthreads, the scheduler and its checks
//   emu_warp.h     shuffles, votes, ldmatrix / mma.sync / cp.async twins
//   emu_launch.h   the kernel table and te_launch
// Kernels select the PTX twins with `#ifdef TE_CUDA_EMULATOR` (attention.cu).
#pragma once

#define TE_CUDA_EMULATOR 1

#define __global__ __attribute__((used))
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)
// One copy per kernel file and OS thread, poisoned before every block (blocks run one at a
// time). `extern __shared__` does not compile (two storage classes): use TE_EXTERN_SHARED.
#define __shared__ static thread_local
#define __constant__ static

#include "emu_types.h"
#include "emu_runtime.h"
#include "emu_warp.h"
#include "emu_launch.h"
