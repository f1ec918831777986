#include "rng.h"

#include <math.h>
#include <string.h>

uint64_t nf_mix64(uint64_t x)
{
    uint64_t z = x + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

uint64_t nf_fnv1a64(const char *s, size_t n)
{
    uint64_t h = 0xCBF29CE484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 0x100000001B3ull;
    }
    return h;
}

uint64_t nf_rng_key(uint64_t seed, uint64_t step, const char *name)
{
    return nf_mix64(nf_mix64(seed + step) ^ nf_fnv1a64(name, strlen(name)));
}

/* Evaluated exactly as the spec writes it, left to right, so that every implementation
 * rounds the same way: std * sqrt(-2 ln u1) * cos(2 pi u2). */
static double draw(uint64_t key, uint64_t i, double std)
{
    uint64_t a = nf_mix64(key + 2 * i);
    uint64_t b = nf_mix64(key + 2 * i + 1);
    double u1 = (double)((a >> 11) + 1) * 0x1p-53; /* (0, 1] */
    double u2 = (double)(b >> 11) * 0x1p-53;       /* [0, 1) */
    return std * sqrt(-2.0 * log(u1)) * cos(2.0 * 3.14159265358979323846 * u2);
}

double nf_rng_normal_at(uint64_t key, uint64_t i) { return draw(key, i, 1.0); }

void nf_rng_normal(uint64_t key, double std, float *dst, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = (float)draw(key, i, std);
}
