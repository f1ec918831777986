#!/usr/bin/python3
"""How accurate is `--svd randomized` on realistic task vectors?

    /usr/bin/python3 bench/perf/rsvd_accuracy.py [--dir DIR] [--layers 0,5,11]
        [--configs 10:2,10:4,...] [--json FILE]

Reads the generated ViT-B/32-shaped checkpoints (bench/perf/gen.py vit; default DIR
${XDG_CACHE_HOME:-$HOME/.cache}/nufilt-perf/vit-s0): at step 2 of the paper-mode stream,
prev = tau_1 and the new task vector is tau_2, on the treated matrices (768x768 attention
projections, 3072x768 fc1) of the chosen layers.  For each matrix and each randomized
configuration (oversampling p, power iterations q; nufilt implements p = 10, q = 2) it
computes, against the exact SVD (float64 LAPACK on the stored float32 values):

  angle_p / angle_t  largest principal angle (degrees) between the randomized top-r
                     right-singular subspace and the exact one, r = 128 of prev (V_p) and
                     r = 8 of tau (V_t); also the median angle and how many exceed 10 degrees
  energy_p           |prev V_rand|_F^2 / |prev V_exact|_F^2 (how much of the optimum the
                     randomized subspace captures)
  merged             |M_rand - M_exact|_F / |M_exact|_F for the merged task vector of this
                     step (prev + tau P + tau B A, 50 Adam iterations from the same A, computed
                     in float64), i.e. what `--svd randomized` changes in the output

The randomized range finder is the one src/linalg/la_svd.c implements, in float32:
Z = X^T G, QR; q times (Y = X Z, QR; Z = X^T Y, QR); B = X Z = U S W^T; V = Z W[:, :r]
(G Gaussian from NumPy here, from the counter-based generator in nufilt: same statistics).
Row "exact-f32" is LAPACK's float32 SVD (what `--svd exact` computes): the floor that any
float32 implementation has.  Rows "gram-f64" / "gram-f32": the top eigenvectors of the Gram
matrix X^T X formed and diagonalised in double / single precision (the faster exact method
docs/performance.md recommends, in double).
"""

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen  # noqa: E402
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "ref"))
from nufilt_ref import rng_A as nufilt_A  # noqa: E402  (nufilt's generator, independent NumPy)


def exact_v(x, r):
    _, s, vt = np.linalg.svd(x.astype(np.float64), full_matrices=False)
    return vt[:r].T, s


def exact_v32(x, r):
    _, _, vt = np.linalg.svd(x.astype(np.float32), full_matrices=False)
    return vt[:r].T.astype(np.float64)


def gram_v(x, r, dt):
    """Top r eigenvectors of the Gram matrix X^T X formed and diagonalised in dtype dt."""
    x = x.astype(np.float32).astype(dt)
    w, v = np.linalg.eigh(x.T @ x)
    return v[:, ::-1][:, :r].astype(np.float64)


def randomized_v(x, r, p, q, rng):
    x = x.astype(np.float32)
    m, n = x.shape
    k = min(m, n)
    l = min(r + p, k)
    g = rng.standard_normal((m, l)).astype(np.float32)
    z = np.linalg.qr(x.T @ g)[0]
    for _ in range(q):
        y = np.linalg.qr(x @ z)[0]
        z = np.linalg.qr(x.T @ y)[0]
    b = x @ z
    _, _, wt = np.linalg.svd(b, full_matrices=False)
    return (z @ wt[:r].T).astype(np.float64)


def angles_deg(v1, v2):
    s = np.linalg.svd(v1.T @ v2, compute_uv=False)
    return np.degrees(np.arccos(np.clip(s, -1.0, 1.0)))[::-1]   # largest first


