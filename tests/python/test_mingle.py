"""nufilt.mingle against independent references: the expert construction and the gradient
projection rule against NumPy transcriptions of the official MINGLE code (full-matrix SVDs,
the literal formulas), without torch; then, with torch, the gated layer against the official
merged-weight forward, and a tiny model's stream: determinism, save/load/continue."""
import copy
import math

import numpy as np
import pytest

import nufilt
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


# ---- torch --------------------------------------------------------------------------------

torch = pytest.importorskip("torch", reason="nufilt.mingle's models need torch "
                                            "(pip install .[mingle]); CI has none")


class Block(torch.nn.Module):
    def __init__(self, C):
        super().__init__()
        self.fc1 = torch.nn.Linear(C, 16)
        self.fc2 = torch.nn.Linear(16, C)
        self.drop = torch.nn.Dropout(0.1)

    def forward(self, h):
        return h + torch.tanh(self.fc2(self.drop(torch.relu(self.fc1(h)))))


class Tiny(torch.nn.Module):
    def __init__(self, C=12, K=4):
        super().__init__()
        self.emb = torch.nn.Linear(6, C)
        self.blocks = torch.nn.ModuleList([Block(C) for _ in range(2)])
        self.head = torch.nn.Linear(C, K)

    def forward(self, x):
        h = self.emb(x)
        for b in self.blocks:
            h = b(h)
        return self.head(h.mean(1))


def _setup(ntasks=3):
    torch.manual_seed(0)
    base = Tiny()
    tasks, data = [], []
    for t in range(ntasks):
        ft = copy.deepcopy(base)
        with torch.no_grad():
            for n, mod in ft.named_modules():
                if n.startswith("blocks.") and isinstance(mod, torch.nn.Linear):
                    mod.weight.add_(0.3 * torch.randn_like(mod.weight))
        tasks.append(ft)
        data.append(torch.randn(20, 5, 6) + t)
    return base, tasks, data


KW = dict(rank=4, max_steps=6, batch_size=8, seed=5)


def _state(stream):
    out = {}
    for k, l in stream.layers.items():
        G, c = l.gate_weights()
        out[k] = [G.detach().clone(), c.detach().clone(), l.A.clone(), l.B.clone(),
                  None if l.U is None else l.U.clone()]
    return out


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        for x, y in zip(a[k], b[k]):
            assert (x is None) == (y is None)
            if x is not None:
                assert torch.equal(x, y), k


def test_gated_layer_matches_official_forward():
    torch.manual_seed(1)
    lin = torch.nn.Linear(8, 5)
    G = mingle._gated_cls()
    for reduce in (True, False):
        g = G(copy.deepcopy(lin), batch_reduce=reduce)
        experts = [(torch.randn(5, 3), torch.randn(3, 8)) for _ in range(3)]
        for B, A in experts:
            g.add_expert(B, A, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            g.gate_b.fill_(0.4)
        x = torch.randn(4, 7, 8)
        # lora_moe.py: gate(x).mean(dim=1) [then .mean(0)], W = W0 + sum w_i B_i A_i
        Wg, cg = g.gate_weights()
        gw = (x @ Wg.T + cg).mean(dim=1)
        outs = []
        for i in range(4):
            w = gw.mean(0) if reduce else gw[i]
            W = lin.weight + sum(w[e] * experts[e][0] @ experts[e][1] for e in range(3))
            outs.append(torch.nn.functional.linear(x[i:i + 1], W, lin.bias))
        want = torch.cat(outs, 0)
        torch.testing.assert_close(g(x), want, rtol=1e-4, atol=1e-5)
        # the torch projection equals the NumPy rule
        U = torch.linalg.qr(torch.randn(8, 3))[0]
        g.U = U
        grad = torch.randn(1, 8, dtype=torch.float32)
        g.gate_w.grad = grad.clone()
        g.project_gate_grad(gamma=1.0, beta=0.99)
        want_g, want_h = mingle.project_gradient(grad.numpy(), U.numpy(), None, 0.99, 1.0)
        np.testing.assert_allclose(g.gate_w.grad.numpy(), want_g, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(g.h.numpy(), want_h, rtol=1e-5)


def test_stream_deterministic_and_trains():
    states = []
    for _ in range(2):
        base, tasks, data = _setup(2)
        s = mingle.MingleStream(base, **KW)
        st = [s.add_task(tasks[i], data[i]) for i in range(2)]
        states.append(_state(s))
    _same(states[0], states[1])
    assert st[0]["loss_last"] < st[0]["loss_first"]
    assert set(states[0]) == {"blocks.0.fc1", "blocks.0.fc2", "blocks.1.fc1", "blocks.1.fc2"}
    k = states[0]["blocks.0.fc1"]
    assert k[0].shape == (2, 12) and k[2].shape == (2, 4, 12) and k[4].shape == (12, 6)
    # a different seed gives different gates
    base, tasks, data = _setup(2)
    s = mingle.MingleStream(base, **dict(KW, seed=6))
    s.add_task(tasks[0], data[0])
    assert not torch.equal(s.layers["blocks.0.fc1"].gate_w, states[0]["blocks.0.fc1"][0][:1])
    assert s.added_parameters() == sum(
        4 * (16 + 12) + 12 + 1 + 3 * 12 if n.endswith("fc1") else 4 * (12 + 16) + 16 + 1 + 3 * 16
        for n in s.layers)


def test_save_load_continue(tmp_path):
    base, tasks, data = _setup(3)
    straight = mingle.MingleStream(base, **KW)
    for i in range(3):
        straight.add_task(tasks[i], data[i], name="t%d" % i)
    x = torch.randn(3, 5, 6)
    straight.model.eval()
    want = straight.model(x)

    base, tasks, data = _setup(3)
    s = mingle.MingleStream(base, **KW)
    for i in range(2):
        s.add_task(tasks[i], data[i], name="t%d" % i)
    s.save(str(tmp_path / "m"))
    with pytest.raises(nufilt.Error):
        s.save(str(tmp_path / "m"))  # exists, no force
    s.save(str(tmp_path / "m"), force=True)
    fresh, tasks2, data2 = _setup(3)
    s2 = mingle.load(str(tmp_path / "m"), fresh)
    assert s2.tasks == ["t0", "t1"] and s2.recipe == s.recipe
    _same(_state(s), _state(s2))
    s2.add_task(tasks2[2], data2[2], name="t2")
    _same(_state(straight), _state(s2))
    s2.model.eval()
    torch.testing.assert_close(s2.model(x), want, rtol=0, atol=0)
    s2.save(str(tmp_path / "m2"))
    s3 = mingle.load(str(tmp_path / "m2"), _setup(3)[0])
    s3.model.eval()
    torch.testing.assert_close(s3.model(x), want, rtol=0, atol=0)
    # a base model of another shape is refused
    with pytest.raises(nufilt.Error):
        mingle.load(str(tmp_path / "m2"), Tiny(C=10))
