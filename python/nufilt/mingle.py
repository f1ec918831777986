"""MINGLE: test-time continual model merging with null-space gated low-rank experts.

MINGLE (Qiu et al., NeurIPS 2025) is not data-free: at each new task it uses a small buffer of
unlabeled inputs of that task. The result is the base model plus, in every treated linear
layer, one low-rank expert per task and a gate (a linear map of the token-mean of the layer's
input) that mixes them::

    y = W0 x + b0 + sum_i g_i(x) B_i A_i x

Each task's expert is the rank-``rank`` truncated SVD of its task vector after removing the
top effective-rank block seen through the SVD of the earlier experts' sum; the new gate row is
trained for ``max_steps`` Adam steps to distil the fine-tuned model's logits on the buffer,
its gradient softly projected away from the input subspaces of the earlier tasks. docs/mingle.md
describes every step, the official code's quirks and which of them this module keeps.

The expert construction (the SVDs, through libnufilt's ``nf_svd_f32`` with the same ``svd``
modes as a merge) and the gradient projection rule are plain NumPy here; the gated layers, the
test-time training and the stream (:class:`MingleStream`, :func:`load`) need torch
(``pip install .[mingle]``) and run on any torch device::

    stream = nufilt.mingle.MingleStream(base_model)
    stream.add_task(finetuned_model, unlabeled_inputs)     # a tokenizer's output, or a tensor
    stream.save("mingle-dir")
    model = nufilt.mingle.load("mingle-dir", base_model)   # base_model patched in place
"""
from __future__ import annotations

import ctypes
import json
import math
import os
import re
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from . import _lib
from .errors import ArgumentError, error_for

FORMAT = "nufilt-mingle/1"
#: zero_diagonal leaves the singular pairs of the earlier experts' sum with s_i <= DIAG_TOL s_0
DIAG_TOL = 1e-5
FILE = "mingle.safetensors"

#: The official configurations (config/method/mingle/mingle.yaml and mingle_nlp.yaml).
RECIPES: Dict[str, Dict[str, Any]] = {
    "nlp": dict(rank=64, lr=1e-3, batch_size=8, max_steps=50, temperature=2.0, subspace_k=3,
                gamma=1.0, beta=0.99, kd_loss="mean_t2", buffer_size=100),
    "vision": dict(rank=64, lr=1e-4, batch_size=16, max_steps=50, temperature=2.0,
                   subspace_k=3, gamma=1.0, beta=0.99, kd_loss="sum_over_batch",
                   buffer_per_class=5),
}


def _arg(msg: str) -> ArgumentError:
    return ArgumentError(msg, "NF_E_ARG", -5)


# ---- torch-free part: SVD through libnufilt, expert construction, projection rule -----------


def svd(x: np.ndarray, rank: int = 0, mode: str = "exact", seed: int = 0,
        left: bool = True) -> Tuple[Optional[np.ndarray], np.ndarray, np.ndarray]:
    """libnufilt's SVD of a float32 matrix (``nf_svd_f32``): ``(u, s, vt)`` with the top
    ``rank`` triplets (0: all); ``s`` has min(m, n) values (zeros past the kept ones in the
    modes other than exact). ``mode`` is a merge's ``svd`` option."""
    if mode not in _lib.SVD:
        raise _arg("unknown svd mode %r (one of %s)"
                            % (mode, ", ".join(sorted(_lib.SVD))))
    a = np.ascontiguousarray(x, dtype=np.float32)
    if a.ndim != 2:
        raise _arg("svd wants a matrix, got shape %s" % (a.shape,))
    m, n = a.shape
    k = min(m, n)
    want = k if rank <= 0 or rank > k else int(rank)
    s = np.zeros(k, np.float32)
    vt = np.zeros((want, n), np.float32)
    u = np.zeros((m, want), np.float32) if left else None
    kept = ctypes.c_int(0)
    err = _lib.Error()
    fp = ctypes.POINTER(ctypes.c_float)
    rc = _lib.lib.nf_svd_f32(a.ctypes.data_as(fp), m, n, want, _lib.SVD[mode],
                             ctypes.c_uint64(seed), s.ctypes.data_as(fp),
                             u.ctypes.data_as(fp) if u is not None else None,
                             vt.ctypes.data_as(fp), ctypes.byref(kept), ctypes.byref(err))
    if rc:
        raise error_for(rc, _lib.STATUS.get(rc, "NF_E_UNKNOWN"),
                        err.msg.decode("utf-8", "replace"))
    got = kept.value
    return (u[:, :got] if u is not None else None), s, vt[:got]


