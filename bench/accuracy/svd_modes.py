#!/usr/bin/python3
"""How far NUFILT's SVD modes move the merged task vectors on real fine-tunes: the accuracy
benchmark's fine-tuned all-MiniLM-L6-v2 checkpoints, merged with each --svd mode, compared
per treated tensor with --svd gesdd (LAPACK's float32 SVD, the method's definition).

    /usr/bin/python3 bench/accuracy/svd_modes.py --nufilt PATH [--steps 4]
        [--modes fast,gram,randomized] [--cache DIR] [--json FILE]

Takes the first --steps tasks of the canonical task list that have a checkpoint in the
benchmark's cache (bench/accuracy/run.sh makes them), merges them with
`nufilt merge --method nufilt --preset all-linear --svd MODE`, and prints, per mode, the
max and the median, over the treated tensors whose gesdd task vector is not zero (the 36
the fine-tunes trained), of

    |(W_mode - W_base) - (W_gesdd - W_base)|_F / |W_gesdd - W_base|_F

of the final model (after --steps steps). Debian's python3 + numpy only.
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "ref"))
import st  # noqa: E402

TASKS = ["noun_supersense", "verb_supersense", "gloss_pos", "wordnet_domain", "fortune_topic",
         "quote_language", "reuters_grain", "example_pos"]


def treated(name, a):
    """nufilt's all-linear set: 2-D *.weight outside the embeddings."""
    return a.ndim == 2 and name.endswith(".weight") and "embeddings" not in name


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nufilt", required=True)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--modes", default="fast,gram,randomized")
    ap.add_argument("--cache", default=os.environ.get("NUFILT_BENCH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "nufilt-bench"))
    ap.add_argument("--json")
    a = ap.parse_args()
    base = os.path.join(a.cache, "base", "model.safetensors")
    dirs = sorted(glob.glob(os.path.join(a.cache, "ckpt-*")), key=os.path.getmtime)
    tasks = []
    for d in reversed(dirs):
        have = [os.path.join(d, t + ".safetensors") for t in TASKS
                if os.path.exists(os.path.join(d, t + ".safetensors"))]
        if len(have) >= a.steps:
            tasks = have[:a.steps]
            break
    if not os.path.exists(base) or len(tasks) < a.steps:
        print("svd_modes.py: need the base and %d fine-tuned checkpoints under %s "
              "(bench/accuracy/run.sh makes them)" % (a.steps, a.cache))
        return 77
    work = tempfile.mkdtemp(prefix="nufilt-svd-modes-")
    outs = {}
    for mode in ["gesdd"] + a.modes.split(","):
        out = os.path.join(work, mode + ".safetensors")
        subprocess.run([a.nufilt, "merge", "--method", "nufilt", "--preset", "all-linear",
                        "--svd", mode, "--base", base, "--out", out, "--quiet"] + tasks,
                       check=True)
        outs[mode] = out
    b = st.load(base)
    ref = st.load(outs["gesdd"])
    names = [k for k in b if treated(k, b[k])]
    res = {"tasks": [os.path.basename(t) for t in tasks], "steps": a.steps,
           "treated": len(names), "modes": {}}
    for mode in a.modes.split(","):
        got = st.load(outs[mode])
        errs = {}
        for k in names:
            b64 = b.f64(k)
            r = ref.f64(k) - b64
            g = got.f64(k) - b64
            d = np.linalg.norm(r)
            if d > 0:  # tensors the fine-tunes left alone (the pooler) have no task vector
                errs[k] = float(np.linalg.norm(g - r) / d)
        v = np.array(list(errs.values()))
        worst = max(errs, key=errs.get)
        res["modes"][mode] = {"max": float(v.max()), "median": float(np.median(v)),
                              "worst": worst, "tensors": len(errs)}
        print("--svd %-10s vs gesdd after %d steps: max %.2e  median %.2e  over %d tensors "
              "(worst %s)" % (mode, a.steps, v.max(), np.median(v), len(errs), worst))
    for p in outs.values():
        os.unlink(p)
    os.rmdir(work)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(res, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
