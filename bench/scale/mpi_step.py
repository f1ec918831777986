#!/usr/bin/python3
"""mpirun -n 2 nufilt step against one process with --threads 2, interleaved (docs/scale-out.md).

    /usr/bin/python3 bench/scale/mpi_step.py --nufilt build/host/nufilt --models DIR \
        [--reps 5] [--ranks 2] [--work DIR]

DIR holds base.safetensors, task01.safetensors and task02.safetensors (bench/perf/gen.py
vit).  Step 1 is made once in one process; then step 2 (default settings) runs REPS times
in each configuration, alternating (one process, then the ranks, then one process, ...), so
that a change of load on the machine hits both alike.  Prints the machine, the load before
and after, every time, the medians and their ratio, and whether the two outputs have the same
tensors bit for bit.
"""

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "ref"))
import st  # noqa: E402


def env():
    e = dict(os.environ)
    e.setdefault("OMPI_MCA_btl", "self,tcp")
    e.setdefault("OMPI_MCA_btl_tcp_if_include", "lo")
    e.setdefault("OMPI_MCA_oob_tcp_if_include", "lo")
    if os.getuid() == 0:
        e["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
        e["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
    return e


def timed(cmd):
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env())
    dt = time.monotonic() - t0
    if p.returncode:
        sys.exit("failed (%d): %s\n%s" % (p.returncode, " ".join(cmd), p.stderr[-2000:]))
    return dt


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nufilt", required=True)
    ap.add_argument("--models", required=True)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--work", default="/tmp/nufilt-mpi-step")
    a = ap.parse_args()
    nf = os.path.abspath(a.nufilt)
    m = os.path.abspath(a.models)
    os.makedirs(a.work, exist_ok=True)
    base, t1, t2 = (os.path.join(m, n) for n in
                    ("base.safetensors", "task01.safetensors", "task02.safetensors"))
    s1 = os.path.join(a.work, "step1")
    if not os.path.exists(s1):
        timed([nf, "step", "--base", base, "--task", t1, "--out", s1, "--quiet"])
    o1, oN = os.path.join(a.work, "one"), os.path.join(a.work, "ranks")
    step = ["step", "--base", base, "--task", t2, "--prev", s1, "--force", "--quiet"]
    one = [nf] + step + ["--out", o1, "--threads", str(a.ranks)]
    many = [shutil.which("mpirun"), "--oversubscribe", "-n", str(a.ranks), "--bind-to", "none",
            nf] + step + ["--out", oN]
    print("machine: %s, %d CPUs online, %s; nufilt %s" %
          (cpu_name(), os.cpu_count(), platform.platform(),
           subprocess.run([nf, "--version"], capture_output=True, text=True).stdout.strip()))
    print("load average before: %.2f %.2f %.2f" % os.getloadavg())
    print("one process:  %s" % " ".join(one[1:]))
    print("%d ranks:      %s" % (a.ranks, " ".join(many[1:])))
    t_one, t_many = [], []
    for r in range(a.reps):
        t_one.append(timed(one))
        t_many.append(timed(many))
        print("rep %d: one process %.2f s, %d ranks %.2f s (load %.2f)" %
              (r + 1, t_one[-1], a.ranks, t_many[-1], os.getloadavg()[0]), flush=True)
    print("load average after: %.2f %.2f %.2f" % os.getloadavg())
    mo, mm = statistics.median(t_one), statistics.median(t_many)
    print("median: one process (--threads %d) %.2f s, mpirun -n %d %.2f s, ratio %.3f" %
          (a.ranks, mo, a.ranks, mm, mm / mo))
    ta, tb = st.raw_bytes(o1), st.raw_bytes(oN)
    same = set(ta) == set(tb) and all(ta[n] == tb[n] for n in ta)
    print("outputs: %d tensors, %s" % (len(ta), "identical bit for bit" if same else "DIFFER"))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
