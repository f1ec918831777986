"""CLIP-style fixtures for the baseline end-to-end test (tests/e2e/baselines_vs_ref.py).

Why not tests/ref/gen_fixtures.py: that generator designs the spectra of the
tensors NUFILT treats (attention and fc1) and perturbs everything else with
i.i.d. noise; the baselines cut the spectra of *every* linear weight (OPCM) or
of every 2-D tensor, embeddings included (Iso-C, TSV-M, WUDI).  Here every 2-D
tensor gets a designed task vector tau = a_t U diag(s) V^T:

  gap    s_i = 10^(-i/k * w)   for i <  h = floor(k/2)
         s_i = 0.35 * 10^(-i/k * w) for i >= h      (w in [0.8, 1.2] per tensor/task)
         consecutive singular values differ by >= ~3%, a factor ~3 gap sits
         at h (where TSV-M cuts) and sigma_min/sigma_max ~ 0.03 (Iso-C's polar
         factor stays well conditioned).
  decay  s_i = (1+i)^-0.7 * (1 + 0.05 noise), sorted: smooth, tiny gaps
         (like real fine-tuning updates).

and the 1-D / 4-D tensors get i.i.d. perturbations of 5% of their rms.  The
tensor 'vision_model.embeddings.position_ids' is int64 (must stay at base).

Files: DIR/base.safetensors, DIR/task01.safetensors, ... written with
tests/ref/st.py.
"""

import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "ref"))
import gen_fixtures  # noqa: E402  (tests/ref/gen_fixtures.py)
import st  # noqa: E402  (tests/ref/st.py)

POS_IDS = "vision_model.embeddings.position_ids"


def clip_shapes(D=64, L=2, P=8, image=32):
    """The CLIP vision-tower tensor list of the NUFILT fixtures (tests/ref/gen_fixtures.py)."""
    return gen_fixtures.clip_shapes(D, L, P, image)


def _orth(rng, m, n):
    q, r = np.linalg.qr(rng.standard_normal((m, n)))
    return q * np.sign(np.diag(r))


def _spectrum(kind, k, rng):
    i = np.arange(k, dtype=np.float64)
    if kind == "gap":
        w = rng.uniform(0.8, 1.2)
        s = 10.0 ** (-i / k * w)
        s[k // 2:] *= 0.35
        return s
    if kind == "decay":
        s = (1.0 + i) ** -0.7 * (1.0 + 0.05 * rng.standard_normal(k))
        return np.sort(np.abs(s))[::-1]
    raise ValueError(kind)


def make(spectrum="gap", dtype="F32", tasks=4, seed=0, width=64, layers=2, tv_rms=1e-3):
    """In-memory fixture: dict with base/tasks as stored (raw st arrays),
    decoded float64 views, dtypes."""
    shapes = clip_shapes(width, layers)
    base_std = 0.02 if dtype == "F32" else 2e-3
    rng = np.random.default_rng([seed, 0])
    base = {}
    for name, shape in shapes:
        if "norm" in name and name.endswith(".weight"):
            base[name] = 1.0 + 0.1 * rng.standard_normal(shape)
        else:
            base[name] = base_std * rng.standard_normal(shape)
    models = [base]
    for t in range(1, tasks + 1):
        trng = np.random.default_rng([seed, t])
        amp = trng.uniform(0.7, 1.3)
        m = {}
        for name, shape in shapes:
            if len(shape) == 2:
                k = min(shape)
                s = _spectrum(spectrum, k, trng)
                U = _orth(trng, shape[0], k)
                V = _orth(trng, shape[1], k)
                tau = (U * s) @ V.T
                tau *= amp * tv_rms / np.sqrt(np.mean(tau * tau))
                m[name] = base[name] + tau
            else:
                mag = np.sqrt(np.mean(base[name] ** 2))
                m[name] = base[name] + 0.05 * mag * trng.standard_normal(shape)
        models.append(m)
    n_pos = dict(shapes)["vision_model.embeddings.position_embedding.weight"][0]
    pos = np.arange(n_pos, dtype=np.int64).reshape(1, n_pos)
    dtypes = {n: dtype for n, _ in shapes}
    dtypes[POS_IDS] = "I64"
    raw, dec = [], []
    for m in models:
        enc = {k: st.from_float(v, dtype) for k, v in m.items()}
        enc[POS_IDS] = pos.copy()
        raw.append(enc)
        d = {k: st.to_float64(v, dtypes[k]) for k, v in enc.items() if k != POS_IDS}
        d[POS_IDS] = pos.copy()
        dec.append(d)
    return {"raw": raw, "decoded": dec, "dtypes": dtypes, "names": [n for n, _ in shapes] + [POS_IDS]}


def write(fx, out):
    """Write base.safetensors, task01.safetensors, ...; returns (base, [tasks])."""
    os.makedirs(out, exist_ok=True)
    paths = []
    for i, enc in enumerate(fx["raw"]):
        nm = "base" if i == 0 else "task%02d" % i
        p = os.path.join(out, nm + ".safetensors")
        st.save_file(p, enc, fx["dtypes"], {"format": "pt"})
        paths.append(p)
    return paths[0], paths[1:]
