"""The Python API over libnufilt: merges of files and of in-memory state dicts, inspection,
methods and devices."""
from __future__ import annotations

import ctypes
import json
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from . import _lib
from ._tensors import Borrowed, empty_like_output
from .errors import error_for

PathLike = Union[str, "os.PathLike[str]"]
ProgressArg = Union[bool, Callable[["ProgressInfo"], Optional[bool]], None]

# ---- values handed to callers ---------------------------------------------------------------


@dataclass(frozen=True)
class ProgressInfo:
    """One progress report: after every tensor of every pass of every step."""
    step: int            #: 1-based continual step within this call
    nsteps: int          #: steps in this call
    pass_: int           #: 0-based pass over the tensors within the step
    npasses: int         #: passes the method makes in this step
    tensors_done: int    #: jobs finished in this step (over all passes)
    tensors_total: int
    bytes_done: int
    bytes_total: int
    elapsed_s: float     #: since the step started
    tensor: Optional[str]  #: the tensor just finished


@dataclass(frozen=True)
class Method:
    """A merging method: its name (the ``method=`` value), what it does, the parameters it
    reads with their defaults, and where it comes from."""
    name: str
    summary: str
    options: str
    paper: str


@dataclass(frozen=True)
class Device:
    """A compute device: ``spec`` is what ``device=`` takes (``"cpu"``, ``"opencl:0"``)."""
    api: str
    index: int
    name: str
    type: str
    memory: int
    driver: str

    @property
    def spec(self) -> str:
        return self.api if self.api == "cpu" else "%s:%d" % (self.api, self.index)


@dataclass
class Report:
    """What ``merge`` and ``step`` did: the output, the method, the merged tasks, the time,
    the output's metadata (``nufilt.*`` keys hold the recipe and state) and the per-tensor
    figures of the library's JSON report (ranks, energy removed, objective, seconds)."""
    out: str
    method: str
    tasks: List[str]
    seconds: float
    metadata: Dict[str, str]
    details: Dict[str, Any] = field(repr=False, default_factory=dict)


@dataclass
class State:
    """The continual state of an in-memory stream: the last merged tensors and the metadata a
    merged file would carry (method, hyper-parameters, step count, the method's state, task
    history). Pass it back as ``state=`` to merge more tasks into the same stream. The
    tensors are the ones ``merge_state_dicts`` returned (not copied): leave them unchanged."""
    merged: Mapping[str, Any]
    metadata: Dict[str, str]

    @property
    def step(self) -> int:
        """How many tasks the stream has merged."""
        return int(self.metadata.get("nufilt.step", "0"))

    @property
    def method(self) -> str:
        return self.metadata.get("nufilt.method", "")

    @property
    def params(self) -> Dict[str, Any]:
        """The recorded hyper-parameters."""
        return json.loads(self.metadata.get("nufilt.params", "{}"))


# ---- options --------------------------------------------------------------------------------

_INT = ("null_rank", "task_rank", "lora_rank", "iters", "threads")
_FLOAT = ("lr", "rank_tol", "scale", "keep", "alpha")
_FLAG = ("force", "allow_nonfinite")
PARAMS = ("null_rank", "task_rank", "lora_rank", "lr", "iters", "seed", "compat", "rank_tol",
          "preset", "layers", "scale", "keep", "alpha", "opcm_zero_diag", "out_dtype",
          "out_shard_size", "force", "allow_nonfinite", "threads", "svd", "max_memory",
          "report_path", "task_name")


def _size(name: str, v: Union[int, str]) -> int:
    if isinstance(v, int):
        if v < 0:
            raise ValueError("%s must be a positive size" % name)
        return v
    s = str(v).strip().upper().replace(" ", "")
    units = [("KIB", 1024), ("MIB", 1024 ** 2), ("GIB", 1024 ** 3), ("TIB", 1024 ** 4),
             ("KB", 1e3), ("MB", 1e6), ("GB", 1e9), ("TB", 1e12), ("K", 1e3), ("M", 1e6),
             ("G", 1e9), ("T", 1e12), ("B", 1)]
    for u, mul in units:
        if s.endswith(u):
            return int(float(s[:-len(u)]) * mul)
    return int(float(s))


