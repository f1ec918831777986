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

/* Converts n elements of a float dtype (F64/F32/F16/BF16) at src (any alignment) to float32.
 * Returns the number of non-finite values met (so callers can refuse NaN/Inf). */
size_t nf_to_f32(const void *src, nf_dtype dt, float *dst, size_t n);
/* The number of the n values of dtype dt at src (any alignment) that nf_to_f32 would count
 * as not finite, without converting them. */
size_t nf_count_nonfinite(const void *src, nf_dtype dt, size_t n);
/* Converts n float32 values to dtype dt (F64/F32/F16/BF16) at dst (any alignment). */
void nf_from_f32(const float *src, nf_dtype dt, void *dst, size_t n);

#endif
