#!/usr/bin/python3
"""Behaviour unchanged between two versions of nufilt: the same inputs, byte-identical outputs.

    /usr/bin/python3 ci/same_output.py OLD NEW [--workdir DIR] [--layers N] [--no-vit]
                                       [--no-baselines] [--keep]

OLD and NEW are commits (anything `git rev-parse` takes: 077a736, main, HEAD~5), each checked
out in a temporary `git worktree` and built there, or directories holding a source tree (built
as they are, uncommitted changes included: how a deliberately changed build is checked).
Builds are release builds (meson's default buildtype, -O3), out of the source tree, with
-Dtests=false, -Dopencl=disabled and -Dvulkan=disabled: every case runs on `--device cpu`.
A commit's build is kept under DIR/build-<sha> and reused by a later run with the same DIR.

Inputs, generated once into DIR/inputs by this checkout's generators (so both versions read
the same files):
  vit     bench/perf/gen.py vit --tasks 2: a CLIP ViT-B/32-shaped vision tower, F32, 350 MB a
          model (--layers N for fewer layers).
  gap     tests/e2e/_baseline_fixtures.py: a small CLIP-style model (width 64, 2 layers) and 4
          tasks, F32, designed spectra with gaps.
  decay   the same generator in BF16 with smoothly decaying spectra.

Cases, each run by both versions (DIR/run is the working directory of both, so the paths a
version records in its output are the same; afterwards it becomes DIR/out-old or out-new):
  nufilt vit step1          nufilt step --base base --task task01
  nufilt vit step2 exact    nufilt step --prev <step1> --task task02 --svd exact (= gesdd)
  nufilt vit step2 fast     the same with --svd fast
  M gap|decay               nufilt merge --method M --save-steps over the 4 tasks, for every
                            baseline M (wa ta ties magmax opcm wudi isoc tsvm): the four
                            saved steps and the final output are compared
Each output is compared tensor by tensor (name, dtype, shape, every data byte) and by its
recorded metadata (`__metadata__`, every key and value). The one metadata key allowed to
differ is `nufilt.version` (the program's version string: it changes when the version number
is raised, and says nothing about the merge); a difference there is shown, not counted.
Nothing else that nufilt records (method, step, params, state, base and task fingerprints,
task names and paths, svd mode) depends on the time, the machine or the build directory.

Prints a table: case, identical (yes/no), first difference (the output file, then the first
differing tensor in the file's order with the number of differing bytes, or the metadata key,
or the command's failure; a case that fails in both versions counts as not identical).
Exit status 0 when every case is identical, 1 when one differs, 2 on a usage or build error.
"""

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ["wa", "ta", "ties", "magmax", "opcm", "wudi", "isoc", "tsvm"]
ALLOWED_META = {"nufilt.version"}
BUILD_OPTS = {"tests": "false", "opencl": "disabled", "vulkan": "disabled", "python": "false"}


def say(msg):
    print("== " + msg, file=sys.stderr, flush=True)


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


# ----------------------------------------------------------------------------- builds

