/* NUFILT's adapter objective and closed-form gradients, exposed for the unit tests. */
#ifndef NF_NUFILT_H
#define NF_NUFILT_H

#include "../linalg/la.h"

/* Matrices of the adapter's training for one treated matrix (d_out = m, d_in = n, r = r_l,
 * k = r_v + r_p): inputs tau (m x n), c (m x k), v (V^T, k x n), a (r x n), b (n x r);
 * workspace and outputs t = tau B (m x r), av = A V (r x k), e (m x k), h (m x r),
 * te (r x k), ga = dL/dA (r x n), gb = dL/dB (n x r); rv = r_v, the columns of C and rows
 * of V^T that belong to V_t (the rest belong to V_p). */
typedef struct nf_nufilt_ws {
    nf_mat *tau, *c, *v, *a, *b, *t, *av, *e, *h, *te, *ga, *gb;
    int rv;
} nf_nufilt_ws;

/* V^T = [V_t^T; V_p^T] and the constant C = [(tau - prev - tau P) V_t, -tau P V_p], from
 * tv = tau V_p (m x r_p) rather than from tau P: tau - tau P = tv V_p^T, so
 * C_t = tv (V_p^T V_t) - prev V_t, r_p x r_v work per row instead of n x r_v. The block
 * C_p = -tau P V_p is 0: P removes exactly the directions V_p spans, (tau P) V_p =
 * tau (V_p - V_p V_p^T V_p) = 0 for orthonormal V_p (evaluated in float32 it would be rounding
 * noise from V_p's orthogonality error, about 1e-6 of tau V_p). tau gives the shape only;
 * prev may be NULL (all zero), tv NULL when r_p = 0. Allocates v and c. */
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
 * Since C = [C_t, 0] (nf_nufilt_constant), D = [D_t, 0] with D_t = tau^T C_t (n x r_v): the
 * products with D are r_v wide, not k. They are fused with their neighbours through
 * side-by-side storage:
 *   dk (n x (r + r_v))   [K B | D_t]
 *   w  ((r + k) x r)     [AV (AV)^T; -Y_t^T; -Y_p^T]   (Y = AV = [Y_t Y_p])
 *   sq (r x (r + k))     [B^T K B | S_t | S_p],  S = [B^T D_t, 0] - (B^T K B) AV
 * so that dL/dB = 2 dk (top r + r_v rows of w), [B^T K B | B^T D_t] is one GEMM, and
 * dL/dA = -2 S V^T. nf_nufilt_grad_gram fills x->ga and x->gb (not the residual: call
 * nf_nufilt_residual for the objective). b_zero: B is known to be 0 (Adam's first
 * iteration), so K B = 0, dL/dB = -2 D (AV)^T and dL/dA = 0, without the products that
 * would give those zeros. */
typedef struct nf_nufilt_gram {
    nf_mat *k, *dk, *w, *sq;
    /* K factored, K = ka^T kg ka (ka q x n, kg q x q; k unused): a LoRA task's tau = s B A
     * gives ka = A, kg = s^2 B^T B, and K B costs 4 n q r instead of 2 n^2 r; kt is scratch
     * of q x 2r */
    const nf_mat *ka, *kg;
    nf_mat *kt;
} nf_nufilt_gram;

/* K (unless factored) and D_t (into columns r .. r + r_v - 1 of g->dk); have_k: g->k already
 * holds K */
int nf_nufilt_gram_setup(nf_la *la, const nf_nufilt_ws *x, const nf_nufilt_gram *g, int have_k);
int nf_nufilt_grad_gram(nf_la *la, const nf_nufilt_ws *x, const nf_nufilt_gram *g, int b_zero);

#endif
