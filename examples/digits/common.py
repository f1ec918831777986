"""Shared pieces of the digits example: a small safetensors reader/writer, the encoder's
forward pass, the eight symmetries of the square and the task list.

Only NumPy is used (Debian's python3-numpy); no torch, no safetensors package.
"""

import json
import struct

import numpy as np

# The task stream, in its canonical order. Each task is sklearn's digits seen through one of
# the eight symmetries of the square (the dihedral group D4).
TASKS = ("identity", "rot90", "rot180", "rot270",
         "flip_h", "flip_v", "transpose", "antitranspose")


def transform(images, task):
    """images: [n, 8, 8]; returns the images under the task's symmetry (a new array)."""
    x = np.asarray(images)
    if task == "identity":
        y = x
    elif task == "rot90":            # 90 degrees counter-clockwise
        y = np.rot90(x, 1, axes=(1, 2))
    elif task == "rot180":
        y = np.rot90(x, 2, axes=(1, 2))
    elif task == "rot270":
        y = np.rot90(x, 3, axes=(1, 2))
    elif task == "flip_h":           # mirror left <-> right
        y = x[:, :, ::-1]
    elif task == "flip_v":           # mirror top <-> bottom
        y = x[:, ::-1, :]
    elif task == "transpose":        # reflect in the main diagonal
        y = x.transpose(0, 2, 1)
    elif task == "antitranspose":    # reflect in the anti-diagonal: y[r, c] = x[7-c, 7-r]
        y = x[:, ::-1, ::-1].transpose(0, 2, 1)
    else:
        raise ValueError("unknown task %r" % task)
    return np.ascontiguousarray(y)


# ---- safetensors ------------------------------------------------------------------------

_DT_TO_NP = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "U8": np.uint8,
             "I8": np.int8, "I16": np.int16, "U16": np.uint16, "I32": np.int32,
             "I64": np.int64}
_NP_TO_DT = {np.dtype(v).str: k for k, v in _DT_TO_NP.items()}