def effective_rank(s: np.ndarray) -> int:
    """floor(exp(entropy of s / sum(s))), the official ``construct_lora``'s effective rank.
    Zero singular values contribute nothing (0 log 0 = 0; the official code gets NaN there and
    fails), and an all-zero spectrum has effective rank 0."""
    s = np.asarray(s, dtype=np.float64)
    total = s.sum()
    if not total > 0:
        return 0
    p = s[s > 0] / total
    return int(math.floor(math.exp(-(p * np.log(p)).sum()) + 1e-9))


def project_task_vector(tau: np.ndarray, prev_sum: Optional[np.ndarray],
                        zero_diagonal: bool = False, prev_svd: str = "exact") -> np.ndarray:
    """The official projection of a task vector against the sum of the earlier experts:
    with u s v^T the SVD of ``prev_sum`` and r its :func:`effective_rank`, the top-left r x r
    block of u^T tau v is zeroed, i.e. tau - u_r u_r^T tau v_r v_r^T. ``zero_diagonal`` also
    zeroes the rest of the diagonal of u^T tau v (what ``projected_task_tv.diag().fill_(0)``
    was meant to do; the official line acts on a copy and changes nothing), for the pairs
    whose singular value exceeds DIAG_TOL times the largest. ``prev_sum`` None
    (the first task) returns tau unchanged. The SVD of the sum is always the full one (the
    effective rank needs the whole spectrum); ``prev_svd`` is kept for the recipe record."""
    tau = np.asarray(tau, dtype=np.float32)
    if prev_sum is None:
        return tau.copy()
    u, s, vt = svd(prev_sum, 0, prev_svd if prev_svd == "exact" else "exact")
    r = effective_rank(s)
    out = tau.astype(np.float64)
    if zero_diagonal:
        k = s.shape[0]
        u64, v64 = u.astype(np.float64), vt.astype(np.float64).T
        d = np.einsum("mi,mn,ni->i", u64, out, v64)  # diag of u^T tau v
        d[:r] = 0.0  # the block below removes those
        # pairs past the sum's numerical rank are an arbitrary basis of its null spaces
        # (LAPACK's choice): left alone, so that the option is well defined
        d[s <= DIAG_TOL * (s[0] if s.size else 0.0)] = 0.0
        out -= (u64 * d[None, :k]) @ v64.T
    if r > 0:
        ur, vr = u[:, :r].astype(np.float64), vt[:r].astype(np.float64).T
        out -= ur @ (ur.T @ tau.astype(np.float64) @ vr) @ vr.T
    return out.astype(np.float32)


