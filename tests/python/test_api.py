"""The Python package against the nufilt program (bit for bit on the same inputs), its
continual state, cancellation, exceptions, the no-copy claim, and the small entry points."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import nufilt
import st  # tests/ref: an independent NumPy safetensors reader


def load(path):
    return dict(st.load(str(path)))


def same(a, b):
    assert list(a) == list(b) or sorted(a) == sorted(b)
    for k in a:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        assert x.dtype == y.dtype and x.shape == y.shape, k
        assert x.tobytes() == y.tobytes(), "tensor %s differs" % k


def run_cli(cli, *args):
    subprocess.run([cli, *map(str, args)], check=True, capture_output=True)


@pytest.mark.parametrize("method,params", [("nufilt", {}), ("ties", {"keep": 0.3}),
                                           ("opcm", {})])
def test_every_entry_point_matches_cli(tmp_path, cli, digits, method, params):
    base, tasks = digits
    flags = ["--%s=%s" % (k.replace("_", "-"), v) for k, v in params.items()]
    run_cli(cli, "merge", "--method", method, *flags, "--base", base, "--out",
            tmp_path / "cli.safetensors", *tasks[:3])
    ref = load(tmp_path / "cli.safetensors")
    # merge on files
    rep = nufilt.merge(base, tasks[:3], tmp_path / "py.safetensors", method=method,
                       progress=False, **params)
    assert rep.method == method and rep.metadata["nufilt.step"] == "3"
    same(ref, load(tmp_path / "py.safetensors"))
    # step by step on files
    prev = None
    for i, t in enumerate(tasks[:3]):
        out = tmp_path / ("s%d.safetensors" % i)
        nufilt.step(base, t, out, prev=prev, method=method if i == 0 else None,
                    progress=False, **params)
        prev = out
    same(ref, load(prev))
    # in memory, all at once and one task per call through the state
    b = load(base)
    merged, state = nufilt.merge_state_dicts(b, [load(t) for t in tasks[:3]], method=method,
                                             **params)
    same(ref, merged)
    assert state.step == 3 and state.method == method
    s = None
    for t in tasks[:3]:
        m, s = nufilt.merge_state_dicts(b, [load(t)], method=method if s is None else None,
                                        state=s, **params)
    same(ref, m)


def test_state_round_trip(tmp_path, cli, digits):
    base, tasks = digits
    b = load(base)
    merged, state = nufilt.merge_state_dicts(b, {"rot90": load(tasks[0]),
                                                 "flip_h": load(tasks[1])})
    # the state is what a merged file carries
    run_cli(cli, "merge", "--base", base, "--out", tmp_path / "m2.safetensors", *tasks[:2])
    filemeta = st.load(str(tmp_path / "m2.safetensors")).metadata
    for k in ("nufilt.method", "nufilt.step", "nufilt.params", "nufilt.state", "nufilt.base"):
        assert state.metadata[k] == filemeta[k], k
    assert [t["name"] for t in nufilt.inspect(tmp_path / "m2.safetensors")["tasks"]] == \
        ["rot90", "flip_h"]
    # continuing from the State, or from the merged file's path, gives the CLI's next step
    run_cli(cli, "step", "--base", base, "--prev", tmp_path / "m2.safetensors", "--task",
            tasks[2], "--out", tmp_path / "m3.safetensors")
    ref = load(tmp_path / "m3.safetensors")
    m3, s3 = nufilt.merge_state_dicts(b, [load(tasks[2])], state=state)
    same(ref, m3)
    m3f, _ = nufilt.merge_state_dicts(b, [load(tasks[2])], state=tmp_path / "m2.safetensors")
    same(ref, m3f)
    assert s3.step == 3 and s3.params["null_rank"] == 128
    # a conflicting parameter is refused with the state's reason
    with pytest.raises(nufilt.StateError, match="null_rank"):
        nufilt.merge_state_dicts(b, [load(tasks[2])], state=state, null_rank=4)


def test_strided_and_dtypes(digits):
    base, tasks = digits
    b, t = load(base), load(tasks[0])
    ref, _ = nufilt.merge_state_dicts(b, [t])
    # transposed views (not contiguous) are packed by the library: same result
    tv = {k: (np.asfortranarray(v) if v.ndim == 2 else v) for k, v in t.items()}
    assert any(not v.flags.c_contiguous for v in tv.values())
    m, _ = nufilt.merge_state_dicts(b, [tv])
    same(ref, m)
    m16, _ = nufilt.merge_state_dicts(b, [t], out_dtype="f16")
    assert all(v.dtype == np.float16 for k, v in m16.items() if b[k].dtype == np.float32)


def test_progress_and_cancel(tmp_path, digits):
    base, tasks = digits
    seen = []

    def on_progress(p):
        seen.append(p)
        return len(seen) >= 3  # cancel at the third tensor

    before = sorted(os.listdir(tmp_path))
    with pytest.raises(nufilt.CancelledError, match="cancelled"):
        nufilt.merge(base, tasks, tmp_path / "c.safetensors", progress=on_progress)
    assert sorted(os.listdir(tmp_path)) == before  # nothing written, no temporaries
    assert seen[0].step == 1 and seen[0].nsteps == 4 and seen[0].tensor
    # an exception in the callback cancels and comes back to the caller
    def boom(p):
        raise RuntimeError("from the callback")
    with pytest.raises(RuntimeError, match="from the callback"):
        nufilt.merge_state_dicts(load(base), [load(tasks[0])], progress=boom)
    # progress of an in-memory stream counts its steps
    steps = set()
    nufilt.merge_state_dicts(load(base), [load(t) for t in tasks[:2]],
                             progress=lambda p: steps.add((p.step, p.nsteps)))
    assert steps == {(1, 2), (2, 2)}


def test_ctrl_c(tmp_path, digits):
    """SIGINT during a merge: KeyboardInterrupt in the caller, nothing left on disk."""
    base, tasks = digits
    script = textwrap.dedent("""
        import sys, time, nufilt
        started = []
        def p(info):
            if not started:
                started.append(1)
                print("started", flush=True)
            time.sleep(0.05)  # a merge of several seconds: the signal comes in the middle
        try:
            nufilt.merge(sys.argv[1], sys.argv[2:], "out", progress=p, threads=1,
                         iters=2000)
        except KeyboardInterrupt:
            print("KeyboardInterrupt", flush=True)
            sys.exit(3)
        print("finished", flush=True)
    """)
    # Python raises KeyboardInterrupt only where SIGINT is not ignored at its start (this
    # test may run as a background job, which ignores it)
    proc = subprocess.Popen([sys.executable, "-c", script, str(base)] + [str(t) for t in tasks],
                            cwd=tmp_path, stdout=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stdout.readline().strip() == "started"
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 3 and "KeyboardInterrupt" in out
    assert time.monotonic() - t0 < 30
    assert os.listdir(tmp_path) == []


def test_exceptions(tmp_path, digits):
    base, tasks = digits
    out = tmp_path / "o.safetensors"
    nufilt.merge(base, tasks[:1], out, progress=False)
    with pytest.raises(nufilt.OutputExistsError) as e:
        nufilt.merge(base, tasks[:1], out, progress=False)
    assert isinstance(e.value, FileExistsError) and e.value.status == "NF_E_EXISTS"
    assert "`force`" in str(e.value) and str(out) in str(e.value)
    nufilt.merge(base, tasks[:1], out, progress=False, force=True)
    b = load(base)
    t = load(tasks[0])
    name = next(k for k, v in t.items() if v.ndim == 2)
    t[name] = t[name][:, :-1].copy()
    with pytest.raises(nufilt.MismatchError, match=name):
        nufilt.merge_state_dicts(b, [t])
    with pytest.raises(nufilt.ArgumentError, match="keep"):
        nufilt.merge_state_dicts(b, [load(tasks[0])], method="ties", keep=2.0)
    with pytest.raises(TypeError, match="null_rnk"):
        nufilt.merge_state_dicts(b, [load(tasks[0])], null_rnk=3)
    with pytest.raises(ValueError, match="unknown"):
        nufilt.merge_state_dicts(b, [load(tasks[0])], method="nope")
    with pytest.raises(nufilt.FileError):
        nufilt.inspect(tmp_path / "missing.safetensors")
    _, s = nufilt.merge_state_dicts(b, [load(tasks[0])], method="ta")
    with pytest.raises(nufilt.StateError, match="method"):
        nufilt.merge_state_dicts(b, [load(tasks[1])], method="nufilt", state=s)
    assert issubclass(nufilt.MismatchError, nufilt.Error)


NO_COPY = textwrap.dedent("""
    import resource, sys, numpy as np, nufilt
    fortran = sys.argv[1] == "fortran"
    rng = np.random.default_rng(0)
    n, rows = 8, 1024          # 8 tensors of 1024 x 1024 float32: 32 MiB a model
    def model(s):
        return {"layer%d.weight" % i: (rng.standard_normal((rows, rows), dtype=np.float32) * s)
                for i in range(n)}
    base, task = model(1.0), model(1.01)
    if fortran:
        task = {k: np.asfortranarray(v) for k, v in task.items()}
    def peak():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    before = peak()
    merged, _ = nufilt.merge_state_dicts(base, [task], method="ta", threads=1)
    print(before, peak(), n * rows * rows * 4)
