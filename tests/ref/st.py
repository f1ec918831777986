"""Small, independent safetensors reader/writer in NumPy (test reference code).

File layout: 8-byte little-endian unsigned header length N, then N bytes of JSON
header, then the raw tensor data.  The header maps tensor names to
{"dtype": ..., "shape": [...], "data_offsets": [begin, end]} (offsets relative to
the start of the data section) plus an optional "__metadata__" str->str map.

Supported dtypes: F32, F16, BF16, F64, I64.  BF16 tensors are kept in memory as
uint16 bit patterns; use to_float32/to_float64 and from_float to convert (all
conversions to BF16 round to nearest, ties to even).

Reading accepts a single .safetensors file or a Hugging Face directory holding
model.safetensors, or shards plus model.safetensors.index.json (weight_map).

API
    t = load(path)              -> Tensors (dict name -> numpy array) with
                                   .dtypes (name -> st dtype string) and .metadata
    load_file(path)             -> (tensors dict, dtypes dict, metadata dict)
    save_file(path, tensors, dtypes=None, metadata=None)
    save_dir(dirpath, tensors, dtypes=None, metadata=None, shard_size=None)
    save(path, ...)             -> save_file if path ends in .safetensors, else save_dir
    raw_bytes(path)             -> dict name -> (dtype, shape, bytes) as stored
    to_float32(arr, dtype) / to_float64(arr, dtype) / from_float(x, dtype)
    f64_to_bf16_bits(x), f32_to_bf16_bits(x), bf16_bits_to_f32(u)
"""

import json
import os
import struct

import numpy as np

_NP = {
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),   # bit patterns
    "F64": np.dtype("<f8"),
    "I64": np.dtype("<i8"),
}

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