def expert_factors(tau: np.ndarray, rank: int, mode: str = "exact",
                   seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """(B, A) with B A the rank-``rank`` truncated SVD of ``tau`` (m x n): B = U_r (m x r),
    A = diag(S_r) V_r^T (r x n), as the official ``LoRA.set_delta``. Fewer columns when tau is
    smaller than the rank; zero-padded to ``rank`` so that experts stack."""
    m, n = tau.shape
    u, s, vt = svd(tau, rank, mode, seed)
    r = vt.shape[0]
    want = min(rank, m, n)
    B = np.zeros((m, want), np.float32)
    A = np.zeros((want, n), np.float32)
    B[:, :r] = u
    A[:r] = s[:r, None] * vt
    return B, A


def build_expert(w0: np.ndarray, wt: np.ndarray, prev: Sequence[Tuple[np.ndarray, np.ndarray]],
                 rank: int, zero_diagonal: bool = False, mode: str = "exact",
                 seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """One layer's expert for a new task: tau = wt - w0, projected against the sum of the
    earlier experts (B_i, A_i) of the layer, truncated to ``rank``."""
    tau = np.asarray(wt, np.float32) - np.asarray(w0, np.float32)
    prev_sum = None
    if prev:
        prev_sum = np.zeros_like(tau)
        for B, A in prev:
            prev_sum += np.asarray(B, np.float32) @ np.asarray(A, np.float32)
    return expert_factors(project_task_vector(tau, prev_sum, zero_diagonal), rank, mode, seed)


def project_gradient(grad: np.ndarray, U: Optional[np.ndarray], h: Optional[np.ndarray],
                     beta: float = 0.99, gamma: float = 1.0
                     ) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """The official adaptive soft null-space projection of a gate gradient (out x C) against
    a layer's basis U (C x k), with the EMA h (k values; None = zeros, as at each task's
    start). Returns (projected gradient, new h)::

        r   = mean over rows of |g U| / (||g_row|| + 1e-12)
        h   = beta h + (1 - beta) r
        g'  = g - (g U) diag(exp(-gamma h)) U^T

    No basis (the first task), a 1-D gradient (a bias) or a width mismatch: g unchanged."""
    g = np.asarray(grad, dtype=np.float64)
    if U is None or g.ndim != 2 or g.shape[1] != U.shape[0]:
        return np.asarray(grad).copy(), h
    U = np.asarray(U, dtype=np.float64)
    h0 = np.zeros(U.shape[1]) if h is None else np.asarray(h, dtype=np.float64)
    gu = g @ U
    r = np.mean(np.abs(gu) / (np.linalg.norm(g, axis=1, keepdims=True) + 1e-12), axis=0)
    h1 = beta * h0 + (1.0 - beta) * r
    lam = np.exp(-gamma * h1)
    return g - (gu * lam[None, :]) @ U.T, h1


def extend_basis(U: Optional[np.ndarray], cov: np.ndarray, k: int) -> np.ndarray:
    """The official ``subspace_from_loader`` update: the top k singular vectors of the input
    covariance (C x C) join the basis, re-orthonormalised by a reduced QR of [U, top_k]."""
    u, _, _ = svd(np.asarray(cov, np.float32), k, "exact")
    if U is None:
        return u
    q, _ = np.linalg.qr(np.concatenate([np.asarray(U, np.float32), u], axis=1))
    return q.astype(np.float32)


# ---- torch part --------------------------------------------------------------------------


def _torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - exercised without torch
        raise ImportError("nufilt.mingle's models need torch: pip install 'nufilt[mingle]'") \
            from e
    return torch


def _make_gated_linear():
    torch = _torch()
    nn = torch.nn

    class GatedLinear(nn.Module):
        """A linear layer with MINGLE's gated experts: W0 x + b0 + sum_i g_i(x) B_i A_i x,
        g(x) = G mean_tokens(x) + c (the rows of all earlier tasks frozen, the last row
        trainable). ``batch_reduce`` (the official default) averages the gates over the batch
        too, so one gate vector serves the whole batch."""

        def __init__(self, base: "nn.Linear", batch_reduce: bool = True):
            super().__init__()
            self.base = base
            for p in self.base.parameters():
                p.requires_grad_(False)
            self.batch_reduce = batch_reduce
            C = base.in_features
            dev, dt = base.weight.device, base.weight.dtype
            self.register_buffer("A", torch.zeros(0, 0, C, device=dev, dtype=dt))
            self.register_buffer("B", torch.zeros(0, base.out_features, 0, device=dev,
                                                  dtype=dt))
            self.register_buffer("gate_w_frozen", torch.zeros(0, C, device=dev, dtype=dt))
            self.register_buffer("gate_b_frozen", torch.zeros(0, device=dev, dtype=dt))
            self.gate_w = nn.Parameter(torch.zeros(0, C, device=dev, dtype=dt))
            self.gate_b = nn.Parameter(torch.zeros(0, device=dev, dtype=dt))
            self.U: Optional[Any] = None  # basis (C x k), float32 on the CPU
            self.h: Optional[Any] = None  # EMA of the interference ratio, this task only

        @property
        def in_features(self) -> int:
            return self.base.in_features

        @property
        def out_features(self) -> int:
            return self.base.out_features

        @property
        def weight(self):
            return self.base.weight

        @property
        def bias(self):
            return self.base.bias

        @property
        def num_experts(self) -> int:
            return int(self.A.shape[0])

        def gate_weights(self):
            return (torch.cat([self.gate_w_frozen, self.gate_w], 0),
                    torch.cat([self.gate_b_frozen, self.gate_b], 0))

        @torch.no_grad()
        def add_expert(self, B, A, generator=None, init_lambda: float = 0.0):
            """Appends expert B A; the trainable gate row joins the frozen ones and a new row
            (weights N(0, 0.01^2), bias init_lambda) becomes the trainable one."""
            dev, dt = self.base.weight.device, self.base.weight.dtype
            B = torch.as_tensor(B).to(dev, dt)
            A = torch.as_tensor(A).to(dev, dt)
            r = A.shape[0]
            if self.num_experts and r != self.A.shape[1]:
                raise _arg("expert rank %d differs from the layer's %d"
                                    % (r, self.A.shape[1]))
            self.A = torch.cat([self.A.reshape(-1, r, A.shape[1]), A[None]], 0)
            self.B = torch.cat([self.B.reshape(-1, B.shape[0], r), B[None]], 0)
            self.gate_w_frozen = torch.cat([self.gate_w_frozen, self.gate_w.data], 0)
            self.gate_b_frozen = torch.cat([self.gate_b_frozen, self.gate_b.data], 0)
            w = torch.empty(1, self.in_features, dtype=torch.float32)
            w.normal_(0.0, 0.01, generator=generator)
            self.gate_w = nn.Parameter(w.to(dev, dt))
            self.gate_b = nn.Parameter(torch.full((1,), float(init_lambda), device=dev,
                                                  dtype=dt))
            self.h = None

        def forward(self, x):
            y = self.base(x)
            if self.num_experts == 0:
                return y
            G, c = self.gate_weights()
            xs = x if x.dim() >= 3 else x.unsqueeze(1)
            # gate of the token mean (= token mean of the gate, it is affine)
            g = torch.nn.functional.linear(xs.mean(dim=-2), G, c)  # [..., E]
            xa = torch.einsum("...n,ern->...er", x, self.A)  # [..., E, r]
            if self.batch_reduce:
                g = g.reshape(-1, g.shape[-1]).mean(dim=0)
                xa = xa * g[:, None]
            elif x.dim() >= 3:
                xa = xa * g.unsqueeze(-2).unsqueeze(-1)  # one gate vector per sequence
            else:
                xa = xa * g.unsqueeze(-1)
            return y + torch.einsum("...er,emr->...m", xa, self.B)

        def project_gate_grad(self, gamma: float, beta: float) -> None:
            """Replaces the trainable gate row's gradient by the official adaptive projection
            (see :func:`project_gradient`); the bias gradient is left alone, as officially."""
            g = self.gate_w.grad
            if g is None or self.U is None:
                return
            U = self.U.to(g.device, g.dtype)
            if self.h is None:
                self.h = torch.zeros(U.shape[1], device=g.device, dtype=g.dtype)
            gu = g @ U
            r = torch.mean(gu.abs() / (g.norm(dim=1, keepdim=True) + 1e-12), dim=0)
            self.h = beta * self.h + (1.0 - beta) * r.detach()
            lam = torch.exp(-gamma * self.h)
            self.gate_w.grad = g - (gu * lam[None, :]) @ U.T

    return GatedLinear


_GATED = None


def _gated_cls():
    global _GATED
    if _GATED is None:
        _GATED = _make_gated_linear()
    return _GATED


def _default_logits(model, batch):
    out = model(**batch) if isinstance(batch, Mapping) else model(batch)
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)):
        return out[0]
    return out