class _Opts:
    """An nf_options filled from keyword arguments (names as the C fields), keeping the
    encoded strings alive."""

    def __init__(self, method: Optional[str], device: Optional[str],
                 params: Mapping[str, Any]) -> None:
        o = _lib.Options()
        _lib.lib.nf_options_init_sized(ctypes.byref(o), ctypes.sizeof(o))
        self.o = o
        self._keep: List[bytes] = []
        if method is not None:
            mid = _lib.lib.nf_method_from_name(str(method).encode())
            if mid < 0:
                raise ValueError("method %r: unknown (nufilt.methods() lists them)" % (method,))
            o.method = mid
        if device is not None and device != "auto":
            o.device = self._str(device)
        for k, v in params.items():
            if k not in PARAMS:
                raise TypeError("unknown parameter %r (parameters: %s)" % (k, ", ".join(PARAMS)))
            if v is None:
                continue
            if k in _INT:
                setattr(o, k, int(v))
            elif k in _FLOAT:
                setattr(o, k, float(v))
            elif k in _FLAG:
                setattr(o, k, 1 if v else 0)
            elif k == "seed":
                o.seed = int(v)
            elif k == "opcm_zero_diag":
                o.opcm_zero_diag = 1 if v else 0
            elif k == "compat":
                if v not in _lib.COMPAT:
                    raise ValueError("compat must be 'paper' or 'reference', not %r" % (v,))
                o.compat = _lib.COMPAT[v]
            elif k == "svd":
                if v not in _lib.SVD:
                    raise ValueError("svd must be one of %s, not %r" % (", ".join(_lib.SVD), v))
                o.svd = _lib.SVD[v]
            elif k == "out_dtype":
                name = {"keep": "INVALID", "f32": "F32", "float32": "F32", "f16": "F16",
                        "float16": "F16", "bf16": "BF16", "bfloat16": "BF16"}.get(str(v).lower())
                if name is None:
                    raise ValueError("out_dtype must be keep, f32, f16 or bf16, not %r" % (v,))
                o.out_dtype = _lib.DTYPE_ID[name]
            elif k in ("out_shard_size", "max_memory"):
                setattr(o, k, _size(k, v))
            elif k in ("preset", "layers", "task_name"):
                setattr(o, k, self._str(v))
            elif k == "report_path":
                setattr(o, k, self._str(os.fspath(v)))

    def _str(self, s: Any) -> bytes:
        b = str(s).encode()
        self._keep.append(b)
        return b


# ---- running a call: errors, progress, Ctrl-C ---------------------------------------------


def _raise(rc: int, err: _lib.Error) -> None:
    status = _lib.STATUS.get(rc, "NF_E_UNKNOWN")
    msg = err.msg.decode("utf-8", "replace") or status
    raise error_for(rc, status, msg)


