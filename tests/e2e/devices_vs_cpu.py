#!/usr/bin/env python3
"""Whole merges on a GPU-API device agree with the CPU backend.

For the device given (opencl:0, vulkan:0, ...), merges 4 generated CLIP-style task models with
NUFILT (default options scaled to the fixture's width), task arithmetic, OPCM and WUDI, on the
device and on the CPU backend, NUFILT with --svd gesdd and with --svd fast (the default, whose
Gram matrices are device GEMMs), and compares every merged tensor: relative
Frobenius error of the merged task vector (merged - base) at most 1e-4 on well-conditioned
inputs (spectral gaps at the rank cuts) and 2e-3 on smoothly decaying spectra.

    /usr/bin/python3 tests/e2e/devices_vs_cpu.py --nufilt PATH --device opencl:0 --workdir DIR

(any python3 with numpy runs it; the fixtures are made with the same interpreter)

An error of exactly 0 is possible and not a sign that the device sat idle: on these small
matrices the CPU backend's own GEMM and CLBlast's kernel on PoCL both accumulate every entry
in k order with fused multiply-adds, so they round alike (with NF_CPU_GEMM=openblas on the
CPU side the same NUFILT merge differs by 1.9e-7; the device's GEMMs are its own).

Exit status 0 pass, 1 fail, 77 skip (the device is not present: its API is not built in or
its driver is missing; the reason is printed).
"""
import argparse
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "ref"))
import numpy as np  # noqa: E402
import st  # noqa: E402

TOL = {"gap": 1e-4, "decay": 2e-3}
METHODS = {
    "nufilt --svd gesdd": ["--null-rank", "16", "--task-rank", "4", "--lora-rank", "8",
                           "--preset", "clip", "--svd", "gesdd"],
    "nufilt --svd fast": ["--null-rank", "16", "--task-rank", "4", "--lora-rank", "8",
                          "--preset", "clip", "--svd", "fast"],
    "ta": ["--scale", "0.3"],
    "opcm": [],
    "wudi": ["--iters", "20"],
}


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    return r.returncode, r.stdout, r.stderr


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nufilt", required=True)
    ap.add_argument("--device", required=True)
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args()
    rc, out, err = run([a.nufilt, "devices"])
    api = a.device.split(":")[0]
    listed = [l.split()[0] for l in out.splitlines() if l and not l.startswith(" ")]
    if a.device not in listed:
        why = [l for l in out.splitlines() if l.startswith(api) and "unavailable" in l]
        print("SKIP: %s is not present (%s)" % (a.device, why[0].strip() if why else
                                                 "this build has no %s backend" % api))
        return 77
    shutil.rmtree(a.workdir, ignore_errors=True)
    os.makedirs(a.workdir)
    failures = 0
    for spectrum in ("gap", "decay"):
        fx = os.path.join(a.workdir, spectrum)
        rc, _, err = run([sys.executable, os.path.join(HERE, "..", "ref", "gen_fixtures.py"),
                          "--out", fx, "--size", "small", "--tasks", "4", "--spectrum", spectrum])
        if rc != 0:
            print("FAIL fixtures: " + err)
            return 1
        base = st.load(os.path.join(fx, "base.safetensors"))
        tasks = [os.path.join(fx, "task%02d.safetensors" % t) for t in range(1, 5)]
        for method, opts in METHODS.items():
            outs = {}
            for dev in ("cpu", a.device):
                o = os.path.join(fx, "%s-%s.safetensors" % (method.replace(" --svd ", "-"),
                                                             dev.replace(":", "")))
                rc, _, err = run([a.nufilt, "merge", "--method", method.split()[0], "--base",
                                  os.path.join(fx, "base.safetensors"), "--out", o, "--device",
                                  dev, "--quiet"] + opts + tasks)
                if rc != 0:
                    print("FAIL %s %s on %s: %s" % (spectrum, method, dev, err.strip()))
                    failures += 1
                    break
                outs[dev] = st.load(o)
            if len(outs) < 2:
                continue
            worst, where = 0.0, ""
            for name, b in base.items():
                if not np.issubdtype(np.asarray(b).dtype, np.floating):
                    continue
                b = np.asarray(b, dtype=np.float64)
                ref = np.asarray(outs["cpu"][name], dtype=np.float64) - b
                got = np.asarray(outs[a.device][name], dtype=np.float64) - b
                den = np.linalg.norm(ref)
                e = np.linalg.norm(got - ref) / den if den > 0 else np.linalg.norm(got)
                if e > worst:
                    worst, where = e, name
            ok = worst <= TOL[spectrum]
            failures += not ok
            print("%s %-5s %-17s on %s vs cpu: max rel error of merged task vectors %.2e (%s), "
                  "tolerance %.0e" % ("PASS" if ok else "FAIL", spectrum, method, a.device,
                                      worst, where or "-", TOL[spectrum]))
    # --device auto never picks a software device (PoCL, lavapipe) for real work
    kinds = {}
    for l in out.splitlines():
        f = l.split()
        if f and not l.startswith(" ") and ":" in f[0] and len(f) > 1:
            kinds[f[0]] = f[1]
    if all(k in ("CPU", "software") for k in kinds.values()):
        fx = os.path.join(a.workdir, "gap")
        rep = os.path.join(fx, "auto.json")
        rc, _, err = run([a.nufilt, "step", "--base", os.path.join(fx, "base.safetensors"),
                          "--task", os.path.join(fx, "task01.safetensors"), "--out",
                          os.path.join(fx, "auto.safetensors"), "--report", rep, "--quiet"])
        import json
        dev = json.load(open(rep))["steps"][0].get("device", "") if rc == 0 else err
        ok = dev.startswith("cpu:0")
        failures += not ok
        print("%s --device auto with only software devices besides the CPU runs on: %s" %
              ("PASS" if ok else "FAIL", dev))
    print("%d failed" % failures)
    if failures == 0:
        shutil.rmtree(a.workdir, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
