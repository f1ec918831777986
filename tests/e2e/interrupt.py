#!/usr/bin/env python3
"""Atomic outputs under interruption, a full disk and concurrent writers.

    /usr/bin/python3 tests/e2e/interrupt.py --nufilt PATH [--workdir DIR] [--keep]
        [--only NAME ...] [--seed N] [--kills N] [--list]

Runs the real program on generated checkpoints (standard library only) and checks, for every
scenario, that the destination is never partial: after the run it is absent, or byte for byte
the complete file (or directory) that was there before, or byte for byte what a clean run
writes. Scenarios:

  kill9-step, kill9-merge, kill9-merge-dir   SIGKILL at random points of a step / a merge
                                             (file and directory outputs, replacing an older
                                             complete output with --force)
  sigint-step, sigterm-merge, sigint-merge-dir
                                             the same with SIGINT / SIGTERM, which must also
                                             leave no temporary file or directory behind and
                                             end the process by that signal
  enospc                                     a small tmpfs (mounted here): a step that does not
                                             fit, a merge that runs out of room at its second
                                             step, a directory output whose copied config
                                             files do not fit; each a clear error, a non-zero
                                             exit, no output, no temporaries. Skipped (exit 77)
                                             when mounting is not permitted
  concurrent, concurrent-dir                 two merges writing one destination at once (both
                                             --force, or one without): the result is one of
                                             the two complete outputs
  symlinked-destination                      --force onto a symbolic link (to a directory, to a
                                             file) replaces the link, and leaves what it
                                             points to alone
  truncated-input                            another process truncates the task model while a
                                             step reads it (memory-mapped: SIGBUS): the step
                                             dies saying so, with no output and no temporaries

Exit status 0 when every scenario behaves, 1 otherwise, 77 when every scenario run was
skipped. The work directory (about 80 MB) is removed after a successful run unless --keep. A SIGKILLed run may leave its temporaries (nothing can remove them); they are
counted and reported, and removed before the next run.
"""
import argparse
import array
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time

D = 256     # a step takes about a second on one core: long enough to be hit mid-run
LAYERS = 4
POOL = 100003


def default_signals():
    """In the child: SIGINT and SIGTERM as a terminal delivers them, even where this test runs
    with them ignored (a background job ignores SIGINT; nufilt keeps an ignored signal
    ignored, on purpose)."""
    for sg in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sg, signal.SIG_DFL)

def layer_tensors():
    ts = []
    for l in range(LAYERS):
        p = "vision_model.encoder.layers.%d." % l
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            ts.append((p + "self_attn.%s.weight" % proj, [D, D]))
            ts.append((p + "self_attn.%s.bias" % proj, [D]))
        ts.append((p + "mlp.fc1.weight", [2 * D, D]))
        ts.append((p + "mlp.fc1.bias", [2 * D]))
        ts.append((p + "mlp.fc2.weight", [D, 2 * D]))
        ts.append((p + "layer_norm1.weight", [D]))
    return ts