class _Progress:
    """The progress callback nufilt gets: draws tqdm or calls the user's function, and
    answers 'cancel' once Ctrl-C was pressed or a callback raised."""

    def __init__(self, progress: ProgressArg, desc: str) -> None:
        self.cancel = False
        self.exc: Optional[BaseException] = None
        self.user: Optional[Callable[[ProgressInfo], Optional[bool]]] = None
        self.bar = None
        self.desc = desc
        self.step_offset = 0
        self.nsteps_override = 0
        if callable(progress):
            self.user = progress
        elif progress:
            try:
                from tqdm.auto import tqdm  # optional
                self.bar = tqdm(total=0, desc=desc, unit="tensor", leave=False)
            except ImportError:
                self.bar = None
        self.fn = _lib.PROGRESS_FN(self._cb)

    def _cb(self, _user: Any, p: Any) -> int:
        try:
            p = p.contents
            info = ProgressInfo(p.step + self.step_offset,
                                self.nsteps_override or p.nsteps, p.pass_, p.npasses,
                                p.tensors_done, p.tensors_total, p.bytes_done, p.bytes_total,
                                p.elapsed_s, p.tensor.decode() if p.tensor else None)
            if self.bar is not None:
                if self.bar.total != info.tensors_total:
                    self.bar.reset(total=info.tensors_total)
                self.bar.set_description("%s step %d/%d" % (self.desc, info.step, info.nsteps),
                                         refresh=False)
                self.bar.n = info.tensors_done
                self.bar.refresh()
            if self.user is not None and self.user(info):
                self.cancel = True
        except BaseException as e:  # noqa: B902 - re-raised in the calling thread
            self.exc = e
            self.cancel = True
        return 1 if self.cancel else 0

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _run(call: Callable[[], int], prog: _Progress, err: _lib.Error) -> None:
    """Runs a libnufilt call in a worker thread so that Ctrl-C reaches this one: it asks the
    library to cancel (through the progress callback), waits for it to unwind (temporary
    outputs removed, nothing committed) and raises KeyboardInterrupt."""
    box: Dict[str, int] = {}
    done = threading.Event()

    def target() -> None:
        try:
            box["rc"] = call()
        finally:
            done.set()

    t = threading.Thread(target=target, name="nufilt", daemon=True)
    t.start()
    interrupted = False
    while True:
        # a signal's KeyboardInterrupt may come anywhere in this loop; the library finishes
        # the tensors it holds and unwinds before the call returns. (Not Thread.join: a
        # KeyboardInterrupt inside it can mark a running thread as stopped.)
        try:
            while not done.wait(0.05):
                pass
            break
        except KeyboardInterrupt:
            interrupted = True
            prog.cancel = True
    prog.close()
    if interrupted:
        raise KeyboardInterrupt
    if prog.exc is not None:
        raise prog.exc
    rc = box.get("rc", -14)
    if rc != 0:
        _raise(rc, err)


def _p(path: Optional[PathLike]) -> Optional[bytes]:
    return None if path is None else os.fsencode(os.fspath(path))


def _read_report(path: str) -> Dict[str, Any]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _file_metadata(path: PathLike) -> Dict[str, str]:
    m = _open(path)
    try:
        return _metadata(m)
    finally:
        _lib.lib.nf_model_close(m)


def _finish(out: PathLike, tasks: List[str], t0: float, report_path: Optional[str],
            tmp: Optional[str]) -> Report:
    md = _file_metadata(out)
    details = _read_report(report_path) if report_path else {}
    if tmp:
        try:
            os.unlink(tmp)
        except OSError:
            pass
    return Report(os.fspath(out), md.get("nufilt.method", ""), tasks, time.monotonic() - t0,
                  md, details)


def _report_target(params: Dict[str, Any]) -> Tuple[str, Optional[str]]:
    """Where the library writes its JSON report: the caller's report_path, or a temporary
    file read back into Report.details."""
    if params.get("report_path"):
        return os.fspath(params["report_path"]), None
    fd, tmp = tempfile.mkstemp(prefix="nufilt-report-", suffix=".json")
    os.close(fd)
    os.unlink(tmp)  # the library creates it atomically
    params["report_path"] = tmp
    return tmp, tmp


# ---- file merges ------------------------------------------------------------------------------


def merge(base: PathLike, tasks: Sequence[PathLike], out: PathLike, method: str = "nufilt",
          save_steps: Optional[PathLike] = None, device: str = "auto",
          progress: ProgressArg = True, **params: Any) -> Report:
    """Merges ``tasks`` into ``base`` one continual step each, in order, and writes ``out``
    (``*.safetensors`` for one file, any other path for a Hugging Face directory), exactly as
    ``nufilt merge`` does: bit for bit the same output.

    ``base`` and the tasks are ``.safetensors`` files or model directories. ``save_steps``
    keeps every intermediate model (``stepNN[.safetensors]``). ``device``: ``"auto"``,
    ``"cpu"``, ``"opencl:0"``, ``"vulkan:0,cpu"``... (``nufilt.devices()``). ``progress``:
    True draws a tqdm bar when tqdm is installed; a function receives a ``ProgressInfo``
    after every tensor and cancels the merge by returning True. Ctrl-C cancels cleanly:
    nothing is written and ``KeyboardInterrupt`` is raised.

    ``params`` are the method's parameters and the run's options by their documented names
    (``nufilt.methods()``; ``help(nufilt)``): null_rank, task_rank, lora_rank, lr, iters,
    seed, compat, rank_tol, preset, layers, scale, keep, alpha, opcm_zero_diag, out_dtype,
    out_shard_size, force, allow_nonfinite, threads, svd, max_memory, report_path.

    Returns a ``Report``; raises a ``nufilt.Error`` subclass on failure.
    """
    tasks = [os.fspath(t) for t in tasks]
    if not tasks:
        raise ValueError("merge needs at least one task model")
    params = dict(params)
    rpath, tmp = _report_target(params)
    opts = _Opts(method, device, params)
    prog = _Progress(progress, "nufilt merge")
    opts.o.progress = prog.fn
    arr = (ctypes.c_char_p * len(tasks))(*[os.fsencode(t) for t in tasks])
    err = _lib.Error()
    t0 = time.monotonic()
    _run(lambda: _lib.lib.nf_merge(_p(base), arr, len(tasks), _p(out), _p(save_steps),
                                   ctypes.byref(opts.o), ctypes.byref(err)), prog, err)
    return _finish(out, tasks, t0, rpath, tmp)


