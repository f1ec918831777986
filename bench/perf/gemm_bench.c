/*
 * GEMM micro-benchmark behind the CPU backend's choice between its own kernel
 * (src/backend/cpu/sgemm.c) and OpenBLAS: one thread (as each nufilt CPU worker runs), the
 * products of NUFILT's adapter training on a ViT-B/32 matrix (n = 768, r_l = 64, r_v = 8,
 * k = r_v + r_p = 136) and a few neighbours, both ways, interleaved.
 *
 *   gemm_bench [REPS]      (default 9 rounds; each round runs every product ~0.2 s per way)
 *
 * Prints the machine, then per product the median GFLOP/s of OpenBLAS's cblas_sgemm and of
 * nf_cpu_sgemm, their ratio, the largest relative difference of the two results, and which
 * of the two nf_cpu_gemm (what nufilt calls) uses for that shape. Where the own kernel runs
 * its 32-wide AVX-512 tile, a third way times its 16-wide AVX2 tile (column "own/16").
 *
 * Build: cc -O2 -I src/include -I build-perf/src/include -I src bench/perf/gemm_bench.c
 *        build-perf/src/libnufilt.a
 *        -llapacke -lopenblas -lm -lpthread   (bench/perf/run.sh --rsvd does it)
 */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend/backend.h"
#include "backend/cpu/sgemm.h"

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static float *random_matrix(size_t n, unsigned *seed)
{
    float *p = malloc(n * sizeof *p);
    if (!p) {
        fprintf(stderr, "gemm_bench: out of memory\n");
        exit(1);
    }
    for (size_t i = 0; i < n; i++)
        p[i] = (float)rand_r(seed) / (float)RAND_MAX - 0.5f;
    return p;
}

typedef struct shape {
    const char *what;
    int ta, tb, m, n, k;
} shape;

static const shape shapes[] = {
    {"K B            (adapter, every iteration)", 0, 0, 768, 64, 768},
    {"[KB|D_t] W     (adapter, every iteration)", 0, 0, 768, 64, 72},
    {"-V A^T         (adapter, every iteration)", 0, 1, 136, 64, 768},
    {"B^T [KB|D_t]   (adapter, every iteration)", 1, 0, 64, 72, 768},
    {"S V            (adapter, every iteration)", 0, 0, 64, 768, 136},
    {"(AV)^T AV      (adapter, every iteration)", 1, 0, 64, 64, 136},
    {"Q (-Y_p^T)^T   (adapter, every iteration)", 0, 1, 64, 128, 64},
    {"tau B          (fc1, after training)", 0, 0, 3072, 64, 768},
    {"tau V_p^T      (filter)", 0, 1, 768, 128, 768},
    {"K K            (square)", 0, 0, 768, 768, 768},
};

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 9;
    if (rounds < 1)
        rounds = 1;
    nf_cpu_set_threads(1);
    char model[256] = "unknown";
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (f) {
        char line[512];
        while (fgets(line, sizeof line, f))
            if (!strncmp(line, "model name", 10)) {
                char *c = strchr(line, ':');
                if (c) {
                    snprintf(model, sizeof model, "%s", c + 2);
                    model[strcspn(model, "\n")] = 0;
                }
                break;
            }
        fclose(f);
    }
    const int w = nf_cpu_sgemm_width();
    printf("gemm_bench: %s, one thread, %d rounds (medians); own kernel %s\n", model, rounds,
           w == 32   ? "available (AVX-512F, 32-wide tile)"
           : w == 16 ? "available (AVX2 + FMA, 16-wide tile)"
                     : "NOT available");
    printf("%-42s %-16s %9s %9s %7s %9s  %-11s %s\n", "product", "shape", "OpenBLAS", "own",
           "ratio", "max diff", "nufilt uses", w == 32 ? "own/16" : "");
    unsigned seed = 7;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const shape *p = &shapes[s];
        int lda = p->ta ? p->m : p->k, ldb = p->tb ? p->k : p->n;
        float *a = random_matrix((size_t)p->m * p->k, &seed);
        float *b = random_matrix((size_t)p->k * p->n, &seed);
        float *c0 = random_matrix((size_t)p->m * p->n, &seed);
        float *c1 = random_matrix((size_t)p->m * p->n, &seed);
        double flop = 2.0 * p->m * p->n * p->k;
        int reps = (int)(2e10 / 100.0 / flop) + 1; /* about 0.2 s at 100 GFLOP/s */
        double *g0 = malloc(rounds * sizeof *g0), *g1 = malloc(rounds * sizeof *g1);
        double *g2 = calloc(rounds, sizeof *g2);
        for (int r = 0; r < rounds; r++) {
            double t = now();
            for (int i = 0; i < reps; i++)
                cblas_sgemm(CblasRowMajor, p->ta ? CblasTrans : CblasNoTrans,
                            p->tb ? CblasTrans : CblasNoTrans, p->m, p->n, p->k, 1.0f, a, lda, b,
                            ldb, 0.0f, c0, p->n);
            g0[r] = flop * reps / (now() - t) * 1e-9;
            t = now();
            for (int i = 0; i < reps; i++)
                if (!nf_cpu_sgemm(p->ta, p->tb, p->m, p->n, p->k, 1.0f, a, lda, b, ldb, 0.0f,
                                  c1, p->n))
                    break;
            g1[r] = flop * reps / (now() - t) * 1e-9;
            if (w != 32)
                continue;
            t = now();
            for (int i = 0; i < reps; i++)
                nf_cpu_sgemm_w(16, p->ta, p->tb, p->m, p->n, p->k, 1.0f, a, lda, b, ldb, 0.0f,
                               c1, p->n);
            g2[r] = flop * reps / (now() - t) * 1e-9;
        }
        double diff = 0, mag = 0;
        for (size_t i = 0; i < (size_t)p->m * p->n; i++) {
            double d = fabs((double)c0[i] - (double)c1[i]);
            diff = d > diff ? d : diff;
            mag = fabs((double)c0[i]) > mag ? fabs((double)c0[i]) : mag;
        }
        qsort(g0, rounds, sizeof *g0, cmp_double);
        qsort(g1, rounds, sizeof *g1, cmp_double);
        qsort(g2, rounds, sizeof *g2, cmp_double);
        char dims[32];
        snprintf(dims, sizeof dims, "%c%c %dx%dx%d", p->ta ? 'T' : 'N', p->tb ? 'T' : 'N', p->m,
                 p->n, p->k);
        int own = nf_cpu_sgemm_suits(p->m, p->n, p->k); /* nf_cpu_gemm's choice */
        if (nf_cpu_sgemm_available())
            printf("%-42s %-16s %9.1f %9.1f %6.2fx %9.1e  %-11s %.1f\n", p->what, dims,
                   g0[rounds / 2], g1[rounds / 2], g1[rounds / 2] / g0[rounds / 2],
                   mag > 0 ? diff / mag : 0.0, own ? "own" : "OpenBLAS", g2[rounds / 2]);
        else
            printf("%-42s %-16s %9.1f %9s %7s %9s  OpenBLAS\n", p->what, dims, g0[rounds / 2], "-",
                   "-", "-");
        free(a);
        free(b);
        free(c0);
        free(c1);
        free(g0);
        free(g1);
        free(g2);
    }
    printf("GFLOP/s; ratio = own / OpenBLAS; max diff relative to the largest |C| entry\n");
    return 0;
}
