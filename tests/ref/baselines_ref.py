#!/usr/bin/python3
"""Independent NumPy reference of the eight continual-merging baselines of nufilt.

Written from the rules of docs/baselines.md ("Exact update rules") alone, not
from the C sources.
Pure functions on dicts ``name -> numpy array``; all floating-point arithmetic
is done in float64 on the decoded inputs (float32 / float16 / bf16-decoded-to-
float32 arrays).  Non-float tensors (int64 position ids, ...) are never touched:
the merged model carries the base's array unchanged.

Main entry point::

    merged, new_state = step(method, base, prev_or_None, task, state, params)

* ``method``  one of wa, ta, ties, magmax, opcm, wudi, isoc, tsvm
* ``base``    theta_0 (dict name -> array)
* ``prev``    M(t-1) as stored (dict) or None for the first step
* ``task``    theta_t
* ``state``   the state returned by the previous call (None / {} on step 1)
* ``params``  hyper-parameters (see DEFAULTS); missing keys take defaults
* ``diag``    optional dict filled with conditioning diagnostics (see below)

``merged`` holds float64 arrays for the float tensors (unrounded) and the base
arrays for the others.  ``quantize(arr, dtype)`` emulates what storing in a
F32/F16/BF16 file does; ``run_chain`` runs a whole stream with that storage
emulation between steps.

Diagnostics (``diag``) make the comparison with a float32 implementation
robust: a discrete decision (TIES threshold, MagMax comparison, OPCM rank cut,
TSV-M top-h cut) that sits within rounding noise cannot be expected to come out
the same, so the reference reports how far every such decision is from its
boundary:

    diag["margin"][name]    dict of conditioning numbers of the spectral rules
                            (absent keys: nothing to decide):
                              "cut"  OPCM: min |cumulative share - alpha|
                                     (a discrete rank decision)
                              "gap"  relative singular gap (s[c-1]-s[c])/s[0] at
                                     every cut c (OPCM: r, and with zero-diag
                                     every gap of the tail; TSV-M: h of both
                                     inputs)
                              "cond" sigma_min/sigma_max of what a polar factor
                                     is taken of (Iso-C: m + tau; TSV-M: U_cat
                                     and V_cat^T)
    diag["ambiguous"][name] boolean mask of elements whose elementwise decision
                            (TIES trim, MagMax select) lies within a relative
                            band DELTA_ELEMENT of its threshold.

Choices made where the spec is silent (also listed in ``AMBIGUITIES``):
see the comments marked "CHOICE".

Run ``python3 baselines_ref.py --selftest`` for the self-checks.
"""

import math
import sys

import numpy as np

METHODS = ("wa", "ta", "ties", "magmax", "opcm", "wudi", "isoc", "tsvm")

# Defaults of the paper runs (spec table).  "scale" is lambda.
DEFAULTS = {
    "wa": {},
    "ta": {"scale": 0.3},
    "ties": {"scale": 0.3, "keep": 0.2},
    "magmax": {"scale": 0.5},
    "opcm": {"alpha": 0.5, "zero_diag": False},
    "wudi": {"lr": 1e-5, "iters": 50},
    "isoc": {"scale": 1.0},
    "tsvm": {"scale": 1.0},
}

# Adam constants of WUDI (spec: betas 0.9/0.999, eps 1e-8).
ADAM_BETA1 = 0.9
ADAM_BETA2 = 0.999
ADAM_EPS = 1e-8

# Relative half-width of the band around an elementwise threshold inside which
# a float32 implementation may legitimately decide the other way.
DELTA_ELEMENT = 4e-6

AMBIGUITIES = """\
1. 'linear weight' test: ndim == 2, the name ends in '.weight' (or is 'weight'),
   and the name does not contain the substring 'embed' (case-sensitive).
2. Non-float tensors keep the base array at every step (also on step 1 of
   wa/opcm/wudi, where M(1) = theta_1 for the float tensors only).
3. Whole-model quantities (TIES trim vectors, OPCM norms) run over the float
   tensors only; D counts float elements only.
4. TIES: k = D - floor(keep * D) with floor taken of the float64 product;
   keep >= 1 (k <= 0) keeps everything.  A zero majority sign leaves s_j = 0,
   which the disjoint sum treats as 's_j <= 0' (negative entries).
5. OPCM: r counts the leading singular values with cumulative share <= alpha;
   a tensor whose merged delta is exactly zero gets r = 0 (no projection).
   The zero-diagonal option subtracts (u_i^T dT v_i) u_i v_i^T for the
   thin-SVD columns not in U_r (0-based i >= r, i < min(d_out, d_in)).
   A whole-model merged norm n == 0 skips the rescale and keeps lambda = 1.
6. OPCM, WUDI: first step M(1) = theta_1 exactly (no lambda); OPCM state after
   step 1: lambda = 1, norm_sum = ||tau_1||, norm_count = 1.
7. Iso-C / TSV-M: first step theta_0 + tau_1 WITHOUT lambda (spec table);
   lambda multiplies R for 2-D and 'other' tensors alike at t >= 2.
   The Iso-C mean runs over all min(d_out, d_in) thin singular values.
8. TSV-M: a 2-D tensor with h = floor(min(d_out, d_in)/2) == 0 falls back to
   the mean (m + tau)/2 (the literal rule would give R = 0).
9. WUDI: a term whose ||tau_i||_F == 0 is dropped from the loss (G_i = 0).
   Adam is PyTorch's (no weight decay, no amsgrad): bias-corrected first and
   second moments, eps added after the square root.
10. Step counter t is taken from the carried state (state['step'] + 1), not
    re-derived from the task list.
"""


