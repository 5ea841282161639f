/* bf16 <-> float32 for the CPU kernels (matvec_cpu.c, wkv7_cpu.c, block_cpu.c), included by each.
 *
 * A bf16 number is the top half of a float32: widening is a 16-bit shift (the compiler turns the
 * memcpy into a register move). Narrowing rounds to nearest even, as torch's .to(torch.bfloat16)
 * does, so a kernel's bf16 result equals torch's rounding of the same float32 (NaN becomes 0x7FC0;
 * torch's own NaN bits differ between its scalar and vector paths). */
#pragma once
#include <stdint.h>
#include <string.h>

static inline float bf16_to_f32(uint16_t h) {
    const uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline uint16_t f32_to_bf16(float v) {
    uint32_t bits;
    memcpy(&bits, &v, sizeof bits);
    return v != v ? (uint16_t)0x7FC0 : (uint16_t)((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}

/* Element i of a float32 or (bf16) bf16 array as float32, and a float32 stored into one (bf16
 * rounded to nearest even, as above). Always inlined: a kernel that calls them with a constant
 * bf16 gets a loop per dtype without a branch per element (wkv7_cpu.c, block_cpu.c). */
static inline __attribute__((always_inline)) float load_elem(const void *p, int64_t i, const int bf16) {
    return bf16 ? bf16_to_f32(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

static inline __attribute__((always_inline)) void store_elem(void *p, int64_t i, float v, const int bf16) {
    if (bf16) ((uint16_t *)p)[i] = f32_to_bf16(v);
    else ((float *)p)[i] = v;
}
