"""nufilt.mingle against independent references: the expert construction and the gradient
projection rule against NumPy transcriptions of the official MINGLE code (full-matrix SVDs,
the literal formulas), without torch; then, with torch, the gated layer against the official
merged-weight forward, and a tiny model's stream (test_mingle_torch.py)."""
import math

import numpy as np
import pytest

from nufilt import mingle

RNG = np.random.default_rng(1234)


def _lowrank(m, n, r, rng, scale=1.0):
    return (scale * rng.standard_normal((m, r)) @ rng.standard_normal((r, n))).astype(
        np.float32)


# ---- NumPy transcriptions of the official code (float64, full-matrix SVD) ----------------


def ref_project(tau, prev_sum, zero_diag=False):
    """construct_lora of mingle.py: u, s, v = svd(prev) (full matrices); effective rank =
    int(exp(entropy)); P = u^T tau v; P[:r, :r] = 0; tau = u P v^T. The official
    `P.diag().fill_(0)` changes nothing (a copy); zero_diag=True applies it for real."""
    tau = tau.astype(np.float64)
    u, s, vh = np.linalg.svd(prev_sum.astype(np.float64), full_matrices=True)
    v = vh.T
    p = s / s.sum()
    r = int(np.exp(-(p * np.log(p)).sum()))
    P = u.T @ tau @ v
    if zero_diag:  # the pairs of a non-zero singular value (the others are arbitrary)
        k = int((s > 1e-5 * s[0]).sum())
        P[np.arange(k), np.arange(k)] = 0.0
    P[:r, :r] = 0.0
    return u @ P @ v.T, r


def ref_truncate(tau, rank):
    U, S, Vh = np.linalg.svd(tau.astype(np.float64), full_matrices=False)
    return (U[:, :rank] * S[:rank]) @ Vh[:rank]


def ref_project_gradient(grad, U, h, beta, gamma):
    """project_gradient of lora_moe.py, element by element."""
    out_f, C = grad.shape
    k = U.shape[1]
    r = np.zeros(k)
    for i in range(k):
        acc = 0.0
        for o in range(out_f):
            acc += abs(sum(grad[o, c] * U[c, i] for c in range(C))) / (
                math.sqrt(sum(grad[o, c] ** 2 for c in range(C))) + 1e-12)
        r[i] = acc / out_f
    h = beta * h + (1 - beta) * r
    lam = np.exp(-gamma * h)
    proj = grad.astype(np.float64).copy()
    for o in range(out_f):
        for c in range(C):
            proj[o, c] -= sum((grad[o, :] @ U[:, i]) * lam[i] * U[c, i] for i in range(k))
    return proj, h


# ---- torch-free ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["exact", "gram", "fast", "randomized"])
def test_svd_matches_numpy(mode):
    x = _lowrank(40, 24, 6, RNG) + 1e-3 * RNG.standard_normal((40, 24)).astype(np.float32)
    u, s, vt = mingle.svd(x, 6, mode, seed=3)
    assert u.shape == (40, 6) and vt.shape == (6, 24) and s.shape == (24,)
    ref = ref_truncate(x, 6)
    assert np.abs(u @ np.diag(s[:6]) @ vt - ref).max() < 1e-3 * np.abs(ref).max()
    np.testing.assert_allclose(s[:6], np.linalg.svd(x.astype(np.float64))[1][:6], rtol=1e-3)


def test_effective_rank_matches_official_formula():
    s = np.array([5.0, 3.0, 1.0, 0.5, 0.1])
    p = s / s.sum()
    assert mingle.effective_rank(s) == int(np.exp(-(p * np.log(p)).sum()))
    assert mingle.effective_rank(np.ones(7)) == 7
    # a zero value contributes nothing (the official code gets NaN there)
    assert mingle.effective_rank(np.array([2.0, 2.0, 0.0])) == 2
    assert mingle.effective_rank(np.zeros(4)) == 0