def write_model(path, seed, metadata=None):
    """A float32 safetensors file; values are slices of a random pool at random offsets."""
    rnd = random.Random(seed)
    pool = array.array("f", [rnd.uniform(-0.05, 0.05) for _ in range(POOL)])
    header, chunks, off = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name, shape in layer_tensors():
        n = 1
        for s in shape:
            n *= s
        a = array.array("f")
        while len(a) < n:
            start = rnd.randrange(POOL)
            a.extend(pool[start:start + min(n - len(a), POOL - start)])
        if sys.byteorder != "little":
            a.byteswap()
        b = a.tobytes()
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [off, off + len(b)]}
        chunks.append(b)
        off += len(b)
    hb = json.dumps(header).encode()
    hb += b" " * (-len(hb) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for c in chunks:
            f.write(c)


def card_without_command(data):
    """A directory output's model card names the command that wrote it (and so the output's
    path, which differs from run to run here): compared without that line."""
    head, sep, rest = data.partition(b"```sh\n")
    return head + sep + b"COMMAND\n```" + rest.partition(b"\n```")[2] if sep else data


def snapshot(path):
    """None if absent, bytes for a file, {name: bytes} for a directory."""
    if not os.path.lexists(path):
        return None
    if os.path.isdir(path):
        snap = {n: open(os.path.join(path, n), "rb").read() for n in sorted(os.listdir(path))}
        if "README.md" in snap:
            snap["README.md"] = card_without_command(snap["README.md"])
        return snap
    return open(path, "rb").read()


def describe(snap):
    if snap is None:
        return "absent"
    if isinstance(snap, dict):
        return "directory of %d files (%s)" % (len(snap), ", ".join(sorted(snap))[:120])
    return "file of %d bytes" % len(snap)


def temporaries(d):
    return sorted(n for n in os.listdir(d) if n.startswith("."))


def clear_temporaries(d):
    for n in temporaries(d):
        p = os.path.join(d, n)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p, ignore_errors=True)
        else:
            os.unlink(p)


