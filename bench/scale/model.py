#!/usr/bin/python3
"""A scaling model for a LLaMA-70B-shaped stream over N ranks, from measured per-matrix times.

    /usr/bin/python3 bench/scale/model.py REPORT.json:BASE [REPORT.json:BASE ...] [--ranks 1,2,...]

Each REPORT is the --report of a one-process NUFILT step run with --threads 1 (one core: a
rank's time), on models of other shapes (bench/perf/gen.py vit, gen.py llama --layers 1).
From it:

  treated matrix (m x n, k = min(m, n)): the report's per-tensor seconds, fitted by least
      squares as t = a m n k + b m n (the SVD and Gram products are O(m n k), the streaming
      and element-wise work O(m n));
  everything else: the step's seconds not spent in treated tensors, per byte of the other
      tensors (streaming: read, convert, write; includes opening and the commit).

Then the LLaMA-2-70B tensor list (80 layers: q, o 8192x8192; k, v 1024x8192; gate, up
28672x8192; down 8192x28672; embed_tokens and lm_head 32000x8192; RMSNorm weights; BF16;
the llama preset treats the 560 projections) gets a predicted time per tensor, the ranks
split it with nufilt's rule (largest first to the least loaded rank, src/dist/dist.c), and
a step takes the largest rank's sum.  Prints the fit, its residuals on the measured
matrices, and per N: the step time, the speedup over one rank, the efficiency and the
largest single tensor (the bound no split can beat).
"""

import argparse
import json
import struct
import sys

import numpy as np


def header(path):
    """name -> bytes of each tensor of a safetensors file (its header only)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        h = json.loads(f.read(n))
    return {k: v["data_offsets"][1] - v["data_offsets"][0] for k, v in h.items()
            if k != "__metadata__"}


def load(pairs):
    """Treated matrices (m, n, seconds, name), and per report the seconds per byte of the
    other tensors (the step's time outside treated tensors, over their bytes in the base)."""
    rows, stream = [], []
    for pair in pairs:
        rep, base = pair.rsplit(":", 1)
        step = json.load(open(rep))["steps"][-1]
        treated = set()
        for t in step["tensors"]:
            m, n = t["shape"]
            rows.append((m, n, t["seconds"], t["name"]))
            treated.add(t["name"])
        other = sum(b for k, b in header(base).items() if k not in treated)
        tot = step["totals"]
        stream.append((tot["seconds"] - tot["treated_tensor_seconds"]) / other)
    return rows, stream


# The cost terms of a NUFILT step on an m x n matrix (k = min(m, n)), as nufilt's own estimate
# (src/merge/step.c, tensor_work) has them: the Gram products and SVD-projections O(m n k),
# the eigen-decomposition O(k^3), streaming and element-wise work O(m n), and the adapter's
# training, whose Gram form costs O(n^2) per iteration when n < 2m and the direct form O(m n)
FEATURES = ["m n k", "k^3", "m n", "train(m, n)"]


def features(m, n):
    k = min(m, n)
    return [float(m) * n * k, float(k) ** 3, float(m) * n,
            4.0 * n * n if n < 2 * m else 8.0 * m * n]


def nnls_rel(X, y):
    """Least squares of the relative error with non-negative coefficients: the best of the
    unconstrained fits over every subset of the terms whose coefficients are all >= 0."""
    import itertools
    W = X / y[:, None]
    best, best_err = np.zeros(X.shape[1]), np.inf
    for r in range(1, X.shape[1] + 1):
        for sub in itertools.combinations(range(X.shape[1]), r):
            c, *_ = np.linalg.lstsq(W[:, sub], np.ones(len(y)), rcond=None)
            if (c < 0).any():
                continue
            full = np.zeros(X.shape[1])
            full[list(sub)] = c
            err = float(np.sum((W @ full - 1.0) ** 2))
            if err < best_err:
                best, best_err = full, err
    return best


def split(costs, size):
    order = sorted(range(len(costs)), key=lambda i: (-costs[i], i))
    load = [0.0] * size
    for i in order:
        r = min(range(size), key=lambda k: (load[k], k))
        load[r] += costs[i]
    return max(load)


def llama70b():
    H, I, L, V, KV = 8192, 28672, 80, 32000, 1024
    t = [("embed_tokens", (V, H), 0), ("lm_head", (V, H), 0), ("norm", (H,), 0)]
    for i in range(L):
        t += [("q", (H, H), 1), ("k", (KV, H), 1), ("v", (KV, H), 1), ("o", (H, H), 1),
              ("gate", (I, H), 1), ("up", (I, H), 1), ("down", (H, I), 1),
              ("in_norm", (H,), 0), ("post_norm", (H,), 0)]
    return t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("reports", nargs="+")
    ap.add_argument("--ranks", default="1,2,4,8,16,32,64,128,256,512")
    a = ap.parse_args()
    rows, stream = load(a.reports)
    # one point per shape (its median), so that 48 small matrices do not outweigh 2 large
    seen = {}
    for (m, n, sec, name) in rows:
        seen.setdefault((m, n), []).append(sec)
    shapes = sorted(seen)
    X = np.array([features(m, n) for m, n in shapes])
    y = np.array([float(np.median(seen[sh])) for sh in shapes])
    coef = nnls_rel(X, y)
    print("fit over %d measured matrices (%d shapes): t = %s" %
          (len(rows), len(shapes), " + ".join("%.4g s x %s" % (c, f)
                                                for c, f in zip(coef, FEATURES))))
    for (m, n), yy in zip(shapes, y):
        pred = float(np.dot(coef, features(m, n)))
        print("  %5d x %-5d measured median %.3f s over %d, fit %.3f s (%+.0f%%)" %
              (m, n, yy, len(seen[(m, n)]), pred, 100 * (pred / yy - 1)))
    per_byte = stream
    pb = float(np.median(per_byte))
    print("streaming (untreated tensors, opening, commit): %.3g s per byte (%s)" %
          (pb, ", ".join("%.3g" % x for x in per_byte)))
    costs = []
    for name, shape, treated in llama70b():
        nbytes = 2 * int(np.prod(shape))
        c = pb * nbytes  # streamed
        if treated:  # the fit covers the matrix's whole job, its streaming included
            m, n = shape
            c = float(np.dot(coef, features(m, n)))
        costs.append(c)
    total = sum(costs)
    print("LLaMA-70B-shaped step (BF16, %d tensors, 560 treated): %.0f s = %.1f h on one rank"
          % (len(costs), total, total / 3600))
    print("largest tensor: %.0f s" % max(costs))
    print("| ranks | step (predicted) | speedup | efficiency |")
    print("| ---: | ---: | ---: | ---: |")
    for n in [int(x) for x in a.ranks.split(",")]:
        ms = split(costs, n)
        print("| %d | %s | %.1fx | %.0f%% |" % (n, fmt(ms), total / ms, 100 * total / ms / n))


def fmt(s):
    return "%.1f h" % (s / 3600) if s >= 3600 else "%.0f min" % (s / 60) if s >= 120 else \
        "%.0f s" % s


if __name__ == "__main__":
    sys.exit(main())
