// Shared device helpers for the rwkveval kernels: storage types, float conversion, warp sums.
//
// No system headers on purpose: CuPy compiles these sources with NVRTC, which has no
// cuda_fp16.h / cuda_bf16.h on its include path unless the CUDA toolkit headers are installed
// beside the driver. The half types here are plain 16-bit storage structs (layout-compatible
// with torch.float16 / torch.bfloat16) converted to and from float32; all arithmetic is float32.
//
// The loader (engine/kernels/loader.py) pastes this file in place of `#include "common.cuh"`,
// so the source string CuPy hashes for its on-disk kernel cache includes it.
#pragma once

#ifndef HEAD_SIZE
#define HEAD_SIZE 64
#endif
// Every kernel maps one head onto whole warps (N / 32 elements per lane) or one thread per
// state row (N floats of registers per thread), hence: a multiple of 32, at most 128.
#if (HEAD_SIZE % 32 != 0) || (HEAD_SIZE < 32) || (HEAD_SIZE > 128)
#error "HEAD_SIZE must be 32, 64, 96 or 128"
#endif

#define WARP_SIZE 32
#define FULL_MASK 0xffffffffu

struct f16 { unsigned short bits; };   // IEEE binary16, as torch.float16 stores it
struct bf16 { unsigned short bits; };  // bfloat16, as torch.bfloat16 stores it

__device__ __forceinline__ float to_float(float x) { return x; }

__device__ __forceinline__ float to_float(f16 x) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x.bits));
    return f;
}

__device__ __forceinline__ float to_float(bf16 x) {
    return __uint_as_float(((unsigned int)x.bits) << 16);  // bf16 is the top half of a float32
}

template <typename F> __device__ __forceinline__ F from_float(float x);

template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }

template <> __device__ __forceinline__ f16 from_float<f16>(float x) {
    f16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h.bits) : "f"(x));  // round to nearest even, like torch
    return h;
}

template <> __device__ __forceinline__ bf16 from_float<bf16>(float x) {
    // Round to nearest even in integer arithmetic (works on every architecture, matches torch).
    unsigned int u = __float_as_uint(x);
    bf16 h;
    if ((u & 0x7fffffffu) > 0x7f800000u) {  // NaN: keep it a (quiet) NaN, never round to inf
        h.bits = (unsigned short)((u >> 16) | 0x0040u);
        return h;
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    h.bits = (unsigned short)(u >> 16);
    return h;
}

// Sum of `x` over the 32 lanes of a warp; every lane gets the total.
__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
    for (int offset = WARP_SIZE / 2; offset > 0; offset /= 2)
        x += __shfl_xor_sync(FULL_MASK, x, offset);
    return x;
}
