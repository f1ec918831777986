/* NUFILT's closed-form gradients against finite differences of the objective evaluated
 * from its definition in double precision, the first-step rules of both modes, and a step
 * whose SVD returns NaN. */
#include <unistd.h>

#include "backend/devices.h"
#include "io/model.h"
#include "linalg/la.h"
#include "methods/nufilt.h"
#include "testutil.h"

enum { M = 12, N = 9, R = 3, RV = 2, RP = 3, K = RV + RP };

static float tau[M * N], prevm[M * N], vt_t[RV * N], vt_p[RP * N], A[R * N], B[N * R];

/* Orthonormal rows (Gram-Schmidt in double) */
static void orthonormal_rows(float *q, int r, int n, uint64_t seed)
{
    double *d = malloc(sizeof(double) * r * n);
    uint64_t s = seed;
    for (int i = 0; i < r * n; i++)
        d[i] = tu_normal(&s);
    for (int i = 0; i < r; i++) {
        for (int rep = 0; rep < 2; rep++)
            for (int p = 0; p < i; p++) {
                double t = 0;
                for (int j = 0; j < n; j++)
                    t += d[i * n + j] * d[p * n + j];
                for (int j = 0; j < n; j++)
                    d[i * n + j] -= t * d[p * n + j];
            }
        double nn = 0;
        for (int j = 0; j < n; j++)
            nn += d[i * n + j] * d[i * n + j];
        for (int j = 0; j < n; j++) {
            d[i * n + j] /= sqrt(nn);
            q[i * n + j] = (float)d[i * n + j];
        }
    }
    free(d);
}

/* L(A, B) from the definition: M = prev + tau P + tau B A, P = I - V_p V_p^T */
static double objective(const double *a, const double *b)
{
    static double mm[M * N], P[N * N], BA[N * N];
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++) {
            double t = (i == j);
            for (int p = 0; p < RP; p++)
                t -= (double)vt_p[p * N + i] * vt_p[p * N + j];
            P[i * N + j] = t;
            double u = 0;
            for (int p = 0; p < R; p++)
                u += b[i * R + p] * a[p * N + j];
            BA[i * N + j] = u;
        }
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double t = prevm[i * N + j];
            for (int p = 0; p < N; p++)
                t += (double)tau[i * N + p] * (P[p * N + j] + BA[p * N + j]);
            mm[i * N + j] = t;
        }
    double L = 0;
    for (int i = 0; i < M; i++) {
        for (int q = 0; q < RV; q++) {
            double t = 0;
            for (int j = 0; j < N; j++)
                t += ((double)tau[i * N + j] - mm[i * N + j]) * vt_t[q * N + j];
            L += t * t;
        }
        for (int q = 0; q < RP; q++) {
            double t = 0;
            for (int j = 0; j < N; j++)
                t += ((double)prevm[i * N + j] - mm[i * N + j]) * vt_p[q * N + j];
            L += t * t;
        }
    }
    return L;
}