# --------------------------------------------------------------------------
# tensor classes and small helpers
# --------------------------------------------------------------------------

def is_float(a):
    return np.asarray(a).dtype.kind == "f"


def is_linear_weight(name, arr):
    # CHOICE (ambiguity 1): case-sensitive 'embed' substring test.
    return (arr.ndim == 2
            and (name.endswith(".weight") or name == "weight")
            and "embed" not in name)


def tensor_class(name, arr):
    if arr.ndim == 2:
        return "linear" if is_linear_weight(name, arr) else "2d"
    return "other"


def _params(method, params):
    if method not in DEFAULTS:
        raise ValueError("unknown method %r" % (method,))
    p = dict(DEFAULTS[method])
    for k, v in (params or {}).items():
        p[k] = v
    return p


def _f64(a):
    return np.asarray(a, dtype=np.float64)


def _check_same(base, other, what):
    if set(base) != set(other):
        raise ValueError("%s: tensor names differ from the base" % what)
    for n in base:
        if np.shape(base[n]) != np.shape(other[n]):
            raise ValueError("%s: shape of %s differs from the base" % (what, n))


def _svd(a):
    """Thin SVD in float64: U (m x k), s (k), Vt (k x n)."""
    return np.linalg.svd(a, full_matrices=False)


def _polar(a):
    """Orthogonal polar factor P Q^T of a (thin SVD a = P S Q^T)."""
    p, s, qt = _svd(a)
    return p @ qt, s


def whole_norm(tensors, names):
    return math.sqrt(sum(float(np.sum(np.square(tensors[n]))) for n in names))


# --------------------------------------------------------------------------
# storage emulation
# --------------------------------------------------------------------------

def bf16_round(x):
    """Round to bfloat16 (via float32, round-to-nearest-even); returns float32."""
    f = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    u = f.view(np.uint32).astype(np.uint64)
    nan = np.isnan(f)
    rounding = ((u >> 16) & 1) + 0x7FFF
    u = ((u + rounding) >> 16) << 16
    out = (u & 0xFFFFFFFF).astype(np.uint32).view(np.float32)
    out = np.where(nan, np.float32(np.nan), out)
    return out.reshape(f.shape)


def quantize(arr, dtype):
    """Value that a tensor takes once written as `dtype` (safetensors name or
    numpy-ish name) and read back; returned as float64 (int arrays unchanged)."""
    a = np.asarray(arr)
    if a.dtype.kind != "f":
        return a
    d = str(dtype).upper()
    if d in ("F64", "FLOAT64"):
        return _f64(a)
    if d in ("F32", "FLOAT32"):
        return _f64(a.astype(np.float32))
    if d in ("F16", "FLOAT16"):
        return _f64(a.astype(np.float32).astype(np.float16))
    if d in ("BF16", "BFLOAT16"):
        return _f64(bf16_round(a))
    raise ValueError("unknown dtype %r" % (dtype,))


def ulp(arr, dtype):
    """One unit in the last place of |arr| in the storage dtype (float64)."""
    a = np.abs(_f64(arr))
    d = str(dtype).upper()
    mant = {"F64": 52, "FLOAT64": 52, "F32": 23, "FLOAT32": 23,
            "F16": 10, "FLOAT16": 10, "BF16": 7, "BFLOAT16": 7}[d]
    tiny = {"F16": 2.0 ** -14}.get(d, np.finfo(np.float32).tiny)
    e = np.floor(np.log2(np.maximum(a, tiny)))
    return np.ldexp(1.0, (e - mant).astype(np.int64))


# --------------------------------------------------------------------------
# TIES pieces
# --------------------------------------------------------------------------

def ties_k(D, keep):
    """Rank (1-based) of the threshold magnitude: k = D - floor(keep * D)."""
    return D - int(math.floor(float(D) * float(keep)))


def ties_threshold(absvec, keep):
    """k-th smallest magnitude (None when everything is kept)."""
    D = absvec.size
    k = ties_k(D, keep)
    if k <= 0 or D == 0:
        return None  # CHOICE (ambiguity 4): keep >= 1 keeps all
    k = min(k, D)
    return float(np.partition(absvec, k - 1)[k - 1])


