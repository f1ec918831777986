#!/usr/bin/python3
"""Relative error of merged task vectors: for each treated tensor W of a candidate merged
model and a reference merged model (same base),

    err(W) = |(W_cand - W_base) - (W_ref - W_base)|_F / |W_ref - W_base|_F

    /usr/bin/python3 bench/perf/compare.py --base BASE --ref REF [--preset clip|llama]
        [--json FILE] CAND ...

Prints, per candidate, the max and the median over treated tensors (and the worst tensor),
and whether untreated tensors are bit-identical between candidate and reference.  Computed
in float64 from the stored values (F32 or BF16).  Debian python3 + numpy only.
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen  # noqa: E402


def header(path):
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        h = json.loads(f.read(n))
    h.pop("__metadata__", None)
    return h


def load64(path, name):
    a = gen.read_tensor(path, name)
    if a.dtype == np.uint16:
        return gen.bf16_bits_to_f32(a).astype(np.float64)
    return np.asarray(a, dtype=np.float64)


def compare(base, ref, cand, preset):
    hb = header(base)
    sel = gen.vit_treated if preset == "clip" else gen.llama_treated
    errs, untreated_same = {}, True
    for name, e in hb.items():
        shape = tuple(e["shape"])
        if not sel(name, shape):
            if untreated_same:
                untreated_same = bool(np.array_equal(np.asarray(gen.read_tensor(ref, name)),
                                                     np.asarray(gen.read_tensor(cand, name))))
            continue
        b = load64(base, name)
        r = load64(ref, name) - b
        c = load64(cand, name) - b
        d = np.linalg.norm(r)
        errs[name] = float(np.linalg.norm(c - r) / d) if d > 0 else float(np.linalg.norm(c))
    v = np.array(list(errs.values()))
    worst = max(errs, key=errs.get)
    return dict(candidate=cand, reference=ref, treated=len(errs), max=float(v.max()),
                median=float(np.median(v)), worst=worst, untreated_identical=untreated_same)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True)
    ap.add_argument("--ref", required=True)
    ap.add_argument("--preset", choices=["clip", "llama"], default="clip")
    ap.add_argument("--json")
    ap.add_argument("cand", nargs="+")
    a = ap.parse_args()
    res = []
    for c in a.cand:
        r = compare(a.base, a.ref, c, a.preset)
        res.append(r)
        print("%-40s vs %-28s max %.3e  median %.3e  (worst %s)%s"
              % (os.path.basename(c), os.path.basename(a.ref), r["max"], r["median"], r["worst"],
                 "" if r["untreated_identical"] else "  UNTREATED TENSORS DIFFER"))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
