"""The progress bar of `nufilt merge --progress` covers the whole merge and is weighted by
estimated work, not by tensor or step counts.

A 6-task NUFILT stream in paper mode: step 1 is a plain copy (M(1) = theta_0 + tau_1), steps
2-6 each run two SVDs and the adapter's training on the treated matrices. The bar draws a
frame at the end of every step (tensors x/x). Checked on those frames and all others:
  - the percentage never goes down, across steps too (one bar for the merge), and ends at 100;
  - after step 1 it is below 5% (counting steps would give 17%, counting tensors the same);
  - steps 2-6, equal in work, each add the same share (within 1.5 points);
  - a time-left figure is shown once the run is under way.

Usage: progress.py --nufilt build/host/nufilt --workdir DIR
Exit 0 pass, 1 fail, 77 skip.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys

SKIP = 77
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "ref"))
try:
    import numpy as np
    import st  # tests/ref/st.py
except ImportError as e:  # pragma: no cover
    print("SKIP: cannot import numpy or the test helpers (%s)" % e)
    sys.exit(SKIP)

NTASKS = 6
FRAME = re.compile(r"step (\d+)/(\d+) \[[#.]+\]\s+(\d+)%\s+(\d+)/(\d+) tensors.*?(\S+) left")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nufilt", required=True)
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args()
    exe = os.path.abspath(a.nufilt)
    if not os.access(exe, os.X_OK):
        print("SKIP: %s is not an executable" % exe)
        return SKIP
    wd = os.path.abspath(a.workdir)
    shutil.rmtree(wd, ignore_errors=True)
    os.makedirs(wd)
    rng = np.random.default_rng(3)
    shapes = [("layers.%d.self_attn.q_proj.weight" % i, (128, 128)) for i in range(4)] + \
             [("layers.%d.input_layernorm.weight" % i, (128,)) for i in range(4)] + \
             [("embed_tokens.weight", (512, 128))]
    base = {n: 0.02 * rng.standard_normal(s) for n, s in shapes}
    paths = []
    for t in range(NTASKS + 1):
        m = base if t == 0 else {n: v + 0.005 * rng.standard_normal(v.shape)
                                 for n, v in base.items()}
        p = os.path.join(wd, "m%d.safetensors" % t)
        st.save_file(p, {n: st.from_float(v, "F32") for n, v in m.items()},
                     {n: "F32" for n in m}, {"format": "pt"})
        paths.append(p)
    cmd = [exe, "merge", "--base", paths[0], "--out", os.path.join(wd, "out.safetensors"),
           "--progress", "--threads", "1", "--null-rank", "32", "--task-rank", "8",
           "--lora-rank", "16", "--iters", "100", "--preset", "llama"] + paths[1:]
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=600)
    err = p.stderr.decode(errors="replace")
    failed = 0

    def check(cond, what, detail=""):
        nonlocal failed
        print(("ok   " if cond else "FAIL ") + what + ("" if cond or not detail else
                                                       "\n     " + detail))
        failed += not cond
        return cond

    if not check(p.returncode == 0, "merge runs", err[-500:]):
        return 1
    frames = [(int(m.group(1)), int(m.group(3)), int(m.group(4)), int(m.group(5)), m.group(6))
              for m in (FRAME.search(f) for f in err.split("\r")) if m]
    check(len(frames) >= NTASKS, "%d frames drawn" % len(frames), err[-300:])
    pcts = [f[1] for f in frames]
    check(all(b >= a for a, b in zip(pcts, pcts[1:])),
          "the percentage never goes down over the whole merge", str(pcts))
    check(pcts and pcts[-1] == 100, "it ends at 100%", str(pcts[-1:]))
    ends = {}
    for s, pct, done, total, _ in frames:
        if done == total:
            ends[s] = pct
    check(sorted(ends) == list(range(1, NTASKS + 1)), "a frame at the end of every step",
          str(ends))
    if len(ends) == NTASKS:
        check(ends[1] < 5, "after the copy-only step 1: %d%% (not 17%%)" % ends[1])
        inc = [ends[t] - ends[t - 1] for t in range(2, NTASKS + 1)]
        check(max(inc) - min(inc) <= 1.5, "equal later steps add equal shares: %s" % inc)
    check(any(f[4] != "--:--" for f in frames), "a time-left figure is shown")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
