#!/usr/bin/env python3
"""A merge over MPI ranks against the same merge in one process (docs/scale-out.md).

For every method, `mpirun -n 3 nufilt merge` over three tasks, and a chain of
`mpirun -n 3 nufilt step` calls, must give the tensors of one process bit for bit
(compared tensor by tensor, as stored: the ranks write shards of their own, so the
shard layout differs) and the same metadata.  Faults:

  killed    every rank stopped (SIGSTOP) once the merge's scratch directory or the
            output's temporary directory exists, rank 1 killed with SIGKILL (in other runs
            rank 0, which created the temporaries, and rank 2 sent SIGTERM), the others
            continued: mpirun fails, names the rank and the signal; no output, no
            temporaries
  error     a NaN in one tensor of a task: the rank owning it refuses it mid-run;
            the message names the rank and the tensor, every rank stops, nothing
            committed, no temporaries
  file out  a .safetensors output is refused (the ranks write a directory)

Skipped (exit 77) when nufilt was built without MPI or mpirun is missing.

Usage: mpi.py --nufilt PATH --workdir DIR --mpi yes|no [--ranks N]
"""

import argparse
import glob
import os
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "ref"))
sys.path.insert(0, HERE)
try:
    import numpy as np
    import st  # noqa: E402
    import _baseline_fixtures as bfx  # noqa: E402
except ImportError as e:  # pragma: no cover
    print("SKIP: %s" % e)
    sys.exit(77)

# as root (CI), mpirun wants to be told (the environment says so too, for Open MPI's helpers)
ROOT = ["--allow-run-as-root"] if os.getuid() == 0 else []
METHODS = ["wa", "ta", "ties", "magmax", "opcm", "wudi", "isoc", "tsvm", "nufilt"]
FAILS = []


def check(ok, case, what, detail=""):
    print("%s  %-14s %s%s" % ("ok  " if ok else "FAIL", case, what,
                               "" if ok or not detail else ": " + str(detail)[-1500:]))
    if not ok:
        FAILS.append((case, what))
    return ok