def ties_merge_vectors(mvec, tvec, keep, diag_masks=None):
    """TIES(m, tau) on two flat float64 vectors; returns the disjoint sum."""
    am, at = np.abs(mvec), np.abs(tvec)
    thr_m = ties_threshold(am, keep)
    thr_t = ties_threshold(at, keep)
    km = mvec if thr_m is None else np.where(am >= thr_m, mvec, 0.0)
    kt = tvec if thr_t is None else np.where(at >= thr_t, tvec, 0.0)
    s = np.sign(km + kt)
    majority = np.sign(np.sum(s))
    s = np.where(s == 0, majority, s)
    pos = s > 0
    delta = (np.where(pos, np.where(km > 0, km, 0.0), np.where(km < 0, km, 0.0))
             + np.where(pos, np.where(kt > 0, kt, 0.0), np.where(kt < 0, kt, 0.0)))
    if diag_masks is not None:
        amb = np.zeros(mvec.shape, dtype=bool)
        for a, thr in ((am, thr_m), (at, thr_t)):
            if thr is not None and thr > 0:
                amb |= np.abs(a - thr) <= DELTA_ELEMENT * thr
        diag_masks.append(amb)
        diag_masks.append((thr_m, thr_t))
    return delta


# --------------------------------------------------------------------------
# per-method step rules
# --------------------------------------------------------------------------

def _first_step(method, p, base, task, fnames, cd):
    lam = p.get("scale", 1.0)
    out = {}
    for n in fnames:
        b, t = base[n].astype(cd), task[n].astype(cd)
        if method in ("wa", "opcm", "wudi"):
            out[n] = t.copy()
        elif method in ("ta", "ties", "magmax"):
            out[n] = b + lam * (t - b)
        elif method in ("isoc", "tsvm"):
            # CHOICE (ambiguity 7): theta_0 + tau_1, no lambda.
            out[n] = b + (t - b)
        else:
            raise ValueError(method)
    state = {"step": 1}
    if method == "opcm":
        state.update({"lambda": 1.0,
                      "norm_sum": whole_norm({n: _f64(task[n]) - _f64(base[n])
                                              for n in fnames}, fnames),
                      "norm_count": 1})
    return out, state


def _opcm_linear(dm, dt, lam, alpha, zero_diag):
    """Returns (new delta before the global rescale, margins dict)."""
    u, s, vt = _svd(dm)
    k = s.size
    tot = float(np.sum(s))
    margin = {}
    if tot <= 0.0:
        r = 0  # CHOICE (ambiguity 5)
    else:
        cs = np.cumsum(s) / tot
        r = int(np.sum(cs <= alpha))
        margin["cut"] = float(np.min(np.abs(cs - alpha)))
        if 0 < r < k:
            margin["gap"] = float((s[r - 1] - s[r]) / s[0])
    ur, vr = u[:, :r], vt[:r, :].T
    tilde = dt - ur @ (ur.T @ dt @ vr) @ vr.T
    if zero_diag and r < k:
        ut, vtt = u[:, r:], vt[r:, :]
        c = np.einsum("ij,ik,jk->k", dt, ut, vtt.T)  # u_i^T dt v_i
        tilde = tilde - (ut * c) @ vtt
        tail = s[r:]
        if tail.size > 1 and s[0] > 0:
            margin["gap"] = min(margin.get("gap", 1.0),
                                float(np.min(tail[:-1] - tail[1:]) / s[0]))
    return lam * dm + tilde, margin


def _wudi_2d(ta, tb, lr, iters):
    gs = []
    for ti in (ta, tb):
        nrm2 = float(np.sum(ti * ti))
        if nrm2 > 0.0:  # CHOICE (ambiguity 9)
            gs.append((ti, (ti.T @ ti) / nrm2))
    x = ta + tb
    m1 = np.zeros_like(x)
    v = np.zeros_like(x)
    for it in range(1, int(iters) + 1):
        g = np.zeros_like(x)
        for ti, gi in gs:
            g += 2.0 * ((x - ti) @ gi)
        m1 = ADAM_BETA1 * m1 + (1.0 - ADAM_BETA1) * g
        v = ADAM_BETA2 * v + (1.0 - ADAM_BETA2) * g * g
        bc1 = 1.0 - ADAM_BETA1 ** it
        bc2 = 1.0 - ADAM_BETA2 ** it
        denom = np.sqrt(v) / math.sqrt(bc2) + ADAM_EPS
        x = x - (lr / bc1) * (m1 / denom)
    return x


def wudi_loss(x, taus):
    """L(x) of the spec (float64), for tests."""
    tot = 0.0
    for ti in taus:
        nrm2 = float(np.sum(ti * ti))
        if nrm2 > 0.0:
            tot += float(np.sum(np.square((x - ti) @ ti.T))) / nrm2
    return tot