class Tensors(dict):
    """dict name -> numpy array, with .dtypes (safetensors dtype per name) and .metadata."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.dtypes = {}
        self.metadata = {}

    def f64(self, name):
        return to_float64(self[name], self.dtypes[name])

    def f32(self, name):
        return to_float32(self[name], self.dtypes[name])


# ----------------------------------------------------------------------------- bf16

def bf16_bits_to_f32(u):
    u = np.asarray(u, dtype=np.uint16)
    return (u.astype(np.uint32) << np.uint32(16)).view(np.float32)


def f32_to_bf16_bits(x):
    """float32 -> bf16 bits, round to nearest even; NaN stays a (quiet) NaN."""
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    b = x.view(np.uint32).astype(np.uint64)
    lsb = (b >> np.uint64(16)) & np.uint64(1)
    r = ((b + np.uint64(0x7FFF) + lsb) >> np.uint64(16)).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        r = r.copy()
        r[nan] = ((b[nan] >> np.uint64(16)) | np.uint64(0x40)).astype(np.uint16)
    return r


def f64_to_bf16_bits(x):
    """float64 -> bf16 bits with a single correct rounding (no double rounding
    through float32).  Normal range only matters here; values that are bf16
    subnormals are rounded via float32 (exact enough for tests: documented)."""
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float64))
    b = x.view(np.uint64)
    # bf16 keeps 7 explicit mantissa bits; float64 has 52 -> drop 45 bits, RNE.
    lsb = (b >> np.uint64(45)) & np.uint64(1)
    r = (b + np.uint64((1 << 44) - 1) + lsb) & ~np.uint64((1 << 45) - 1)
    y = r.view(np.float64)
    out = f32_to_bf16_bits(y.astype(np.float32))  # y is exactly representable
    tiny = np.abs(x) < 2.0 ** -126
    if tiny.any():
        out = out.copy()
        out[tiny] = f32_to_bf16_bits(x[tiny].astype(np.float32))
    nan = np.isnan(x)
    if nan.any():
        out = out.copy()
        out[nan] = np.uint16(0x7FC0)
    return out


# ----------------------------------------------------------------------------- conversions

def to_float64(arr, dtype):
    if dtype == "BF16":
        return bf16_bits_to_f32(arr).astype(np.float64)
    return np.asarray(arr).astype(np.float64)


def to_float32(arr, dtype):
    if dtype == "BF16":
        return bf16_bits_to_f32(arr)
    if dtype == "F64":
        raise ValueError("to_float32 of F64 would round; use to_float64")
    return np.asarray(arr).astype(np.float32)


def from_float(x, dtype):
    """Round a float array (float32 or float64) to `dtype` storage (RNE)."""
    x = np.asarray(x)
    if dtype == "BF16":
        if x.dtype == np.float64:
            return f64_to_bf16_bits(x)
        return f32_to_bf16_bits(x.astype(np.float32))
    if dtype == "F16":
        return x.astype(np.float16)       # numpy rounds double->half directly (RNE)
    if dtype == "F32":
        return x.astype(np.float32)
    if dtype == "F64":
        return x.astype(np.float64)
    if dtype == "I64":
        return x.astype(np.int64)
    raise ValueError("unsupported dtype " + dtype)


def ulp(x, dtype):
    """Spacing of the `dtype` grid at |x| (x float64), as float64 array."""
    x = np.abs(np.asarray(x, dtype=np.float64))
    if dtype == "F32":
        mant, minexp = 23, -126
    elif dtype == "F16":
        mant, minexp = 10, -14
    elif dtype == "BF16":
        mant, minexp = 7, -126
    elif dtype == "F64":
        mant, minexp = 52, -1022
    else:
        raise ValueError(dtype)
    with np.errstate(divide="ignore"):
        e = np.floor(np.log2(np.where(x > 0, x, 1.0)))
    e = np.maximum(e, minexp)
    return np.ldexp(1.0, (e - mant).astype(np.int64))


def dtype_of_array(a):
    a = np.asarray(a)
    for k, v in (("F32", np.float32), ("F16", np.float16), ("F64", np.float64), ("I64", np.int64)):
        if a.dtype == v:
            return k
    raise ValueError("cannot infer safetensors dtype of %s (BF16 needs explicit dtype)" % a.dtype)


# ----------------------------------------------------------------------------- reading

def _read_header(f, size):
    raw = f.read(8)
    if len(raw) != 8:
        raise ValueError("file too short for a safetensors header")
    (n,) = struct.unpack("<Q", raw)
    if n > size - 8:
        raise ValueError("header length %d exceeds file size" % n)
    hdr = json.loads(f.read(n).decode("utf-8"))
    return n, hdr


def _parse_file(path):
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        n, hdr = _read_header(f, size)
        data = f.read()
    meta = hdr.pop("__metadata__", None) or {}
    out = {}
    for name, info in hdr.items():
        dt = info["dtype"]
        if dt not in _NP:
            raise ValueError("%s: unsupported dtype %s" % (name, dt))
        shape = tuple(int(s) for s in info["shape"])
        b, e = (int(v) for v in info["data_offsets"])
        nel = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if e - b != nel * _NP[dt].itemsize or e > len(data) or b < 0:
            raise ValueError("%s: bad data_offsets %r for shape %r %s" % (name, (b, e), shape, dt))
        out[name] = (dt, shape, data[b:e])
    return out, meta


def _files_of(path):
    """List of (file, metadata-source) for a file or HF directory."""
    if os.path.isdir(path):
        idx = os.path.join(path, INDEX_NAME)
        if os.path.exists(idx):
            with open(idx) as f:
                j = json.load(f)
            wm = j["weight_map"]
            files = []
            for fn in wm.values():
                if fn not in files:
                    files.append(fn)
            return [os.path.join(path, fn) for fn in sorted(files)], wm
        single = os.path.join(path, SINGLE_NAME)
        if os.path.exists(single):
            return [single], None
        cands = sorted(fn for fn in os.listdir(path) if fn.endswith(".safetensors"))
        if len(cands) == 1:
            return [os.path.join(path, cands[0])], None
        raise ValueError("%s: no model.safetensors or index" % path)
    return [path], None


def raw_bytes(path):
    """name -> (dtype, shape, bytes) exactly as stored (file or directory)."""
    files, wm = _files_of(path)
    out = {}
    for fp in files:
        d, _ = _parse_file(fp)
        for k, v in d.items():
            if k in out:
                raise ValueError("tensor %s appears twice" % k)
            if wm is not None and os.path.basename(fp) != wm.get(k):
                raise ValueError("tensor %s found in %s but index says %s" % (k, fp, wm.get(k)))
            out[k] = v
    if wm is not None and set(wm) != set(out):
        raise ValueError("index weight_map and shard contents disagree")
    return out


def read_metadata(path):
    """__metadata__ of a file, or of the first shard of a directory (header only)."""
    fp = _files_of(path)[0][0]
    with open(fp, "rb") as f:
        _, hdr = _read_header(f, os.path.getsize(fp))
    return hdr.get("__metadata__") or {}


def load(path):
    files, wm = _files_of(path)
    t = Tensors()
    for fp in files:
        d, meta = _parse_file(fp)
        t.metadata.update(meta)
        for k, (dt, shape, buf) in d.items():
            t[k] = np.frombuffer(buf, dtype=_NP[dt]).reshape(shape).copy()
            t.dtypes[k] = dt
    if wm is not None and set(wm) != set(t):
        raise ValueError("index weight_map and shard contents disagree")
    return t


def load_file(path):
    t = load(path)
    return dict(t), dict(t.dtypes), dict(t.metadata)


# ----------------------------------------------------------------------------- writing

def _encode(tensors, dtypes):
    names = list(tensors.keys())
    items = []
    for k in names:
        a = np.asarray(tensors[k])
        dt = (dtypes or {}).get(k) or dtype_of_array(a)
        if dt == "BF16":
            if a.dtype != np.uint16:
                a = from_float(a, "BF16")
        else:
            a = a.astype(_NP[dt])
        items.append((k, dt, a.shape, np.ascontiguousarray(a).astype(_NP[dt], copy=False).tobytes()))
    return items


def _write(path, items, metadata):
    hdr = {}
    if metadata:
        hdr["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    off = 0
    for k, dt, shape, b in items:
        hdr[k] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + len(b)]}
        off += len(b)
    h = json.dumps(hdr, separators=(",", ":")).encode("utf-8")
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for _, _, _, b in items:
            f.write(b)


def save_file(path, tensors, dtypes=None, metadata=None):
    _write(path, _encode(tensors, dtypes), metadata)


def parse_size(s):
    if isinstance(s, int):
        return s
    s = s.strip().upper()
    for suf, m in (("GB", 10 ** 9), ("MB", 10 ** 6), ("KB", 10 ** 3), ("B", 1)):
        if s.endswith(suf):
            return int(float(s[: -len(suf)]) * m)
    return int(s)


def save_dir(dirpath, tensors, dtypes=None, metadata=None, shard_size=None):
    """Write a HF directory: model.safetensors, or shards + index when the total
    exceeds shard_size (bytes or '10MB'-style string)."""
    os.makedirs(dirpath, exist_ok=True)
    items = _encode(tensors, dtypes)
    total = sum(len(b) for *_, b in items)
    if shard_size is None or total <= parse_size(shard_size):
        _write(os.path.join(dirpath, SINGLE_NAME), items, metadata)
        return [SINGLE_NAME]
    lim = parse_size(shard_size)
    shards, cur, cur_sz = [], [], 0
    for it in items:
        if cur and cur_sz + len(it[3]) > lim:
            shards.append(cur)
            cur, cur_sz = [], 0
        cur.append(it)
        cur_sz += len(it[3])
    if cur:
        shards.append(cur)
    n = len(shards)
    wm, names = {}, []
    for i, sh in enumerate(shards):
        fn = "model-%05d-of-%05d.safetensors" % (i + 1, n)
        _write(os.path.join(dirpath, fn), sh, metadata)
        names.append(fn)
        for k, *_ in sh:
            wm[k] = fn
    with open(os.path.join(dirpath, INDEX_NAME), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": wm}, f, indent=2)
    return names


def save(path, tensors, dtypes=None, metadata=None, shard_size=None):
    if path.endswith(".safetensors"):
        save_file(path, tensors, dtypes, metadata)
    else:
        save_dir(path, tensors, dtypes, metadata, shard_size)


# ----------------------------------------------------------------------------- self test

def _selftest(tmp):
    rng = np.random.default_rng(1)
    # bf16 rounding against a scalar bit-level implementation
    xs = np.concatenate([rng.standard_normal(2000) * 10.0 ** rng.integers(-30, 30, 2000),
                         [0.0, -0.0, 1.0, 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, 1.0 + 2 ** -8 + 2 ** -30]])
    for x in xs:
        f = np.float32(x)
        bits = int(np.array([f], np.float32).view(np.uint32)[0])
        hi, lo = bits >> 16, bits & 0xFFFF
        if lo > 0x8000 or (lo == 0x8000 and hi & 1):
            hi += 1
        assert int(f32_to_bf16_bits(np.array([f]))[0]) == hi & 0xFFFF, x
    # f64 -> bf16 single rounding: compare with exact rational rounding via Python floats
    from fractions import Fraction
    for x in list(rng.standard_normal(3000)) + [1.0 + 2 ** -8, 1.0 + 2 ** -8 + 2 ** -40, 1.0 + 3 * 2 ** -8]:
        b = int(f64_to_bf16_bits(np.array([x]))[0])
        v = float(bf16_bits_to_f32(np.array([b], np.uint16))[0])
        # neighbours
        lo_b, hi_b = b - 1, b + 1
        for nb in (lo_b, hi_b):
            w = float(bf16_bits_to_f32(np.array([nb & 0xFFFF], np.uint16))[0])
            assert abs(Fraction(w) - Fraction(x)) >= abs(Fraction(v) - Fraction(x)), (x, v, w)
    # f64 -> f16 (numpy) is a single correct rounding too
    for x in list(rng.standard_normal(3000) * 0.01) + [1.0 + 2 ** -11, 1.0 + 2 ** -11 + 2 ** -40]:
        h = np.array([x]).astype(np.float16)
        bits = int(h.view(np.uint16)[0])
        for nb in (bits - 1, bits + 1):
            w = float(np.array([nb & 0xFFFF], np.uint16).view(np.float16)[0])
            assert abs(Fraction(w) - Fraction(x)) >= abs(Fraction(float(h[0])) - Fraction(x)), x
    assert ulp(np.array([1.0]), "F16")[0] == 2 ** -10 and ulp(np.array([1.5]), "BF16")[0] == 2 ** -7
    # round trip of all dtypes, single file and sharded directory
    t = {
        "a.f32": rng.standard_normal((3, 5)).astype(np.float32),
        "b.f16": rng.standard_normal((7,)).astype(np.float16),
        "c.bf16": f32_to_bf16_bits(rng.standard_normal((4, 4)).astype(np.float32)),
        "d.f64": rng.standard_normal((2, 3, 2)),
        "e.i64": np.arange(6, dtype=np.int64).reshape(2, 3),
        "f.scalar": np.float32(3.5).reshape(()),
    }
    dts = {"c.bf16": "BF16"}
    p = os.path.join(tmp, "x.safetensors")
    save_file(p, t, dts, {"k": "v"})
    r = load(p)
    assert r.metadata == {"k": "v"}
    for k in t:
        assert r[k].shape == np.asarray(t[k]).shape and r[k].tobytes() == np.asarray(t[k]).tobytes(), k
    assert r.dtypes["c.bf16"] == "BF16" and r.dtypes["e.i64"] == "I64"
    d = os.path.join(tmp, "sh")
    names = save_dir(d, t, dts, None, shard_size=64)
    assert len(names) > 1
    r2 = load(d)
    for k in t:
        assert r2[k].tobytes() == np.asarray(t[k]).tobytes(), k
    print("st.py selftest OK")


if __name__ == "__main__":
    import sys
    import tempfile
    if "--selftest" in sys.argv:
        with tempfile.TemporaryDirectory() as tmp:
            _selftest(tmp)
    elif len(sys.argv) == 2:
        t = load(sys.argv[1])
        for k in t:
            print(k, t.dtypes[k], list(t[k].shape))
        if t.metadata:
            print("__metadata__", t.metadata)
