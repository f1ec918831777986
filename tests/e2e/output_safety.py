#!/usr/bin/env python3
"""What nufilt may write over, the signals it cleans up after, and what it prints: the
catalogue of output-path cases. Each case builds its files (standard library only), runs the
real program, and checks the outcome against what the case expects, written here by hand:

  report    --report colliding with the output, an input (also through a symbolic or a hard
            link), another report, a non-JSON file, a directory; a report that cannot be
            written (a path under a regular file; a full file system) leaves nothing committed
  force     --force on an existing directory output holding .git, an unrelated subfolder, a
            hidden file, other weight formats (refused, naming it, the directory untouched),
            on nufilt's own directory output (replaced whole, nothing hidden left), --out equal
            to, inside, or holding an input (the base directory, `--out .`), through links;
            --save-steps overlapping --out or an input; existing steps: all refused before the
            first step computes, with or without --force
  signals   SIGQUIT, SIGALRM, SIGUSR1, SIGUSR2, SIGXCPU (also from `ulimit -t`), SIGVTALRM,
            SIGPROF, SIGPWR, SIGRTMIN, SIGHUP, SIGINT, SIGTERM during a merge: temporaries
            removed, a message naming the signal, death by that signal; stderr closed while the
            progress bar prints: exit 0 and the output committed; `ulimit -f`: "File too
            large" naming the output, no temporaries
  output    U+202E in a tensor name escaped in `nufilt inspect` and in error messages; a
            config.json or a passwd-like file (also as a linked shard) given as a model is
            "not a safetensors file", naming it and not printing its first bytes; 20 output
            shards under `ulimit -n 16`

Every refused run must exit non-zero without a signal, name what is in the way, leave every
input and existing file byte for byte as it was, and leave no temporary (`.*.nufilt-*`,
`.*.steps-*`) anywhere in the work directory.

    /usr/bin/python3 tests/e2e/output_safety.py --nufilt PATH [--workdir DIR] [--only TEXT]
        [--list] [--keep]

Exit status 0 when every case behaves, 1 otherwise. A case that needs what this machine does
not allow (mounting a tmpfs) reports itself skipped; the script exits 77 only if all do.
"""
import argparse
import json
import os
import random
import re
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time


# ---- fixtures ----

def tensors(d, layers):
    ts = []
    for l in range(layers):
        p = "vision_model.encoder.layers.%d." % l
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            ts.append((p + "self_attn.%s.weight" % proj, [d, d]))
            ts.append((p + "self_attn.%s.bias" % proj, [d]))
        ts.append((p + "mlp.fc1.weight", [2 * d, d]))
        ts.append((p + "mlp.fc2.weight", [d, 2 * d]))
    return ts


def write_st(path, seed, width=16, layers=1, names=None, metadata=None):
    """A float32 safetensors file of CLIP-like tensors (or the given (name, shape) list)."""
    rnd = random.Random(seed)
    header, chunks, off = {}, [], 0
    header["__metadata__"] = metadata or {"format": "pt"}
    for name, shape in (names or tensors(width, layers)):
        n = 1
        for s in shape:
            n *= s
        pool = [rnd.uniform(-0.05, 0.05) for _ in range(min(n, 4099))]
        vals = (pool * (n // len(pool) + 1))[:n]
        b = struct.pack("<%df" % n, *vals)
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


def write_dir(path, seed, **kw):
    os.makedirs(path, exist_ok=True)
    write_st(os.path.join(path, "model.safetensors"), seed, **kw)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"model_type": "clip_vision_model", "hidden_size": kw.get("width", 16)}, f)
    with open(os.path.join(path, "tokenizer.json"), "w") as f:
        f.write('{"version": "1.0"}\n')


def snapshot(root):
    """Every path under root (links as links) with its bytes, for 'left as it was'."""
    snap = {}
    if not os.path.lexists(root):
        return None
    if os.path.islink(root):
        return {"": ("link", os.readlink(root))}
    if os.path.isfile(root):
        with open(root, "rb") as f:
            return {"": ("file", f.read())}
    for dp, dns, fns in os.walk(root):
        for n in dns + fns:
            p = os.path.join(dp, n)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                snap[rel] = ("link", os.readlink(p))
            elif os.path.isdir(p):
                snap[rel] = ("dir", None)
            else:
                with open(p, "rb") as f:
                    snap[rel] = ("file", f.read())
    return snap


TEMP = re.compile(r"^\..*\.(nufilt|steps|spill)-[A-Za-z0-9]{6}$")