def place(path, snap):
    """Makes path hold snap (None, bytes or dict)."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)
    if snap is None:
        return
    if isinstance(snap, dict):
        os.makedirs(path)
        for n, b in snap.items():
            with open(os.path.join(path, n), "wb") as f:
                f.write(b)
    else:
        with open(path, "wb") as f:
            f.write(snap)


class Ctx:
    def __init__(self, nufilt, work, seed, kills):
        self.nufilt = nufilt
        self.work = work
        self.rnd = random.Random(seed)
        self.kills = kills
        self.failures = []
        self.notes = []

    def fail(self, scenario, what):
        self.failures.append("%s: %s" % (scenario, what))
        print("FAIL %s: %s" % (scenario, what), flush=True)

    def run(self, args, timeout=600):
        t = time.monotonic()
        r = subprocess.run([self.nufilt] + args, capture_output=True, text=True, timeout=timeout)
        return r.returncode, r.stderr, time.monotonic() - t


def setup(c):
    m = os.path.join(c.work, "models")
    os.makedirs(m)
    c.base = os.path.join(m, "base.safetensors")
    c.tasks = [os.path.join(m, "task%d.safetensors" % i) for i in (1, 2, 3)]
    write_model(c.base, 100, {"format": "pt"})
    for i, t in enumerate(c.tasks):
        write_model(t, 101 + i, {"format": "pt"})
    refs = os.path.join(c.work, "refs")
    os.makedirs(refs)
    c.first = os.path.join(refs, "step1.safetensors")
    steps = [
        (["step", "--base", c.base, "--task", c.tasks[0], "--out", c.first], None),
    ]
    rc, err, _ = c.run(steps[0][0] + ["--quiet"])
    if rc != 0:
        raise SystemExit("setup: the first step failed: " + err)
    # the commands each scenario runs, and what a clean run of each writes
    c.cmd = {}
    c.ref = {}
    c.took = {}

    def ref(key, args, out):
        place(out, None)
        rc, err, took = c.run(args(out) + ["--quiet"])
        if rc != 0:
            raise SystemExit("setup: clean run %s failed: %s" % (key, err))
        c.cmd[key] = args
        c.ref[key] = snapshot(out)
        c.took[key] = took
        place(out, None)
        print("clean %-10s %.1f s, %s" % (key, took, describe(c.ref[key])), flush=True)

    ref("step", lambda o: ["step", "--base", c.base, "--task", c.tasks[1], "--prev", c.first,
                           "--out", o], os.path.join(refs, "step2.safetensors"))
    ref("merge", lambda o: ["merge", "--base", c.base, "--out", o, c.tasks[0], c.tasks[1]],
        os.path.join(refs, "merge.safetensors"))
    ref("merge-dir", lambda o: ["merge", "--base", c.base, "--out", o, c.tasks[0], c.tasks[1]],
        os.path.join(refs, "merge-dir"))
    ref("other", lambda o: ["merge", "--base", c.base, "--out", o, c.tasks[1], c.tasks[2]],
        os.path.join(refs, "other.safetensors"))
    ref("other-dir", lambda o: ["merge", "--base", c.base, "--out", o, c.tasks[1], c.tasks[2]],
        os.path.join(refs, "other-dir"))
    # "what was there before": a complete output of another merge
    c.old = {"step": snapshot(c.first), "merge": c.ref["other"], "merge-dir": c.ref["other-dir"]}


def interrupted(c, scenario, key, sig, out_name):
    """Runs c.cmd[key], in turn over an older complete output (--force) and to an absent
    destination (no --force), sends sig after a random delay, and checks the destination and
    the temporaries."""
    nfail = len(c.failures)
    d = os.path.join(c.work, scenario)
    os.makedirs(d)
    out = os.path.join(d, out_name)
    span = c.took[key] * 1.6
    outcomes = {"old": 0, "new": 0, "absent": 0}
    left = 0
    for i in range(c.kills):
        prior = c.old[key] if i % 2 == 0 else None
        place(out, prior)
        # spread the delays over the run: one early, one late, the others at random
        delay = span * ((i + c.rnd.random()) / c.kills)
        p = subprocess.Popen([c.nufilt] + c.cmd[key](out) + ["--quiet"] +
                             (["--force"] if prior is not None else []),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             preexec_fn=default_signals)
        try:
            p.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            p.send_signal(sig)
        try:
            _, err = p.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
            c.fail(scenario, "run %d: did not end within 120 s of signal %d" % (i, sig))
            continue
        rc = p.returncode
        snap = snapshot(out)
        if snap == c.ref[key]:
            outcomes["new"] += 1
        elif snap is None and prior is None:
            outcomes["absent"] += 1
        elif snap == prior:
            outcomes["old"] += 1
        else:
            c.fail(scenario, "run %d (signal after %.2f s): destination is neither %s nor the "
                   "clean output: %s" % (i, delay, "absent" if prior is None else
                                         "the old output", describe(snap)))
        if rc not in (0, -sig):
            c.fail(scenario, "run %d: exit status %s (want 0 or killed by signal %d): %s"
                   % (i, rc, sig, err.strip()[-300:]))
        if rc == 0 and snap != c.ref[key]:
            c.fail(scenario, "run %d: exit 0 but the output is not the clean one" % i)
        tmp = temporaries(d)
        if tmp:
            if sig == signal.SIGKILL:
                left += 1
            else:
                c.fail(scenario, "run %d (signal %d after %.2f s): temporaries left: %s"
                       % (i, sig, delay, tmp))
            clear_temporaries(d)
    msg = "%d runs: %d left the old output, %d completed, %d absent" % (
        c.kills, outcomes["old"], outcomes["new"], outcomes["absent"])
    if sig == signal.SIGKILL:
        msg += ", %d left temporaries (expected after SIGKILL)" % left
    print("%s %-18s %s" % ("ok  " if len(c.failures) == nfail else "FAIL", scenario, msg),
          flush=True)
    shutil.rmtree(d, ignore_errors=True)


def try_mount(d, size):
    os.makedirs(d, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s,mode=0755" % size, "tmpfs", d],
                       capture_output=True, text=True)
    if r.returncode != 0:
        return (r.stderr or r.stdout).strip() or "mount exit %d" % r.returncode
    return None


def umount(d):
    subprocess.run(["umount", d], capture_output=True)


def scenario_enospc(c):
    """A full disk: tmpfs mounts too small for what is asked of them."""
    if os.geteuid() != 0:
        return "not root: cannot mount a tmpfs"
    d = os.path.join(c.work, "enospc")
    size = len(c.ref["step"])  # one output
    cases = [
        ("step does not fit", "%dk" % (size * 6 // 10 // 1024),
         lambda o: ["step", "--base", c.base, "--task", c.tasks[0], "--out", o], "x.safetensors"),
        ("merge runs out at step 2", "%dk" % (size * 15 // 10 // 1024),
         lambda o: ["merge", "--base", c.base, "--out", o, c.tasks[0], c.tasks[1]],
         "x.safetensors"),
        ("merge-dir runs out at step 2", "%dk" % (size * 15 // 10 // 1024),
         lambda o: ["merge", "--base", c.base, "--out", o, c.tasks[0], c.tasks[1]], "x"),
    ]
    # a base directory whose extra (non-weight) file does not fit beside the output: the
    # copy fails while committing, after all the work
    based = os.path.join(c.work, "base-with-extras")
    os.makedirs(based)
    shutil.copy(c.base, os.path.join(based, "model.safetensors"))
    with open(os.path.join(based, "tokenizer.json"), "wb") as f:
        f.write(b"{" + b" " * (size // 2) + b"}")
    with open(os.path.join(based, "config.json"), "w") as f:
        f.write("{}")
    cases.append(("copied config files do not fit", "%dk" % (size * 13 // 10 // 1024),
                  lambda o: ["step", "--base", based, "--task", c.tasks[0], "--out", o], "x"))
    for name, tsize, args, out_name in cases:
        why = try_mount(d, tsize)
        if why:
            shutil.rmtree(d, ignore_errors=True)
            return "mounting a tmpfs is not permitted here: " + why
        try:
            out = os.path.join(d, out_name)
            rc, err, _ = c.run(args(out) + ["--quiet"])
            lines = [l for l in err.strip().splitlines() if l.strip()]
            problems = []
            if rc in (0, None) or (rc is not None and rc < 0):
                problems.append("exit status %s" % rc)
            if len(lines) != 1:
                problems.append("%d lines on stderr: %r" % (len(lines), err[-400:]))
            elif "No space left on device" not in lines[0] and "no room" not in lines[0]:
                problems.append("message does not say the disk is full: " + lines[0])
            elif out not in lines[0]:
                problems.append("message does not name %s: %s" % (out, lines[0]))
            if os.path.lexists(out):
                problems.append("output written")
            if temporaries(d):
                problems.append("temporaries left: %s" % temporaries(d))
            if problems:
                c.fail("enospc", "%s (tmpfs %s): %s" % (name, tsize, "; ".join(problems)))
            else:
                print("ok   enospc %-34s %s" % (name, lines[0][:140]), flush=True)
        finally:
            umount(d)
    shutil.rmtree(d, ignore_errors=True)
    return None


def scenario_concurrent(c, key, other_key, out_name, rounds=3):
    """Two merges, one destination: A is c.cmd[key], B is c.cmd[other_key]; both --force, or
    B without. The final output must be one of the two complete results."""
    scen = "concurrent" + ("-dir" if key.endswith("-dir") else "")
    nfail = len(c.failures)
    d = os.path.join(c.work, scen)
    os.makedirs(d)
    out = os.path.join(d, out_name)
    refs = {"A": c.ref[key], "B": c.ref[other_key]}
    seen = []
    for r in range(rounds):
        for b_force in (True, False):
            place(out, None)
            pa = subprocess.Popen([c.nufilt] + c.cmd[key](out) + ["--force", "--quiet"],
                                  stderr=subprocess.PIPE, text=True)
            time.sleep(c.rnd.random() * 0.3)
            pb = subprocess.Popen([c.nufilt] + c.cmd[other_key](out) + ["--quiet"] +
                                  (["--force"] if b_force else []),
                                  stderr=subprocess.PIPE, text=True)
            _, ea = pa.communicate(timeout=600)
            _, eb = pb.communicate(timeout=600)
            snap = snapshot(out)
            which = [k for k, v in refs.items() if v == snap]
            label = "round %d, B %s --force" % (r, "with" if b_force else "without")
            if not which:
                c.fail(scen, "%s: the destination is neither complete output: %s"
                       % (label, describe(snap)))
            if pa.returncode != 0:
                c.fail(scen, "%s: A (--force) failed: %s" % (label, ea.strip()))
            if b_force and pb.returncode != 0:
                c.fail(scen, "%s: B (--force) failed: %s" % (label, eb.strip()))
            if not b_force and pb.returncode != 0 and not (
                    pb.returncode == 1 and "--force" in eb and out in eb):
                c.fail(scen, "%s: B failed without saying the output exists: %s (exit %s)"
                       % (label, eb.strip(), pb.returncode))
            if not b_force and which == ["B"]:
                c.fail(scen, "%s: B without --force won over A with it" % label)
            if temporaries(d):
                c.fail(scen, "%s: temporaries left: %s" % (label, temporaries(d)))
                clear_temporaries(d)
            seen.append((which[0] if which else "?") + ("" if pb.returncode == 0 else "(B refused)"))
    print("%s %-18s final outputs: %s" % ("ok  " if len(c.failures) == nfail else "FAIL", scen,
                                          " ".join(seen)), flush=True)
    shutil.rmtree(d, ignore_errors=True)


def scenario_truncated(c, runs=4):
    scen = "truncated-input"
    nfail = len(c.failures)
    d = os.path.join(c.work, scen)
    os.makedirs(d)
    out = os.path.join(d, "out.safetensors")
    task = os.path.join(d, "task.safetensors")
    seen = []
    args = c.cmd["step"](out)
    args[args.index(c.tasks[1])] = task
    shutil.copy(c.tasks[1], task)
    rc, err, _ = c.run(args + ["--quiet"])  # what an undisturbed run writes (the task's path
    ref = snapshot(out)                      # is recorded in the output's metadata)
    place(out, None)
    if rc != 0:
        c.fail(scen, "clean run: " + err.strip())
    for i in range(runs):
        shutil.copy(c.tasks[1], task)
        p = subprocess.Popen([c.nufilt] + args + ["--quiet"], stderr=subprocess.PIPE, text=True)
        time.sleep(c.took["step"] * (0.1 + 0.8 * i / max(1, runs - 1)))
        os.truncate(task, 4096)
        _, err = p.communicate(timeout=300)
        rc, snap = p.returncode, snapshot(out)
        label = "run %d" % i
        if rc == 0:
            seen.append("completed")
            if snap != ref:
                c.fail(scen, "%s: exit 0 but the output is not the clean one" % label)
        elif rc == -signal.SIGBUS:
            seen.append("SIGBUS")
            if "truncated by another process" not in err:
                c.fail(scen, "%s: died of SIGBUS without saying why: %r" % (label, err[-300:]))
        elif rc == 1:
            seen.append("refused")
            if task not in err:
                c.fail(scen, "%s: refused without naming %s: %r" % (label, task, err[-300:]))
        else:
            c.fail(scen, "%s: exit status %s: %r" % (label, rc, err[-300:]))
        if rc != 0 and snap is not None:
            c.fail(scen, "%s: failed but left an output: %s" % (label, describe(snap)))
        if temporaries(d):
            c.fail(scen, "%s: temporaries left: %s" % (label, temporaries(d)))
            clear_temporaries(d)
        place(out, None)
    print("%s %-18s %s" % ("ok  " if len(c.failures) == nfail else "FAIL", scen, " ".join(seen)),
          flush=True)
    shutil.rmtree(d, ignore_errors=True)


def scenario_symlinked(c):
    scen = "symlinked-destination"
    nfail = len(c.failures)
    d = os.path.join(c.work, scen)
    os.makedirs(d)
    for key, kind in (("merge-dir", "directory"), ("merge", "file")):
        target = os.path.join(d, "target-" + kind)
        link = os.path.join(d, "link-" + kind + (".safetensors" if kind == "file" else ""))
        if kind == "directory":
            os.makedirs(target)
            with open(os.path.join(target, "keep.txt"), "w") as f:
                f.write("precious")
        else:
            with open(target, "w") as f:
                f.write("precious")
        os.symlink(os.path.basename(target), link)
        before = snapshot(target)
        rc, err, _ = c.run(c.cmd[key](link) + ["--force", "--quiet"])
        if rc != 0:
            c.fail(scen, "%s: exit %s: %s" % (kind, rc, err.strip()))
        if snapshot(target) != before:
            c.fail(scen, "%s: what the link pointed to was changed: %s"
                   % (kind, describe(snapshot(target))))
        if os.path.islink(link) or snapshot(link) != c.ref[key]:
            c.fail(scen, "%s: the link was not replaced by the output" % kind)
    if temporaries(d):
        c.fail(scen, "temporaries left: %s" % temporaries(d))
    print("%s %-18s the links were replaced, their targets untouched"
          % ("ok  " if len(c.failures) == nfail else "FAIL", scen), flush=True)
    shutil.rmtree(d, ignore_errors=True)


SCENARIOS = ["kill9-step", "kill9-merge", "kill9-merge-dir", "sigint-step", "sigterm-merge",
             "sigint-merge-dir", "enospc", "concurrent", "concurrent-dir",
             "symlinked-destination", "truncated-input"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nufilt", required=True)
    ap.add_argument("--workdir")
    ap.add_argument("--only", nargs="*", choices=SCENARIOS)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--kills", type=int, default=5, help="interruptions per scenario")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    a = ap.parse_args()
    if a.list:
        print("\n".join(SCENARIOS))
        return 0
    if not os.path.exists(a.nufilt):
        print("SKIP: no nufilt binary at %s" % a.nufilt)
        return 77
    nufilt = os.path.abspath(a.nufilt)
    work = os.path.abspath(a.workdir or tempfile.mkdtemp(prefix="nufilt-interrupt-"))
    if os.path.ismount(os.path.join(work, "enospc")):
        umount(os.path.join(work, "enospc"))
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    c = Ctx(nufilt, work, a.seed, a.kills)
    todo = a.only or SCENARIOS
    setup(c)
    skipped = []
    # interruption scenarios: the command, the signal, the output it must not leave behind
    signalled = {
        "kill9-step": ("step", signal.SIGKILL, "out.safetensors"),
        "kill9-merge": ("merge", signal.SIGKILL, "out.safetensors"),
        "kill9-merge-dir": ("merge-dir", signal.SIGKILL, "out"),
        "sigint-step": ("step", signal.SIGINT, "out.safetensors"),
        "sigterm-merge": ("merge", signal.SIGTERM, "out.safetensors"),
        "sigint-merge-dir": ("merge-dir", signal.SIGINT, "out"),
    }
    for s in todo:
        if s in signalled:
            interrupted(c, s, *signalled[s])
        elif s == "enospc":
            why = scenario_enospc(c)
            if why:
                print("SKIP enospc: %s" % why, flush=True)
                skipped.append(s)
        elif s == "concurrent":
            scenario_concurrent(c, "merge", "other", "out.safetensors")
        elif s == "concurrent-dir":
            scenario_concurrent(c, "merge-dir", "other-dir", "out")
        elif s == "symlinked-destination":
            scenario_symlinked(c)
        elif s == "truncated-input":
            scenario_truncated(c)
    print("%d scenarios, %d skipped, %d failures" % (len(todo), len(skipped), len(c.failures)))
    for f in c.failures:
        print("  " + f)
    if not c.failures and not a.keep:
        shutil.rmtree(work, ignore_errors=True)
    if c.failures:
        return 1
    return 77 if len(skipped) == len(todo) else 0


if __name__ == "__main__":
    sys.exit(main())