def step(base: PathLike, task: PathLike, out: PathLike, prev: Optional[PathLike] = None,
         method: Optional[str] = None, device: str = "auto", progress: ProgressArg = True,
         **params: Any) -> Report:
    """One continual step, as ``nufilt step``: merges ``task`` into ``prev`` (the previous
    merged model; None starts a stream) and writes ``out``. Parameters left out come from
    ``prev``'s metadata (or the method's defaults at the first step); one that disagrees
    with it raises ``nufilt.StateError``. ``method`` None means ``prev``'s, or nufilt.
    Other arguments as in ``merge``."""
    params = dict(params)
    rpath, tmp = _report_target(params)
    opts = _Opts(method, device, params)
    prog = _Progress(progress, "nufilt step")
    opts.o.progress = prog.fn
    err = _lib.Error()
    t0 = time.monotonic()
    _run(lambda: _lib.lib.nf_step(_p(base), _p(task), _p(prev), _p(out), ctypes.byref(opts.o),
                                  ctypes.byref(err)), prog, err)
    return _finish(out, [os.fspath(task)], t0, rpath, tmp)


# ---- in-memory merges -------------------------------------------------------------------------


def _model_from(name: str, b: Borrowed, meta: Optional[Mapping[str, str]] = None) -> int:
    entries = list((meta or {}).items())
    marr = (_lib.MetaEntry * max(len(entries), 1))()
    keep = []
    for i, (k, v) in enumerate(entries):
        kb, vb = str(k).encode(), str(v).encode()
        keep += [kb, vb]
        marr[i].key, marr[i].value = kb, vb
    m = ctypes.c_void_p()
    err = _lib.Error()
    rc = _lib.lib.nf_model_from_memory(name.encode(), b.array, b.n, marr, len(entries),
                                       ctypes.byref(m), ctypes.byref(err))
    if rc:
        _raise(rc, err)
    return m.value


def _open(path: PathLike) -> int:
    m = ctypes.c_void_p()
    err = _lib.Error()
    rc = _lib.lib.nf_model_open(_p(path), ctypes.byref(m), ctypes.byref(err))
    if rc:
        _raise(rc, err)
    return m.value


def _metadata(m: int) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for i in range(_lib.lib.nf_model_metadata_count(m)):
        k, v = ctypes.c_char_p(), ctypes.c_char_p()
        _lib.lib.nf_model_metadata_at(m, i, ctypes.byref(k), ctypes.byref(v))
        out[k.value.decode("utf-8", "replace")] = v.value.decode("utf-8", "replace")
    return out


def _infos(m: int) -> List[_lib.TensorInfo]:
    res = []
    for i in range(_lib.lib.nf_model_tensor_count(m)):
        info = _lib.TensorInfo()
        _lib.lib.nf_model_tensor_info(m, i, ctypes.byref(info))
        res.append(info)
    return res


def _named_tasks(tasks: Any) -> List[Tuple[str, Mapping[str, Any]]]:
    if isinstance(tasks, Mapping) and tasks and all(isinstance(v, Mapping)
                                                    for v in tasks.values()):
        return [(str(k), v) for k, v in tasks.items()]
    if isinstance(tasks, Mapping):
        raise TypeError("tasks: a sequence of state dicts, or a mapping of task names to state "
                        "dicts (a single state dict goes in a list)")
    return [("task%d" % (i + 1), t) for i, t in enumerate(tasks)]


