"""ctypes view of libnufilt's C API (src/include/nufilt.h): the structs, the functions, and
the shared library installed beside this package."""
from __future__ import annotations

import ctypes
import os
from ctypes import (CFUNCTYPE, POINTER, Structure, c_char, c_char_p, c_double, c_int,
                    c_int64, c_size_t, c_uint64, c_void_p)

MAX_DIMS = 8

# nf_dtype
DTYPES = ["INVALID", "F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U64", "U32",
          "U16", "U8", "BOOL", "F8_E4M3", "F8_E5M2"]
DTYPE_ID = {n: i for i, n in enumerate(DTYPES)}

# status codes (nufilt_status.h)
STATUS = {0: "NF_OK", -1: "NF_E_NOMEM", -2: "NF_E_IO", -3: "NF_E_FORMAT", -4: "NF_E_MISMATCH",
          -5: "NF_E_ARG", -6: "NF_E_EXISTS", -7: "NF_E_UNSUPPORTED", -8: "NF_E_DEVICE",
          -9: "NF_E_NUMERIC", -10: "NF_E_STATE", -11: "NF_E_NONFINITE", -12: "NF_E_NODEV",
          -13: "NF_E_LIMIT", -14: "NF_E_INTERNAL", -15: "NF_E_CANCELLED"}

SVD = {"exact": 0, "gesdd": 0, "randomized": 1, "gram": 2, "fast": 3}
COMPAT = {"paper": 1, "reference": 2}


class Error(Structure):
    _fields_ = [("code", c_int), ("msg", c_char * 1024)]


class Progress(Structure):
    _fields_ = [("step", c_int), ("nsteps", c_int), ("pass_", c_int), ("npasses", c_int),
                ("tensors_done", c_size_t), ("tensors_total", c_size_t),
                ("bytes_done", c_uint64), ("bytes_total", c_uint64),
                ("elapsed_s", c_double), ("tensor", c_char_p)]


PROGRESS_FN = CFUNCTYPE(c_int, c_void_p, POINTER(Progress))


class Options(Structure):
    _fields_ = [("struct_size", c_size_t), ("method", c_int), ("null_rank", c_int),
                ("task_rank", c_int), ("lora_rank", c_int), ("lr", c_double), ("iters", c_int),
                ("seed", c_int64), ("compat", c_int), ("rank_tol", c_double),
                ("preset", c_char_p), ("layers", c_char_p), ("scale", c_double),
                ("keep", c_double), ("alpha", c_double), ("opcm_zero_diag", c_int),
                ("out_dtype", c_int), ("out_shard_size", c_uint64), ("force", c_int),
                ("allow_nonfinite", c_int), ("threads", c_int), ("device", c_char_p),
                ("svd", c_int), ("max_memory", c_uint64), ("report_path", c_char_p),
                ("task_name", c_char_p), ("progress", PROGRESS_FN), ("progress_user", c_void_p)]


class TensorInfo(Structure):
    _fields_ = [("name", c_char_p), ("dtype", c_int), ("ndim", c_int),
                ("shape", c_int64 * MAX_DIMS), ("numel", c_uint64), ("nbytes", c_uint64),
                ("shard", c_int)]


class MemTensor(Structure):
    _fields_ = [("name", c_char_p), ("dtype", c_int), ("ndim", c_int),
                ("shape", c_int64 * MAX_DIMS), ("data", c_void_p),
                ("strides", POINTER(c_int64))]


class MetaEntry(Structure):
    _fields_ = [("key", c_char_p), ("value", c_char_p)]


TENSOR_DONE_FN = CFUNCTYPE(c_int, c_void_p, c_size_t, POINTER(TensorInfo), c_void_p)
METADATA_FN = CFUNCTYPE(c_int, c_void_p, c_char_p, c_char_p)


class Sink(Structure):
    _fields_ = [("struct_size", c_size_t), ("buffers", POINTER(c_void_p)),
                ("nbuffers", c_size_t), ("tensor_done", TENSOR_DONE_FN),
                ("metadata", METADATA_FN), ("user", c_void_p)]


class DeviceInfo(Structure):
    _fields_ = [("api", c_char * 16), ("index", c_int), ("name", c_char * 256),
                ("type", c_int), ("memory", c_uint64), ("driver", c_char * 128)]


class MethodInfo(Structure):
    _fields_ = [("name", c_char_p), ("summary", c_char_p), ("options", c_char_p),
                ("paper", c_char_p), ("implemented", c_int)]


def _load() -> ctypes.CDLL:
    """The libnufilt.so installed in this package's directory (never a system one);
    NUFILT_LIBRARY names another, for tests of a build tree."""
    path = os.environ.get("NUFILT_LIBRARY") or os.path.join(os.path.dirname(__file__),
                                                             "libnufilt.so")
    lib = ctypes.CDLL(path)
    P = POINTER
    sig = {
        "nf_version": (c_char_p, []),
        "nf_version_number": (c_int, []),
        "nf_status_name": (c_char_p, [c_int]),
        "nf_options_init_sized": (None, [P(Options), c_size_t]),
        "nf_step": (c_int, [c_char_p, c_char_p, c_char_p, c_char_p, P(Options), P(Error)]),
        "nf_merge": (c_int, [c_char_p, P(c_char_p), c_int, c_char_p, c_char_p, P(Options),
                             P(Error)]),
        "nf_step_models": (c_int, [c_void_p, c_void_p, c_void_p, P(Sink), P(Options),
                                   P(Error)]),
        "nf_model_open": (c_int, [c_char_p, P(c_void_p), P(Error)]),
        "nf_model_from_memory": (c_int, [c_char_p, P(MemTensor), c_size_t, P(MetaEntry),
                                         c_size_t, P(c_void_p), P(Error)]),
        "nf_model_close": (None, [c_void_p]),
        "nf_model_tensor_count": (c_size_t, [c_void_p]),
        "nf_model_tensor_info": (c_int, [c_void_p, c_size_t, P(TensorInfo)]),
        "nf_model_metadata_count": (c_size_t, [c_void_p]),
        "nf_model_metadata_at": (c_int, [c_void_p, c_size_t, P(c_char_p), P(c_char_p)]),
        "nf_model_shard_count": (c_size_t, [c_void_p]),
        "nf_model_shard_path": (c_char_p, [c_void_p, c_size_t]),
        "nf_preset_resolve": (c_int, [c_void_p, c_char_p, P(c_char_p), P(Error)]),
        "nf_select": (c_int, [c_void_p, c_char_p, c_char_p, c_void_p, P(Error)]),
        "nf_method_get": (P(MethodInfo), [c_int]),
        "nf_method_from_name": (c_int, [c_char_p]),
        "nf_devices_list": (c_int, [P(DeviceInfo), c_int, P(c_int), P(Error)]),
        "nf_device_type_name": (c_char_p, [c_int]),
        "nf_backend_status": (c_int, [c_int, P(c_char_p), P(c_int), P(c_char_p)]),
        "nf_dtype_size": (c_size_t, [c_int]),
    }
    for name, (res, args) in sig.items():
        f = getattr(lib, name)
        f.restype = res
        f.argtypes = args
    return lib


lib = _load()
METHOD_COUNT = 9