def temporaries(root):
    found = []
    for dp, dns, fns in os.walk(root):
        for n in dns + fns:
            if TEMP.match(n):
                found.append(os.path.relpath(os.path.join(dp, n), root))
    return sorted(found)


CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\x80-\x9f]")
INVISIBLE = re.compile("[\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u206f"
                       "\ufeff]")


class Ctx:
    def __init__(self, nufilt, work):
        self.nufilt, self.work = nufilt, work
        self.failures, self.ok, self.skipped = [], 0, 0

    def run(self, args, cwd=None, timeout=120, preexec=None, stderr_closed=False):
        """(exit status, stdout, stderr) of nufilt ARGS, run in cwd."""
        p = subprocess.Popen([self.nufilt] + args, cwd=cwd, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             preexec_fn=preexec)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
            return None, out.decode(errors="replace"), err.decode(errors="replace")
        return p.returncode, out.decode(errors="replace"), err.decode(errors="replace")


CASES = []


def case(group, name):
    def deco(fn):
        CASES.append((group, name, fn))
        return fn
    return deco


class Fail(Exception):
    pass


class Skip(Exception):
    pass


def expect(cond, what):
    if not cond:
        raise Fail(what)


def refused(c, d, args, named, keep, cwd=None, also=()):
    """Runs nufilt ARGS in d (or cwd), which must be refused: non-zero exit without a signal,
    one message naming `named` (and each of `also`), keep (paths) unchanged, no temporaries."""
    before = {k: snapshot(os.path.join(d, k)) for k in keep}
    rc, _, err = c.run(args, cwd=cwd or d)
    msg = err.strip()
    expect(rc is not None, "hung")
    expect(rc > 0, "exit status %s (want a refusal): %s" % (rc, msg))
    lines = [l for l in msg.splitlines() if l.strip()]
    expect(len(lines) == 1, "%d lines on stderr: %s" % (len(lines), msg))
    expect(named in msg, "message does not name %r: %s" % (named, msg))
    for a in also:
        expect(a in msg, "message lacks %r: %s" % (a, msg))
    expect(not CONTROL.search(msg), "control characters in the message")
    for k in keep:
        expect(snapshot(os.path.join(d, k)) == before[k], "%s was changed" % k)
    expect(not temporaries(d), "temporaries left: %s" % temporaries(d))
    return msg


def ok_run(c, d, args, cwd=None, **kw):
    rc, out, err = c.run(args, cwd=cwd or d, **kw)
    expect(rc == 0, "exit status %s: %s" % (rc, err.strip()))
    expect(not temporaries(d), "temporaries left: %s" % temporaries(d))
    return out, err


def models(d, dir_base=False, ntasks=2, **kw):
    os.makedirs(d, exist_ok=True)
    if dir_base:
        write_dir(os.path.join(d, "base"), 1, **kw)
        base = "base"
    else:
        write_st(os.path.join(d, "base.safetensors"), 1, **kw)
        base = "base.safetensors"
    tasks = []
    for t in range(ntasks):
        n = "task%d.safetensors" % (t + 1)
        write_st(os.path.join(d, n), 10 + t, **kw)
        tasks.append(n)
    return base, tasks


FAST = ["--method", "ta", "--quiet"]


def step(base, task, out, *extra):
    return ["step", "--base", base, "--task", task, "--out", out] + FAST + list(extra)


def is_st(path):
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


# ---- 1. --report ----

@case("report", "--report equal to --out is refused")
def _(c, d):
    base, (t1, _) = models(d)
    refused(c, d, step(base, t1, "o.safetensors", "--report", "o.safetensors"),
            "o.safetensors", [base, t1, "o.safetensors"], also=["--report"])
    expect(not os.path.exists(os.path.join(d, "o.safetensors")), "output written")


@case("report", "--report equal to the base is refused, even with --force")
def _(c, d):
    base, (t1, _) = models(d)
    refused(c, d, step(base, t1, "o.safetensors", "--report", base, "--force"), base,
            [base, t1, "o.safetensors"], also=["base model"])


@case("report", "--report equal to the task is refused")
def _(c, d):
    base, (t1, _) = models(d)
    refused(c, d, step(base, t1, "o.safetensors", "--report", "./" + t1, "--force"), t1,
            [base, t1, "o.safetensors"], also=["task model"])


@case("report", "--report a symbolic link to the base is refused")
def _(c, d):
    base, (t1, _) = models(d)
    os.symlink(base, os.path.join(d, "r.json"))
    refused(c, d, step(base, t1, "o.safetensors", "--report", "r.json", "--force"), "r.json",
            [base, "r.json", "o.safetensors"], also=["base model"])