def merge_state_dicts(base: Mapping[str, Any], tasks: Any, method: Optional[str] = None,
                      state: Union[State, PathLike, None] = None, device: str = "auto",
                      progress: ProgressArg = False, **params: Any
                      ) -> Tuple[Dict[str, Any], State]:
    """Merges in-memory models without writing files: the same tensors, bit for bit, as
    ``nufilt merge`` on the same checkpoints.

    ``base``: a mapping of tensor names to NumPy arrays or torch tensors (a ``state_dict()``).
    ``tasks``: a sequence of such mappings, merged in order, or a mapping of task names to
    them (the names go into the recorded history; default task1, task2, ...).
    ``state``: None starts a stream; the ``State`` a previous call returned (or the path of a
    merged checkpoint) continues it. ``method``: None means the state's, or nufilt.

    Inputs are read in place (contiguous float32 and other packed arrays are not copied;
    a strided one is packed once). Returns ``(merged, state)``: a dict of arrays of the kind
    given (NumPy, or torch tensors when the base holds torch tensors), in the base's order and
    dtypes (or ``out_dtype``), and the new ``State``. Other arguments as in ``merge``.
    """
    named = _named_tasks(tasks)
    if not named:
        raise ValueError("merge_state_dicts needs at least one task")
    params = dict(params)
    if "report_path" in params or "out_shard_size" in params or "force" in params:
        raise TypeError("report_path, out_shard_size and force apply to file outputs only")
    bb = Borrowed(base)
    kind = bb.kind
    mbase = _model_from("base", bb)
    models = [mbase]
    prev_m: Optional[int] = None
    prev_keep: Any = None
    try:
        if isinstance(state, State):
            pb = Borrowed(state.merged)
            prev_keep = pb
            prev_m = _model_from("previous merge", pb, state.metadata)
            models.append(prev_m)
        elif state is not None:
            prev_m = _open(state)
            models.append(prev_m)
        infos = _infos(mbase)
        prog = _Progress(progress, "nufilt")
        prog.nsteps_override = len(named)
        merged: Dict[str, Any] = {}
        meta: Dict[str, str] = {}
        for k, (tname, tsd) in enumerate(named):
            tb = Borrowed(tsd)
            mt = _model_from(tname, tb)
            try:
                opts = _Opts(method, device, params)
                opts.o.progress = prog.fn
                # output buffers of the caller's kind, in the base's order
                outs: List[Any] = []
                addrs = (ctypes.c_void_p * len(infos))()
                out_dtype = opts.o.out_dtype
                for i, info in enumerate(infos):
                    dt = info.dtype
                    if out_dtype and dt in (1, 2, 3, 4):  # float tensors take out_dtype
                        dt = out_dtype
                    buf, addr = empty_like_output(
                        kind, [info.shape[d] for d in range(info.ndim)], _lib.DTYPES[dt])
                    outs.append(buf)
                    addrs[i] = addr or None
                new_meta: Dict[str, str] = {}

                def on_meta(_u: Any, key: bytes, value: bytes) -> int:
                    new_meta[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
                    return 0

                meta_fn = _lib.METADATA_FN(on_meta)
                sink = _lib.Sink(ctypes.sizeof(_lib.Sink), addrs, len(infos),
                                 _lib.TENSOR_DONE_FN(), meta_fn, None)
                err = _lib.Error()
                prog.step_offset = k
                pm = prev_m
                _run(lambda: _lib.lib.nf_step_models(mbase, mt, pm, ctypes.byref(sink),
                                                     ctypes.byref(opts.o), ctypes.byref(err)),
                     prog, err)
            finally:
                _lib.lib.nf_model_close(mt)
            merged = {infos[i].name.decode(): outs[i] for i in range(len(infos))}
            meta = new_meta
            # this step's output is the next step's previous model
            if prev_m is not None:
                _lib.lib.nf_model_close(prev_m)
                models.remove(prev_m)
            prev_keep = Borrowed(merged)
            prev_m = _model_from("previous merge", prev_keep, meta)
            models.append(prev_m)
        prog.close()
    finally:
        for m in models:
            _lib.lib.nf_model_close(m)
    return merged, State(merged, meta)


# ---- looking inside ---------------------------------------------------------------------------


def inspect(path: PathLike, preset: Optional[str] = None,
            layers: Optional[str] = None) -> Dict[str, Any]:
    """What ``nufilt inspect`` shows, as a dict: ``path``, ``shards``, ``tensors`` (name,
    dtype, shape, and ``treated``: whether NUFILT treats it under ``preset`` or the
    ``layers`` regex), ``preset`` (the one resolved), ``metadata`` (every entry), and for a
    merged model ``method``, ``step``, ``params``, ``state`` and ``tasks`` (parsed)."""
    m = _open(path)
    try:
        err = _lib.Error()
        resolved = ctypes.c_char_p()
        preset_name = None
        if layers is None:
            rc = _lib.lib.nf_preset_resolve(m, _p(preset) if preset else None,
                                            ctypes.byref(resolved), ctypes.byref(err))
            if rc:
                _raise(rc, err)
            preset_name = resolved.value.decode()
        infos = _infos(m)
        treated = (ctypes.c_ubyte * max(len(infos), 1))()
        rc = _lib.lib.nf_select(m, None if layers else resolved.value,
                                layers.encode() if layers else None, treated,
                                ctypes.byref(err))
        if rc:
            _raise(rc, err)
        tensors = [{"name": t.name.decode(), "dtype": _lib.DTYPES[t.dtype],
                    "shape": [t.shape[d] for d in range(t.ndim)], "treated": bool(treated[i])}
                   for i, t in enumerate(infos)]
        md = _metadata(m)
        shards = [_lib.lib.nf_model_shard_path(m, i).decode()
                  for i in range(_lib.lib.nf_model_shard_count(m))]
    finally:
        _lib.lib.nf_model_close(m)
    res: Dict[str, Any] = {"path": os.fspath(path), "shards": shards, "tensors": tensors,
                           "preset": preset_name, "layers": layers, "metadata": md}
    if "nufilt.method" in md:
        res["method"] = md["nufilt.method"]
        res["step"] = int(md.get("nufilt.step", "0"))
        for k in ("params", "state", "tasks"):
            try:
                res[k] = json.loads(md.get("nufilt." + k, "null"))
            except ValueError:
                res[k] = None
    return res


def methods() -> List[Method]:
    """The merging methods this build implements (``method=`` takes their names)."""
    res = []
    for i in range(_lib.METHOD_COUNT):
        p = _lib.lib.nf_method_get(i)
        if not p:
            continue
        mi = p.contents
        if mi.implemented:
            res.append(Method(mi.name.decode(), mi.summary.decode(),
                              mi.options.decode().replace("`", ""), mi.paper.decode()))
    return res


def devices() -> List[Device]:
    """The compute devices (``device=`` takes their ``spec``); a backend whose driver is
    missing is absent (``backends()`` says why)."""
    arr = (_lib.DeviceInfo * 64)()
    n = ctypes.c_int()
    err = _lib.Error()
    rc = _lib.lib.nf_devices_list(arr, 64, ctypes.byref(n), ctypes.byref(err))
    if rc:
        _raise(rc, err)
    return [Device(d.api.decode(), d.index, d.name.decode("utf-8", "replace"),
                   _lib.lib.nf_device_type_name(d.type).decode(), d.memory,
                   d.driver.decode("utf-8", "replace")) for d in arr[:min(n.value, 64)]]


def backends() -> Dict[str, str]:
    """For each compiled-in compute API: "available", or why its driver did not load."""
    res = {}
    i = 0
    while True:
        api, why = ctypes.c_char_p(), ctypes.c_char_p()
        avail = ctypes.c_int()
        if _lib.lib.nf_backend_status(i, ctypes.byref(api), ctypes.byref(avail),
                                      ctypes.byref(why)) != 0 or not api.value:
            break
        res[api.value.decode()] = "available" if avail.value else (
            why.value.decode() if why.value else "unavailable")
        i += 1
    return res
