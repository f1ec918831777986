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

/* V^T = [V_t^T; V_p^T] and the constant C = [(tau - prev - tau P) V_t, -tau P V_p], from
 * tv = tau V_p (m x r_p) rather than from tau P: tau - tau P = tv V_p^T, so
 * C = tv [V_p^T V_t, V_p^T V_p - I] - [prev V_t, 0], r_p x k work per row instead of n x k.
 * The block -tau P V_p = tv (V_p^T V_p - I) is rounding-sized and kept as computed, never
 * assumed 0. tau gives the shape only; prev may be NULL (all zero), tv NULL when
 * r_p = 0. Allocates v and c. */
int nf_nufilt_constant(nf_la *la, const nf_mat *tau, const nf_mat *prev, const nf_mat *tv,
                       const nf_mat *vt_t, const nf_mat *vt_p, nf_mat *v, nf_mat *c);
/* E = C - (tau B)(A V) and, when loss is not NULL, L = |E|^2. */
int nf_nufilt_residual(nf_la *la, const nf_nufilt_ws *x, double *loss);
/* Residual, objective and both gradients at the current A, B. */
int nf_nufilt_grad(nf_la *la, const nf_nufilt_ws *x, double *loss);

/* The same gradients from the Gram matrix K = tau^T tau (n x n) and D = tau^T C (n x k),
 * computed once by nf_nufilt_gram_setup. With T = tau B, tau^T T = K B and T^T C = B^T D:
 *   dL/dB = -2 D (AV)^T + 2 (K B)(AV (AV)^T)
 *   dL/dA = -2 (B^T D - (B^T K B) AV) V^T
 * so an iteration's one large product is K B (n x n x r) instead of two m x n x r ones.
 * The products are fused in pairs through side-by-side storage: dk (n x (k + r)) holds
 * [D | K B], w ((k + r) x r) holds [-(AV)^T; AV (AV)^T], sq (r x (k + r)) holds
 * [B^T D | B^T K B], so that dL/dB = 2 dk w and the two B^T products are one GEMM.
 * nf_nufilt_grad_gram fills x->ga and x->gb (not the residual: call nf_nufilt_residual for
 * the objective). b_zero: B is known to be 0 (Adam's first iteration), so K B = 0,
 * dL/dB = -2 D (AV)^T and dL/dA = 0, without the products that would give those zeros. */
typedef struct nf_nufilt_gram {
    nf_mat *k, *dk, *w, *sq;
} nf_nufilt_gram;

/* K and D (into the first k columns of g->dk); have_k: g->k already holds K */
int nf_nufilt_gram_setup(nf_la *la, const nf_nufilt_ws *x, const nf_nufilt_gram *g, int have_k);
int nf_nufilt_grad_gram(nf_la *la, const nf_nufilt_ws *x, const nf_nufilt_gram *g, int b_zero);

#endif