START_TEST(test_gradients_vs_finite_differences)
{
    tu_fill(tau, M * N, 1, 1.0);
    tu_fill(prevm, M * N, 2, 1.0);
    orthonormal_rows(vt_t, RV, N, 3);
    orthonormal_rows(vt_p, RP, N, 4);
    tu_fill(A, R * N, 5, 0.3);
    tu_fill(B, N * R, 6, 0.3);

    nf_device *dev;
    nf_error err = {0};
    ck_assert_int_eq(nf_backend_cpu.open(0, &dev, &err), NF_OK);
    nf_la la;
    nf_la_init(&la, dev, &err);
    nf_mat mt, mp, mtp, mvt, mvp, v, c, a, b, t, av, e, h, te, ga, gb, tv;
    nf_la_alloc(&la, M, N, &mt);
    nf_la_alloc(&la, M, N, &mp);
    nf_la_alloc(&la, M, N, &mtp);
    nf_la_alloc(&la, RV, N, &mvt);
    nf_la_alloc(&la, RP, N, &mvp);
    nf_la_upload(&la, &mt, tau);
    nf_la_upload(&la, &mp, prevm);
    nf_la_upload(&la, &mvt, vt_t);
    nf_la_upload(&la, &mvp, vt_p);
    /* tau P the way the method computes it */
    nf_la_alloc(&la, M, RP, &tv);
    nf_la_copy(&la, &mt, &mtp);
    nf_la_gemm(&la, 0, 1, 1.0f, &mt, &mvp, 0.0f, &tv);
    nf_la_gemm(&la, 0, 0, -1.0f, &tv, &mvp, 1.0f, &mtp);
    ck_assert_int_eq(nf_nufilt_constant(&la, &mt, &mp, &tv, &mvt, &mvp, &v, &c), NF_OK);
    nf_la_alloc(&la, R, N, &a);
    nf_la_alloc(&la, N, R, &b);
    nf_la_alloc(&la, M, R, &t);
    nf_la_alloc(&la, R, K, &av);
    nf_la_alloc(&la, M, K, &e);
    nf_la_alloc(&la, M, R, &h);
    nf_la_alloc(&la, R, K, &te);
    nf_la_alloc(&la, R, N, &ga);
    nf_la_alloc(&la, N, R, &gb);
    nf_la_upload(&la, &a, A);
    nf_la_upload(&la, &b, B);
    nf_nufilt_ws ws = {&mt, &c, &v, &a, &b, &t, &av, &e, &h, &te, &ga, &gb, RV};
    double loss;
    ck_assert_int_eq(nf_nufilt_grad(&la, &ws, &loss), NF_OK);

    double ad[R * N], bd[N * R];
    for (int i = 0; i < R * N; i++)
        ad[i] = A[i];
    for (int i = 0; i < N * R; i++)
        bd[i] = B[i];
    double L = objective(ad, bd);
    ck_assert_msg(fabs(loss - L) < 1e-5 * L, "objective %g vs definition %g", loss, L);

    float *hga = nf_la_host(&la, &ga), *hgb = nf_la_host(&la, &gb);
    double hstep = 1e-5, gnorm = 0, diff = 0;
    for (int i = 0; i < R * N; i++) {
        double keep = ad[i];
        ad[i] = keep + hstep;
        double lp = objective(ad, bd);
        ad[i] = keep - hstep;
        double lm = objective(ad, bd);
        ad[i] = keep;
        double fd = (lp - lm) / (2 * hstep);
        gnorm += fd * fd;
        diff += (fd - hga[i]) * (fd - hga[i]);
    }
    for (int i = 0; i < N * R; i++) {
        double keep = bd[i];
        bd[i] = keep + hstep;
        double lp = objective(ad, bd);
        bd[i] = keep - hstep;
        double lm = objective(ad, bd);
        bd[i] = keep;
        double fd = (lp - lm) / (2 * hstep);
        gnorm += fd * fd;
        diff += (fd - hgb[i]) * (fd - hgb[i]);
    }
    ck_assert_msg(sqrt(diff / gnorm) < 1e-4, "gradient relative error %g", sqrt(diff / gnorm));

    /* the Gram form gives the same gradients */
    nf_mat gk, gdk, gw, gsq;
    nf_la_alloc(&la, N, N, &gk);
    nf_la_alloc(&la, N, R + RV, &gdk);
    nf_la_alloc(&la, K + R, R, &gw);
    nf_la_alloc(&la, R, K + R, &gsq);
    nf_nufilt_gram gram = {&gk, &gdk, &gw, &gsq, NULL, NULL, NULL};
    float fa[R * N], fb[N * R];
    memcpy(fa, hga, sizeof fa);
    memcpy(fb, hgb, sizeof fb);
    ck_assert_int_eq(nf_nufilt_gram_setup(&la, &ws, &gram, 0), NF_OK);
    ck_assert_int_eq(nf_nufilt_grad_gram(&la, &ws, &gram, 0), NF_OK);
    double gd2 = 0, gn2 = 0;
    for (int i = 0; i < R * N; i++) {
        gd2 += ((double)hga[i] - fa[i]) * ((double)hga[i] - fa[i]);
        gn2 += (double)fa[i] * fa[i];
    }
    for (int i = 0; i < N * R; i++) {
        gd2 += ((double)hgb[i] - fb[i]) * ((double)hgb[i] - fb[i]);
        gn2 += (double)fb[i] * fb[i];
    }
    ck_assert_msg(sqrt(gd2 / gn2) < 1e-5, "Gram-form gradients differ by %g", sqrt(gd2 / gn2));

    /* with B = 0 the gradient with respect to A is exactly zero (the spec's step-1 note), and
     * the Gram form's B = 0 shortcut gives the full computation's gradients */
    nf_la_fill(&la, &b, 0.0f);
    ck_assert_int_eq(nf_nufilt_grad(&la, &ws, &loss), NF_OK);
    for (int i = 0; i < R * N; i++)
        ck_assert(hga[i] == 0.0f);
    ck_assert_int_eq(nf_nufilt_grad_gram(&la, &ws, &gram, 0), NF_OK);
    memcpy(fa, hga, sizeof fa);
    memcpy(fb, hgb, sizeof fb);
    nf_la_fill(&la, &ga, 1.0f); /* the shortcut must write the zeros */
    ck_assert_int_eq(nf_nufilt_grad_gram(&la, &ws, &gram, 1), NF_OK);
    gd2 = gn2 = 0;
    for (int i = 0; i < R * N; i++)
        ck_assert_msg(hga[i] == 0.0f && fa[i] == 0.0f, "dL/dA at B = 0: %g, %g", hga[i], fa[i]);
    for (int i = 0; i < N * R; i++) {
        gd2 += ((double)hgb[i] - fb[i]) * ((double)hgb[i] - fb[i]);
        gn2 += (double)fb[i] * fb[i];
    }
    ck_assert_msg(gn2 > 0 && sqrt(gd2 / gn2) < 1e-6, "B = 0 shortcut: dL/dB differs by %g",
                  sqrt(gd2 / gn2));
    /* K factored as ka^T kg ka (a LoRA task's form) gives the same gradients: here
     * kg = diag(1 .. M) and ka = kg^(-1/2) tau, so K = tau^T tau; B is the last dL/dB */
    {
        nf_mat kg, kt, ka;
        nf_la_alloc(&la, M, M, &kg);
        nf_la_alloc(&la, M, 2 * R, &kt);
        nf_la_alloc(&la, M, N, &ka);
        float hkg[M * M], hka[M * N];
        for (int i = 0; i < M; i++) {
            for (int j = 0; j < M; j++)
                hkg[i * M + j] = i == j ? (float)(i + 1) : 0.0f;
            for (int j = 0; j < N; j++)
                hka[i * N + j] = (float)(tau[i * N + j] / sqrt(i + 1.0));
        }
        nf_la_upload(&la, &kg, hkg);
        nf_la_upload(&la, &ka, hka);
        nf_la_copy(&la, &gb, &b);
        nf_nufilt_gram gf = {NULL, &gdk, &gw, &gsq, &ka, &kg, &kt};
        ck_assert_int_eq(nf_nufilt_gram_setup(&la, &ws, &gram, 0), NF_OK);
        ck_assert_int_eq(nf_nufilt_grad_gram(&la, &ws, &gram, 0), NF_OK);
        memcpy(fa, hga, sizeof fa);
        memcpy(fb, hgb, sizeof fb);
        nf_la_fill(&la, &gk, NAN); /* the factored form must not read K */
        ck_assert_int_eq(nf_nufilt_gram_setup(&la, &ws, &gf, 0), NF_OK);
        ck_assert_int_eq(nf_nufilt_grad_gram(&la, &ws, &gf, 0), NF_OK);
        gd2 = gn2 = 0;
        for (int i = 0; i < R * N; i++) {
            gd2 += ((double)hga[i] - fa[i]) * ((double)hga[i] - fa[i]);
            gn2 += (double)fa[i] * fa[i];
        }
        for (int i = 0; i < N * R; i++) {
            gd2 += ((double)hgb[i] - fb[i]) * ((double)hgb[i] - fb[i]);
            gn2 += (double)fb[i] * fb[i];
        }
        ck_assert_msg(gn2 > 0 && sqrt(gd2 / gn2) < 1e-5, "factored K: gradients differ by %g",
                      sqrt(gd2 / gn2));
        nf_la_free(&la, &kg);
        nf_la_free(&la, &kt);
        nf_la_free(&la, &ka);
    }
    nf_mat *gall[] = {&gk, &gdk, &gw, &gsq};
    for (size_t i = 0; i < 4; i++)
        nf_la_free(&la, gall[i]);

    nf_mat *all[] = {&mt, &mp, &mtp, &mvt, &mvp, &v, &c, &a, &b, &t, &av, &e, &h, &te, &ga, &gb, &tv};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        nf_la_free(&la, all[i]);
    nf_backend_cpu.close(dev);
}
END_TEST