def wudi_grad(x, taus):
    g = np.zeros_like(x)
    for ti in taus:
        nrm2 = float(np.sum(ti * ti))
        if nrm2 > 0.0:
            g += 2.0 * ((x - ti) @ ((ti.T @ ti) / nrm2))
    return g


def _tsvm_2d(m, tau, lam, margins):
    d_out, d_in = m.shape
    k = min(d_out, d_in)
    h = k // 2
    if h == 0:  # CHOICE (ambiguity 8)
        return lam * 0.5 * (m + tau), {}
    um, sm, vmt = _svd(m)
    ut, st, vtt = _svd(tau)
    margin = {}
    for s in (sm, st):
        if h < s.size and s[0] > 0:
            margin["gap"] = min(margin.get("gap", 1.0), float((s[h - 1] - s[h]) / s[0]))
    ucat = np.concatenate([um[:, :h], ut[:, :h]], axis=1)
    scat = np.concatenate([sm[:h], st[:h]])
    vcat_t = np.concatenate([vmt[:h, :], vtt[:h, :]], axis=0)
    uo, su = _polar(ucat)
    vot, sv = _polar(vcat_t)
    margin["cond"] = min(float(su[-1] / su[0]), float(sv[-1] / sv[0]))
    return lam * ((uo * scat) @ vot), margin


def step(method, base, prev, task, state=None, params=None, diag=None, compute=np.float64):
    """One continual step.  See the module docstring.  `compute` is the
    arithmetic dtype (float64 for the reference; float32 only to emulate a
    float32 implementation when calibrating test tolerances)."""
    cd = np.dtype(compute)
    p = _params(method, params)
    _check_same(base, task, "task")
    names = sorted(base)
    fnames = [n for n in names if is_float(base[n])]
    if diag is not None:
        diag.setdefault("margin", {})
        diag.setdefault("ambiguous", {})

    merged = {n: base[n] for n in names if n not in fnames}  # ambiguity 2

    if prev is None:
        out, new_state = _first_step(method, p, base, task, fnames, cd)
        merged.update(out)
        return merged, new_state

    _check_same(base, prev, "prev")
    state = dict(state or {})
    t = int(state.get("step", 1)) + 1
    new_state = dict(state)
    new_state["step"] = t

    B = {n: np.asarray(base[n]).astype(cd) for n in fnames}
    M = {n: np.asarray(prev[n]).astype(cd) for n in fnames}
    T = {n: np.asarray(task[n]).astype(cd) for n in fnames}
    m = {n: M[n] - B[n] for n in fnames}
    tau = {n: T[n] - B[n] for n in fnames}
    lam = float(p.get("scale", 1.0))

    if method == "wa":
        for n in fnames:
            merged[n] = ((t - 1) * M[n] + T[n]) / t

    elif method == "ta":
        for n in fnames:
            merged[n] = M[n] + lam * tau[n]

    elif method == "ties":
        sizes = [m[n].size for n in fnames]
        mvec = np.concatenate([m[n].ravel() for n in fnames]) if fnames else np.zeros(0)
        tvec = np.concatenate([tau[n].ravel() for n in fnames]) if fnames else np.zeros(0)
        dm = [] if diag is not None else None
        delta = ties_merge_vectors(mvec, tvec, p["keep"], dm)
        off = 0
        for n, sz in zip(fnames, sizes):
            d = delta[off:off + sz].reshape(m[n].shape)
            merged[n] = M[n] + lam * d
            if diag is not None:
                diag["ambiguous"][n] = dm[0][off:off + sz].reshape(m[n].shape)
            off += sz
        if diag is not None:
            diag["ties_thresholds"] = dm[1]

    elif method == "magmax":
        for n in fnames:
            kk = m[n] / lam
            at, ak = np.abs(tau[n]), np.abs(kk)
            merged[n] = B[n] + lam * np.where(at >= ak, tau[n], kk)
            if diag is not None:
                diag["ambiguous"][n] = (np.abs(at - ak) <= DELTA_ELEMENT * np.maximum(at, ak)) \
                    & (np.abs(tau[n] - kk) > DELTA_ELEMENT * np.maximum(at, ak))

    elif method == "opcm":
        alpha = float(p["alpha"])
        zd = bool(p.get("zero_diag", False))
        lam_o = float(state.get("lambda", 1.0))
        delta = {}
        for n in fnames:
            if is_linear_weight(n, B[n]):
                delta[n], mg = _opcm_linear(m[n], tau[n], lam_o, alpha, zd)
                if diag is not None:
                    diag["margin"][n] = mg
            else:
                delta[n] = lam_o * m[n] + tau[n]
        nrm = whole_norm(delta, fnames)
        nsum = float(state.get("norm_sum", 0.0)) + whole_norm(tau, fnames)
        ncnt = int(state.get("norm_count", t - 1)) + 1
        avg = nsum / ncnt
        if nrm > 0.0:
            scale = avg / nrm
            new_state["lambda"] = nrm / avg
        else:  # CHOICE (ambiguity 5)
            scale = 1.0
            new_state["lambda"] = 1.0
        new_state["norm_sum"] = nsum
        new_state["norm_count"] = ncnt
        for n in fnames:
            merged[n] = B[n] + delta[n] * scale

    elif method == "wudi":
        lr, iters = float(p["lr"]), int(p["iters"])
        for n in fnames:
            if B[n].ndim == 2:
                merged[n] = B[n] + _wudi_2d(m[n], tau[n], lr, iters)
            else:
                merged[n] = B[n] + 0.5 * (m[n] + tau[n])

    elif method == "isoc":
        for n in fnames:
            if B[n].ndim == 2:
                u, s, vt = _svd(m[n] + tau[n])
                r = float(np.mean(s)) * (u @ vt)
                if diag is not None:
                    diag["margin"][n] = {"cond": float(s[-1] / s[0]) if s[0] > 0 else 0.0}
            else:
                r = 0.5 * (m[n] + tau[n])
            merged[n] = B[n] + lam * r

    elif method == "tsvm":
        for n in fnames:
            if B[n].ndim == 2:
                r, mg = _tsvm_2d(m[n], tau[n], lam, None)
                merged[n] = B[n] + r
                if diag is not None:
                    diag["margin"][n] = mg
            else:
                merged[n] = B[n] + lam * 0.5 * (m[n] + tau[n])
    else:
        raise ValueError(method)
    return merged, new_state