def _batch_len(inputs) -> int:
    if isinstance(inputs, Mapping):
        return int(next(iter(inputs.values())).shape[0])
    return int(inputs.shape[0])


def _take(inputs, idx, device):
    if isinstance(inputs, Mapping):
        return {k: v[idx].to(device) for k, v in inputs.items()}
    return inputs[idx].to(device)


def _kd_loss(student, teacher, T: float, kind: str):
    torch = _torch()
    s = torch.log_softmax(student / T, dim=-1)
    t = torch.softmax(teacher / T, dim=-1)
    if kind == "sum_over_batch":  # mingle.py's _KD_loss
        return -(t * s).sum() / s.shape[0]
    # mingle_nlp.py's _kd_loss
    return torch.mean(torch.sum(-t * s, dim=-1)) * (T * T)


class MingleStream:
    """A MINGLE stream over ``base_model`` (an ``nn.Module``, e.g. a ``transformers``
    model), patched in place: the treated ``nn.Linear`` layers (names matching the ``layers``
    regex; default every linear layer inside the encoder/decoder blocks that is not the
    output head) become :class:`GatedLinear`. ``recipe`` picks the official NLP or vision
    hyper-parameters; keyword arguments override them. ``logits_fn(model, batch)`` gives the
    logits the distillation compares (default: ``model(**batch).logits``)."""

    def __init__(self, base_model, *, recipe: str = "nlp", layers: Optional[str] = None,
                 rank: Optional[int] = None, lr: Optional[float] = None,
                 batch_size: Optional[int] = None, max_steps: Optional[int] = None,
                 temperature: Optional[float] = None, subspace_k: Optional[int] = None,
                 gamma: Optional[float] = None, beta: Optional[float] = None,
                 kd_loss: Optional[str] = None, constraint_gate: bool = True,
                 batch_reduce: bool = True, zero_diagonal: bool = False,
                 train_mode: bool = True, svd: str = "exact", seed: int = 0,
                 device: Any = None, logits_fn: Optional[Callable] = None,
                 verbose: bool = False):
        torch = _torch()
        if recipe not in RECIPES:
            raise _arg("unknown recipe %r (nlp or vision)" % recipe)
        r = dict(RECIPES[recipe])
        for k, v in dict(rank=rank, lr=lr, batch_size=batch_size, max_steps=max_steps,
                         temperature=temperature, subspace_k=subspace_k, gamma=gamma,
                         beta=beta, kd_loss=kd_loss).items():
            if v is not None:
                r[k] = v
        if r["kd_loss"] not in ("mean_t2", "sum_over_batch"):
            raise _arg("kd_loss is mean_t2 or sum_over_batch")
        if svd not in _lib.SVD:
            raise _arg("unknown svd mode %r" % svd)
        self.recipe: Dict[str, Any] = dict(
            name=recipe, rank=int(r["rank"]), lr=float(r["lr"]),
            batch_size=int(r["batch_size"]), max_steps=int(r["max_steps"]),
            temperature=float(r["temperature"]), subspace_k=int(r["subspace_k"]),
            gamma=float(r["gamma"]), beta=float(r["beta"]), kd_loss=r["kd_loss"],
            constraint_gate=bool(constraint_gate), batch_reduce=bool(batch_reduce),
            zero_diagonal=bool(zero_diagonal), train_mode=bool(train_mode), svd=svd,
            seed=int(seed), layers=layers)
        self.model = base_model
        self.device = torch.device(device) if device is not None else \
            next(base_model.parameters()).device
        self.logits_fn = logits_fn or _default_logits
        self.verbose = verbose
        self.tasks: List[str] = []
        self.stats: List[Dict[str, Any]] = []
        self._w0: Dict[str, np.ndarray] = {}
        self.layers = self._patch(layers)
        if not self.layers:
            raise _arg("no nn.Linear layer of the model matches "
                                "layers=%r" % (layers,))

    # which layers
    def _patch(self, layers: Optional[str]) -> Dict[str, Any]:
        torch = _torch()
        G = _gated_cls()
        found = {}
        pat = re.compile(layers) if layers else None
        for name, mod in list(self.model.named_modules()):
            if isinstance(mod, G):
                found[name] = mod
                continue
            if not isinstance(mod, torch.nn.Linear):
                continue
            if pat is not None:
                ok = pat.search(name) is not None
            else:  # linear layers inside numbered blocks (encoder.layer.3..., h.0...)
                ok = re.search(r"(^|\.)\d+\.", name) is not None
            if not ok:
                continue
            self._w0[name] = mod.weight.detach().float().cpu().numpy().copy()
            g = G(mod, batch_reduce=self.recipe["batch_reduce"])
            parent, _, leaf = name.rpartition(".")
            setattr(self.model.get_submodule(parent) if parent else self.model, leaf, g)
            found[name] = g
        return found

    @property
    def step(self) -> int:
        return len(self.tasks)

    def _gen(self, salt: int):
        torch = _torch()
        g = torch.Generator()
        g.manual_seed((self.recipe["seed"] * 1000003 + self.step * 7919 + salt) % (2 ** 63))
        return g

    def add_task(self, finetuned_model, unlabeled_inputs, name: Optional[str] = None
                 ) -> Dict[str, Any]:
        """Folds one task in: its experts (from ``finetuned_model``'s weights), the new gate
        rows trained on ``unlabeled_inputs`` (a mapping of tensors with one leading batch
        dimension, e.g. a tokenizer's output, or one tensor), then the layers' bases extended
        from the same inputs. Returns the step's statistics (also printed when verbose)."""
        torch = _torch()
        rec = self.recipe
        n = _batch_len(unlabeled_inputs)
        if n == 0:
            raise _arg("unlabeled_inputs is empty")
        fin = dict(finetuned_model.named_modules())
        before = self.added_parameters()
        t0 = time.perf_counter()
        for lname, layer in self.layers.items():
            mod = fin.get(lname)
            if mod is None or not hasattr(mod, "weight"):
                raise _arg("the fine-tuned model has no layer %s"
                                    % lname)
            wt = mod.weight.detach().float().cpu().numpy()
            if wt.shape != self._w0[lname].shape:
                raise _arg("%s.weight: shape %s, the base has %s"
                                    % (lname, wt.shape, self._w0[lname].shape))
            prev = [(layer.B[i].float().cpu().numpy(), layer.A[i].float().cpu().numpy())
                    for i in range(layer.num_experts)]
            B, A = build_expert(self._w0[lname], wt, prev, rec["rank"], rec["zero_diagonal"],
                                rec["svd"], rec["seed"] + self.step)
            layer.add_expert(torch.from_numpy(B), torch.from_numpy(A), generator=self._gen(1))
        t_expert = time.perf_counter() - t0

        t1 = time.perf_counter()
        losses = self._train_gates(finetuned_model, unlabeled_inputs, n)
        t_train = time.perf_counter() - t1
        t2 = time.perf_counter()
        self._extend_bases(unlabeled_inputs, n)
        t_basis = time.perf_counter() - t2
        added = self.added_parameters() - before  # experts, gate rows, basis columns
        self.tasks.append(name or "task%d" % (self.step + 1))
        st = dict(step=self.step, task=self.tasks[-1], params_added=int(added),
                  expert_s=t_expert, train_s=t_train, basis_s=t_basis,
                  loss_first=losses[0] if losses else None,
                  loss_last=losses[-1] if losses else None)
        self.stats.append(st)
        if self.verbose:
            print("mingle step %d (%s): %d parameters added, experts %.1f s, test-time "
                  "training %.1f s (loss %.4f -> %.4f), bases %.1f s"
                  % (st["step"], st["task"], added, t_expert, t_train,
                     st["loss_first"] or 0, st["loss_last"] or 0, t_basis))
        return st

    def _batches(self, n: int, salt: int):
        """Endless shuffled epochs over the buffer (a seeded permutation per epoch)."""
        torch = _torch()
        g = self._gen(salt)
        bs = self.recipe["batch_size"]
        while True:
            perm = torch.randperm(n, generator=g)
            for i in range(0, n, bs):
                yield perm[i:i + bs]

    def _train_gates(self, teacher, inputs, n: int) -> List[float]:
        torch = _torch()
        rec = self.recipe
        params = [l.gate_w for l in self.layers.values()] + \
                 [l.gate_b for l in self.layers.values()]
        opt = torch.optim.Adam(params, lr=rec["lr"])
        teacher.eval()
        was_training = self.model.training
        self.model.train(rec["train_mode"])
        for l in self.layers.values():
            l.h = None
        batches = self._batches(n, 2)
        losses = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(rec["seed"] * 31 + self.step)  # dropout, when train_mode
            for _ in range(rec["max_steps"]):
                idx = next(batches)
                b = _take(inputs, idx, self.device)
                with torch.no_grad():
                    t_logits = self.logits_fn(teacher, b)
                s_logits = self.logits_fn(self.model, b)
                loss = _kd_loss(s_logits, t_logits, rec["temperature"], rec["kd_loss"])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if rec["constraint_gate"]:
                    for l in self.layers.values():
                        l.project_gate_grad(rec["gamma"], rec["beta"])
                opt.step()
                losses.append(float(loss.detach()))
        self.model.train(was_training)
        self._last_h = {k: (l.h.detach().cpu() if l.h is not None else None)
                        for k, l in self.layers.items()}
        for l in self.layers.values():
            l.h = None  # the official code deletes h after each task
        return losses

    def _extend_bases(self, inputs, n: int) -> None:
        torch = _torch()
        rec = self.recipe
        covs = {k: torch.zeros(l.in_features, l.in_features, dtype=torch.float64)
                for k, l in self.layers.items()}
        hooks = []
        for k, l in self.layers.items():
            def hook(mod, inp, out, k=k):
                f = inp[0].detach().reshape(-1, inp[0].shape[-1]).float()
                covs[k] += (f.T @ f).cpu().double()  # float32 products, as officially
            hooks.append(l.register_forward_hook(hook))
        was_training = self.model.training
        self.model.eval()
        try:
            batches = self._batches(n, 3)
            seen = 0
            with torch.no_grad():
                while seen < n:
                    idx = next(batches)
                    seen += len(idx)
                    self.logits_fn(self.model, _take(inputs, idx, self.device))
        finally:
            for hk in hooks:
                hk.remove()
            self.model.train(was_training)
        for k, l in self.layers.items():
            U = l.U.numpy() if l.U is not None else None
            l.U = torch.from_numpy(extend_basis(U, covs[k].float().numpy(),
                                                rec["subspace_k"]))

    # ---- cost figures ----------------------------------------------------------------

    def added_parameters(self) -> int:
        """Parameters and buffers the gated experts add over the base model (experts, gates
        and bases U)."""
        tot = 0
        for l in self.layers.values():
            tot += l.A.numel() + l.B.numel() + l.gate_w_frozen.numel() + \
                l.gate_b_frozen.numel() + l.gate_w.numel() + l.gate_b.numel()
            tot += l.U.numel() if l.U is not None else 0
        return int(tot)

    # ---- saving ----------------------------------------------------------------------

    def save(self, directory: str, force: bool = False) -> None:
        """Writes ``directory/mingle.safetensors`` (experts, gates, bases, the last task's
        EMA, the recipe and the task list in its metadata), atomically. An existing
        directory is only written into when it is empty or holds a MINGLE stream and
        ``force`` is set."""
        from safetensors.torch import save_file
        torch = _torch()
        if os.path.exists(directory):
            if not os.path.isdir(directory):
                raise error_for(-6, "NF_E_EXISTS", "%s exists and is not a directory"
                                % directory)
            entries = os.listdir(directory)
            if entries and not (FILE in entries and force):
                raise error_for(-6, "NF_E_EXISTS", "%s is not empty%s" % (
                    directory, "; pass force=True to replace the MINGLE stream in it"
                    if FILE in entries else " and holds no MINGLE stream"))
        os.makedirs(directory, exist_ok=True)
        t: Dict[str, Any] = {}
        for k, l in self.layers.items():
            G, c = l.gate_weights()
            t[k + ".A"] = l.A.detach().float().cpu().contiguous()
            t[k + ".B"] = l.B.detach().float().cpu().contiguous()
            t[k + ".gate.weight"] = G.detach().float().cpu().contiguous()
            t[k + ".gate.bias"] = c.detach().float().cpu().contiguous()
            if l.U is not None:
                t[k + ".U"] = l.U.float().contiguous()
            h = getattr(self, "_last_h", {}).get(k)
            if h is not None:
                t[k + ".h_last"] = h.float().contiguous()
        meta = {"format": FORMAT, "mingle.recipe": json.dumps(self.recipe, sort_keys=True),
                "mingle.tasks": json.dumps(self.tasks), "mingle.step": str(self.step),
                "mingle.layers": json.dumps(sorted(self.layers)),
                "mingle.stats": json.dumps(self.stats)}
        tmp = os.path.join(directory, ".%s.tmp%d" % (FILE, os.getpid()))
        try:
            save_file(t, tmp, metadata=meta)
            os.replace(tmp, os.path.join(directory, FILE))
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        del torch


