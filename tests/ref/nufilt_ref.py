"""Independent NumPy reference of NUFILT (docs/method.md), float64 throughout.

    nufilt_step(base, prev_merged_or_None, task, step_index, params) -> merged

base / prev_merged / task: dict name -> numpy array (already float64, or use
st.Tensors and `as_f64`), merged: dict name -> float64 array.  Untreated tensors
are returned as exact copies of base.

Spec points resolved here (see also tests/e2e/README.md):
  * "First step" means prev_merged is None.  paper: treated W = base + tau, no
    training.  reference: prev = 0, V_p = first r_p coordinate axes, no
    training, W = base + tau P.
  * Rank capping: r_p, r_v capped at min(d_out, d_in); r_l never capped.
  * rank_tol (paper mode only): singular vectors with sigma < rank_tol*sigma_max
    are dropped, for BOTH V_p and V_t.  An all-zero matrix (sigma_max == 0) has
    rank 0 (nothing kept) -- otherwise the strict "<" test would keep every
    vector of a zero matrix.
  * reference mode keeps all r_p / r_v vectors.  When the matrix is all zero,
    V = first r coordinate axes (what LAPACK returns for a zero matrix, as the
    spec says); this is applied to prev AND tau and at any step.  For a non-zero
    but rank-deficient matrix the extra vectors are whatever LAPACK (numpy)
    returns: implementation-defined, so tests must not rely on that case.
  * Training happens iff this is not the first step and r_l > 0.
  * Adam updates A and B simultaneously from gradients at the same (A, B).
  * A from the counter-based RNG, rounded to float32, then used in float64.
"""

import math
import re
import sys

import numpy as np

M64 = (1 << 64) - 1

# ----------------------------------------------------------------------------- RNG


def _mix64_np(x):
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _fnv1a64(name):
    h = 0xCBF29CE484222325
    for c in name.encode("utf-8"):
        h = ((h ^ c) * 0x100000001B3) & M64
    return h


def rng_key(seed, step, name):
    s = np.array([(int(seed) + int(step)) & M64], dtype=np.uint64)
    k = _mix64_np(s)[0]
    return int(_mix64_np(np.array([int(k) ^ _fnv1a64(name)], dtype=np.uint64))[0])


def rng_A(seed, step, name, r_l, d_in):
    """A [r_l, d_in] as float32 (spec: 'Random numbers')."""
    key = np.uint64(rng_key(seed, step, name))
    i = np.arange(r_l * d_in, dtype=np.uint64)
    with np.errstate(over="ignore"):
        a = _mix64_np(key + np.uint64(2) * i)
        b = _mix64_np(key + np.uint64(2) * i + np.uint64(1))
    u1 = ((a >> np.uint64(11)) + np.uint64(1)).astype(np.float64) * 2.0 ** -53
    u2 = (b >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
    v = 0.02 * np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * math.pi * u2)
    return v.astype(np.float32).reshape(r_l, d_in)


