/* Element types: names, sizes and conversion to and from float32. Internal. */
#ifndef NF_DTYPE_H
#define NF_DTYPE_H

#include <stddef.h>
#include <stdint.h>

#include "nufilt.h"

float nf_f16_to_f32(uint16_t h);
uint16_t nf_f32_to_f16(float f);   /* round to nearest even; overflow to infinity */
float nf_bf16_to_f32(uint16_t h);
uint16_t nf_f32_to_bf16(float f);  /* round to nearest even; NaN stays NaN */
/* 8-bit floats: exact decoding; encoding rounds to nearest even, and a value beyond the
 * largest finite one (448, 57344) becomes NaN in E4M3 and infinity in E5M2 (see dtype.c). */
float nf_f8_e4m3_to_f32(uint8_t b);
float nf_f8_e5m2_to_f32(uint8_t b);
uint8_t nf_f32_to_f8_e4m3(float f);
uint8_t nf_f32_to_f8_e5m2(float f);

/* Converts n elements of a float dtype (F64/F32/F16/BF16/F8_E4M3/F8_E5M2) at src (any alignment) to float32.
 * Returns the number of non-finite values met (so callers can refuse NaN/Inf). */
size_t nf_to_f32(const void *src, nf_dtype dt, float *dst, size_t n);
/* The number of the n values of dtype dt at src (any alignment) that nf_to_f32 would count
 * as not finite, without converting them. */
size_t nf_count_nonfinite(const void *src, nf_dtype dt, size_t n);
/* Converts n float32 values to dtype dt (any float dtype) at dst (any alignment). */
void nf_from_f32(const float *src, nf_dtype dt, void *dst, size_t n);

#endif