def load(directory: str, base_model, device: Any = None,
         logits_fn: Optional[Callable] = None, verbose: bool = False) -> MingleStream:
    """Reads a saved stream and patches ``base_model`` (the same base the stream started
    from) in place with its gated experts. Returns the :class:`MingleStream`, whose
    ``.model`` is ``base_model``; ``add_task`` continues the stream."""
    from safetensors import safe_open
    torch = _torch()
    path = os.path.join(directory, FILE)
    if not os.path.isfile(path):
        raise error_for(-2, "NF_E_IO", "%s: no MINGLE stream (missing %s)" % (directory, FILE))
    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise error_for(-3, "NF_E_FORMAT", "%s: format %r, expected %r"
                            % (path, meta.get("format"), FORMAT))
        try:
            rec = json.loads(meta["mingle.recipe"])
            tasks = json.loads(meta["mingle.tasks"])
            names = json.loads(meta["mingle.layers"])
            stats = json.loads(meta.get("mingle.stats", "[]"))
        except (KeyError, ValueError) as e:
            raise error_for(-3, "NF_E_FORMAT", "%s: bad metadata (%s)" % (path, e)) from None
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    s = MingleStream(base_model, recipe=rec["name"], layers=rec["layers"], rank=rec["rank"],
                     lr=rec["lr"], batch_size=rec["batch_size"], max_steps=rec["max_steps"],
                     temperature=rec["temperature"], subspace_k=rec["subspace_k"],
                     gamma=rec["gamma"], beta=rec["beta"], kd_loss=rec["kd_loss"],
                     constraint_gate=rec["constraint_gate"], batch_reduce=rec["batch_reduce"],
                     zero_diagonal=rec["zero_diagonal"], train_mode=rec["train_mode"],
                     svd=rec["svd"], seed=rec["seed"], device=device, logits_fn=logits_fn,
                     verbose=verbose)
    if sorted(s.layers) != sorted(names):
        raise error_for(-4, "NF_E_MISMATCH", "%s: the stream treats %d layers, this base model "
                        "gives %d" % (path, len(names), len(s.layers)))
    for k, l in s.layers.items():
        try:
            A, B = tensors[k + ".A"], tensors[k + ".B"]
            G, c = tensors[k + ".gate.weight"], tensors[k + ".gate.bias"]
        except KeyError as e:
            raise error_for(-3, "NF_E_FORMAT", "%s: missing tensor %s" % (path, e)) from None
        E = len(tasks)
        if (A.dim() != 3 or B.dim() != 3 or A.shape[0] != E or B.shape[0] != E
                or A.shape[2] != l.in_features or B.shape[1] != l.out_features
                or A.shape[1] != B.shape[2] or tuple(G.shape) != (E, l.in_features)
                or tuple(c.shape) != (E,)):
            raise error_for(-3, "NF_E_FORMAT", "%s: the tensors of layer %s do not fit the "
                            "base model and %d tasks" % (path, k, E))
        dev, dt = l.base.weight.device, l.base.weight.dtype
        with torch.no_grad():
            l.A = A.to(dev, dt)
            l.B = B.to(dev, dt)
            if E:
                l.gate_w_frozen = G[:-1].to(dev, dt)
                l.gate_b_frozen = c[:-1].to(dev, dt)
                l.gate_w = torch.nn.Parameter(G[-1:].to(dev, dt).clone())
                l.gate_b = torch.nn.Parameter(c[-1:].to(dev, dt).clone())
        if k + ".U" in tensors:
            U = tensors[k + ".U"].float()
            if U.dim() != 2 or U.shape[0] != l.in_features:
                raise error_for(-3, "NF_E_FORMAT", "%s: %s.U has shape %s" %
                                (path, k, tuple(U.shape)))
            l.U = U
    s.tasks = list(tasks)
    s.stats = list(stats)
    return s
