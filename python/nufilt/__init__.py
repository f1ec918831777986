"""nufilt: data-free continual model merging, from Python.

Fine-tuned models arrive one at a time; nufilt folds each into one merged model of the same
size, without data and without keeping the older checkpoints. The main method is NUFILT
(null-space filtering plus a projection-aware LoRA adapter, Qiu et al., ICLR 2026), beside
weight averaging, task arithmetic, TIES, MagMax, OPCM, WUDI, Iso-C and TSV-M.

Files (``.safetensors`` or Hugging Face directories)::

    report = nufilt.merge("base.safetensors", ["t1.safetensors", "t2.safetensors"],
                          "merged.safetensors", method="nufilt", lora_rank=32)
    nufilt.step("base.safetensors", "t3.safetensors", "merged3.safetensors",
                prev="merged.safetensors")

In memory (mappings of NumPy arrays or torch tensors, e.g. ``model.state_dict()``)::

    merged, state = nufilt.merge_state_dicts(base_sd, [task1_sd, task2_sd])
    merged, state = nufilt.merge_state_dicts(base_sd, [task3_sd], state=state)

``nufilt.inspect(path)``, ``nufilt.methods()`` and ``nufilt.devices()`` look around. Errors
raise ``nufilt.Error`` subclasses carrying the library's message; Ctrl-C cancels a merge
cleanly (nothing is written) and raises ``KeyboardInterrupt``. The same library runs the
``nufilt`` command line: the same inputs give the same tensors, bit for bit.

Parameters (keyword arguments, the names of the C library's ``nf_options`` fields):
null_rank, task_rank, lora_rank, lr, iters, seed, compat ("paper" | "reference"),
rank_tol, preset, layers (regex), scale, keep, alpha, opcm_zero_diag (methods() gives each
method's and their defaults); out_dtype ("keep", "f32", "f16", "bf16"), out_shard_size
(bytes or "2GB"), force, allow_nonfinite, threads, svd ("fast", the default, "gram",
"gesdd" or its older name "exact", "randomized"), max_memory (bytes or "500MB"), report_path, task_name.
"""
from ._api import (Device, Method, ProgressInfo, Report, State, backends, devices, inspect,
                   merge, merge_state_dicts, methods, step)
from ._lib import lib as _clib
from .errors import (ArgumentError, CancelledError, DeviceError, Error, FileError,
                     FormatError, InternalError, LimitError, MismatchError, NumericError,
                     OutOfMemoryError, OutputExistsError, StateError, UnsupportedError)

#: The version of the library this package runs ("MAJOR.MINOR.PATCH").
__version__: str = _clib.nf_version().decode()
#: MAJOR * 1000000 + MINOR * 1000 + PATCH, as NF_VERSION_NUMBER in C.
version_number: int = _clib.nf_version_number()

__all__ = [
    "merge", "step", "merge_state_dicts", "inspect", "methods", "devices", "backends",
    "Report", "State", "ProgressInfo", "Method", "Device",
    "Error", "OutOfMemoryError", "FileError", "FormatError", "MismatchError", "ArgumentError",
    "OutputExistsError", "UnsupportedError", "DeviceError", "NumericError", "StateError",
    "LimitError", "CancelledError", "InternalError", "__version__", "version_number",
]
