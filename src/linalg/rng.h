/* The counter-based random numbers of the NUFILT spec: any device, thread or order of work
 * draws the same values, so a seed gives the same merge everywhere. */
#ifndef NF_RNG_H
#define NF_RNG_H

#include <stddef.h>
#include <stdint.h>

uint64_t nf_mix64(uint64_t x);
uint64_t nf_fnv1a64(const char *s, size_t n);
/* The key of a tensor's random matrix: mix64(mix64(seed + step) ^ fnv1a64(name)). */
uint64_t nf_rng_key(uint64_t seed, uint64_t step, const char *name);
/* The i-th standard normal draw of a key (Box-Muller in double). */
double nf_rng_normal_at(uint64_t key, uint64_t i);
/* dst[i] = (float)(std * normal_at(key, i)) for i in [0, n). */
void nf_rng_normal(uint64_t key, double std, float *dst, size_t n);

#endif