@pytest.mark.parametrize("shape", [(30, 20), (20, 30), (25, 25)])
@pytest.mark.parametrize("zero_diag", [False, True])
def test_projection_matches_official(shape, zero_diag):
    m, n = shape
    prev = _lowrank(m, n, 4, RNG) + _lowrank(m, n, 4, RNG, 0.3)
    if zero_diag:  # also full-rank sums, where every diagonal pair is determined
        prev = prev + 0.05 * RNG.standard_normal((m, n)).astype(np.float32)
    tau = RNG.standard_normal((m, n)).astype(np.float32)
    got = mingle.project_task_vector(tau, prev, zero_diagonal=zero_diag)
    want, r = ref_project(tau, prev, zero_diag)
    assert 1 <= r < min(m, n)
    assert np.abs(got - want).max() < 2e-4 * np.abs(want).max()
    # the kept behaviour really differs from the intended one, and removes the block
    if not zero_diag:
        other, _ = ref_project(tau, prev, True)
        assert np.abs(got - other).max() > 1e-2
    assert np.array_equal(mingle.project_task_vector(tau, None), tau)


def test_expert_is_truncated_svd_of_projection():
    m, n, rank = 32, 24, 5
    w0 = RNG.standard_normal((m, n)).astype(np.float32)
    prev = [mingle.expert_factors(_lowrank(m, n, 8, RNG), rank)]
    wt = w0 + RNG.standard_normal((m, n)).astype(np.float32)
    B, A = mingle.build_expert(w0, wt, prev, rank)
    assert B.shape == (m, rank) and A.shape == (rank, n)
    proj, _ = ref_project(wt - w0, prev[0][0] @ prev[0][1])
    want = ref_truncate(proj, rank)
    assert np.abs(B @ A - want).max() < 2e-4 * np.abs(want).max()
    # B has orthonormal columns, A = diag(S) V^T (official LoRA.set_delta)
    np.testing.assert_allclose(B.T @ B, np.eye(rank), atol=1e-4)
    # first task: no projection
    B1, A1 = mingle.build_expert(w0, wt, [], rank)
    assert np.abs(B1 @ A1 - ref_truncate(wt - w0, rank)).max() < 1e-3


def test_projection_rule_matches_official():
    C, k = 9, 4
    U = np.linalg.qr(RNG.standard_normal((C, k)))[0]
    h = None
    href = np.zeros(k)
    for step in range(5):  # the EMA carries over steps
        g = RNG.standard_normal((2, C))
        got, h = mingle.project_gradient(g, U, h, beta=0.9, gamma=1.5)
        want, href = ref_project_gradient(g, U, href, 0.9, 1.5)
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(h, href, rtol=1e-12)
    # at h = 0 the projection is the full one: g U = 0 afterwards
    g = RNG.standard_normal((1, C))
    p, _ = mingle.project_gradient(g, U, None, beta=1.0)
    assert np.abs(p @ U).max() < 1e-12
    # no basis (first task) and 1-D gradients (biases) pass through
    assert np.array_equal(mingle.project_gradient(g, None, None)[0], g)
    b = RNG.standard_normal(C)
    assert np.array_equal(mingle.project_gradient(b, U, None)[0], b)


def test_extend_basis_is_qr_of_top_eigenvectors():
    C = 10
    X = RNG.standard_normal((50, C)) * np.linspace(3, 0.1, C)
    cov = (X.T @ X).astype(np.float32)
    U1 = mingle.extend_basis(None, cov, 3)
    ev = np.linalg.eigh(cov.astype(np.float64))[1][:, ::-1][:, :3]
    np.testing.assert_allclose(np.abs(U1.T @ ev), np.eye(3), atol=1e-4)
    Y = RNG.standard_normal((50, C))
    U2 = mingle.extend_basis(U1, (Y.T @ Y).astype(np.float32), 3)
    assert U2.shape == (C, 6)
    np.testing.assert_allclose(U2.T @ U2, np.eye(6), atol=1e-5)
    # the old directions stay in the span
    assert np.abs(U1 - U2 @ (U2.T @ U1)).max() < 1e-5
