#!/usr/bin/python3
"""Which merged result is closer to the truth? Recomputes chosen treated matrices of one
NUFILT step with the test suite's float64 reference (tests/ref/nufilt_ref.py, same A from
nufilt's generator, default settings, paper mode), rounds it to the candidates' storage dtype
(BF16 stored values are rounded to nearest even, as nufilt writes them), and prints for each
candidate the relative error of its task vector:

    |(W_cand - W_base) - (round(W_ref) - W_base)|_F / |round(W_ref) - W_base|_F

    /usr/bin/python3 bench/perf/vs_reference.py --base BASE --prev PREV --task TASK --step T
        --tensor NAME [--tensor NAME ...] LABEL=CANDIDATE ...

Used in docs/performance.md on three layer-12 matrices of the LLaMA-style step (exact, gram
and randomized outputs). Debian python3 + numpy only.
"""

import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "ref"))
import gen  # noqa: E402
import nufilt_ref as nr  # noqa: E402
from compare import header, load64  # noqa: E402


def round_bf16(x):
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return u.astype(np.uint32).view(np.float32).astype(np.float64)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True)
    ap.add_argument("--prev", required=True, help="the previous merged model")
    ap.add_argument("--task", required=True)
    ap.add_argument("--step", type=int, required=True, help="the step index t of this step")
    ap.add_argument("--tensor", action="append", required=True)
    ap.add_argument("candidates", nargs="+", metavar="LABEL=PATH")
    a = ap.parse_args()
    cands = [c.split("=", 1) for c in a.candidates]
    params = nr.make_params()
    for name in a.tensor:
        t0 = time.time()
        W0 = load64(a.base, name)
        info = {}
        ref = nr.nufilt_matrix(W0, load64(a.prev, name), load64(a.task, name), name, a.step,
                               params, info)
        if header(a.base)[name]["dtype"] == "BF16":
            ref = round_bf16(ref)
        rtv = ref - W0
        errs = ["%s %.2e" % (label, np.linalg.norm(load64(p, name) - W0 - rtv) /
                             np.linalg.norm(rtv)) for label, p in cands]
        print("%s %s: %s (sigma ratio at the r_p cut %.5f; %.0f s)" %
              (name, W0.shape, ", ".join(errs), info.get("gap_p", float("nan")),
               time.time() - t0), flush=True)


if __name__ == "__main__":
    sys.exit(main())
