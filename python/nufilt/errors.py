"""Exceptions: one per family of libnufilt's status codes, all subclasses of nufilt.Error,
each carrying the library's message (which names the file, the tensor and the problem, and
options by their keyword names in backquotes)."""
from __future__ import annotations

from typing import Dict, Type


class Error(Exception):
    """A libnufilt call failed. ``status`` is the status name (``"NF_E_MISMATCH"``),
    ``code`` its number, ``message`` the library's explanation."""

    def __init__(self, message: str, status: str = "NF_E_INTERNAL", code: int = -14) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code

    def __str__(self) -> str:
        return self.message


class OutOfMemoryError(Error, MemoryError):
    """NF_E_NOMEM: an allocation failed."""


class FileError(Error, OSError):
    """NF_E_IO: a file could not be read or written."""


class FormatError(Error, ValueError):
    """NF_E_FORMAT: a checkpoint (or in-memory model) is malformed."""


class MismatchError(Error, ValueError):
    """NF_E_MISMATCH: the models do not hold the same tensors, shapes or dtypes."""


class ArgumentError(Error, ValueError):
    """NF_E_ARG: an invalid option or argument."""


class OutputExistsError(Error, FileExistsError):
    """NF_E_EXISTS: the output exists and ``force`` was not set."""


class UnsupportedError(Error):
    """NF_E_UNSUPPORTED: an operation this build or model does not support."""


class DeviceError(Error):
    """NF_E_DEVICE, NF_E_NODEV: a compute device failed or does not exist."""


class NumericError(Error, ArithmeticError):
    """NF_E_NUMERIC, NF_E_NONFINITE: a numerical failure, or NaN/Inf in an input."""


class StateError(Error):
    """NF_E_STATE: the options conflict with the previous merged model's recorded state."""


class LimitError(Error):
    """NF_E_LIMIT: a resource limit (``max_memory``, header sizes, ...) was exceeded."""


class CancelledError(Error):
    """NF_E_CANCELLED: a progress or output callback cancelled the run."""


class InternalError(Error):
    """NF_E_INTERNAL: a bug in nufilt."""


_BY_STATUS: Dict[str, Type[Error]] = {
    "NF_E_NOMEM": OutOfMemoryError, "NF_E_IO": FileError, "NF_E_FORMAT": FormatError,
    "NF_E_MISMATCH": MismatchError, "NF_E_ARG": ArgumentError,
    "NF_E_EXISTS": OutputExistsError, "NF_E_UNSUPPORTED": UnsupportedError,
    "NF_E_DEVICE": DeviceError, "NF_E_NODEV": DeviceError, "NF_E_NUMERIC": NumericError,
    "NF_E_NONFINITE": NumericError, "NF_E_STATE": StateError, "NF_E_LIMIT": LimitError,
    "NF_E_CANCELLED": CancelledError, "NF_E_INTERNAL": InternalError,
}


def error_for(code: int, status: str, message: str) -> Error:
    """The exception for a status code."""
    return _BY_STATUS.get(status, Error)(message, status, code)