def merged(tau, prev, vp, vt, A, iters=50, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8):
    """Merged task vector of the step, float64 (as tests/ref/nufilt_ref.py computes it)."""
    tvp = tau @ vp
    taup = tau - tvp @ vp.T
    V = np.hstack([vt, vp])
    C = np.hstack([(tau - prev - taup) @ vt, -(taup @ vp)])
    A = A.astype(np.float64).copy()
    B = np.zeros((A.shape[1], A.shape[0]))
    mA, vA, mB, vB = (np.zeros_like(A), np.zeros_like(A), np.zeros_like(B), np.zeros_like(B))
    for s in range(1, iters + 1):
        T = tau @ B
        AV = A @ V
        E = C - T @ AV
        gB = -2.0 * (tau.T @ (E @ AV.T))
        gA = -2.0 * ((T.T @ E) @ V.T)
        for x, g, m, v in ((A, gA, mA, vA), (B, gB, mB, vB)):
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g * g
            x -= lr / (1 - b1 ** s) * m / (np.sqrt(v / (1 - b2 ** s)) + eps)
    return prev + taup + (tau @ B) @ A


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=os.path.join(gen.cache_dir(), "vit-s0"))
    ap.add_argument("--layers", default="0,5,11")
    ap.add_argument("--configs", default="10:2,10:4,10:8,10:16,64:2,128:2,128:4",
                    help="randomized settings p:q (oversampling : power iterations)")
    ap.add_argument("--null-rank", type=int, default=128)
    ap.add_argument("--task-rank", type=int, default=8)
    ap.add_argument("--no-merge", action="store_true", help="angles only (fast)")
    ap.add_argument("--json")
    a = ap.parse_args()
    base = os.path.join(a.dir, "base.safetensors")
    t1 = os.path.join(a.dir, "task01.safetensors")
    t2 = os.path.join(a.dir, "task02.safetensors")
    layers = [int(x) for x in a.layers.split(",")]
    configs = [tuple(int(v) for v in c.split(":")) for c in a.configs.split(",")]
    names = [n for n, s in gen.vit_shapes() if gen.vit_treated(n, s)
             and int(n.split(".")[3]) in layers]
    rows = {c: [] for c in ["exact-f32", "gram-f64", "gram-f32"] + configs}
    t_start = time.time()
    for name in names:
        b = np.asarray(gen.read_tensor(base, name), np.float64)
        prev = np.asarray(gen.read_tensor(t1, name), np.float64) - b   # paper mode: M(1) = base + tau_1
        tau = np.asarray(gen.read_tensor(t2, name), np.float64) - b
        rp, rv = a.null_rank, a.task_rank
        vp, sp = exact_v(prev, rp)
        vt, st = exact_v(tau, rv)
        A = nufilt_A(0, 2, name, 64, tau.shape[1])
        m_ex = None if a.no_merge else merged(tau, prev, vp, vt, A)
        rng = np.random.default_rng(abs(hash(name)) % (1 << 32))
        for c in rows:
            if c == "exact-f32":
                vp2, vt2 = exact_v32(prev, rp), exact_v32(tau, rv)
            elif c == "gram-f64":
                vp2, vt2 = gram_v(prev, rp, np.float64), gram_v(tau, rv, np.float64)
            elif c == "gram-f32":
                vp2, vt2 = gram_v(prev, rp, np.float32), gram_v(tau, rv, np.float32)
            else:
                vp2 = randomized_v(prev, rp, c[0], c[1], rng)
                vt2 = randomized_v(tau, rv, c[0], c[1], rng)
            ap_ = angles_deg(vp, vp2)
            at_ = angles_deg(vt, vt2)
            r = dict(name=name, shape=list(tau.shape),
                     gap_p=float(sp[rp - 1] / sp[rp]), gap_t=float(st[rv - 1] / st[rv]),
                     angle_p=float(ap_[0]), angle_p_median=float(np.median(ap_)),
                     angles_p_over_10=int(np.sum(ap_ > 10)), angle_t=float(at_[0]),
                     energy_p=float(np.sum((prev @ vp2) ** 2) / np.sum((prev @ vp) ** 2)))
            if m_ex is not None:
                m2 = merged(tau, prev, vp2, vt2, A)
                r["merged"] = float(np.linalg.norm(m2 - m_ex) / np.linalg.norm(m_ex))
            rows[c].append(r)
        print("%s done (%.0f s)" % (name, time.time() - t_start), file=sys.stderr, flush=True)

    def lab(c):
        return c if isinstance(c, str) else "p=%d q=%d" % c
    print("\nrandomized top-r vs exact, step 2 of the generated ViT-B/32 stream, %d matrices "
          "(layers %s)" % (len(names), a.layers))
    print("gap sigma_r/sigma_r+1: V_p (r=%d) median %.4f, V_t (r=%d) median %.4f"
          % (a.null_rank, np.median([r["gap_p"] for r in rows["exact-f32"]]), a.task_rank,
             np.median([r["gap_t"] for r in rows["exact-f32"]])))
    hdr = ("| setting | shape | max angle V_p (deg) | median angle V_p | angles > 10 deg (of %d) "
           "| max angle V_t | energy V_p (min) | merged rel. err (max) | merged (median) |" % a.null_rank)
    print(hdr)
    print("|" + " --- |" * 9)
    out = []
    shapes = sorted({tuple(r["shape"]) for r in rows["exact-f32"]})
    for c, rs_all in rows.items():
        for sh in shapes:
            rs = [r for r in rs_all if tuple(r["shape"]) == sh]
            f = lambda k, fn=np.max: fn([r[k] for r in rs])  # noqa: E731
            line = dict(setting=lab(c), shape="%dx%d" % sh, angle_p_max=f("angle_p"),
                        angle_p_median=f("angle_p_median", np.median),
                        over10_max=int(f("angles_p_over_10")), angle_t_max=f("angle_t"),
                        energy_p_min=f("energy_p", np.min))
            if not a.no_merge:
                line.update(merged_max=f("merged"), merged_median=f("merged", np.median))
            out.append(dict(line, rows=rs))
            print("| %s | %s | %.3f | %.3f | %d | %.3f | %.6f | %s | %s |"
                  % (line["setting"], line["shape"], line["angle_p_max"], line["angle_p_median"],
                     line["over10_max"], line["angle_t_max"], line["energy_p_min"],
                     "%.2e" % line["merged_max"] if "merged_max" in line else "-",
                     "%.2e" % line["merged_median"] if "merged_median" in line else "-"))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
