#!/usr/bin/env python3
"""The catalogue of bad inputs: every case is a generated file (or set of files) and the
message nufilt must give. For each case the real program must exit non-zero, print one
message naming the offending file and the problem, write no output and leave no temporary
file behind, and not crash (no signal) or hang (timeout).

    /usr/bin/python3 tests/e2e/bad_inputs.py --nufilt PATH [--workdir DIR] [--list]

Exit status 0 when every case behaves, 1 otherwise. Standard library only.
"""
import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

D = 8  # small matrices: names CLIP-like, so the default preset treats the attention weights
NAMES = [
    ("enc.layers.0.self_attn.q_proj.weight", [D, D]),
    ("enc.layers.0.self_attn.q_proj.bias", [D]),
    ("enc.layers.0.mlp.fc1.weight", [2 * D, D]),
    ("enc.layers.0.mlp.fc2.weight", [D, 2 * D]),
]


def numel(shape):
    n = 1
    for s in shape:
        n *= s
    return n


def header_bytes(tensors, metadata=None, raw_header=None):
    """tensors: list of (name, dtype, shape, payload bytes). Returns (header text, data)."""
    if raw_header is not None:
        return raw_header, b""
    h = {}
    if metadata is not None:
        h["__metadata__"] = metadata
    data = b""
    for name, dt, shape, payload in tensors:
        h[name] = {"dtype": dt, "shape": shape, "data_offsets": [len(data), len(data) + len(payload)]}
        data += payload
    return json.dumps(h), data


def st_file(path, header, data, hlen=None):
    hb = header.encode() if isinstance(header, str) else header
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb) if hlen is None else hlen))
        f.write(hb)
        f.write(data)


def floats(n, start=0.0, step=0.01, fmt="f"):
    return struct.pack("<%d%s" % (n, fmt), *[start + step * i for i in range(n)])


