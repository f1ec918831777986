#!/usr/bin/env python3
"""Memory and descriptor leaks of the real program, under valgrind.

    /usr/bin/python3 tests/e2e/leaks.py --nufilt PATH [--workdir DIR]

Runs short merges (file and directory outputs, --save-steps, --report, three methods), a
refused input and `inspect` under `valgrind --leak-check=full --error-exitcode=1
--track-fds=yes` with the CPU device (GPU drivers keep their own threads and caches, which are
not ours to judge), and checks that valgrind reports no error, no leak and no descriptor left
open but those the process inherited. Skipped (exit 77) without valgrind, or when the program
is built with a sanitizer (which valgrind cannot run). Standard library only.
"""
import argparse
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile

D = 8
NAMES = [
    ("enc.layers.0.self_attn.q_proj.weight", [D, D]),
    ("enc.layers.0.self_attn.q_proj.bias", [D]),
    ("enc.layers.0.mlp.fc1.weight", [2 * D, D]),
    ("enc.layers.0.mlp.fc2.weight", [D, 2 * D]),
]


def write_model(path, delta, nan=False):
    h, data = {"__metadata__": {"format": "pt"}}, b""
    for name, shape in NAMES:
        n = 1
        for s in shape:
            n *= s
        vals = [0.01 * ((i * 7) % 13) + delta * ((i % 5) - 2) for i in range(n)]
        if nan and name.endswith("fc1.weight"):
            vals[3] = float("nan")
        b = struct.pack("<%df" % n, *vals)
        h[name] = {"dtype": "F32", "shape": shape, "data_offsets": [len(data), len(data) + len(b)]}
        data += b
    hb = json.dumps(h).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)) + hb + data)


def sanitized(nufilt):
    r = subprocess.run(["ldd", nufilt], capture_output=True, text=True)
    if re.search(r"lib(asan|tsan|ubsan|msan)", r.stdout):
        return True
    with open(nufilt, "rb") as f:  # statically linked sanitizer runtimes (clang)
        return b"__asan_init" in f.read()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nufilt", required=True)
    ap.add_argument("--workdir")
    a = ap.parse_args()
    if not shutil.which("valgrind"):
        print("SKIP: valgrind is not installed")
        return 77
    nufilt = os.path.abspath(a.nufilt)
    if not os.path.exists(nufilt):
        print("SKIP: no nufilt binary at %s" % nufilt)
        return 77
    if sanitized(nufilt):
        print("SKIP: %s is built with a sanitizer; valgrind cannot run it" % nufilt)
        return 77
    work = os.path.abspath(a.workdir or tempfile.mkdtemp(prefix="nufilt-leaks-"))
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    m = lambda n: os.path.join(work, n)
    write_model(m("base.safetensors"), 0.0)
    for i in (1, 2, 3):
        write_model(m("t%d.safetensors" % i), 0.1 * i)
    write_model(m("nan.safetensors"), 0.1, nan=True)
    small = ["--device", "cpu", "--null-rank", "2", "--task-rank", "1", "--lora-rank", "2"]
    runs = [
        ("merge to a file", ["merge"] + small + ["--base", m("base.safetensors"), "--out",
                                                m("m.safetensors"), m("t1.safetensors"),
                                                m("t2.safetensors"), m("t3.safetensors")], 0),
        ("merge to a directory, --save-steps, --report",
         ["merge"] + small + ["--base", m("base.safetensors"), "--out", m("md"), "--save-steps",
                              m("steps"), "--report", m("r.json"), m("t1.safetensors"),
                              m("t2.safetensors")], 0),
        ("step continuing a directory, --force over an older one",
         ["step"] + small[:2] + ["--base", m("base.safetensors"), "--task", m("t3.safetensors"),
                                 "--prev", m("md"), "--out", m("steps/step01"), "--force"], 0),
        ("ties", ["merge", "--device", "cpu", "--method", "ties", "--scale", "0.3", "--base",
                  m("base.safetensors"), "--out", m("ties.safetensors"), m("t1.safetensors"),
                  m("t2.safetensors")], 0),
        ("opcm", ["merge", "--device", "cpu", "--method", "opcm", "--base",
                  m("base.safetensors"), "--out", m("opcm.safetensors"), m("t1.safetensors"),
                  m("t2.safetensors")], 0),
        ("a refused task (NaN)", ["step"] + small[:2] + ["--base", m("base.safetensors"),
                                                        "--task", m("nan.safetensors"), "--out",
                                                        m("x.safetensors")], 1),
        ("inspect", ["inspect", m("md")], 0),
    ]
    failures = 0
    for name, args, want in runs:
        r = subprocess.run(["valgrind", "--leak-check=full", "--error-exitcode=99",
                            "--track-fds=yes", nufilt] + args, capture_output=True, text=True,
                           timeout=900)
        problems = []
        if r.returncode == 99:
            problems.append("valgrind found errors")
        elif r.returncode != want:
            problems.append("exit status %d (want %d)" % (r.returncode, want))
        summary = re.search(r"ERROR SUMMARY: (\d+) errors", r.stderr)
        if not summary or summary.group(1) != "0":
            problems.append("ERROR SUMMARY: %s" % (summary.group(1) if summary else "missing"))
        for kind in ("definitely lost", "indirectly lost", "possibly lost"):
            mm = re.search(kind + r": ([\d,]+) bytes", r.stderr)
            if mm and mm.group(1) != "0":
                problems.append("%s: %s bytes" % (kind, mm.group(1)))
        # descriptors: every one open at exit but the standard ones must be inherited
        lines = r.stderr.splitlines()
        for i, line in enumerate(lines):
            fd = re.search(r"Open (?:file|AF_\w+ socket) descriptor (\d+)(.*)", line)
            if not fd or int(fd.group(1)) <= 2:
                continue
            nxt = lines[i + 1] if i + 1 < len(lines) else ""
            if "inherited from parent" not in nxt:
                problems.append("descriptor %s%s left open" % (fd.group(1), fd.group(2)))
        if problems:
            failures += 1
            print("FAIL %-46s %s" % (name, "; ".join(problems)))
            print("\n".join("     " + l for l in r.stderr.splitlines()[-40:]))
        else:
            print("ok   %-46s no errors, no leaks, no descriptors left open" % name)
    print("%d runs, %d failed" % (len(runs), failures))
    if not a.workdir and not failures:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