# pure-Python-int implementation, used only to cross-check the numpy one
def _py_mix64(x):
    z = (x + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def _py_A_elem(seed, step, name, i):
    key = _py_mix64(_py_mix64((seed + step) & M64) ^ _fnv1a64(name))
    a = _py_mix64((key + 2 * i) & M64)
    b = _py_mix64((key + 2 * i + 1) & M64)
    u1 = ((a >> 11) + 1) * 2.0 ** -53
    u2 = (b >> 11) * 2.0 ** -53
    return float(np.float32(0.02 * math.sqrt(-2.0 * math.log(u1)) * math.cos(2 * math.pi * u2)))


# ----------------------------------------------------------------------------- params

DEFAULTS = dict(null_rank=128, task_rank=8, lora_rank=64, lr=1e-3, iters=50, seed=0,
                compat="paper", rank_tol=1e-6, treated="clip",
                betas=(0.9, 0.999), eps=1e-8,
                # float64 is the reference; float32 only to estimate what a float32
                # implementation can achieve (used by tests/e2e/fake_nufilt.py)
                dtype=np.float64)


def make_params(**kw):
    p = dict(DEFAULTS)
    for k, v in kw.items():
        if k not in p:
            raise KeyError(k)
        p[k] = v
    return p


def is_treated(name, shape, treated):
    """`treated`: 'clip' | 't5' | 'all-2d' | compiled regex | callable | set of names."""
    if callable(treated):
        return bool(treated(name, shape))
    if isinstance(treated, (set, frozenset, list, tuple)):
        return name in treated
    if len(shape) != 2:
        return False
    if treated == "clip":
        return ("attn" in name) or ("fc1" in name)
    if treated == "t5":
        return any(s in name for s in ("SelfAttention", "EncDecAttention", "DenseReluDense"))
    if treated == "all-2d":
        return True
    if hasattr(treated, "search"):
        return treated.search(name) is not None
    raise ValueError("unknown treated spec %r" % (treated,))


# ----------------------------------------------------------------------------- SVD helpers


def top_right_vectors(X, r, compat, rank_tol, info=None, key=None):
    """Top-r right singular vectors of X as [d_in, k] (k <= r after capping and,
    in paper mode, rank_tol dropping).  If info is given, info[key] receives the
    gap ratio sigma_k / sigma_{k+1} at the cut actually used (inf if no cut)."""
    d_out, d_in = X.shape
    r = min(r, d_out, d_in)
    if info is not None:
        info[key] = float("inf")
    if r <= 0:
        return np.zeros((d_in, 0), dtype=X.dtype)
    smax = float(np.max(np.abs(X))) if X.size else 0.0
    if smax == 0.0:
        if compat == "reference":
            return np.eye(d_in, dtype=X.dtype)[:, :r]   # LAPACK's V = I for a zero matrix
        return np.zeros((d_in, 0), dtype=X.dtype)       # paper: zero matrix has rank 0
    _, s, vt = np.linalg.svd(X, full_matrices=False)
    if compat == "paper":
        # "below rank_tol x largest" is dropped, i.e. keep sigma >= rank_tol*sigma_max
        keep = int(np.sum(s[:r] >= rank_tol * s[0]))
        r = min(r, keep)
    if info is not None and 0 < r < len(s):
        info[key] = float(s[r - 1] / s[r]) if s[r] > 0 else float("inf")
    return vt[:r].T.copy()


# ----------------------------------------------------------------------------- objective


def objective(tau, prev, Vp, Vt, A, B):
    """L(A, B) evaluated the naive way (forms M explicitly; only for checks)."""
    P_tau = tau - (tau @ Vp) @ Vp.T
    M = prev + P_tau + (tau @ B) @ A
    return float(np.sum(((tau - M) @ Vt) ** 2) + np.sum(((prev - M) @ Vp) ** 2))


def gradients(tau, prev, Vp, Vt, A, B):
    """Closed-form (dL/dA, dL/dB) by the spec's formulas, forming G explicitly."""
    P_tau = tau - (tau @ Vp) @ Vp.T
    M = prev + P_tau + (tau @ B) @ A
    Et = (tau - M) @ Vt
    Ep = (prev - M) @ Vp
    G = Et @ Vt.T + Ep @ Vp.T
    dB = -2.0 * tau.T @ (G @ A.T)
    dA = -2.0 * (B.T @ tau.T) @ G
    return dA, dB


class _Problem:
    """Precomputed pieces for the fast loop: only M V_k is ever formed."""

    def __init__(self, tau, prev, Vp, Vt):
        self.tau, self.Vp, self.Vt = tau, Vp, Vt
        tVp = tau @ Vp
        self.tgt_t = tau @ Vt                                    # tau V_t
        self.tgt_p = prev @ Vp                                   # prev V_p
        # constant parts of M V_k = prev V_k + tau P V_k
        self.c_t = prev @ Vt + self.tgt_t - tVp @ (Vp.T @ Vt)
        self.c_p = self.tgt_p + tVp - tVp @ (Vp.T @ Vp)          # do not assume P V_p = 0

    def loss_grads(self, A, B):
        tau, Vp, Vt = self.tau, self.Vp, self.Vt
        tB = tau @ B                                             # [d_out, r_l]
        AVt, AVp = A @ Vt, A @ Vp                                # [r_l, r]
        Et = self.tgt_t - (self.c_t + tB @ AVt)                  # (tau - M) V_t
        Ep = self.tgt_p - (self.c_p + tB @ AVp)                  # (prev - M) V_p
        L = float(np.sum(Et * Et) + np.sum(Ep * Ep))
        GAt = Et @ AVt.T + Ep @ AVp.T                            # G A^T  [d_out, r_l]
        dB = -2.0 * (tau.T @ GAt)
        dA = -2.0 * ((tB.T @ Et) @ Vt.T + (tB.T @ Ep) @ Vp.T)   # B^T tau^T G
        return L, dA, dB


def train_AB(tau, prev, Vp, Vt, A, params, trace=None):
    r_l, d_in = A.shape
    dt = params.get("dtype", np.float64)
    A = A.astype(dt).copy()
    B = np.zeros((d_in, r_l), dtype=dt)
    b1, b2 = params["betas"]
    eps, lr = params["eps"], params["lr"]
    mA, vA = np.zeros_like(A), np.zeros_like(A)
    mB, vB = np.zeros_like(B), np.zeros_like(B)
    prob = _Problem(tau, prev, Vp, Vt)
    for s in range(1, int(params["iters"]) + 1):
        L, gA, gB = prob.loss_grads(A, B)
        if trace is not None:
            trace.append(L)
        bc1 = dt(1.0 - b1 ** s)
        bc2 = dt(1.0 - b2 ** s)
        for x, g, m, v in ((A, gA, mA, vA), (B, gB, mB, vB)):
            m *= dt(b1)
            m += dt(1.0 - b1) * g
            v *= dt(b2)
            v += dt(1.0 - b2) * (g * g)
            x -= dt(lr) * (m / bc1) / (np.sqrt(v / bc2) + dt(eps))
    if trace is not None:
        trace.append(prob.loss_grads(A, B)[0])
    return A, B


# ----------------------------------------------------------------------------- one step


def nufilt_matrix(W0, Wm, Wt, name, step_index, params, info=None):
    """One treated matrix.  W0, Wt float64; Wm float64 or None (first step)."""
    compat = params["compat"]
    dt = params.get("dtype", np.float64)
    W0, Wt = W0.astype(dt, copy=False), Wt.astype(dt, copy=False)
    Wm = None if Wm is None else Wm.astype(dt, copy=False)
    tau = Wt - W0
    d_out, d_in = tau.shape
    first = Wm is None
    if first and compat == "paper":
        return W0 + tau
    prev = np.zeros_like(tau) if first else (Wm - W0)
    Vp = top_right_vectors(prev, params["null_rank"], compat, params["rank_tol"], info, "gap_p")
    tVp = tau @ Vp
    delta = tau - tVp @ Vp.T                                     # tau P
    r_l = int(params["lora_rank"])
    if info is not None:
        info["r_p"] = Vp.shape[1]
    if not first and r_l > 0:
        Vt = top_right_vectors(tau, params["task_rank"], compat, params["rank_tol"], info, "gap_t")
        A = rng_A(params["seed"], step_index, name, r_l, d_in)
        tr = [] if info is not None else None
        A2, B = train_AB(tau, prev, Vp, Vt, A, params, tr)
        lora = (tau @ B) @ A2
        delta = delta + lora
        if info is not None:
            info["lora"] = lora
            info.update(r_v=Vt.shape[1], loss=tr, B_absmax=float(np.max(np.abs(B))))
    # spec: W_merged_new = W_merged + tau (P + B A)   (W_merged = W0 at a first step)
    return (W0 if first else Wm) + delta


def nufilt_step(base, prev_merged, task, step_index, params, infos=None):
    """base, prev_merged (or None), task: dict name -> float64 array."""
    out = {}
    for name, W0 in base.items():
        W0 = np.asarray(W0)
        if not is_treated(name, W0.shape, params["treated"]):
            out[name] = W0.copy()
            continue
        Wt = np.asarray(task[name])
        Wm = None if prev_merged is None else np.asarray(prev_merged[name])
        info = {} if infos is not None else None
        out[name] = nufilt_matrix(W0, Wm, Wt, name, step_index, params, info)
        if infos is not None:
            infos[name] = info
    return out


def nufilt_merge(base, tasks, params):
    prev, outs = None, []
    for t, task in enumerate(tasks, start=1):
        prev = nufilt_step(base, prev, task, t, params)
        outs.append(prev)
    return outs


def as_f64(tensors):
    """st.Tensors -> dict name -> float64 (exact)."""
    from st import to_float64
    return {k: to_float64(v, tensors.dtypes[k]) for k, v in tensors.items()}


# ----------------------------------------------------------------------------- self test


def _selftest():
    ok = True

    def check(cond, msg):
        nonlocal ok
        print(("PASS " if cond else "FAIL ") + msg)
        ok = ok and bool(cond)

    # RNG: numpy vs pure-Python ints, including seeds that wrap 2^64
    for seed, step, name in ((0, 1, "vision_model.encoder.layers.0.self_attn.q_proj.weight"),
                             (42, 3, "x"), ((1 << 64) - 1, 2, "layers.1.mlp.fc1.weight"),
                             (7, 1, "\u00e9t\u00e9")):
        A = rng_A(seed, step, name, 3, 11)
        idx = [0, 1, 5, 17, 32]
        py = [_py_A_elem(seed, step, name, i) for i in idx]
        check(all(float(A.flat[i]) == v for i, v in zip(idx, py)),
              "rng numpy == python ints (seed=%d step=%d)" % (seed, step))
    Abig = rng_A(0, 1, "t", 64, 4096).astype(np.float64)
    check(abs(Abig.std() - 0.02) < 5e-4 and abs(Abig.mean()) < 3e-4,
          "rng A ~ N(0, 0.02^2): std %.5f mean %.1e" % (Abig.std(), Abig.mean()))
    print("  rng values: key(0,1,'a')=%#018x A(0,1,'a')[0,:3]=%r" %
          (rng_key(0, 1, "a"), [float(x) for x in rng_A(0, 1, "a", 1, 3)[0]]))

    # gradients vs central finite differences of the objective
    rng = np.random.default_rng(0)
    for (d_out, d_in, rp, rv, rl) in ((7, 5, 2, 2, 3), (4, 9, 3, 1, 6), (6, 6, 0, 2, 2), (5, 8, 2, 0, 3)):
        tau = rng.standard_normal((d_out, d_in))
        prev = rng.standard_normal((d_out, d_in))
        Vp = top_right_vectors(prev, rp, "paper", 1e-6)
        Vt = top_right_vectors(tau, rv, "paper", 1e-6)
        A = rng.standard_normal((rl, d_in))
        B = rng.standard_normal((d_in, rl))
        dA, dB = gradients(tau, prev, Vp, Vt, A, B)
        prob = _Problem(tau, prev, Vp, Vt)
        L2, dA2, dB2 = prob.loss_grads(A, B)
        h = 1e-6
        nA = np.zeros_like(A)
        for i in np.ndindex(A.shape):
            Ap, Am = A.copy(), A.copy()
            Ap[i] += h
            Am[i] -= h
            nA[i] = (objective(tau, prev, Vp, Vt, Ap, B) - objective(tau, prev, Vp, Vt, Am, B)) / (2 * h)
        nB = np.zeros_like(B)
        for i in np.ndindex(B.shape):
            Bp, Bm = B.copy(), B.copy()
            Bp[i] += h
            Bm[i] -= h
            nB[i] = (objective(tau, prev, Vp, Vt, A, Bp) - objective(tau, prev, Vp, Vt, A, Bm)) / (2 * h)
        eA = np.max(np.abs(dA - nA)) / max(1e-300, np.max(np.abs(nA))) if nA.any() else np.max(np.abs(dA))
        eB = np.max(np.abs(dB - nB)) / max(1e-300, np.max(np.abs(nB))) if nB.any() else np.max(np.abs(dB))
        eF = max(np.max(np.abs(dA - dA2)), np.max(np.abs(dB - dB2)), abs(L2 - objective(tau, prev, Vp, Vt, A, B)))
        check(eA < 1e-6 and eB < 1e-6 and eF < 1e-9,
              "gradients vs finite differences %dx%d r_p=%d r_v=%d r_l=%d: rel err A %.1e B %.1e fast-path %.1e"
              % (d_out, d_in, rp, rv, rl, eA, eB, eF))
        # at B = 0 dL/dA is exactly 0
        _, gA0, _ = prob.loss_grads(A, np.zeros_like(B))
        check(not gA0.any(), "dL/dA == 0 exactly at B = 0")

    # training decreases the objective
    d_out, d_in = 40, 24
    tau = rng.standard_normal((d_out, d_in)) * 1e-2
    prev = rng.standard_normal((d_out, d_in)) * 1e-2
    Vp = top_right_vectors(prev, 6, "paper", 1e-6)
    Vt = top_right_vectors(tau, 3, "paper", 1e-6)
    tr = []
    train_AB(tau, prev, Vp, Vt, rng_A(0, 2, "w", 8, d_in), make_params(), tr)
    check(tr[-1] < tr[0], "Adam lowers L: %.4e -> %.4e" % (tr[0], tr[-1]))

    # Adam matches a literal scalar transcription of the spec on one element
    p = make_params(iters=5)
    A0 = rng_A(0, 2, "w", 8, d_in)
    A1, B1 = train_AB(tau, prev, Vp, Vt, A0, p)
    A_, B_ = A0.astype(np.float64).copy(), np.zeros((d_in, 8))
    m = {"A": 0 * A_, "B": 0 * B_}
    v = {"A": 0 * A_, "B": 0 * B_}
    for s in range(1, 6):
        gA, gB = gradients(tau, prev, Vp, Vt, A_, B_)
        newx = {}
        for k, x, g in (("A", A_, gA), ("B", B_, gB)):
            m[k] = 0.9 * m[k] + 0.1 * g
            v[k] = 0.999 * v[k] + 0.001 * g ** 2
            newx[k] = x - 1e-3 * (m[k] / (1 - 0.9 ** s)) / (np.sqrt(v[k] / (1 - 0.999 ** s)) + 1e-8)
        A_, B_ = newx["A"], newx["B"]
    check(np.allclose(A1, A_, rtol=0, atol=1e-14) and np.allclose(B1, B_, rtol=0, atol=1e-14),
          "Adam loop == literal transcription")

    # step-level properties
    names = ["l.self_attn.q_proj.weight", "l.mlp.fc1.weight", "l.mlp.fc2.weight", "l.self_attn.q_proj.bias"]
    shapes = [(10, 10), (16, 10), (10, 16), (10,)]
    base = {n: rng.standard_normal(s) for n, s in zip(names, shapes)}
    t1 = {n: base[n] + 0.1 * rng.standard_normal(s) for n, s in zip(names, shapes)}
    t2 = {n: base[n] + 0.1 * rng.standard_normal(s) for n, s in zip(names, shapes)}
    pp = make_params(null_rank=4, task_rank=2, lora_rank=3)
    m1 = nufilt_step(base, None, t1, 1, pp)
    check(all(np.array_equal(m1[n], t1[n] if i < 2 else base[n]) for i, n in enumerate(names)),
          "paper first step: treated = base + tau exactly, untreated = base")
    pr = make_params(null_rank=4, task_rank=2, lora_rank=3, compat="reference")
    m1r = nufilt_step(base, None, t1, 1, pr)
    tv = m1r[names[1]] - base[names[1]]
    tv1 = t1[names[1]] - base[names[1]]
    check(np.all(tv[:, :4] == 0) and np.allclose(tv[:, 4:], tv1[:, 4:], atol=1e-15, rtol=0),
          "reference first step zeroes input columns 0..r_p-1")
    m2 = nufilt_step(base, m1, t2, 2, pp)
    check(all(np.array_equal(m2[n], base[n]) for n in names[2:]), "untreated stay at base at step 2")
    p0 = make_params(null_rank=4, task_rank=2, lora_rank=0)
    m2b = nufilt_step(base, m1, t2, 2, p0)
    n = names[0]
    prev = m1[n] - base[n]
    tau2 = t2[n] - base[n]
    _, _, vt = np.linalg.svd(prev)
    Vp = vt[:4].T
    exp = base[n] + prev + tau2 - (tau2 @ Vp) @ Vp.T
    check(np.allclose(m2b[n], exp, atol=1e-13, rtol=0), "r_l = 0: pure null-space filter")
    pn = make_params(null_rank=0, task_rank=2, lora_rank=0)
    check(np.allclose(nufilt_step(base, m1, t2, 2, pn)[n], m1[n] + tau2, atol=1e-14, rtol=0),
          "r_p = 0 and r_l = 0: plain task arithmetic")
    # rank_tol: prev of rank 2 -> only 2 vectors kept in paper mode
    low = np.outer(rng.standard_normal(10), rng.standard_normal(10)) + np.outer(rng.standard_normal(10), rng.standard_normal(10))
    check(top_right_vectors(low, 4, "paper", 1e-6).shape[1] == 2 and
          top_right_vectors(low, 4, "reference", 1e-6).shape[1] == 4 and
          top_right_vectors(np.zeros((5, 6)), 4, "paper", 1e-6).shape[1] == 0 and
          top_right_vectors(rng.standard_normal((5, 6)), 9, "paper", 1e-6).shape[1] == 5,
          "rank capping / rank_tol / zero matrix")
    # seed changes A
    check(not np.array_equal(rng_A(0, 2, n, 2, 5), rng_A(1, 2, n, 2, 5)) and
          not np.array_equal(rng_A(0, 2, n, 2, 5), rng_A(0, 3, n, 2, 5)), "seed/step change A")
    print("selftest " + ("OK" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    if "--selftest" in sys.argv:
        sys.exit(_selftest())
    print(__doc__)