/* First step: paper mode gives base + tau; reference mode zeroes input columns 0..r_p-1. */
START_TEST(test_first_step_modes)
{
    char *dir = tu_tmpdir();
    enum { R2 = 6, C2 = 5 };
    float base[R2 * C2], task[R2 * C2];
    tu_fill(base, R2 * C2, 21, 1.0);
    for (int i = 0; i < R2 * C2; i++)
        task[i] = base[i] + 0.25f * (float)((i % 7) - 3);
    const char *hdr = "{\"enc.attn.weight\":{\"dtype\":\"F32\",\"shape\":[6,5],\"data_offsets\":[0,120]}}";
    char *pb = tu_path(dir, "base.safetensors"), *pt = tu_path(dir, "task.safetensors");
    char *o1 = tu_path(dir, "paper.safetensors"), *o2 = tu_path(dir, "ref.safetensors");
    tu_write_st(pb, hdr, base, sizeof base);
    tu_write_st(pt, hdr, task, sizeof task);
    nf_options o;
    nf_options_init(&o);
    o.null_rank = 2;
    o.task_rank = 1;
    o.lora_rank = 2;
    o.threads = 1;
    nf_error err = {0};
    ck_assert_msg(nf_step(pb, pt, NULL, o1, &o, &err) == NF_OK, "%s", err.msg);
    o.compat = NF_COMPAT_REFERENCE;
    ck_assert_msg(nf_step(pb, pt, NULL, o2, &o, &err) == NF_OK, "%s", err.msg);
    nf_model *m1, *m2;
    ck_assert_int_eq(nf_model_open(o1, &m1, &err), NF_OK);
    ck_assert_int_eq(nf_model_open(o2, &m2, &err), NF_OK);
    float v1[R2 * C2], v2[R2 * C2];
    memcpy(v1, m1->tensors[0].data, sizeof v1);
    memcpy(v2, m2->tensors[0].data, sizeof v2);
    for (int i = 0; i < R2; i++)
        for (int j = 0; j < C2; j++) {
            float b = base[i * C2 + j], tv = task[i * C2 + j] - b;
            ck_assert(v1[i * C2 + j] == b + tv);
            ck_assert(v2[i * C2 + j] == (j < 2 ? b : b + tv));
        }
    ck_assert_str_eq(nf_model_metadata_get(m1, "nufilt.step"), "1");
    ck_assert_str_eq(nf_model_metadata_get(m1, "nufilt.method"), "nufilt");
    nf_model_close(m1);
    nf_model_close(m2);
    free(pb);
    free(pt);
    free(o1);
    free(o2);
    tu_rmdir(dir);
}
END_TEST