def resolve(spec):
    """(label, sha or None, source directory or None) of a commit or a directory."""
    if os.path.isdir(spec) and os.path.exists(os.path.join(spec, "meson.build")):
        return os.path.abspath(spec), None, os.path.abspath(spec)
    r = subprocess.run(["git", "-C", ROOT, "rev-parse", "--verify", "--quiet", spec + "^{commit}"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit("same_output: %s is neither a commit nor a source directory" % spec)
    sha = r.stdout.strip()
    return spec, sha, None


def meson_options(src):
    """-D arguments for the options in BUILD_OPTS that this source tree declares."""
    have = set()
    p = os.path.join(src, "meson_options.txt")
    if os.path.exists(p):
        for line in open(p):
            if line.startswith("option('"):
                have.add(line.split("'")[1])
    return ["-D%s=%s" % (k, v) for k, v in BUILD_OPTS.items() if k in have]


def build(spec, sha, src, work, tag):
    """Builds one version; returns the path of its nufilt program."""
    bdir = os.path.join(work, "build-" + (sha if sha else tag))
    exe = os.path.join(bdir, "host", "nufilt")
    stamp = os.path.join(bdir, "same_output.stamp")
    if sha and os.path.exists(stamp) and open(stamp).read() == sha and os.access(exe, os.X_OK):
        say("%s (%s): reusing %s" % (spec, sha[:10], bdir))
        return exe
    tmp_tree = None
    try:
        if sha:
            tmp_tree = os.path.join(work, "src-" + sha[:12])
            if os.path.exists(tmp_tree):
                subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", tmp_tree],
                               capture_output=True)
                shutil.rmtree(tmp_tree, ignore_errors=True)
            run(["git", "-C", ROOT, "worktree", "add", "--detach", tmp_tree, sha],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            src = tmp_tree
        shutil.rmtree(bdir, ignore_errors=True)
        say("%s: building %s in %s" % (spec, src, bdir))
        t = time.time()
        run(["meson", "setup", bdir, src, "--buildtype=release"] + meson_options(src),
            stdout=subprocess.DEVNULL)
        r = subprocess.run(["ninja", "-C", bdir, "host/nufilt"], capture_output=True, text=True)
        if r.returncode != 0:
            sys.stderr.write(r.stdout[-4000:] + r.stderr[-4000:])
            raise subprocess.CalledProcessError(r.returncode, "ninja")
        say("%s: built in %.0f s" % (spec, time.time() - t))
        if sha:
            with open(stamp, "w") as f:
                f.write(sha)
        return exe
    finally:
        if tmp_tree:
            subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", tmp_tree],
                           capture_output=True)
            shutil.rmtree(tmp_tree, ignore_errors=True)
            subprocess.run(["git", "-C", ROOT, "worktree", "prune"], capture_output=True)


# ----------------------------------------------------------------------------- inputs

def make_inputs(work, layers, do_vit, do_bl):
    inp = os.path.join(work, "inputs")
    os.makedirs(inp, exist_ok=True)
    if do_vit:
        vit = os.path.join(inp, "vit")
        args = ["/usr/bin/python3", os.path.join(ROOT, "bench", "perf", "gen.py"), "vit",
                "--out", vit, "--tasks", "2", "--seed", "0"]
        if layers is not None:
            args += ["--layers", str(layers)]
        say("inputs: ViT-B/32-shaped models (bench/perf/gen.py) in %s" % vit)
        run(args, stdout=subprocess.DEVNULL)
    if do_bl:
        sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
        import _baseline_fixtures as FX  # needs numpy, as the e2e tests do
        for name, spectrum, dtype in (("gap", "gap", "F32"), ("decay", "decay", "BF16")):
            d = os.path.join(inp, name)
            if not os.path.exists(os.path.join(d, "task04.safetensors")):
                say("inputs: small CLIP-style models (%s, %s) in %s" % (spectrum, dtype, d))
                FX.write(FX.make(spectrum=spectrum, dtype=dtype, tasks=4, seed=0), d)
    return inp


def cases(inp, do_vit, do_bl):
    """[(case name, [nufilt arguments], [outputs relative to the run directory])]"""
    out = []
    if do_vit:
        v = os.path.join(inp, "vit")
        base, t1, t2 = (os.path.join(v, n + ".safetensors") for n in ("base", "task01", "task02"))
        out.append(("nufilt vit step1",
                    ["step", "--base", base, "--task", t1, "--out", "vit-step1.safetensors"],
                    ["vit-step1.safetensors"]))
        for svd in ("exact", "fast"):
            o = "vit-step2-%s.safetensors" % svd
            out.append(("nufilt vit step2 --svd " + svd,
                        ["step", "--base", base, "--task", t2, "--prev", "vit-step1.safetensors",
                         "--svd", svd, "--out", o], [o]))
    if do_bl:
        for fx in ("gap", "decay"):
            d = os.path.join(inp, fx)
            tasks = [os.path.join(d, "task%02d.safetensors" % t) for t in range(1, 5)]
            for m in METHODS:
                stem = "%s-%s" % (m, fx)
                outs = [os.path.join(stem + "-steps", "step%02d.safetensors" % t)
                        for t in range(1, 5)] + [stem + ".safetensors"]
                out.append(("%s %s (4 steps)" % (m, fx),
                            ["merge", "--method", m, "--base", os.path.join(d, "base.safetensors"),
                             "--out", stem + ".safetensors", "--save-steps", stem + "-steps"]
                            + tasks, outs))
    return out


def run_cases(exe, work, label, todo):
    """Runs every case with one version in DIR/run, then renames it DIR/out-LABEL.
    Returns {case: None or the failure's text}."""
    rdir = os.path.join(work, "run")
    final = os.path.join(work, "out-" + label)
    shutil.rmtree(rdir, ignore_errors=True)
    shutil.rmtree(final, ignore_errors=True)
    os.makedirs(rdir)
    failed = {}
    for name, args, _ in todo:
        t = time.time()
        r = subprocess.run([exe] + args + ["--device", "cpu", "--quiet"], cwd=rdir,
                           capture_output=True, text=True)
        failed[name] = None if r.returncode == 0 else \
            "exit %d: %s" % (r.returncode, (r.stderr.strip().splitlines() or [""])[-1][:80])
        say("%s: %-28s %5.1f s%s" % (label, name, time.time() - t,
                                     "" if r.returncode == 0 else "  FAILED " + failed[name]))
    os.rename(rdir, final)
    return final, failed


# ----------------------------------------------------------------------------- comparison

def read_st(path):
    """(metadata dict, [(name, dtype, shape, bytes)] in file order) of one safetensors file."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        hdr = json.loads(f.read(n))
        data = f.read()
    meta = hdr.pop("__metadata__", {}) or {}
    ts = sorted(hdr.items(), key=lambda kv: kv[1]["data_offsets"][0])
    return meta, [(k, v["dtype"], v["shape"],
                   data[v["data_offsets"][0]:v["data_offsets"][1]]) for k, v in ts]


def compare_file(a, b):
    """(verdict, note): verdict None when identical, else the first difference;
    note mentions an allowed difference."""
    if not os.path.exists(a) or not os.path.exists(b):
        return "missing in %s" % ("old" if not os.path.exists(a) else "new"), ""
    with open(a, "rb") as fa, open(b, "rb") as fb:
        if fa.read() == fb.read():
            return None, ""
    ma, ta = read_st(a)
    mb, tb = read_st(b)
    names_a, names_b = [t[0] for t in ta], [t[0] for t in tb]
    if sorted(names_a) != sorted(names_b):
        only = sorted(set(names_a) ^ set(names_b))
        return "tensor list differs (%s)" % (only[0] if only else "order"), ""
    tb_by = {t[0]: t for t in tb}
    for name, dt, shape, data in ta:
        _, dt2, shape2, data2 = tb_by[name]
        if dt != dt2 or shape != shape2:
            return "%s: %s%s vs %s%s" % (name, dt, shape, dt2, shape2), ""
        if data != data2:
            nb = sum(x != y for x, y in zip(data, data2))
            return "%s (%d of %d bytes)" % (name, nb, len(data)), ""
    note = ""
    for k in sorted(set(ma) | set(mb)):
        if ma.get(k) != mb.get(k):
            if k in ALLOWED_META:
                note = "%s %r vs %r (allowed)" % (k, ma.get(k), mb.get(k))
                continue
            return "metadata %s" % k, ""
    return None, note or "same tensors and metadata, file layout differs"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--workdir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"),
                                                        "nufilt-same-output"))
    ap.add_argument("--layers", type=int, default=None,
                    help="ViT layers (default: 12, ViT-B/32's)")
    ap.add_argument("--no-vit", action="store_true")
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep DIR/out-old and DIR/out-new")
    a = ap.parse_args()
    work = os.path.abspath(a.workdir)
    # the script removes and rewrites folders inside DIR: only in a folder it made itself
    marker = os.path.join(work, ".same_output-workdir")
    if os.path.isdir(work) and os.listdir(work) and not os.path.exists(marker):
        sys.stderr.write("same_output.py: --workdir %s holds files this script did not write; "
                         "name an empty or new folder\n" % work)
        return 2
    os.makedirs(work, exist_ok=True)
    open(marker, "a").close()
    do_vit, do_bl = not a.no_vit, not a.no_baselines
    try:
        old, new = resolve(a.old), resolve(a.new)
        exes = [build(spec, sha, src, work, tag)
                for (spec, sha, src), tag in ((old, "old"), (new, "new"))]
        inp = make_inputs(work, a.layers, do_vit, do_bl)
    except (subprocess.CalledProcessError, OSError, ImportError) as e:
        print("same_output: %s" % e, file=sys.stderr)
        return 2
    todo = cases(inp, do_vit, do_bl)
    dir_old, fail_old = run_cases(exes[0], work, "old", todo)
    dir_new, fail_new = run_cases(exes[1], work, "new", todo)

    rows, differ = [], 0
    for name, _, outs in todo:
        verdict, notes = None, []
        if fail_old[name] or fail_new[name]:
            # a case both versions fail proves nothing: it counts as a difference
            verdict = "old %s, new %s" % (fail_old[name] or "ok", fail_new[name] or "ok")
        else:
            for o in outs:
                v, note = compare_file(os.path.join(dir_old, o), os.path.join(dir_new, o))
                if note:
                    notes.append("%s: %s" % (os.path.basename(o), note))
                if v:
                    verdict = "%s: %s" % (os.path.basename(o), v)
                    break
        differ += verdict is not None
        rows.append((name, "no" if verdict else "yes", verdict or "; ".join(notes) or "-"))
    print("old: %s  new: %s" % (old[0] + (" (%s)" % old[1][:10] if old[1] else ""),
                                new[0] + (" (%s)" % new[1][:10] if new[1] else "")))
    w = max(len(r[0]) for r in rows)
    print("| %-*s | identical | first difference |" % (w, "case"))
    print("| %s | --------- | ---------------- |" % ("-" * w))
    for r in rows:
        print("| %-*s | %-9s | %s |" % (w, r[0], r[1], r[2]))
    print("%d of %d cases identical" % (len(rows) - differ, len(rows)))
    if not a.keep:
        shutil.rmtree(dir_old, ignore_errors=True)
        shutil.rmtree(dir_new, ignore_errors=True)
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