def model(path, delta=0.0, nan_at=None, skip=None, extra=None, shape_of=None, dtype_of=None,
          metadata=None):
    ts = []
    for name, shape in NAMES:
        if name == skip:
            continue
        shape = shape_of.get(name, shape) if shape_of else shape
        dt = dtype_of.get(name, "F32") if dtype_of else "F32"
        n = numel(shape)
        if dt == "F32":
            vals = [0.01 * ((i * 7) % 13) + delta * ((i % 5) - 2) for i in range(n)]
            if nan_at == name:
                vals[n // 2] = float("nan")
            elif nan_at == name + ":inf":
                vals[0] = float("inf")
            payload = struct.pack("<%df" % n, *vals)
        else:
            payload = struct.pack("<%dq" % n, *range(n))
        ts.append((name, dt, shape, payload))
    if extra:
        ts.append((extra, "F32", [2], floats(2)))
    h, d = header_bytes(ts, metadata if metadata is not None else {"format": "pt"})
    st_file(path, h, d)


def good_single(path):
    model(path)


def with_header(path, header, data=b"", hlen=None):
    st_file(path, header, data, hlen)


def one_tensor_header(**fields):
    t = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    t.update(fields)
    return json.dumps({"w": t})


CASES = []


def case(name, keywords, role="base"):
    def deco(fn):
        CASES.append((name, keywords, role, fn))
        return fn
    return deco


# ---- malformed files (given as the base model) ----

@case("empty file", ["truncated"])
def _(p):
    open(p, "wb").close()


@case("shorter than the length field", ["truncated"])
def _(p):
    open(p, "wb").write(b"\x10\x00\x00")


@case("header length 0", ["length is 0"])
def _(p):
    open(p, "wb").write(b"\x00" * 8 + b"{}")


@case("header length past the end of the file", ["past the end"])
def _(p):
    with_header(p, "{}", hlen=1000)


@case("header length over 100 MB", ["100 MB"])
def _(p):
    with_header(p, "{}" + " " * 30, hlen=200 * 1024 * 1024)


@case("header is not JSON", ["invalid JSON"])
def _(p):
    with_header(p, "{this is not json}")


@case("header is a JSON array", ["not a JSON object"])
def _(p):
    with_header(p, "[1, 2, 3]")


@case("header has trailing garbage after the object", ["invalid JSON"])
def _(p):
    with_header(p, '{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}} xx', floats(1))


@case("duplicate tensor names", ["duplicate"])
def _(p):
    with_header(p, '{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
                   '"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', floats(2))


@case("metadata value not a string", ["__metadata__"])
def _(p):
    with_header(p, '{"__metadata__":{"format":1},"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}',
                floats(1))


@case("metadata not an object", ["__metadata__"])
def _(p):
    with_header(p, '{"__metadata__":"x","w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}',
                floats(1))


@case("unknown dtype", ["unknown dtype"])
def _(p):
    with_header(p, one_tensor_header(dtype="F33"), floats(2))


@case("negative shape", ["non-negative"])
def _(p):
    with_header(p, one_tensor_header(shape=[-2]), floats(2))


@case("huge shape", ["past the end"])
def _(p):
    with_header(p, one_tensor_header(shape=[2 ** 40], data_offsets=[0, 2 ** 42]), floats(2))


@case("shape product overflows 64 bits", ["overflow"])
def _(p):
    with_header(p, one_tensor_header(shape=[2 ** 32, 2 ** 32, 16]), floats(2))


@case("fractional shape", ["non-negative integer"])
def _(p):
    with_header(p, one_tensor_header(shape=[2.5]), floats(2))


@case("shape is not an array", ["shape"])
def _(p):
    with_header(p, one_tensor_header(shape=2), floats(2))


@case("offsets reversed", ["reversed"])
def _(p):
    with_header(p, one_tensor_header(shape=[0], data_offsets=[8, 0]), floats(2))


@case("offsets overlap", ["overlaps"])
def _(p):
    with_header(p, '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
                   '"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}', floats(3))


@case("gap between tensors", ["gap"])
def _(p):
    with_header(p, '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
                   '"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}', floats(3))


@case("offsets past the end", ["past the end"])
def _(p):
    with_header(p, one_tensor_header(shape=[4], data_offsets=[0, 16]), floats(2))


@case("byte length differs from shape x dtype", ["shape x dtype"])
def _(p):
    with_header(p, one_tensor_header(shape=[3], data_offsets=[0, 8]), floats(2))


@case("trailing bytes after the data", ["trailing"])
def _(p):
    with_header(p, one_tensor_header(), floats(2) + b"\x00" * 5)


@case("truncated data (file cut short)", ["past the end"])
def _(p):
    model(p)
    size = os.path.getsize(p)
    with open(p, "r+b") as f:
        f.truncate(size - 10)


@case("missing tensor fields", ["missing"])
def _(p):
    with_header(p, '{"w":{"dtype":"F32","shape":[2]}}', floats(2))


@case("unknown tensor field", ["unknown header field"])
def _(p):
    with_header(p, one_tensor_header(extra=1), floats(2))


@case("invalid UTF-8 in a name", ["invalid JSON"])
def _(p):
    with_header(p, b'{"w\xff":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', floats(2))


@case("deeply nested metadata", ["invalid JSON"])
def _(p):
    with_header(p, '{"__metadata__":' + "[" * 100000 + "]" * 100000 + "}")


@case("no tensors at all", ["no tensors"])
def _(p):
    with_header(p, '{"__metadata__":{"format":"pt"}}')


# ---- directories and index files ----

def sharded(d, index, shards):
    os.makedirs(d, exist_ok=True)
    for fn, names in shards.items():
        ts = [(n, "F32", [2], floats(2)) for n in names]
        h, data = header_bytes(ts)
        st_file(os.path.join(d, fn), h, data)
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        f.write(index if isinstance(index, str) else json.dumps(index))


@case("index names a missing shard", ["missing"], role="base-dir")
def _(d):
    sharded(d, {"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}},
            {"s1.safetensors": ["a"]})


@case("index lists a tensor its shard lacks", ["does not contain"], role="base-dir")
def _(d):
    sharded(d, {"weight_map": {"a": "s1.safetensors", "b": "s1.safetensors"}},
            {"s1.safetensors": ["a"]})


@case("shard holds a tensor the index does not list", ["not listed"], role="base-dir")
def _(d):
    sharded(d, {"weight_map": {"a": "s1.safetensors"}}, {"s1.safetensors": ["a", "b"]})


@case("index points outside the directory", ["invalid shard name"], role="base-dir")
def _(d):
    sharded(d, {"weight_map": {"a": "../s1.safetensors"}}, {"s1.safetensors": ["a"]})


@case("index is not JSON", ["invalid JSON"], role="base-dir")
def _(d):
    sharded(d, "{weight_map", {"s1.safetensors": ["a"]})


@case("index lacks weight_map", ["weight_map"], role="base-dir")
def _(d):
    sharded(d, {"metadata": {}}, {"s1.safetensors": ["a"]})


@case("same tensor in two shards", ["appears in"], role="base-dir")
def _(d):
    sharded(d, {"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}},
            {"s1.safetensors": ["a"], "s2.safetensors": ["b", "a"]})


@case("directory without a model", ["unreadable model directory"], role="base-dir")
def _(d):
    os.makedirs(d, exist_ok=True)
    open(os.path.join(d, "config.json"), "w").write("{}")


@case("path does not exist", ["cannot open"], role="base-missing")
def _(p):
    pass


# ---- models that do not fit together (given as the task, or as the previous merge) ----

@case("tensor missing from the task model", ["missing"], role="task")
def _(p):
    model(p, delta=0.1, skip="enc.layers.0.mlp.fc1.weight")


@case("task model has an extra tensor", ["not in the base"], role="task")
def _(p):
    model(p, delta=0.1, extra="enc.extra.weight")


@case("shape differs between base and task", ["shape"], role="task")
def _(p):
    model(p, delta=0.1, shape_of={"enc.layers.0.mlp.fc1.weight": [D, D]})


@case("integer tensor where the base has floats", ["dtype"], role="task")
def _(p):
    model(p, delta=0.1, dtype_of={"enc.layers.0.self_attn.q_proj.bias": "I64"})


@case("NaN in the task model", ["NaN"], role="task")
def _(p):
    model(p, delta=0.1, nan_at="enc.layers.0.self_attn.q_proj.weight")


@case("Inf in an untreated tensor of the task model", ["NaN or Inf"], role="task")
def _(p):
    model(p, delta=0.1, nan_at="enc.layers.0.mlp.fc2.weight:inf")


@case("previous model not written by nufilt", ["no nufilt merge state"], role="prev")
def _(p):
    model(p, delta=0.05)


@case("previous model merged from another base", ["another base"], role="prev-otherbase")
def _(p):
    pass


@case("previous model claims another method", ["a stream keeps one method"], role="prev-method")
def _(p):
    pass


@case("previous model has another shape", ["shape"], role="prev-shape")
def _(p):
    pass


@case("output exists and no --force", ["--force"], role="out-exists")
def _(p):
    pass


@case("conflicting hyper-parameter", ["conflicts with"], role="prev-conflict")
def _(p):
    pass


def run(nufilt, args, timeout=60):
    try:
        r = subprocess.run([nufilt] + args, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, "", "timeout"
    return r.returncode, r.stdout, r.stderr


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nufilt", required=True)
    ap.add_argument("--workdir")
    ap.add_argument("--list", action="store_true")
    a = ap.parse_args()
    if a.list:
        for name, kw, role, _fn in CASES:
            print("%-50s %-16s %s" % (name, role, kw))
        return 0
    if not os.path.exists(a.nufilt):
        print("SKIP: no nufilt binary at %s" % a.nufilt)
        return 77
    work = a.workdir or tempfile.mkdtemp(prefix="nufilt-bad-")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    base = os.path.join(work, "base.safetensors")
    task = os.path.join(work, "task.safetensors")
    model(base)
    model(task, delta=0.1)
    first = os.path.join(work, "first.safetensors")
    rc, _, err = run(a.nufilt, ["step", "--base", base, "--task", task, "--out", first,
                                "--null-rank", "2", "--task-rank", "1", "--lora-rank", "2"])
    if rc != 0:
        print("FAIL setup: a good first step failed: " + err)
        return 1
    failures = 0
    for i, (name, keywords, role, fn) in enumerate(CASES):
        cdir = os.path.join(work, "case%02d" % i)
        os.makedirs(cdir)
        out = os.path.join(cdir, "out.safetensors")
        bad = os.path.join(cdir, "bad.safetensors")
        args = None
        if role == "base":
            fn(bad)
            args = ["step", "--base", bad, "--task", task, "--out", out]
            named = bad
        elif role == "base-dir":
            bad = os.path.join(cdir, "model")
            fn(bad)
            args = ["step", "--base", bad, "--task", task, "--out", out]
            named = bad
        elif role == "base-missing":
            bad = os.path.join(cdir, "nope.safetensors")
            args = ["step", "--base", bad, "--task", task, "--out", out]
            named = bad
        elif role == "task":
            fn(bad)
            args = ["step", "--base", base, "--task", bad, "--out", out]
            named = bad
        elif role == "prev":
            fn(bad)
            args = ["step", "--base", base, "--task", task, "--prev", bad, "--out", out]
            named = bad
        elif role == "prev-otherbase":
            other = os.path.join(cdir, "otherbase.safetensors")
            model(other, delta=0.02)
            prev = os.path.join(cdir, "prev.safetensors")
            rc, _, err = run(a.nufilt, ["step", "--base", other, "--task", task, "--out", prev])
            args = ["step", "--base", base, "--task", task, "--prev", prev, "--out", out]
            named = prev
        elif role == "prev-method":
            args = ["step", "--base", base, "--task", task, "--prev", first, "--out", out,
                    "--method", "ta"]
            named = first
        elif role == "prev-shape":
            prev = os.path.join(cdir, "prev.safetensors")
            model(prev, delta=0.1, shape_of={"enc.layers.0.mlp.fc1.weight": [D, D]},
                  metadata={"format": "pt"})
            args = ["step", "--base", base, "--task", task, "--prev", prev, "--out", out]
            named = prev
        elif role == "out-exists":
            open(out, "w").write("keep me")
            args = ["step", "--base", base, "--task", task, "--out", out]
            named = out
        elif role == "prev-conflict":
            args = ["step", "--base", base, "--task", task, "--prev", first, "--out", out,
                    "--null-rank", "3"]
            named = first
        rc, so, se = run(a.nufilt, args)
        problems = []
        if rc is None:
            problems.append("hung (timeout)")
        elif rc < 0:
            problems.append("crashed with signal %d" % -rc)
        elif rc == 0:
            problems.append("exit status 0")
        lines = [l for l in se.strip().splitlines() if l.strip()]
        if len(lines) != 1:
            problems.append("%d lines on stderr (want one message)" % len(lines))
        msg = lines[-1] if lines else ""
        for kw in keywords:
            if kw not in msg:
                problems.append("message lacks %r" % kw)
        if named not in msg:
            problems.append("message does not name %s" % named)
        if role == "out-exists":
            if open(out).read() != "keep me":
                problems.append("existing output was modified")
        elif os.path.exists(out):
            problems.append("output file written")
        leftovers = [f for f in os.listdir(cdir) if f.startswith(".")]
        if leftovers:
            problems.append("temporary files left: %s" % leftovers)
        if problems:
            failures += 1
            print("FAIL %-48s %s\n     stderr: %s" % (name, "; ".join(problems), msg))
        else:
            print("ok   %-48s %s" % (name, msg[:150]))
    # the escape hatch for non-finite task models
    nan_task = os.path.join(work, "nan.safetensors")
    model(nan_task, delta=0.1, nan_at="enc.layers.0.mlp.fc2.weight")
    out = os.path.join(work, "allowed.safetensors")
    rc, _, err = run(a.nufilt, ["step", "--base", base, "--task", nan_task, "--out", out,
                                "--allow-nonfinite"])
    if rc != 0 or not os.path.exists(out):
        failures += 1
        print("FAIL --allow-nonfinite did not let a NaN task through: " + err.strip())
    else:
        print("ok   --allow-nonfinite merges a task holding NaN")
    total = len(CASES) + 1
    print("%d cases, %d failed" % (total, failures))
    if not a.workdir and failures == 0:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