/* A step whose SVD comes back with NaN (injected through nf_la_test_poison_svd, the fault of
 * la_svd.c's comment): once, and the step repeats it and writes exactly what an undisturbed
 * step writes; twice, and the step fails with a message naming the tensor, writing nothing. */
START_TEST(test_step_svd_nonfinite)
{
    char *dir = tu_tmpdir();
    enum { R3 = 12, C3 = 10 };
    float base[R3 * C3], task[R3 * C3], task2[R3 * C3];
    tu_fill(base, R3 * C3, 31, 1.0);
    tu_fill(task, R3 * C3, 32, 1.0);
    tu_fill(task2, R3 * C3, 33, 1.0);
    for (int i = 0; i < R3 * C3; i++) {
        task[i] = base[i] + 0.1f * task[i];
        task2[i] = base[i] + 0.1f * task2[i];
    }
    const char *hdr = "{\"enc.attn.weight\":{\"dtype\":\"F32\",\"shape\":[12,10],"
                      "\"data_offsets\":[0,480]}}";
    char *pb = tu_path(dir, "base.safetensors"), *pt = tu_path(dir, "t1.safetensors");
    char *pt2 = tu_path(dir, "t2.safetensors"), *p1 = tu_path(dir, "s1.safetensors");
    char *pa = tu_path(dir, "clean.safetensors"), *pr = tu_path(dir, "retried.safetensors");
    char *pf = tu_path(dir, "failed.safetensors");
    tu_write_st(pb, hdr, base, sizeof base);
    tu_write_st(pt, hdr, task, sizeof task);
    tu_write_st(pt2, hdr, task2, sizeof task2);
    nf_options o;
    nf_options_init(&o);
    o.null_rank = 3;
    o.task_rank = 2;
    o.lora_rank = 2;
    o.threads = 1;
    o.svd = NF_SVD_GESDD;
    nf_error err = {0};
    ck_assert_msg(nf_step(pb, pt, NULL, p1, &o, &err) == NF_OK, "%s", err.msg);
    ck_assert_msg(nf_step(pb, pt2, p1, pa, &o, &err) == NF_OK, "%s", err.msg);
    nf_la_test_poison_svd = 1;
    ck_assert_msg(nf_step(pb, pt2, p1, pr, &o, &err) == NF_OK, "%s", err.msg);
    ck_assert_int_eq(nf_la_test_poison_svd, 0);
    nf_model *ma, *mr;
    ck_assert_int_eq(nf_model_open(pa, &ma, &err), NF_OK);
    ck_assert_int_eq(nf_model_open(pr, &mr, &err), NF_OK);
    ck_assert(memcmp(ma->tensors[0].data, mr->tensors[0].data, sizeof base) == 0);
    nf_model_close(ma);
    nf_model_close(mr);
    nf_la_test_poison_svd = 2;
    ck_assert_int_eq(nf_step(pb, pt2, p1, pf, &o, &err), NF_E_NUMERIC);
    ck_assert_int_eq(nf_la_test_poison_svd, 0);
    ck_assert_msg(strstr(err.msg, "tensor \"enc.attn.weight\": SVD of a 12 x 10 matrix returned "
                                  "NaN or Inf twice") != NULL,
                  "%s", err.msg);
    ck_assert_int_ne(access(pf, F_OK), 0);
    char *all[] = {pb, pt, pt2, p1, pa, pr, pf};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        free(all[i]);
    tu_rmdir(dir);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("nufilt");
    TCase *tc = tcase_create("method");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_gradients_vs_finite_differences);
    tcase_add_test(tc, test_first_step_modes);
    tcase_add_test(tc, test_step_svd_nonfinite);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
