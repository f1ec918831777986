"""merge --save-steps DIR --resume: a stream killed (SIGKILL) after step k continues from the
last complete step in DIR, and its output and saved steps are byte-identical to an
uninterrupted run's; the steps already there are not rewritten. Then the refusals: a task
list that is not the recorded one (order, a changed task under the same name), another recipe,
another base, an unreadable last step, --resume without --save-steps.

Usage: resume.py --nufilt build/host/nufilt --workdir DIR
Exit 0 pass, 1 fail, 77 skip.
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time

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
SHAPES = [("layers.%d.attn.q_proj.weight" % i, (192, 192)) for i in range(3)] + \
         [("layers.%d.mlp.up_proj.weight" % i, (384, 192)) for i in range(3)] + \
         [("layers.%d.norm.weight" % i, (192,)) for i in range(3)]
RECIPE = ["--method", "nufilt", "--layers", r".*(q_proj|up_proj)\.weight", "--null-rank", "32",
          "--task-rank", "8", "--lora-rank", "16", "--iters", "150", "--threads", "1"]


def write_models(wd):
    rng = np.random.default_rng(7)
    base = {n: 0.02 * rng.standard_normal(s) for n, s in SHAPES}
    paths = {"base": os.path.join(wd, "base.safetensors")}
    st.save_file(paths["base"], {n: st.from_float(v, "F32") for n, v in base.items()},
                 {n: "F32" for n in base}, {"format": "pt"})
    for t in range(1, NTASKS + 1):
        m = {n: v + 0.005 * rng.standard_normal(v.shape) for n, v in base.items()}
        p = os.path.join(wd, "task%d.safetensors" % t)
        st.save_file(p, {n: st.from_float(v, "F32") for n, v in m.items()},
                     {n: "F32" for n in m}, {"format": "pt"})
        paths[t] = p
    return paths


class Report:
    def __init__(self):
        self.passed = self.failed = 0

    def check(self, cond, what, detail=""):
        if cond:
            self.passed += 1
            print("ok   " + what)
        else:
            self.failed += 1
            print("FAIL " + what + ("\n     " + detail if detail else ""))
        return cond


def run(cmd):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=900)
    return p.returncode, (p.stdout + p.stderr).decode(errors="replace")


def same_bytes(a, b):
    with open(a, "rb") as f, open(b, "rb") as g:
        return f.read() == g.read()


def step_file(d, t):
    return os.path.join(d, "step%02d.safetensors" % t)


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
    P = write_models(wd)
    tasks = [P[t] for t in range(1, NTASKS + 1)]
    rep = Report()

    # the uninterrupted run
    full_out, full_dir = os.path.join(wd, "full.safetensors"), os.path.join(wd, "full-steps")
    t0 = time.monotonic()
    rc, msg = run([exe, "merge", "--base", P["base"], "--out", full_out, "--save-steps",
                   full_dir, "--quiet"] + RECIPE + tasks)
    secs = time.monotonic() - t0
    if not rep.check(rc == 0, "uninterrupted merge of %d tasks (%.1f s)" % (NTASKS, secs), msg):
        return 1

    # killed after step k (SIGKILL, no chance to clean up), then resumed: up to three tries
    # to land the kill between the first and the last step
    out, sdir = os.path.join(wd, "resumed.safetensors"), os.path.join(wd, "steps")
    killed_after = None
    for attempt in range(3):
        shutil.rmtree(sdir, ignore_errors=True)
        k = 2 + attempt % 2
        proc = subprocess.Popen([exe, "merge", "--base", P["base"], "--out", out,
                                 "--save-steps", sdir, "--quiet"] + RECIPE + tasks,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while proc.poll() is None and not os.path.exists(step_file(sdir, k)):
            time.sleep(0.002)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        have = [t for t in range(1, NTASKS + 1) if os.path.exists(step_file(sdir, t))]
        if have and len(have) < NTASKS and not os.path.exists(out):
            killed_after = len(have)
            break
    if not rep.check(killed_after is not None,
                     "merge killed with SIGKILL between its first and last step"):
        return 1
    left = sorted(f for f in os.listdir(sdir) if not f.startswith("step"))
    print("     killed after step %d; left in the steps directory besides the steps: %s"
          % (killed_after, left or "nothing"))
    kept = {t: os.stat(step_file(sdir, t)).st_mtime_ns for t in range(1, killed_after + 1)}
    rc, msg = run([exe, "merge", "--base", P["base"], "--out", out, "--save-steps", sdir,
                   "--resume", "--quiet"] + RECIPE + tasks)
    rep.check(rc == 0, "--resume after step %d runs" % killed_after, msg)
    rep.check(os.path.exists(out) and same_bytes(out, full_out),
              "resumed output byte-identical to the uninterrupted run's")
    rep.check(all(same_bytes(step_file(sdir, t), step_file(full_dir, t))
                  for t in range(1, NTASKS + 1)),
              "every saved step byte-identical to the uninterrupted run's")
    rep.check(all(os.stat(step_file(sdir, t)).st_mtime_ns == m for t, m in kept.items()),
              "the %d steps already there were not merged again" % killed_after)

    # a complete DIR: nothing to merge, the output comes from the last step
    out2 = os.path.join(wd, "again.safetensors")
    rc, msg = run([exe, "merge", "--base", P["base"], "--out", out2, "--save-steps", sdir,
                   "--resume", "--quiet"] + RECIPE + tasks)
    rep.check(rc == 0 and same_bytes(out2, full_out),
              "--resume with every step saved gives the same output", msg)

    # refusals, against a DIR holding steps 1 and 2 only
    rdir = os.path.join(wd, "partial")
    os.makedirs(rdir)
    for t in (1, 2):
        shutil.copy(step_file(full_dir, t), step_file(rdir, t))

    def refused(label, args, expect, base=P["base"], with_dir=True):
        o = os.path.join(wd, "refused-%s.safetensors" % label)
        cmd = [exe, "merge", "--base", base, "--out", o, "--resume", "--quiet"]
        if with_dir:
            cmd += ["--save-steps", rdir]
        rc, msg = run(cmd + args)
        rep.check(rc != 0 and expect in msg and not os.path.exists(o) and
                  not os.path.exists(step_file(rdir, 3)),
                  "refused: %s" % label, msg.strip()[-300:])

    swapped = [tasks[1], tasks[0]] + tasks[2:]
    refused("tasks in another order", RECIPE + swapped, "not the same stream")
    changed = os.path.join(wd, "changed")
    os.makedirs(changed)
    shutil.copy(P[3], os.path.join(changed, "task1.safetensors"))
    refused("a changed task under the recorded name",
            RECIPE + [os.path.join(changed, "task1.safetensors")] + tasks[1:], "changed since")
    refused("another recipe", [x if x != "16" else "8" for x in RECIPE] + tasks,
            "conflicts with")
    refused("another base", RECIPE + tasks, "another base model", base=P[1])
    refused("without --save-steps", RECIPE + tasks, "--resume needs --save-steps",
            with_dir=False)
    with open(step_file(rdir, 2), "r+b") as f:
        f.write(b"\xff" * 8)
    refused("an unreadable last step", RECIPE + tasks, step_file(rdir, 2))

    print("%d passed, %d failed" % (rep.passed, rep.failed))
    return 1 if rep.failed else 0


if __name__ == "__main__":
    sys.exit(main())