def save_safetensors(path, tensors, metadata=None):
    """Writes tensors (an ordered dict name -> array) to path in the safetensors format:
    8-byte little-endian header length, JSON header (dtype, shape, data_offsets per tensor,
    optional __metadata__ of string -> string), then the raw little-endian data. Tensors are
    laid out in the dict's order; the header is padded with spaces to a multiple of 8."""
    header = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs = []
    offset = 0
    for name, arr in tensors.items():
        a = np.ascontiguousarray(arr)
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        dt = _NP_TO_DT.get(a.dtype.str)
        if dt is None:
            raise ValueError("unsupported dtype %s for %s" % (a.dtype, name))
        raw = a.tobytes()
        header[name] = {"dtype": dt, "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    hjson = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hjson += b" " * ((-len(hjson)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for raw in blobs:
            f.write(raw)


def load_safetensors(path, with_metadata=False):
    """Reads a safetensors file into a dict name -> NumPy array (float tensors as float32;
    F16 and BF16 are widened). Returns (tensors, metadata) when with_metadata."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n].decode("utf-8"))
    base = 8 + n
    meta = header.pop("__metadata__", None) or {}
    out = {}
    for name, info in header.items():
        start, end = info["data_offsets"]
        buf = data[base + start:base + end]
        dt = info["dtype"]
        shape = tuple(info["shape"])
        if dt == "BF16":
            u = np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16
            a = u.view(np.float32)
        elif dt in _DT_TO_NP:
            a = np.frombuffer(buf, dtype=np.dtype(_DT_TO_NP[dt]).newbyteorder("<"))
            if dt == "F16":
                a = a.astype(np.float32)
        else:
            raise ValueError("%s: unsupported dtype %s for %s" % (path, dt, name))
        out[name] = a.reshape(shape)
    return (out, meta) if with_metadata else out


# ---- the encoder ------------------------------------------------------------------------
#
#   h   = x W_e^T + b_e                                  encoder.input_proj  [D, 64]
#   for each layer l:                                    (pre-norm residual MLP block)
#       h = h + fc2(gelu(fc1(layer_norm(h))))            encoder.layers.l.*   fc1 [H, D], fc2 [D, H]
#   z   = encoder.post_layernorm(h)                      features             [n, D]
#   logits = z W_h^T + b_h                               heads.<task>.*       [10, D] (separate file)

LN_EPS = 1e-5
_GELU_C = np.float32(np.sqrt(2.0 / np.pi))


def gelu(x):
    """GELU, tanh approximation (as in GPT-2 / CLIP-style MLPs)."""
    return 0.5 * x * (1.0 + np.tanh(_GELU_C * (x + 0.044715 * x * x * x)))


def gelu_grad(x):
    u = _GELU_C * (x + 0.044715 * x * x * x)
    t = np.tanh(u)
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * _GELU_C * (1.0 + 3 * 0.044715 * x * x)


def layer_norm(x, g, b):
    mu = x.mean(axis=1, keepdims=True)
    xc = x - mu
    var = (xc * xc).mean(axis=1, keepdims=True)
    rstd = 1.0 / np.sqrt(var + LN_EPS)
    xhat = xc * rstd
    return xhat * g + b, (xhat, rstd)


def layer_norm_backward(dy, g, cache):
    xhat, rstd = cache
    dg = (dy * xhat).sum(axis=0)
    db = dy.sum(axis=0)
    dxhat = dy * g
    dx = rstd * (dxhat - dxhat.mean(axis=1, keepdims=True)
                 - xhat * (dxhat * xhat).mean(axis=1, keepdims=True))
    return dx, dg, db


def num_layers(params):
    n = 0
    while ("encoder.layers.%d.mlp.fc1.weight" % n) in params:
        n += 1
    return n


def encode(params, x, keep_cache=False):
    """x: [n, 64] float32 in [0, 1]. Returns features [n, D] (and the cache for backward)."""
    cache = {"x": x}
    h = x @ params["encoder.input_proj.weight"].T + params["encoder.input_proj.bias"]
    for l in range(num_layers(params)):
        p = "encoder.layers.%d." % l
        u, lnc = layer_norm(h, params[p + "layer_norm.weight"], params[p + "layer_norm.bias"])
        a = u @ params[p + "mlp.fc1.weight"].T + params[p + "mlp.fc1.bias"]
        g = gelu(a)
        h = h + g @ params[p + "mlp.fc2.weight"].T + params[p + "mlp.fc2.bias"]
        if keep_cache:
            cache[l] = (lnc, u, a, g)
    z, lnc = layer_norm(h, params["encoder.post_layernorm.weight"],
                        params["encoder.post_layernorm.bias"])
    if keep_cache:
        cache["post"] = lnc
        return z, cache
    return z


def encode_backward(params, cache, dz):
    """Gradients of every encoder tensor given dL/dz."""
    grads = {}
    dh, grads["encoder.post_layernorm.weight"], grads["encoder.post_layernorm.bias"] = \
        layer_norm_backward(dz, params["encoder.post_layernorm.weight"], cache["post"])
    for l in reversed(range(num_layers(params))):
        p = "encoder.layers.%d." % l
        lnc, u, a, g = cache[l]
        grads[p + "mlp.fc2.weight"] = dh.T @ g
        grads[p + "mlp.fc2.bias"] = dh.sum(axis=0)
        dg = dh @ params[p + "mlp.fc2.weight"]
        da = dg * gelu_grad(a)
        grads[p + "mlp.fc1.weight"] = da.T @ u
        grads[p + "mlp.fc1.bias"] = da.sum(axis=0)
        du = da @ params[p + "mlp.fc1.weight"]
        dx, grads[p + "layer_norm.weight"], grads[p + "layer_norm.bias"] = \
            layer_norm_backward(du, params[p + "layer_norm.weight"], lnc)
        dh = dh + dx
    grads["encoder.input_proj.weight"] = dh.T @ cache["x"]
    grads["encoder.input_proj.bias"] = dh.sum(axis=0)
    return grads


def head_logits(heads, task, z):
    return z @ heads["heads.%s.weight" % task].T + heads["heads.%s.bias" % task]


def accuracy(params, heads, task, x, y, batch=1024):
    correct = 0
    for i in range(0, len(x), batch):
        z = encode(params, x[i:i + batch])
        correct += int((head_logits(heads, task, z).argmax(axis=1) == y[i:i + batch]).sum())
    return correct / len(x)