@case("report", "--report a hard link to the base is refused")
def _(c, d):
    base, (t1, _) = models(d)
    os.link(os.path.join(d, base), os.path.join(d, "r.json"))
    refused(c, d, step(base, t1, "o.safetensors", "--report", "r.json", "--force"), "r.json",
            [base, "r.json", "o.safetensors"], also=["base model"])


@case("report", "--report inside the base directory is refused")
def _(c, d):
    base, (t1, _) = models(d, dir_base=True)
    refused(c, d, step(base, t1, "o.safetensors", "--report", "base/report.json"),
            "base/report.json", [base, "o.safetensors"], also=["inside"])


@case("report", "an existing report is refused without --force, before any work")
def _(c, d):
    base, (t1, _) = models(d)
    with open(os.path.join(d, "r.json"), "w") as f:
        f.write('{"old": true}\n')
    refused(c, d, step(base, t1, "o.safetensors", "--report", "r.json"), "r.json",
            [base, "r.json", "o.safetensors"], also=["--force"])


@case("report", "an existing report is replaced with --force")
def _(c, d):
    base, (t1, _) = models(d)
    with open(os.path.join(d, "r.json"), "w") as f:
        f.write('{"old": true}\n')
    ok_run(c, d, step(base, t1, "o.safetensors", "--report", "r.json", "--force"))
    with open(os.path.join(d, "r.json")) as f:
        r = json.load(f)
    expect("steps" in r and len(r["steps"]) == 1, "report not replaced: %s" % r)
    expect(is_st(os.path.join(d, "o.safetensors")), "no output")


@case("report", "--report --force over a file that is not a JSON report is refused")
def _(c, d):
    base, (t1, _) = models(d)
    with open(os.path.join(d, "notes.txt"), "w") as f:
        f.write("my notes\n")
    refused(c, d, step(base, t1, "o.safetensors", "--report", "notes.txt", "--force"),
            "notes.txt", [base, "notes.txt", "o.safetensors"], also=["not a JSON report"])


@case("report", "--report --force over another model file is refused")
def _(c, d):
    base, (t1, t2) = models(d)
    refused(c, d, step(base, t1, "o.safetensors", "--report", t2, "--force"), t2,
            [t2, "o.safetensors"], also=["not a JSON report"])


@case("report", "--report a directory is refused")
def _(c, d):
    base, (t1, _) = models(d)
    os.makedirs(os.path.join(d, "rdir"))
    refused(c, d, step(base, t1, "o.safetensors", "--report", "rdir", "--force"), "rdir",
            ["rdir", "o.safetensors"])


@case("report", "a report that cannot be written (path under a file): nothing committed")
def _(c, d):
    base, (t1, _) = models(d)
    with open(os.path.join(d, "afile"), "w") as f:
        f.write("x")
    refused(c, d, step(base, t1, "o.safetensors", "--report", "afile/r.json"), "afile/r.json",
            ["afile", "o.safetensors"])


@case("report", "a report in a missing directory: the directory is created, like --out's")
def _(c, d):
    base, (t1, _) = models(d)
    ok_run(c, d, step(base, t1, "o.safetensors", "--report", "nodir/r.json"))
    with open(os.path.join(d, "nodir", "r.json")) as f:
        expect(len(json.load(f)["steps"]) == 1, "bad report")
    expect(is_st(os.path.join(d, "o.safetensors")), "no output")