""")


def test_no_copy_of_inputs():
    """Peak RSS of an in-memory merge grows by the output, not by copies of the inputs; the
    same measurement on Fortran-ordered inputs (which the library packs) sees the copy."""
    res = {}
    for kind in ("c", "fortran"):
        p = subprocess.run([sys.executable, "-c", NO_COPY, kind], check=True,
                           capture_output=True, text=True)
        before, after, model = map(int, p.stdout.split())
        res[kind] = after - before
        print(kind, "peak grew by %.1f MiB (a model is %.1f MiB)" % (res[kind] / 2**20,
                                                                     model / 2**20))
    # the output (one model) plus working memory: less than a copy of either input would
    # add on top of it (measured here: 54.5 MiB for a 32 MiB model; Fortran order 86.2)
    assert res["c"] < 1.9 * model
    # the control: a copy of the task is visible in the same measurement
    assert res["fortran"] > res["c"] + 0.75 * model


def test_torch(digits):
    torch = pytest.importorskip("torch", reason="torch is optional (not installed)")
    base, tasks = digits
    b, t = load(base), load(tasks[0])
    ref, _ = nufilt.merge_state_dicts(b, [t])
    tb = {k: torch.from_numpy(v) for k, v in b.items()}
    tt = {k: torch.from_numpy(v) for k, v in t.items()}
    m, s = nufilt.merge_state_dicts(tb, [tt])
    assert all(isinstance(v, torch.Tensor) for v in m.values())
    same(ref, {k: v.numpy() for k, v in m.items()})


def test_small_entry_points(digits):
    base, _ = digits
    info = nufilt.inspect(base)
    assert [t["name"] for t in info["tensors"]] == list(st.load(str(base)).keys()) or \
        sorted(t["name"] for t in info["tensors"]) == sorted(st.load(str(base)).keys())
    assert any(t["treated"] for t in info["tensors"])
    ms = {m.name: m for m in nufilt.methods()}
    assert "null_rank 128" in ms["nufilt"].options and "ties" in ms
    assert any(d.spec == "cpu" for d in nufilt.devices())
    a, b, c = map(int, nufilt.__version__.split("."))
    assert nufilt.version_number == a * 1000000 + b * 1000 + c
    assert "merge_state_dicts" in nufilt.__doc__ and nufilt.merge.__doc__


def test_fusion_bench_bridge(digits):
    """The FusionBench algorithm merges a pool like merge_state_dicts does (bit for bit)."""
    torch = pytest.importorskip("torch", reason="torch is optional (not installed)")
    pytest.importorskip("fusion_bench", reason="FusionBench is optional (not installed)")
    from fusion_bench.modelpool import BaseModelPool
    from nufilt.fusion_bench import NufiltContinualMerging

    base, tasks = digits
    sds = [load(base)] + [load(t) for t in tasks[:3]]

    class Holder(torch.nn.Module):  # a module whose state dict is a checkpoint's tensors
        def __init__(self, sd):
            super().__init__()
            for i, (k, v) in enumerate(sd.items()):
                self.register_buffer("t%d" % i, torch.from_numpy(v.copy()))
            self.names = list(sd)

    pool = BaseModelPool({"_pretrained_": Holder(sds[0]),
                          **{"task%d" % i: Holder(sd) for i, sd in enumerate(sds[1:], 1)}})
    algo = NufiltContinualMerging(method="ties", params={"keep": 0.3})
    model = algo.run(pool)
    ref, _ = nufilt.merge_state_dicts(sds[0], sds[1:], method="ties", keep=0.3)
    got = {n: model.state_dict()["t%d" % i].numpy() for i, n in enumerate(model.names)}
    same(ref, got)
    assert algo.state.step == 3 and algo.order == ["task1", "task2", "task3"]