def mpi_env():
    e = dict(os.environ)
    # loopback TCP only (containers without a usable shared-memory transport)
    e.setdefault("OMPI_MCA_btl", "self,tcp")
    e.setdefault("OMPI_MCA_btl_tcp_if_include", "lo")
    e.setdefault("OMPI_MCA_oob_tcp_if_include", "lo")
    e.setdefault("OMPI_MCA_rmaps_base_oversubscribe", "1")
    # under the ASan build: Open MPI's own allocations live until exit; its components stay
    # loaded so that their frames have names the suppressions match
    # (and Open MPI's libraries have no frame pointers: the full unwinder finds those frames)
    e.setdefault("OMPI_MCA_mca_base_component_disable_dlclose", "1")
    if "ASAN_OPTIONS" in e and "fast_unwind_on_malloc" not in e["ASAN_OPTIONS"]:
        e["ASAN_OPTIONS"] += ":fast_unwind_on_malloc=0"
    supp = os.path.join(HERE, "mpi-lsan.supp")
    if "suppressions=" not in e.get("LSAN_OPTIONS", ""):
        e["LSAN_OPTIONS"] = (e.get("LSAN_OPTIONS", "") + ":suppressions=" + supp).lstrip(":")
    if os.getuid() == 0:
        e["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
        e["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
    return e


def run(args, mpi=None, timeout=300):
    cmd = [str(a) for a in args]
    if mpi:
        cmd = [ARGS.mpirun] + ROOT + ["--oversubscribe", "-n", str(mpi)] + cmd
    return subprocess.run(cmd, capture_output=True, text=True, env=mpi_env(), timeout=timeout)


def tensors(path):
    """name -> (dtype, shape, bytes) as stored, whatever the shard layout."""
    return st.raw_bytes(path)


def metadata(path):
    return st.load(path).metadata


def same_model(case, a, b):
    ta, tb = tensors(a), tensors(b)
    diff = [n for n in ta if n not in tb or ta[n] != tb[n]]
    ok = check(set(ta) == set(tb) and not diff, case,
               "%d tensors identical, bit for bit" % len(ta), "differ: %s" % diff[:5])
    ma, mb = metadata(a), metadata(b)
    keys = [k for k in set(ma) | set(mb) if ma.get(k) != mb.get(k)]
    check(not keys, case, "same metadata (%d keys)" % len(ma), keys)
    return ok


def leftovers(parent):
    return [n for n in os.listdir(parent)
            if ".nufilt-" in n or ".steps-" in n or ".spill-" in n]


def case_methods(wd, base, tasks):
    for m in METHODS:
        one = os.path.join(wd, "one-" + m)
        many = os.path.join(wd, "mpi-" + m)
        # shards in one process (a few tensors each) against the ranks' own shards
        p1 = run([ARGS.nufilt, "merge", "--base", base, "--out", one, "--method", m, "--quiet",
                  "--out-shard-size", "100kB"] + tasks)
        if not check(p1.returncode == 0, m, "one process merges", p1.stderr):
            continue
        p3 = run([ARGS.nufilt, "merge", "--base", base, "--out", many, "--method", m] + tasks,
                 mpi=ARGS.ranks)
        if not check(p3.returncode == 0, m, "mpirun -n %d merges" % ARGS.ranks,
                     p3.stdout + p3.stderr):
            continue
        nshards = len(glob.glob(os.path.join(many, "model-*.safetensors")))
        check(nshards >= ARGS.ranks, m, "each rank wrote shards (%d files)" % nshards)
        check(p3.stderr.count("nufilt: merged") == 1, m, "one line from rank 0", p3.stderr)
        same_model(m, one, many)
        check(not leftovers(wd), m, "no temporaries", leftovers(wd))


def case_steps(wd, base, tasks):
    """A chain of steps, each run by the ranks, against the chain in one process."""
    for m in [m for m in ["nufilt", "opcm", "ties"] if m in METHODS]:
        prev1 = prev3 = None
        for t, task in enumerate(tasks, 1):
            o1 = os.path.join(wd, "s1-%s-%d" % (m, t))
            o3 = os.path.join(wd, "s3-%s-%d" % (m, t))
            a = ["step", "--base", base, "--task", task, "--quiet"]
            if t == 1:
                a += ["--method", m]
            p1 = run([ARGS.nufilt] + a + ["--out", o1] + (["--prev", prev1] if prev1 else []))
            p3 = run([ARGS.nufilt] + a + ["--out", o3] + (["--prev", prev3] if prev3 else []),
                     mpi=ARGS.ranks)
            if not (check(p1.returncode == 0, m, "step %d in one process" % t, p1.stderr) and
                    check(p3.returncode == 0, m, "step %d on %d ranks" % (t, ARGS.ranks),
                          p3.stderr)):
                break
            same_model("%s step %d" % (m, t), o1, o3)
            prev1, prev3 = o1, o3


def case_killed(wd, base, tasks):
    killed(wd, base, tasks, "killed", 1, signal.SIGKILL)
    # rank 0 created the temporary directories: the others must remove them
    killed(wd, base, tasks, "killed0", 0, signal.SIGKILL)
    killed(wd, base, tasks, "termed", 2, signal.SIGTERM)


def killed(wd, base, tasks, name, victim, sig):
    """Every rank stopped while the merge writes, rank victim sent sig, the others continued."""
    out = os.path.join(wd, name)
    env = mpi_env()
    tag = str(os.getpid()) + "-" + str(time.time())
    env["NUFILT_TEST_TAG"] = tag
    cmd = [ARGS.mpirun] + ROOT + ["--oversubscribe", "-n", str(ARGS.ranks),
                                  "-x", "NUFILT_TEST_TAG", ARGS.nufilt, "merge", "--base", base,
                                  "--out", out, "--method", "nufilt"] + tasks
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env)
    # wait until the ranks write (a step's scratch or the output's temporary directory
    # exists), then stop them
    ranks, t0 = {}, time.time()
    marks = (".%s.nufilt-" % name, ".%s.steps-" % name)
    while time.time() - t0 < 60 and p.poll() is None:
        if any(m in n for n in os.listdir(wd) for m in marks):
            ranks = rank_pids_tag(tag)
            if len(ranks) == ARGS.ranks:
                break
        time.sleep(0.002)
    if not check(len(ranks) == ARGS.ranks and p.poll() is None, name,
                 "caught the %d ranks while writing" % ARGS.ranks, ranks):
        p.kill()
        p.communicate()
        return
    for pid in ranks.values():
        os.kill(pid, signal.SIGSTOP)
    os.kill(ranks[victim], sig)
    if sig != signal.SIGKILL:
        os.kill(ranks[victim], signal.SIGCONT)
    for r, pid in ranks.items():
        if r != victim:
            os.kill(pid, signal.SIGCONT)
    try:
        so, se = p.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        p.kill()
        so, se = p.communicate()
        check(False, name, "mpirun ends after a rank is stopped by a signal")
        return
    check(p.returncode != 0, name, "mpirun fails (status %d)" % p.returncode, se)
    check("rank %d" % victim in se and "signal %d" % sig in se, name,
          "the message names rank %d and signal %d" % (victim, sig), se)
    check(not os.path.exists(out), name, "nothing committed")
    time.sleep(0.5)
    check(not leftovers(wd), name, "no temporaries left", leftovers(wd))


def rank_pids_tag(tag):
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/comm" % pid) as f:
                if f.read().strip() != "nufilt":
                    continue
            with open("/proc/%s/environ" % pid, "rb") as f:
                env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
        except OSError:
            continue
        if env.get(b"NUFILT_TEST_TAG") != tag.encode():
            continue
        r = env.get(b"OMPI_COMM_WORLD_RANK")
        if r is not None:
            out[int(r)] = int(pid)
    return out


def case_report(wd, base, tasks):
    """--report and the progress bar come from rank 0, with every rank's tensors."""
    import json
    r1, r3 = os.path.join(wd, "one.json"), os.path.join(wd, "mpi.json")
    o1, o3 = os.path.join(wd, "rep-one"), os.path.join(wd, "rep-mpi")
    p1 = run([ARGS.nufilt, "merge", "--base", base, "--out", o1, "--report", r1, "--quiet"] +
             tasks)
    p3 = run([ARGS.nufilt, "merge", "--base", base, "--out", o3, "--report", r3, "--progress"] +
             tasks, mpi=ARGS.ranks)
    if not (check(p1.returncode == 0, "report", "one process writes its report", p1.stderr) and
            check(p3.returncode == 0, "report", "the ranks write one report", p3.stderr)):
        return
    s1, s3 = json.load(open(r1))["steps"], json.load(open(r3))["steps"]
    check(len(s1) == len(s3) == len(tasks), "report", "one entry per step")

    def figures(step):
        return [{k: v for k, v in t.items() if k != "seconds"} for t in step["tensors"]]
    for k, (a, b) in enumerate(zip(s1, s3), 1):
        check(figures(a) == figures(b), "report", "step %d: every treated tensor's figures, "
              "as in one process (%d tensors)" % (k, len(a["tensors"])))
        ranks = b.get("ranks", [])
        check(len(ranks) == ARGS.ranks and [x["rank"] for x in ranks] == list(range(ARGS.ranks))
              and sum(x["tensors"] for x in ranks) == b["totals"]["tensors"]
              and all(x["seconds"] > 0 for x in ranks)
              and abs(sum(x["work_share"] for x in ranks) - 1) < 1e-3,
              "report", "step %d: per-rank tensors, times and shares" % k, ranks)
    bars = p3.stderr.replace("\r", "\n")
    check("100%" in bars and p3.stderr.count("nufilt: merged") == 1, "progress",
          "one bar (rank 0) that reaches 100%", p3.stderr[-400:])


def case_error(wd, base, tasks):
    """A non-finite value in one tensor of the last task: only its owner sees it."""
    t = st.load(tasks[-1])
    bad_name = [n for n in t if t.dtypes[n] == "F32" and t[n].ndim == 2][-1]
    arr = t[bad_name].copy()
    arr.flat[3] = np.nan
    t[bad_name] = arr
    bad = os.path.join(wd, "task-nan.safetensors")
    st.save_file(bad, dict(t), t.dtypes, t.metadata)
    out = os.path.join(wd, "refused")
    p = run([ARGS.nufilt, "merge", "--base", base, "--out", out, "--method", "ta"] +
            tasks[:-1] + [bad], mpi=ARGS.ranks)
    check(p.returncode != 0, "error", "mpirun fails (status %d)" % p.returncode)
    check("nufilt: error: rank " in p.stderr and bad_name in p.stderr, "error",
          "the message names the rank and the tensor", p.stderr)
    check(not os.path.exists(out), "error", "nothing committed")
    time.sleep(0.5)
    check(not leftovers(wd), "error", "no temporaries left", leftovers(wd))
    os.unlink(bad)


def case_file_out(wd, base, tasks):
    out = os.path.join(wd, "one.safetensors")
    p = run([ARGS.nufilt, "merge", "--base", base, "--out", out] + tasks, mpi=ARGS.ranks)
    check(p.returncode != 0 and "directory" in p.stderr and "rank" in p.stderr, "file out",
          "a .safetensors output is refused", p.stderr)
    check(not os.path.exists(out) and not leftovers(wd), "file out", "nothing written")


def main():
    global ARGS
    ap = argparse.ArgumentParser()
    ap.add_argument("--nufilt", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--mpi", default="yes")
    ap.add_argument("--ranks", type=int, default=3)
    ap.add_argument("--mpirun", default=shutil.which("mpirun") or "")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset")
    ap.add_argument("--cases", default="methods,steps,report,error,file,killed")
    ARGS = ap.parse_args()
    ARGS.nufilt = os.path.abspath(ARGS.nufilt)
    if ARGS.mpi != "yes":
        print("SKIP: nufilt was built without MPI (meson -Dmpi=disabled or no MPI found)")
        return 77
    if not ARGS.mpirun:
        print("SKIP: mpirun not found (Debian: apt-get install openmpi-bin)")
        return 77
    wd = os.path.abspath(ARGS.workdir)
    shutil.rmtree(wd, ignore_errors=True)
    os.makedirs(wd)
    fx = bfx.make(tasks=3, seed=19)
    base, tasks = bfx.write(fx, wd)
    METHODS[:] = ARGS.methods.split(",")
    cases = ARGS.cases.split(",")
    for name, fn in [("methods", case_methods), ("steps", case_steps), ("report", case_report),
                     ("error", case_error),
                     ("file", case_file_out), ("killed", case_killed)]:
        if name in cases:
            fn(wd, base, tasks)
    if FAILS:
        print("%d FAILED: %s" % (len(FAILS), FAILS))
        return 1
    print("all passed")
    shutil.rmtree(wd, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
