/* NUFILT's adapter objective and closed-form gradients, exposed for the unit tests. */
#ifndef NF_NUFILT_H
#define NF_NUFILT_H

#include "../linalg/la.h"

/* Matrices of the adapter's training for one treated matrix (d_out = m, d_in = n, r = r_l,
 * k = r_v + r_p): inputs tau (m x n), c (m x k), v (V^T, k x n), a (r x n), b (n x r);
 * workspace and outputs t = tau B (m x r), av = A V (r x k), e (m x k), h (m x r),
 * te (r x k), ga = dL/dA (r x n), gb = dL/dB (n x r). */
typedef struct nf_nufilt_ws {
    nf_mat *tau, *c, *v, *a, *b, *t, *av, *e, *h, *te, *ga, *gb;
} nf_nufilt_ws;

/* V^T = [V_t^T; V_p^T] and the constant C = [(tau - prev - tau P) V_t, -tau P V_p];
 * allocates v and c. prev may be NULL (all zero). */
int nf_nufilt_constant(nf_la *la, const nf_mat *tau, const nf_mat *prev, const nf_mat *taup,
                       const nf_mat *vt_t, const nf_mat *vt_p, nf_mat *v, nf_mat *c);
/* E = C - (tau B)(A V) and, when loss is not NULL, L = |E|^2. */
int nf_nufilt_residual(nf_la *la, const nf_nufilt_ws *x, double *loss);
/* Residual, objective and both gradients at the current A, B. */
int nf_nufilt_grad(nf_la *la, const nf_nufilt_ws *x, double *loss);

#endif