@case("report", "a report that fails while written (full file system): nothing committed")
def _(c, d):
    if os.geteuid() != 0:
        raise Skip("not root: cannot mount a tmpfs")
    base, (t1, _) = models(d)
    full = os.path.join(d, "full")
    os.makedirs(full)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", full],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise Skip("cannot mount a tmpfs: " + (r.stderr or r.stdout).strip())
    try:
        fd = os.open(os.path.join(full, "filler"), os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            while os.write(fd, b"\0" * 4096) > 0:
                pass
        except OSError:
            pass
        os.close(fd)
        msg = refused(c, d, step(base, t1, "o.safetensors", "--report", "full/r.json"),
                      "full/r.json", [base, "o.safetensors"])
        expect("No space left" in msg, "not the write error: %s" % msg)
        expect(os.listdir(full) == ["filler"], "left in the full directory: %s"
               % os.listdir(full))
    finally:
        subprocess.run(["umount", full], capture_output=True)


@case("report", "merge: --report equal to a --save-steps step is refused before step 1")
def _(c, d):
    base, (t1, t2) = models(d)
    refused(c, d, ["merge", "--base", base, "--out", "o.safetensors", "--save-steps", "s",
                   "--report", "s/step01.safetensors"] + FAST + [t1, t2],
            "s/step01.safetensors", ["o.safetensors"], also=["--report"])
    expect(not os.path.exists(os.path.join(d, "s")), "the steps directory was created")


# ---- 2. --out, --force, --save-steps ----

def old_dir_output(c, d, base, t1, out="mo"):
    ok_run(c, d, step(base, t1, out))
    return out


def junk_case(kind):
    def fn(c, d):
        base, (t1, t2) = models(d, dir_base=True)
        out = old_dir_output(c, d, base, t1)
        p = os.path.join(d, out)
        if kind == ".git":
            os.makedirs(os.path.join(p, ".git", "objects"))
            with open(os.path.join(p, ".git", "HEAD"), "w") as f:
                f.write("ref: refs/heads/main\n")
        elif kind == "sub":
            os.makedirs(os.path.join(p, "sub"))
            with open(os.path.join(p, "sub", "notes.txt"), "w") as f:
                f.write("mine\n")
        elif kind == ".hidden":
            with open(os.path.join(p, ".hidden"), "w") as f:
                f.write("mine\n")
        elif kind == "pytorch_model.bin":
            with open(os.path.join(p, "pytorch_model.bin"), "wb") as f:
                f.write(b"PK\3\4 not ours")
        elif kind == "notes.safetensors":  # a .safetensors name that is not one
            with open(os.path.join(p, "notes.safetensors"), "w") as f:
                f.write("not a model\n")
        refused(c, d, step(base, t2, out, "--force"), kind, [out, base])
    return fn


for _k in (".git", "sub", ".hidden", "pytorch_model.bin", "notes.safetensors"):
    case("force", "--out DIR --force refused when DIR holds %s" % _k)(junk_case(_k))


@case("force", "--out DIR --force replaces nufilt's own directory output whole")
def _(c, d):
    base, (t1, t2) = models(d, dir_base=True)
    # a subfolder that the base also has (sentence-transformers' 1_Pooling/) counts as copied
    os.makedirs(os.path.join(d, base, "1_Pooling"))
    with open(os.path.join(d, base, "1_Pooling", "config.json"), "w") as f:
        f.write("{}\n")
    out = old_dir_output(c, d, base, t1)
    os.makedirs(os.path.join(d, out, "1_Pooling"), exist_ok=True)
    with open(os.path.join(d, out, "1_Pooling", "config.json"), "w") as f:
        f.write("{}\n")
    with open(os.path.join(d, out, "README.md"), "w") as f:
        f.write("# merged\n")
    ok_run(c, d, step(base, t2, out, "--force", "--out-shard-size", "2KB"))
    names = sorted(os.listdir(os.path.join(d, out)))
    expect("model.safetensors.index.json" in names and "config.json" in names,
           "not the new output: %s" % names)
    expect("model.safetensors" not in names, "old weights left: %s" % names)


@case("force", "--out DIR --force on an empty directory")
def _(c, d):
    base, (t1, _) = models(d)
    os.makedirs(os.path.join(d, "mo"))
    ok_run(c, d, step(base, t1, "mo", "--force"))
    expect(sorted(os.listdir(os.path.join(d, "mo"))) == ["README.md", "model.safetensors"],
           "bad output")  # the weights and nufilt's model card


@case("force", "--out FILE --force over a file that is not safetensors is refused")
def _(c, d):
    base, (t1, _) = models(d)
    with open(os.path.join(d, "o.safetensors"), "w") as f:
        f.write("precious text\n")
    refused(c, d, step(base, t1, "o.safetensors", "--force"), "o.safetensors",
            ["o.safetensors"], also=["not a safetensors file"])


@case("force", "--out FILE --force over a directory is refused")
def _(c, d):
    base, (t1, _) = models(d)
    os.makedirs(os.path.join(d, "o.safetensors"))
    refused(c, d, step(base, t1, "o.safetensors", "--force"), "o.safetensors",
            ["o.safetensors"], also=["directory"])


@case("force", "--out FILE --force replaces an older output file")
def _(c, d):
    base, (t1, t2) = models(d)
    ok_run(c, d, step(base, t1, "o.safetensors"))
    first = snapshot(os.path.join(d, "o.safetensors"))
    ok_run(c, d, step(base, t2, "o.safetensors", "--force"))
    expect(snapshot(os.path.join(d, "o.safetensors")) != first, "not replaced")


@case("force", "--out equal to the base directory is refused, with --force")
def _(c, d):
    base, (t1, _) = models(d, dir_base=True)
    refused(c, d, step(base, t1, base, "--force"), base, [base], also=["base model"])


@case("force", "--out equal to the base file is refused, with --force")
def _(c, d):
    base, (t1, _) = models(d)
    refused(c, d, step(base, t1, base, "--force"), base, [base], also=["base model"])


@case("force", "--out equal to the task (another spelling) is refused")
def _(c, d):
    base, (t1, _) = models(d)
    refused(c, d, step(base, t1, "./sub/../" + t1, "--force"), t1, [t1], also=["task model"])


@case("force", "--out a symbolic link to the base is refused")
def _(c, d):
    base, (t1, _) = models(d)
    os.symlink(base, os.path.join(d, "link.safetensors"))
    refused(c, d, step(base, t1, "link.safetensors", "--force"), "link.safetensors",
            [base, "link.safetensors"], also=["base model"])


@case("force", "--out a hard link to the base is refused")
def _(c, d):
    base, (t1, _) = models(d)
    os.link(os.path.join(d, base), os.path.join(d, "hard.safetensors"))
    refused(c, d, step(base, t1, "hard.safetensors", "--force"), "hard.safetensors",
            [base, "hard.safetensors"], also=["base model"])


@case("force", "--out inside the base directory is refused")
def _(c, d):
    base, (t1, _) = models(d, dir_base=True)
    refused(c, d, step(base, t1, "base/merged", "--force"), "base/merged", [base],
            also=["inside"])


@case("force", "--out . --force (holding the base) is refused")
def _(c, d):
    base, (t1, _) = models(d)
    refused(c, d, step(base, t1, ".", "--force"), base, [base, t1], also=["holds"])


@case("force", "--out DIR --force where DIR holds the base directory is refused")
def _(c, d):
    os.makedirs(os.path.join(d, "models"))
    write_dir(os.path.join(d, "models", "base"), 1)
    write_st(os.path.join(d, "t1.safetensors"), 2)
    refused(c, d, step("models/base", "t1.safetensors", "models", "--force"), "models",
            ["models"], also=["holds"])


@case("force", "--out through a linked directory into the base is refused")
def _(c, d):
    base, (t1, _) = models(d, dir_base=True)
    os.symlink(base, os.path.join(d, "alias"))
    refused(c, d, step(base, t1, "alias/merged.safetensors", "--force"),
            "alias/merged.safetensors", [base], also=["inside"])


@case("force", "--out equal to a file a base directory links to is refused")
def _(c, d):
    os.makedirs(os.path.join(d, "blobs"))
    write_st(os.path.join(d, "blobs", "w.safetensors"), 1)
    os.makedirs(os.path.join(d, "snap"))
    os.symlink("../blobs/w.safetensors", os.path.join(d, "snap", "model.safetensors"))
    write_st(os.path.join(d, "t1.safetensors"), 2)
    refused(c, d, step("snap", "t1.safetensors", "blobs/w.safetensors", "--force"),
            "blobs/w.safetensors", ["blobs", "snap"], also=["base model"])


@case("force", "--out equal to the previous merge is refused")
def _(c, d):
    base, (t1, t2) = models(d)
    ok_run(c, d, step(base, t1, "m1.safetensors"))
    refused(c, d, step(base, t2, "m1.safetensors", "--prev", "m1.safetensors", "--force"),
            "m1.safetensors", ["m1.safetensors"], also=["previous merge"])


@case("force", "merge --save-steps mo --out mo is refused before step 1 (with --force)")
def _(c, d):
    base, (t1, t2) = models(d)
    for force in ([], ["--force"]):
        refused(c, d, ["merge", "--base", base, "--out", "mo", "--save-steps", "mo"] + FAST +
                force + [t1, t2], "mo", [base])
        expect(not os.path.exists(os.path.join(d, "mo")), "mo created")


@case("force", "merge --out mo --save-steps mo/steps is refused")
def _(c, d):
    base, (t1, t2) = models(d)
    refused(c, d, ["merge", "--base", base, "--out", "mo", "--save-steps", "mo/steps"] + FAST +
            ["--force", t1, t2], "mo/steps", [base], also=["overlap"])
    expect(not os.path.exists(os.path.join(d, "mo")), "mo created")


@case("force", "merge --out equal to a saved step is refused")
def _(c, d):
    base, (t1, t2) = models(d)
    refused(c, d, ["merge", "--base", base, "--out", "s/step01.safetensors", "--save-steps",
                   "s"] + FAST + [t1, t2], "s/step01.safetensors", [base])


@case("force", "merge --save-steps equal to or inside the base directory is refused")
def _(c, d):
    base, (t1, t2) = models(d, dir_base=True)
    for s in ("base", "base/steps"):
        refused(c, d, ["merge", "--base", base, "--out", "mo", "--save-steps", s] + FAST +
                ["--force", t1, t2], s, [base])
    expect(not os.path.exists(os.path.join(d, "mo")), "mo created")


@case("force", "merge: a saved step that is a task model is refused before step 1")
def _(c, d):
    base, _ = models(d, ntasks=0)
    os.makedirs(os.path.join(d, "s"))
    write_st(os.path.join(d, "s", "step02.safetensors"), 5)
    write_st(os.path.join(d, "t1.safetensors"), 6)
    refused(c, d, ["merge", "--base", base, "--out", "o.safetensors", "--save-steps", "s"] +
            FAST + ["--force", "t1.safetensors", "s/step02.safetensors"],
            "s/step02.safetensors", ["s"], also=["task model 2"])


@case("force", "merge: an existing saved step, no --force: refused before step 1")
def _(c, d):
    base, (t1, t2) = models(d)
    os.makedirs(os.path.join(d, "s"))
    write_st(os.path.join(d, "s", "step02.safetensors"), 5)
    refused(c, d, ["merge", "--base", base, "--out", "o.safetensors", "--save-steps", "s"] +
            FAST + [t1, t2], "s/step02.safetensors", ["s"], also=["--force"])


@case("force", "merge: a saved step that is not nufilt's, with --force: refused before step 1")
def _(c, d):
    base, (t1, t2) = models(d)
    os.makedirs(os.path.join(d, "s", "step02"))
    with open(os.path.join(d, "s", "step02", "notes.txt"), "w") as f:
        f.write("mine\n")
    refused(c, d, ["merge", "--base", base, "--out", "mo", "--save-steps", "s"] + FAST +
            ["--force", t1, t2], "notes.txt", ["s"])
    expect(not os.path.exists(os.path.join(d, "mo")), "mo created")


@case("force", "merge --save-steps s --out s/final.safetensors is allowed")
def _(c, d):
    base, (t1, t2) = models(d)
    ok_run(c, d, ["merge", "--base", base, "--out", "s/final.safetensors", "--save-steps", "s"]
           + FAST + [t1, t2])
    expect(sorted(os.listdir(os.path.join(d, "s"))) ==
           ["final.safetensors", "step01.safetensors", "step02.safetensors"],
           "got %s" % os.listdir(os.path.join(d, "s")))


@case("force", "merge --force over a previous merge and its steps")
def _(c, d):
    base, (t1, t2) = models(d, dir_base=True)
    args = ["merge", "--base", base, "--out", "mo", "--save-steps", "s"] + FAST + [t1, t2]
    ok_run(c, d, args)
    ok_run(c, d, args + ["--force"])
    expect(sorted(os.listdir(os.path.join(d, "s"))) == ["step01", "step02"], "bad steps")


# ---- 6. signals ----

BIG = dict(width=256, layers=4)  # a merge step takes about a second of CPU


def signal_case(sig, via=None):
    def fn(c, d):
        # a merge of three tasks: two steps that compute (the first only copies task 1)
        base, tasks = models(d, dir_base=True, ntasks=3, **BIG)
        for attempt in range(4):
            def limits():
                # the signal as nufilt gets it from a terminal, even where this test runs
                # with it ignored (a background job ignores SIGINT and SIGQUIT, nohup SIGHUP;
                # nufilt keeps a signal ignored at start ignored, on purpose)
                signal.signal(sig, signal.SIG_DFL)
                if via == "ulimit -t":
                    resource.setrlimit(resource.RLIMIT_CPU, (1, 30))
            p = subprocess.Popen([c.nufilt, "merge", "--base", base, "--out", "mo",
                                  "--out-shard-size", "300KB", "--threads", "1",
                                  "--svd", "gesdd"] + tasks,
                                 cwd=d, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, preexec_fn=limits)
            sent = False
            if via is None:
                deadline = time.monotonic() + 60
                while p.poll() is None and time.monotonic() < deadline:
                    if temporaries(d):
                        # somewhere in the merge, then stopped so that it cannot finish
                        # before the signal arrives (on a fast machine the rest of the merge
                        # can take less than any sleep): the signal is delivered on SIGCONT
                        time.sleep(random.uniform(0.0, 0.3))
                        p.send_signal(signal.SIGSTOP)
                        p.send_signal(sig)
                        p.send_signal(signal.SIGCONT)
                        sent = True
                        break
                    time.sleep(0.005)
            try:
                _, err = p.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate()
                raise Fail("hung after the signal")
            err = err.decode(errors="replace")
            if via is None and (not sent or p.returncode == 0):
                shutil.rmtree(os.path.join(d, "mo"), ignore_errors=True)
                continue  # finished before the signal: try again
            expect(p.returncode == -sig, "exit status %s (want death by %s): %s"
                   % (p.returncode, signal.Signals(sig).name, err.strip()))
            name = signal.Signals(sig).name if sig != signal.SIGRTMIN else "SIGRTMIN+0"
            expect("stopped by %s" % name in err, "no message naming %s: %r" % (name, err))
            expect(not temporaries(d), "temporaries left: %s" % temporaries(d))
            expect(not os.path.exists(os.path.join(d, "mo")), "output written")
            return
        raise Fail("the merge always finished before the signal")
    return fn


for _s in (signal.SIGQUIT, signal.SIGALRM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGXCPU,
           signal.SIGVTALRM, signal.SIGPROF, signal.SIGPWR, signal.SIGRTMIN, signal.SIGHUP,
           signal.SIGINT, signal.SIGTERM):
    case("signals", "%s during a merge: cleaned up, named" % signal.Signals(_s).name
         if _s != signal.SIGRTMIN else "SIGRTMIN during a merge: cleaned up, named")(
        signal_case(_s))
case("signals", "SIGXCPU from `ulimit -t 1`: cleaned up, named")(
    signal_case(signal.SIGXCPU, via="ulimit -t"))


@case("signals", "stderr closed while the progress bar prints: exit 0, output committed")
def _(c, d):
    base, tasks = models(d, ntasks=3, **BIG)
    p = subprocess.Popen([c.nufilt, "merge", "--base", base, "--out", "o.safetensors",
                          "--progress", "--threads", "1"] + tasks, cwd=d,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    p.stderr.read(1)  # the bar has started
    p.stderr.close()  # writing more to stderr now gives EPIPE (SIGPIPE unless ignored)
    rc = p.wait(timeout=120)
    expect(rc == 0, "exit status %s" % rc)
    expect(is_st(os.path.join(d, "o.safetensors")), "no output")
    expect(not temporaries(d), "temporaries left: %s" % temporaries(d))


@case("signals", "`ulimit -f` below the output's size: File too large, naming it")
def _(c, d):
    base, (t1,) = models(d, ntasks=1, width=64, layers=2)

    def limits():
        resource.setrlimit(resource.RLIMIT_FSIZE, (100000, 100000))
    for out in ("o.safetensors", "mo"):
        rc, _, err = c.run(step(base, t1, out, "--report", "r.json"), cwd=d, preexec=limits)
        expect(rc is not None and rc > 0, "exit status %s (want an error, not a signal): %s"
               % (rc, err.strip()))
        expect("File too large" in err and out in err, "message: %s" % err.strip())
        expect(not os.path.exists(os.path.join(d, out)), "output written")
        expect(not os.path.exists(os.path.join(d, "r.json")), "report written")
        expect(not temporaries(d), "temporaries left: %s" % temporaries(d))


# ---- 9. what is printed ----

RLO = "\u202e"


@case("output", "U+202E in a tensor name is escaped by inspect")
def _(c, d):
    names = [("evil" + RLO + "txt.exe.weight", [4, 4]), ("ok.weight", [4, 4])]
    write_st(os.path.join(d, "m.safetensors"), 1, names=names,
             metadata={"format": "pt", "note" + RLO: "value" + RLO + "x"})
    rc, out, err = c.run(["inspect", "m.safetensors"], cwd=d)
    expect(rc == 0, "exit %s: %s" % (rc, err))
    expect(RLO not in out and not INVISIBLE.search(out), "raw U+202E printed")
    expect("evil\\u202etxt.exe.weight" in out, "name not escaped: %s" % out)
    expect("note\\u202e" in out and "value\\u202ex" in out, "metadata not escaped")


@case("output", "U+202E in a tensor name is escaped in error messages")
def _(c, d):
    names = [("evil" + RLO + "gnp.weight", [4, 4]), ("ok.weight", [4, 4])]
    write_st(os.path.join(d, "base.safetensors"), 1, names=names)
    write_st(os.path.join(d, "task.safetensors"), 2, names=[("ok.weight", [4, 4])])
    msg = refused(c, d, step("base.safetensors", "task.safetensors", "o.safetensors"),
                  "task.safetensors", ["base.safetensors"])
    expect("evil\\u202egnp.weight" in msg, "name not escaped: %s" % msg)
    expect(not INVISIBLE.search(msg), "invisible characters in the message")


@case("output", "a config.json given as the base: not a safetensors file, named")
def _(c, d):
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump({"architectures": ["CLIPModel"], "hidden_size": 768}, f, indent=2)
    write_st(os.path.join(d, "t.safetensors"), 1)
    first8 = str(struct.unpack("<Q", open(os.path.join(d, "config.json"), "rb").read(8))[0])
    for args in (step("config.json", "t.safetensors", "o.safetensors"),
                 ["inspect", "config.json"]):
        msg = refused(c, d, args, "config.json", ["config.json"],
                      also=["not a safetensors file"])
        expect(first8 not in msg, "its first 8 bytes printed as a number: %s" % msg)


@case("output", "a shard linked to a passwd-like file: not a safetensors file, named")
def _(c, d):
    with open(os.path.join(d, "passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1::/usr/sbin:/usr/sbin/nologin\n")
    os.makedirs(os.path.join(d, "m"))
    os.symlink("../passwd", os.path.join(d, "m", "model.safetensors"))
    write_st(os.path.join(d, "t.safetensors"), 1)
    first8 = str(struct.unpack("<Q", b"root:x:0")[0])
    for args in (step("m", "t.safetensors", "o.safetensors"), ["inspect", "m"]):
        msg = refused(c, d, args, "model.safetensors", ["passwd", "m"],
                      also=["not a safetensors file"])
        expect(first8 not in msg and "root" not in msg, "file content printed: %s" % msg)


@case("output", "20 output shards under `ulimit -n 16`")
def _(c, d):
    base, (t1,) = models(d, ntasks=1, width=32, layers=4)

    def limits():
        resource.setrlimit(resource.RLIMIT_NOFILE, (16, 16))
    ok_run(c, d, step(base, t1, "mo", "--out-shard-size", "5KB", "--threads", "2"),
           preexec=limits)
    with open(os.path.join(d, "mo", "model.safetensors.index.json")) as f:
        shards = set(json.load(f)["weight_map"].values())
    expect(len(shards) >= 20, "only %d shards" % len(shards))
    for s in shards:
        expect(is_st(os.path.join(d, "mo", s)), "%s is not a safetensors file" % s)
    rc, out, err = c.run(["inspect", "mo"], cwd=d)
    expect(rc == 0 and ("in %d files" % len(shards)) in out, "unreadable: %s" % err)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nufilt", required=True)
    ap.add_argument("--workdir")
    ap.add_argument("--only", help="run the cases whose name contains this")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    if a.list:
        for g, n, _ in CASES:
            print("%-8s %s" % (g, n))
        print("%d cases" % len(CASES))
        return 0
    nufilt = os.path.abspath(a.nufilt)
    work = os.path.abspath(a.workdir or tempfile.mkdtemp(prefix="nufilt-outsafety-"))
    if os.path.isdir(work):
        for n in os.listdir(work):  # a mount left by an interrupted run
            full = os.path.join(work, n, "full")
            if os.path.ismount(full):
                subprocess.run(["umount", full], capture_output=True)
        shutil.rmtree(work)
    os.makedirs(work)
    c = Ctx(nufilt, work)
    ran = 0
    for i, (g, n, fn) in enumerate(CASES):
        if a.only and a.only not in n and a.only != g:
            continue
        ran += 1
        d = os.path.join(work, "c%02d" % i)
        os.makedirs(d)
        t0 = time.monotonic()
        try:
            fn(c, d)
            c.ok += 1
            print("ok   %-8s %s (%.1f s)" % (g, n, time.monotonic() - t0), flush=True)
        except Skip as e:
            c.skipped += 1
            print("SKIP %-8s %s: %s" % (g, n, e), flush=True)
        except Fail as e:
            c.failures.append(n)
            print("FAIL %-8s %s: %s" % (g, n, e), flush=True)
    print("%d cases: %d ok, %d failed, %d skipped" % (ran, c.ok, len(c.failures), c.skipped))
    if not a.keep and not c.failures:
        shutil.rmtree(work, ignore_errors=True)
    if c.failures:
        return 1
    return 77 if ran and c.skipped == ran else 0


if __name__ == "__main__":
    sys.exit(main())
