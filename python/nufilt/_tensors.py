"""State dicts (mappings of NumPy arrays or torch tensors) as libnufilt's in-memory tensors,
borrowed without a copy where the layout allows, and output buffers of the caller's kind."""
from __future__ import annotations

import ctypes
from typing import Any, Dict, List, Mapping, Tuple

import numpy as np

from . import _lib

_NP_TO_NF = {
    np.dtype("float64"): "F64", np.dtype("float32"): "F32", np.dtype("float16"): "F16",
    np.dtype("int64"): "I64", np.dtype("int32"): "I32", np.dtype("int16"): "I16",
    np.dtype("int8"): "I8", np.dtype("uint64"): "U64", np.dtype("uint32"): "U32",
    np.dtype("uint16"): "U16", np.dtype("uint8"): "U8", np.dtype("bool"): "BOOL",
}
_NF_TO_NP = {v: k for k, v in _NP_TO_NF.items()}


def _torch():
    try:
        import torch  # noqa: F401
        return torch
    except ImportError:  # torch is optional
        return None


def is_torch(x: Any) -> bool:
    t = type(x)
    return t.__module__.startswith("torch") and t.__name__ in ("Tensor", "Parameter")


def _torch_dtypes(torch) -> Dict[Any, str]:
    return {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16",
            torch.bfloat16: "BF16", torch.int64: "I64", torch.int32: "I32",
            torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}


class Borrowed:
    """The in-memory tensors of one model, and the objects that must outlive their use."""

    def __init__(self, sd: Mapping[str, Any]) -> None:
        if not isinstance(sd, Mapping):
            raise TypeError("a state dict must be a mapping of names to arrays or tensors, "
                            "not %s" % type(sd).__name__)
        n = len(sd)
        self.array = (_lib.MemTensor * max(n, 1))()
        self.keep: List[Any] = []
        self.kind = "numpy"
        torch = None
        for i, (name, v) in enumerate(sd.items()):
            if not isinstance(name, str):
                raise TypeError("state dict keys must be strings, got %r" % (name,))
            t = self.array[i]
            bname = name.encode()
            self.keep.append(bname)
            t.name = bname
            if is_torch(v):
                torch = torch or _torch()
                self.kind = "torch"
                v = v.detach()
                if v.device.type != "cpu":
                    v = v.cpu()  # a copy: the library reads host memory
                dt = _torch_dtypes(torch).get(v.dtype)
                if dt is None:
                    raise TypeError("tensor %r: dtype %s is not supported" % (name, v.dtype))
                shape = tuple(v.shape)
                es = v.element_size()
                strides = tuple(s * es for s in v.stride())
                ptr = v.data_ptr()
                contiguous = v.is_contiguous()
            else:
                a = np.asarray(v)
                if a.dtype.byteorder == ">" or (a.dtype.byteorder == "=" and
                                                np.little_endian is False):
                    a = a.astype(a.dtype.newbyteorder("<"))
                dt = _NP_TO_NF.get(a.dtype)
                if dt is None:
                    raise TypeError("tensor %r: dtype %s is not supported" % (name, a.dtype))
                shape = a.shape
                strides = a.strides
                ptr = a.ctypes.data
                contiguous = a.flags.c_contiguous
                v = a
            if len(shape) > _lib.MAX_DIMS:
                raise ValueError("tensor %r has %d dimensions (at most %d)" %
                                 (name, len(shape), _lib.MAX_DIMS))
            self.keep.append(v)
            t.dtype = _lib.DTYPE_ID[dt]
            t.ndim = len(shape)
            for d, s in enumerate(shape):
                t.shape[d] = s
            t.data = ptr or None
            if not contiguous:
                # the library packs this tensor once (its size in memory, this tensor only)
                st = (ctypes.c_int64 * max(len(strides), 1))(*strides)
                self.keep.append(st)
                t.strides = ctypes.cast(st, ctypes.POINTER(ctypes.c_int64))
        self.n = n
        self.names = list(sd.keys())


def empty_like_output(kind: str, shape: List[int], dt: str) -> Tuple[Any, int]:
    """A buffer of the caller's kind for one output tensor (shape, nufilt dtype name), and
    its address."""
    shape = tuple(shape)
    if kind == "torch":
        torch = _torch()
        rev = {v: k for k, v in _torch_dtypes(torch).items()}
        if dt not in rev:
            raise TypeError("output dtype %s has no torch equivalent" % dt)
        t = torch.empty(shape, dtype=rev[dt])
        return t, t.data_ptr()
    if dt not in _NF_TO_NP:
        raise TypeError("output dtype %s has no NumPy equivalent (use torch for bf16)" % dt)
    a = np.empty(shape, dtype=_NF_TO_NP[dt])
    return a, a.ctypes.data
