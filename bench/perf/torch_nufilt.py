"""A straightforward PyTorch NUFILT step, written the way the published code does it: the
baseline that bench/perf/run.sh times nufilt against.

    python torch_nufilt.py --base BASE --task TASK --prev MERGED --out OUT --step T
        [--preset clip|llama] [--null-rank 128] [--task-rank 8] [--lora-rank 64]
        [--lr 1e-3] [--iters 50] [--seed 0] [--rank-tol 1e-6]
        [--init nufilt|torch] [--threads N] [--report FILE.json]

Needs torch, safetensors and numpy (bench/perf/run.sh makes a venv with them).  Per treated
matrix (paper mode, docs/method.md): tau = task - base, prev = merged - base, exact
torch.linalg.svd of both, V_p = top r_p right singular vectors of prev and V_t = top r_v of
tau (vectors with s < rank_tol * s_max dropped), P = I - V_p V_p^T applied as
tau P = tau - (tau V_p) V_p^T.  Then one torch.optim.Adam over every layer's A (r_l x d_in,
N(0, 0.02)) and B (d_in x r_l, zeros) for --iters iterations of autograd on

    L = sum over treated matrices of |(tau - M) V_t|^2 + |(prev - M) V_p|^2,
    M = prev + tau P + tau B A

with M and the products with V recomputed inside every iteration, and the output
W = W_merged + tau P + tau B A on treated matrices, the base elsewhere (the paper-mode rule:
untreated tensors stay at the base).

--init nufilt (default) draws A with nufilt's counter-based generator (docs/method.md,
"Random numbers": mix64 / fnv1a64 / Box-Muller, computed here in NumPy), so the merged weights
can be compared with nufilt's to float32 tolerance; --init torch draws A with torch.randn (seed
--seed), as the published code does.

Timings (seconds) go to stdout as one JSON line and to --report: load, svd, train, write,
total.
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "ref"))
from nufilt_ref import rng_A as nufilt_A  # noqa: E402  (nufilt's generator, independent NumPy)


# ----------------------------------------------------------------------------- selection

def treated(name, shape, preset):
    if len(shape) != 2:
        return False
    if preset == "clip":
        return "attn" in name or "fc1" in name
    if preset == "llama":
        return "self_attn" in name or "mlp" in name
    raise ValueError(preset)


def progress(msg):
    """One line on stderr, so that a long run shows how far it got."""
    print(f"torch_nufilt: {msg}", file=sys.stderr, flush=True)


def top_right(x, r, tol):
    """Top r right singular vectors of x as columns [d_in, k], exact SVD."""
    r = min(r, *x.shape)
    if r <= 0:
        return x.new_zeros((x.shape[1], 0))
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    if s[0] <= 0:
        return x.new_zeros((x.shape[1], 0))
    keep = int((s[:r] >= tol * s[0]).sum())
    return vh[:keep].T.contiguous()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True)
    ap.add_argument("--task", required=True)
    ap.add_argument("--prev", required=True, help="the merged model of step T-1")
    ap.add_argument("--out", required=True)
    ap.add_argument("--step", type=int, required=True, help="1-based index of the task merged")
    ap.add_argument("--preset", choices=["clip", "llama"], default="clip")
    ap.add_argument("--null-rank", type=int, default=128)
    ap.add_argument("--task-rank", type=int, default=8)
    ap.add_argument("--lora-rank", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rank-tol", type=float, default=1e-6)
    ap.add_argument("--init", choices=["nufilt", "torch"], default="nufilt")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--report")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)

    t_start = time.perf_counter()
    fb = safe_open(a.base, "pt")
    ft = safe_open(a.task, "pt")
    fp = safe_open(a.prev, "pt")
    names = list(fb.keys())
    out, layers = {}, []
    for name in names:
        w0 = fb.get_tensor(name)
        if not treated(name, w0.shape, a.preset):
            out[name] = w0
            continue
        dt = w0.dtype
        w0 = w0.float()
        wm = fp.get_tensor(name).float()
        tau = ft.get_tensor(name).float() - w0
        # Only tau and prev stay in memory: the output re-reads the merged weights, so a
        # BF16 LLaMA-style step holds two float32 copies of the treated weights here, not four.
        layers.append(dict(name=name, dtype=dt, tau=tau, prev=wm - w0))
        del w0, wm
    t_load = time.perf_counter() - t_start
    progress(f"loaded {len(layers)} treated matrices in {t_load:.1f} s")

    # exact SVDs, the filter, the adapter's initial factors
    t0 = time.perf_counter()
    for L in layers:
        L["Vp"] = top_right(L["prev"], a.null_rank, a.rank_tol)
        L["Vt"] = top_right(L["tau"], a.task_rank, a.rank_tol)
    t_svd = time.perf_counter() - t0
    progress(f"SVDs done in {t_svd:.1f} s")

    t0 = time.perf_counter()
    params = []
    with torch.no_grad():
        for L in layers:
            tau, Vp = L["tau"], L["Vp"]
            L["tauP"] = tau - (tau @ Vp) @ Vp.T
            n = tau.shape[1]
            if a.init == "nufilt":
                A = torch.from_numpy(nufilt_A(a.seed, a.step, L["name"], a.lora_rank, n))
            else:
                A = torch.randn(a.lora_rank, n) * 0.02
            L["A"] = A.requires_grad_(True)
            L["B"] = torch.zeros(n, a.lora_rank, requires_grad=True)
            params += [L["A"], L["B"]]
    losses = []
    if a.lora_rank > 0 and layers and a.iters > 0:
        opt = torch.optim.Adam(params, lr=a.lr)
        for it in range(a.iters):
            opt.zero_grad()
            loss = 0.0
            for L in layers:
                tau, prev = L["tau"], L["prev"]
                M = prev + L["tauP"] + tau @ L["B"] @ L["A"]
                loss = loss + ((tau - M) @ L["Vt"]).pow(2).sum() + ((prev - M) @ L["Vp"]).pow(2).sum()
            loss.backward()
            opt.step()
            if it == 0 or it == a.iters - 1:
                losses.append(float(loss.detach()))
            if (it + 1) % 10 == 0:
                progress(f"Adam iteration {it + 1} of {a.iters}, {time.perf_counter() - t0:.1f} s")
    with torch.no_grad():
        for L in layers:
            w = fp.get_tensor(L["name"]).float() + L["tauP"] + (L["tau"] @ L["B"]) @ L["A"]
            out[L["name"]] = w.to(L["dtype"])
    t_train = time.perf_counter() - t0

    t0 = time.perf_counter()
    out = {k: out[k].contiguous() for k in names}
    save_file(out, a.out, metadata={"format": "pt", "producer": "bench/perf/torch_nufilt.py"})
    t_write = time.perf_counter() - t0
    rep = dict(tool="torch_nufilt", torch=torch.__version__, threads=torch.get_num_threads(),
               treated=len(layers), load=t_load, svd=t_svd, train=t_train, write=t_write,
               total=time.perf_counter() - t_start, loss_first=losses[0] if losses else None,
               loss_last=losses[-1] if losses else None)
    print(json.dumps(rep))
    if a.report:
        with open(a.report, "w") as f:
            json.dump(rep, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