def run_chain(method, base, tasks, params=None, dtypes=None, diags=None, compute=np.float64):
    """Run a whole stream; `dtypes` (name -> storage dtype) rounds every stored
    M(t) as a file would.  Returns the list of M(1..T) and the final state."""
    outs = []
    prev, state = None, None
    for i, task in enumerate(tasks):
        d = {} if diags is not None else None
        merged, state = step(method, base, prev, task, state, params, diag=d, compute=compute)
        if dtypes is not None:
            merged = {n: quantize(a, dtypes[n]) if is_float(a) else a
                      for n, a in merged.items()}
        outs.append(merged)
        if diags is not None:
            diags.append(d)
        prev = merged
    return outs, state


# --------------------------------------------------------------------------
# self-test
# --------------------------------------------------------------------------

def _rand_model(rng, shapes, scale=1.0):
    return {n: scale * rng.standard_normal(s) for n, s in shapes.items()}


def _selftest():
    rng = np.random.default_rng(1234)
    fails = []
    count = [0]

    def check(cond, what):
        count[0] += 1
        print(("ok   " if cond else "FAIL ") + what)
        if not cond:
            fails.append(what)

    shapes = {
        "enc.l0.q.weight": (12, 12),
        "enc.l0.q.bias": (12,),
        "enc.l0.fc1.weight": (20, 12),
        "enc.l0.fc2.weight": (12, 20),
        "emb.position_embedding.weight": (7, 12),
        "emb.class_embedding": (12,),
        "emb.patch.weight": (12, 3, 2, 2),
    }
    base = _rand_model(rng, shapes)
    base["emb.position_ids"] = np.arange(7, dtype=np.int64).reshape(1, 7)
    tasks = []
    for i in range(4):
        t = {n: base[n] + 0.1 * rng.standard_normal(base[n].shape)
             for n in shapes}
        t["emb.position_ids"] = base["emb.position_ids"].copy()
        tasks.append(t)
    fn = sorted(shapes)
    taus = [{n: t[n] - base[n] for n in fn} for t in tasks]

    # tensor classes
    check(tensor_class("enc.l0.q.weight", base["enc.l0.q.weight"]) == "linear"
          and tensor_class("emb.position_embedding.weight",
                           base["emb.position_embedding.weight"]) == "2d"
          and tensor_class("enc.l0.q.bias", base["enc.l0.q.bias"]) == "other"
          and tensor_class("emb.patch.weight", base["emb.patch.weight"]) == "other",
          "tensor classes")

    # every method: int tensors untouched, shapes kept
    for meth in METHODS:
        outs, _ = run_chain(meth, base, tasks)
        ok = outs[-1]["emb.position_ids"] is base["emb.position_ids"] and all(outs[-1][n].shape == base[n].shape for n in base)
        check(ok, "%s: non-float untouched, shapes kept" % meth)

    # WA == running mean
    outs, _ = run_chain("wa", base, tasks)
    err = max(np.max(np.abs(outs[t][n] - np.mean([tasks[i][n] for i in range(t + 1)], axis=0)))
              for t in range(4) for n in fn)
    check(err < 1e-12, "wa equals the running mean (max err %.2e)" % err)

    # TA == theta0 + lam sum tau
    outs, _ = run_chain("ta", base, tasks, {"scale": 0.3})
    err = max(np.max(np.abs(outs[-1][n] - (base[n] + 0.3 * sum(tv[n] for tv in taus)))) for n in fn)
    check(err < 1e-12, "ta equals theta0 + lambda * sum(tau) (max err %.2e)" % err)

    # MagMax == non-continual fold of max-magnitude (later wins on ties)
    outs, _ = run_chain("magmax", base, tasks, {"scale": 0.5})
    err = 0.0
    for n in fn:
        best = taus[0][n].copy()
        for tv in taus[1:]:
            best = np.where(np.abs(tv[n]) >= np.abs(best), tv[n], best)
        err = max(err, float(np.max(np.abs(outs[-1][n] - (base[n] + 0.5 * best)))))
    check(err < 1e-12, "magmax equals the batch max-magnitude selection (max err %.2e)" % err)
    # tie goes to the new task vector
    b1 = {"w": np.zeros(3)}
    o, s = step("magmax", b1, None, {"w": np.array([1.0, -2.0, 3.0])}, None, {"scale": 0.5})
    o, s = step("magmax", b1, o, {"w": np.array([-1.0, 2.0, 1.0])}, s, {"scale": 0.5})
    check(np.allclose(o["w"], 0.5 * np.array([-1.0, 2.0, 3.0])), "magmax: ties keep the new tau")

    # TIES selection vs brute-force sort, including ties at the threshold
    for trial in range(200):
        D = int(rng.integers(1, 40))
        keep = float(rng.choice([0.2, 0.5, 0.1, 0.33]))
        vec = rng.integers(-5, 6, size=D).astype(np.float64)
        k = D - int(math.floor(D * keep))
        srt = sorted(abs(x) for x in vec)
        thr_bf = srt[k - 1]
        mask_bf = np.array([abs(x) >= thr_bf for x in vec])
        thr = ties_threshold(np.abs(vec), keep)
        if not (thr == thr_bf and np.array_equal(np.abs(vec) >= thr, mask_bf)):
            check(False, "ties threshold vs brute force (D=%d keep=%g)" % (D, keep))
            break
    else:
        check(True, "ties threshold == brute-force sort on 200 small vectors (ties kept)")

    # TIES elect / disjoint sum vs an elementwise brute force
    for trial in range(100):
        D = int(rng.integers(2, 30))
        mv = rng.integers(-3, 4, size=D).astype(np.float64)
        tv = rng.integers(-3, 4, size=D).astype(np.float64)
        got = ties_merge_vectors(mv, tv, 0.2)
        kk = D - int(math.floor(D * 0.2))

        def trim(v):
            thr = sorted(abs(x) for x in v)[kk - 1]
            return [x if abs(x) >= thr else 0.0 for x in v]
        a, b = trim(mv), trim(tv)
        s = [(1 if x + y > 0 else (-1 if x + y < 0 else 0)) for x, y in zip(a, b)]
        tot = sum(s)
        maj = 1 if tot > 0 else (-1 if tot < 0 else 0)
        s = [maj if q == 0 else q for q in s]
        exp = []
        for q, x, y in zip(s, a, b):
            acc = 0.0
            for z in (x, y):
                if (q > 0 and z > 0) or (q <= 0 and z < 0):
                    acc += z
            exp.append(acc)
        if not np.array_equal(got, np.array(exp)):
            check(False, "ties elect/disjoint sum vs brute force")
            break
    else:
        check(True, "ties elect + disjoint sum == brute force on 100 integer cases")

    # TIES step: M(t) = M(t-1) + lam * TIES(m, tau) with a global (not per tensor) trim
    o1, s1 = step("ties", base, None, tasks[0], None, {"scale": 0.3, "keep": 0.2})
    o2, s2 = step("ties", base, o1, tasks[1], s1, {"scale": 0.3, "keep": 0.2})
    mv = np.concatenate([(o1[n] - base[n]).ravel() for n in fn])
    tv = np.concatenate([taus[1][n].ravel() for n in fn])
    dl = ties_merge_vectors(mv, tv, 0.2)
    got = np.concatenate([(o2[n] - o1[n]).ravel() for n in fn]) / 0.3
    check(np.allclose(got, dl, atol=1e-12, rtol=0), "ties step re-adds m and uses the global trim")

    # OPCM: merged task vector norm == mean task-vector norm; lambda bookkeeping
    for zd in (False, True):
        outs, st = run_chain("opcm", base, tasks, {"alpha": 0.5, "zero_diag": zd})
        ok = True
        for t in range(4):
            n_m = whole_norm({n: outs[t][n] - base[n] for n in fn}, fn)
            avg = np.mean([whole_norm(taus[i], fn) for i in range(t + 1)])
            ok &= abs(n_m - avg) < 1e-10 * avg
        check(ok, "opcm%s: ||M(t)-theta0|| == mean ||tau_i|| at every step"
              % (" zero-diag" if zd else ""))
    # OPCM projection: U_r^T dtilde V_r == 0 (and diag tail == 0 with zero_diag)
    dm = rng.standard_normal((10, 6))
    dt = rng.standard_normal((10, 6))
    for zd in (False, True):
        out, _ = _opcm_linear(dm, dt, 0.0, 0.5, zd)
        u, s, vt = _svd(dm)
        cs = np.cumsum(s) / s.sum()
        r = int(np.sum(cs <= 0.5))
        proj = u.T @ out @ vt.T
        ok = np.max(np.abs(proj[:r, :r])) < 1e-12
        if zd:
            ok &= np.max(np.abs(np.diag(proj)[r:])) < 1e-12
            # other entries untouched
            full = u.T @ dt @ vt.T
            msk = np.ones_like(full, dtype=bool)
            msk[:r, :r] = False
            msk[np.arange(6), np.arange(6)] = False
            ok &= np.max(np.abs((proj - full)[msk])) < 1e-12
        check(ok and 0 < r < 6, "opcm projection%s removes the top-r block (r=%d)"
              % (" + tail diagonal" if zd else "", r))
    # OPCM r rule: cumulative share <= alpha
    u0, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    v0, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    sv = np.array([4.0, 3.0, 1.5, 1.0, 0.5])  # shares .4 .7 .85 .95 1
    dm = (u0 * sv) @ v0.T
    for alpha, r_exp in ((0.39, 0), (0.4, 1), (0.5, 1), (0.7, 2), (0.99, 4)):
        out, _ = _opcm_linear(dm, u0[:, :1] @ v0[:, :1].T, 0.0, alpha, False)
        # the rank-1 task delta lies on the top singular pair: removed iff r >= 1
        removed = np.linalg.norm(out) < 1e-12
        if removed != (r_exp >= 1):
            check(False, "opcm r rule alpha=%g" % alpha)
            break
    else:
        check(True, "opcm r rule counts cumulative shares <= alpha")

    # Iso-C: singular values of the 2-D deltas all equal their mean
    outs, _ = run_chain("isoc", base, tasks, {"scale": 1.0})
    ok = True
    for t in range(1, 4):
        for n in fn:
            if base[n].ndim == 2:
                s = np.linalg.svd(outs[t][n] - base[n], compute_uv=False)
                S = np.linalg.svd((outs[t - 1][n] - base[n]) + taus[t][n], compute_uv=False)
                ok &= np.allclose(s, np.mean(S), rtol=1e-10, atol=0)
    check(ok, "isoc: every singular value equals the mean singular value")
    o, _ = step("isoc", base, outs[0], tasks[1], {"step": 1}, {"scale": 1.0})
    check(np.allclose(o["enc.l0.q.bias"] - base["enc.l0.q.bias"],
                      0.5 * (taus[0]["enc.l0.q.bias"] + taus[1]["enc.l0.q.bias"])),
          "isoc: other tensors take the mean")

    # TSV-M: singular values of R are s_cat; R is built from polar factors
    outs, _ = run_chain("tsvm", base, tasks, {"scale": 1.0})
    ok = True
    for n in fn:
        if base[n].ndim != 2:
            continue
        m_ = outs[2][n] - base[n]
        ta_ = taus[3][n]
        h = min(m_.shape) // 2
        sm = np.linalg.svd(m_, compute_uv=False)[:h]
        st = np.linalg.svd(ta_, compute_uv=False)[:h]
        s = np.linalg.svd(outs[3][n] - base[n], compute_uv=False)
        exp = np.sort(np.concatenate([sm, st]))[::-1]
        ok &= np.allclose(s[:2 * h], exp, rtol=1e-9, atol=1e-12)
        ok &= np.all(s[2 * h:] < 1e-10 * s[0])
    check(ok, "tsvm: singular values of R are the concatenated top-h values")
    # TSV-M / Iso-C against an independent polar factor A (A^T A)^(-1/2) (eigh)
    def polar_eig(a):
        w, q = np.linalg.eigh(a.T @ a)
        return a @ (q / np.sqrt(w)) @ q.T
    mm = rng.standard_normal((9, 7))
    tt = rng.standard_normal((9, 7))
    got, _ = _tsvm_2d(mm, tt, 1.0, None)
    um, sm, vmt = np.linalg.svd(mm)
    ut, st_, vtt = np.linalg.svd(tt)
    h = 3
    uo = polar_eig(np.hstack([um[:, :h], ut[:, :h]]))
    vo = polar_eig(np.hstack([vmt[:h].T, vtt[:h].T]))
    exp = uo @ np.diag(np.concatenate([sm[:h], st_[:h]])) @ vo.T
    check(np.allclose(got, exp, rtol=0, atol=1e-10), "tsvm 2-D rule == eigh-based polar construction")
    S = mm + tt
    o, _ = step("isoc", {"w": np.zeros((9, 7))}, {"w": mm}, {"w": tt}, {"step": 1}, {"scale": 1.0})
    exp = np.mean(np.linalg.svd(S, compute_uv=False)) * polar_eig(S)
    check(np.allclose(o["w"], exp, rtol=0, atol=1e-10), "isoc 2-D rule == mean sigma * eigh-based polar factor")

    # polar factor property
    a = rng.standard_normal((9, 4))
    q, _ = _polar(a)
    check(np.allclose(q.T @ q, np.eye(4)) and np.allclose(q.T @ a, (q.T @ a).T),
          "polar factor is orthonormal and Q^T A symmetric")

    # WUDI: gradient vs central finite differences of the loss
    ta_ = rng.standard_normal((6, 5))
    tb_ = rng.standard_normal((6, 5))
    x = ta_ + tb_ + 0.3 * rng.standard_normal((6, 5))
    g = wudi_grad(x, [ta_, tb_])
    fd = np.zeros_like(x)
    hh = 1e-6
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            xp, xm = x.copy(), x.copy()
            xp[i, j] += hh
            xm[i, j] -= hh
            fd[i, j] = (wudi_loss(xp, [ta_, tb_]) - wudi_loss(xm, [ta_, tb_])) / (2 * hh)
    rel = np.linalg.norm(g - fd) / np.linalg.norm(g)
    check(rel < 1e-7, "wudi gradient == finite differences of L (rel %.1e)" % rel)
    # Adam step 1 moves each entry by lr * g/(|g|+eps) ~ lr * sign(g)
    x1 = _wudi_2d(ta_, tb_, 1e-3, 1)
    g0 = wudi_grad(ta_ + tb_, [ta_, tb_])
    check(np.allclose(x1, ta_ + tb_ - 1e-3 * g0 / (np.abs(g0) + ADAM_EPS), rtol=0, atol=1e-15),
          "wudi: first Adam step is lr * g / (|g| + eps)")
    # Adam decreases the loss over many steps
    xN = _wudi_2d(ta_, tb_, 1e-2, 300)
    check(wudi_loss(xN, [ta_, tb_]) < wudi_loss(ta_ + tb_, [ta_, tb_]),
          "wudi: Adam decreases the loss")
    # two-step Adam against a hand-written recurrence
    g1 = wudi_grad(ta_ + tb_, [ta_, tb_])
    mm = 0.1 * g1
    vv = 0.001 * g1 * g1
    xa = ta_ + tb_ - 1e-3 * (mm / 0.1) / (np.sqrt(vv / 0.001) + 1e-8)
    g2 = wudi_grad(xa, [ta_, tb_])
    mm = 0.9 * mm + 0.1 * g2
    vv = 0.999 * vv + 0.001 * g2 * g2
    xb = xa - 1e-3 * (mm / (1 - 0.81)) / (np.sqrt(vv / (1 - 0.999 ** 2)) + 1e-8)
    check(np.allclose(_wudi_2d(ta_, tb_, 1e-3, 2), xb, rtol=0, atol=1e-14),
          "wudi: two Adam steps match the bias-corrected recurrence")
    o, _ = step("wudi", base, run_chain("wudi", base, tasks[:1])[0][0], tasks[1], {"step": 1})
    check(np.allclose(o["enc.l0.q.bias"] - base["enc.l0.q.bias"],
                      0.5 * (taus[0]["enc.l0.q.bias"] + taus[1]["enc.l0.q.bias"])),
          "wudi: other tensors take the mean")

    # first steps
    for meth, exp in (("wa", lambda n: tasks[0][n]), ("opcm", lambda n: tasks[0][n]),
                      ("wudi", lambda n: tasks[0][n]),
                      ("ta", lambda n: base[n] + 0.3 * taus[0][n]),
                      ("ties", lambda n: base[n] + 0.3 * taus[0][n]),
                      ("magmax", lambda n: base[n] + 0.5 * taus[0][n]),
                      ("isoc", lambda n: tasks[0][n]), ("tsvm", lambda n: tasks[0][n])):
        o, _ = step(meth, base, None, tasks[0], None, {"scale": DEFAULTS[meth].get("scale", 1.0)})
        check(all(np.allclose(o[n], exp(n), rtol=0, atol=1e-14) for n in fn),
              "%s: first-step rule" % meth)

    # storage emulation
    x = np.array([1.0, 1.00390625, 1.005859375, -3.14159, 65504.0, 1e-40], dtype=np.float64)
    q = quantize(x, "BF16")
    check(q[0] == 1.0 and q[1] == 1.0 and q[2] == 1.0078125 and abs(q[3] + 3.140625) < 1e-12,
          "bf16 rounding is round-to-nearest-even")

    print("%d passed, %d failed" % (count[0] - len(fails), len(fails)))
    return 1 if fails else 0


if __name__ == "__main__":
    if "--selftest" in sys.argv[1:]:
        sys.exit(_selftest())
    if "--ambiguities" in sys.argv[1:]:
        print(AMBIGUITIES)
        sys.exit(0)
    print(__doc__)
    print("usage: baselines_ref.py --selftest | --ambiguities")
    sys.exit(2)
