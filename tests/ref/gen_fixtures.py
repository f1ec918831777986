"""Synthetic CLIP-vision-tower checkpoints for NUFILT tests: a base and T task models.

    /usr/bin/python3 tests/ref/gen_fixtures.py --out DIR [--size small|vit4]
        [--layers L] [--width D] [--tasks T] [--dtype F32|F16|BF16]
        [--layout file|dir|sharded] [--shard-size 200KB] [--seed S]
        [--spectrum gap|decay] [--task-rank r_v] [--null-rank r_p]
        [--base-std X] [--tv-rms X] [--verify] [--verify-chain]

Writes DIR/base.safetensors, DIR/task01.safetensors, ... (layout file), or
directories DIR/base/, DIR/task01/, ... holding model.safetensors (layout dir) or
shards + model.safetensors.index.json (layout sharded), each with a config.json.

Treated tensors (2-D, name contains attn or fc1) of task t get a task vector
tau_t = U_t diag(s_t) V_t^T with random orthonormal U_t, V_t and a designed
spectrum s_t:

  gap   task 1: flat level 1 -> 0.9 over the first r_p values, tail 0.02 -> 0.01
        task k >= 2: level f_k = 0.1 * 0.5^(k-2):
              strong block (first r_v values)  f_k * (1 -> 0.9)
              medium block (up to r_p)         f_k * 0.2 * (1 -> 0.9)
              tail                             f_k * 0.02 * (1 -> 0.5)
        so that sigma_{r_v}/sigma_{r_v+1} of tau_k is 4.5, and the cumulative
        merged vector prev (dominated in its top r_p by task 1, every later task
        at most 0.1 of that) keeps sigma_{r_p}/sigma_{r_p+1} large at every step
        (measured with --verify-chain: paper mode 45 / 6.3 / 6.3 on small,
        45 / 3.9 / 3.9 on vit4; reference mode 22 / 3.7 / 3.7 on small).
        Task 1 needs no r_v gap: its V_t is never used (no training at step 1).
  lowrank  task t has exactly rank r_v (LoRA-like), level 0.5^(t-1): prev has rank < r_p
        for the first steps, so paper mode's rank_tol dropping is exercised (use a
        small --base-std so float32 storage noise stays far below rank_tol).
  decay sigma_j = c_t * j^-0.7 * (1 + 0.05 noise), sorted; c_t in [0.7, 1.3]:
        smooth, no gap, like real fine-tuning updates.

Spectra are scaled so the task-1 vector of every treated tensor has element rms
--tv-rms (default 1e-3; base weights have std --base-std, default 0.02, i.e. the
task vector is 5% of the weights).  For F16/BF16 runs, pass a smaller --base-std
(e.g. 2e-3) so that storage rounding of the weights does not swamp the task
vectors (BF16's relative spacing is 2^-8 ~ 0.4%).

Untreated tensors (biases, LayerNorms, fc2, embeddings, patch conv) also differ
between models (5% relative perturbations), so tests can see they stay at base.
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st  # noqa: E402

SIZES = {
    # width, layers, patch, image, default ranks (r_p, r_v, r_l)
    "small": dict(width=64, layers=2, patch=8, image=32, null_rank=16, task_rank=4, lora_rank=8),
    "vit4": dict(width=768, layers=4, patch=32, image=224, null_rank=128, task_rank=8, lora_rank=64),
}


def clip_shapes(D, L, P, image):
    n_pos = (image // P) ** 2 + 1
    sh = [
        ("vision_model.embeddings.class_embedding", (D,)),
        ("vision_model.embeddings.patch_embedding.weight", (D, 3, P, P)),
        ("vision_model.embeddings.position_embedding.weight", (n_pos, D)),
        ("vision_model.pre_layrnorm.weight", (D,)),
        ("vision_model.pre_layrnorm.bias", (D,)),
    ]
    for i in range(L):
        p = "vision_model.encoder.layers.%d." % i
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            sh.append((p + "self_attn.%s.weight" % proj, (D, D)))
            sh.append((p + "self_attn.%s.bias" % proj, (D,)))
        sh += [
            (p + "layer_norm1.weight", (D,)), (p + "layer_norm1.bias", (D,)),
            (p + "mlp.fc1.weight", (4 * D, D)), (p + "mlp.fc1.bias", (4 * D,)),
            (p + "mlp.fc2.weight", (D, 4 * D)), (p + "mlp.fc2.bias", (D,)),
            (p + "layer_norm2.weight", (D,)), (p + "layer_norm2.bias", (D,)),
        ]
    sh += [("vision_model.post_layernorm.weight", (D,)), ("vision_model.post_layernorm.bias", (D,))]
    return sh


def is_treated(name, shape):
    return len(shape) == 2 and ("attn" in name or "fc1" in name)


def _orth(rng, m, n):
    q, r = np.linalg.qr(rng.standard_normal((m, n)))
    return q * np.sign(np.diag(r))


def spectrum(kind, t, n, r_v, r_p, rng):
    """Singular values (length n) of task t (1-based) before scaling."""
    if kind == "gap":
        r_p = min(r_p, n)
        r_v = min(r_v, r_p)
        s = np.empty(n)
        if t == 1:
            s[:r_p] = np.linspace(1.0, 0.9, r_p)
            s[r_p:] = np.linspace(0.02, 0.01, n - r_p)
        else:
            f = 0.1 * 0.5 ** (t - 2)
            s[:r_v] = f * np.linspace(1.0, 0.9, r_v)
            s[r_v:r_p] = f * 0.2 * np.linspace(1.0, 0.9, r_p - r_v)
            s[r_p:] = f * 0.02 * np.linspace(1.0, 0.5, n - r_p)
        return s
    if kind == "lowrank":
        # LoRA-like: exactly rank r_v (before storage rounding), task k weaker by 0.5^(k-1)
        s = np.zeros(n)
        r_v = min(r_v, n)
        s[:r_v] = 0.5 ** (t - 1) * np.linspace(1.0, 0.9, r_v)
        return s
    if kind == "decay":
        c = rng.uniform(0.7, 1.3)
        s = c * np.arange(1, n + 1) ** -0.7 * (1.0 + 0.05 * rng.standard_normal(n))
        return np.sort(np.abs(s))[::-1]
    raise ValueError(kind)


def task_vector(kind, t, shape, r_v, r_p, tv_rms, rng, scale_ref=None):
    d_out, d_in = shape
    n = min(d_out, d_in)
    s = spectrum(kind, t, n, r_v, r_p, rng)
    if scale_ref is None:
        scale_ref = tv_rms * np.sqrt(d_out * d_in) / np.linalg.norm(s)
    U = _orth(rng, d_out, n)
    V = _orth(rng, d_in, n)
    return (U * (s * scale_ref)) @ V.T, scale_ref


def generate(out, size="small", layers=None, width=None, tasks=4, dtype="F32", layout="file",
             shard_size="200KB", seed=0, spectrum_kind="gap", task_rank=None, null_rank=None,
             base_std=0.02, tv_rms=1e-3, verbose=True):
    """Returns dict with 'base', 'tasks' (paths), 'tensors' (float64 arrays as stored),
    and the size's default ranks."""
    cfg = dict(SIZES[size])
    D = width or cfg["width"]
    L = layers or cfg["layers"]
    r_v = task_rank if task_rank is not None else cfg["task_rank"]
    r_p = null_rank if null_rank is not None else cfg["null_rank"]
    shapes = clip_shapes(D, L, cfg["patch"], cfg["image"])
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(seed)

    base = {}
    for name, shape in shapes:
        if name.endswith("norm1.weight") or name.endswith("norm2.weight") or "layernorm.weight" in name \
                or "layrnorm.weight" in name:
            base[name] = 1.0 + 0.1 * rng.standard_normal(shape)
        else:
            base[name] = base_std * rng.standard_normal(shape)
    models = [base]
    scale = {}
    for t in range(1, tasks + 1):
        trng = np.random.default_rng([seed, t])
        m = {}
        for name, shape in shapes:
            if is_treated(name, shape):
                tau, sc = task_vector(spectrum_kind, t, shape, r_v, r_p, tv_rms, trng, scale.get(name))
                if spectrum_kind in ("gap", "lowrank"):
                    scale.setdefault(name, sc)   # later tasks relative to task 1
                m[name] = base[name] + tau
            else:
                mag = np.sqrt(np.mean(base[name] ** 2))
                m[name] = base[name] + 0.05 * mag * trng.standard_normal(shape)
        models.append(m)

    names = ["base"] + ["task%02d" % t for t in range(1, tasks + 1)]
    paths, stored = [], []
    dts = {n: dtype for n, _ in shapes}
    config = {"architectures": ["CLIPVisionModel"], "model_type": "clip_vision_model",
              "hidden_size": D, "intermediate_size": 4 * D, "num_hidden_layers": L,
              "num_attention_heads": max(1, D // 64), "patch_size": cfg["patch"],
              "image_size": cfg["image"], "num_channels": 3,
              "torch_dtype": {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}[dtype]}
    for nm, m in zip(names, models):
        enc = {k: st.from_float(v, dtype) for k, v in m.items()}
        stored.append({k: st.to_float64(v, dtype) for k, v in enc.items()})
        meta = {"format": "pt"}
        if layout == "file":
            p = os.path.join(out, nm + ".safetensors")
            st.save_file(p, enc, dts, meta)
        else:
            p = os.path.join(out, nm)
            st.save_dir(p, enc, dts, meta, shard_size=shard_size if layout == "sharded" else None)
            with open(os.path.join(p, "config.json"), "w") as f:
                json.dump(config, f, indent=2)
        paths.append(p)
    if verbose:
        print("fixtures: %s  size=%s D=%d L=%d tasks=%d dtype=%s layout=%s spectrum=%s r_p=%d r_v=%d"
              % (out, size, D, L, tasks, dtype, layout, spectrum_kind, r_p, r_v))
    return dict(base=paths[0], tasks=paths[1:], tensors=stored, shapes=shapes,
                null_rank=r_p, task_rank=r_v, lora_rank=cfg["lora_rank"])


def _ratio(s, r):
    if r <= 0 or r >= len(s):
        return float("inf")
    return float(s[r - 1] / s[r]) if s[r] > 0 else float("inf")


def verify_gaps(fx, r_v, r_p, chain=False, lora_rank=8, compat="paper", verbose=True):
    """Print min sigma_r/sigma_{r+1} at the cuts: tau_t at r_v (t >= 2), and the
    cumulative merged vector prev at r_p at each step (chain=True: run the
    reference merge, stored-dtype-exact inputs, float64, no output rounding)."""
    stored = fx["tensors"]
    base = stored[0]
    treated = [n for n, sh in fx["shapes"] if is_treated(n, sh)]
    res = {}
    mins = []
    for t in range(2, len(stored)):
        g = min(_ratio(np.linalg.svd(stored[t][n] - base[n], compute_uv=False), r_v) for n in treated)
        mins.append(g)
    res["tau_rv"] = mins
    if verbose:
        print("gap check: tau_t sigma_rv/sigma_rv+1 (t=2..T), min over tensors: "
              + " ".join("%.2f" % g for g in mins))
    if chain:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import nufilt_ref as nr
        p = nr.make_params(null_rank=r_p, task_rank=r_v, lora_rank=lora_rank, compat=compat)
        prev = None
        gp = []
        for t in range(1, len(stored)):
            if prev is not None:
                gp.append(min(_ratio(np.linalg.svd(prev[n] - base[n], compute_uv=False), r_p) for n in treated))
            prev = nr.nufilt_step(base, prev, stored[t], t, p)
        res["prev_rp"] = gp
        if verbose:
            print("gap check: prev sigma_rp/sigma_rp+1 at steps 2..T (%s chain, r_l=%d), min over tensors: %s"
                  % (compat, lora_rank, " ".join("%.2f" % g for g in gp)))
    else:
        g = min(_ratio(np.linalg.svd(stored[1][n] - base[n], compute_uv=False), r_p) for n in treated)
        res["tau1_rp"] = g
        if verbose:
            print("gap check: tau_1 sigma_rp/sigma_rp+1 (= prev at step 2, paper mode), min: %.2f" % g)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--size", choices=sorted(SIZES), default="small")
    ap.add_argument("--layers", type=int)
    ap.add_argument("--width", type=int)
    ap.add_argument("--tasks", type=int, default=4)
    ap.add_argument("--dtype", choices=["F32", "F16", "BF16"], default="F32")
    ap.add_argument("--layout", choices=["file", "dir", "sharded"], default="file")
    ap.add_argument("--shard-size", default="200KB")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--spectrum", choices=["gap", "decay", "lowrank"], default="gap")
    ap.add_argument("--task-rank", type=int)
    ap.add_argument("--null-rank", type=int)
    ap.add_argument("--lora-rank", type=int)
    ap.add_argument("--base-std", type=float, default=0.02)
    ap.add_argument("--tv-rms", type=float, default=1e-3)
    ap.add_argument("--verify", action="store_true", help="print gap ratios of the task vectors")
    ap.add_argument("--verify-chain", action="store_true", help="also run the reference chain for prev gaps")
    ap.add_argument("--compat", choices=["paper", "reference"], default="paper")
    a = ap.parse_args()
    fx = generate(a.out, a.size, a.layers, a.width, a.tasks, a.dtype, a.layout, a.shard_size, a.seed,
                  a.spectrum, a.task_rank, a.null_rank, a.base_std, a.tv_rms)
    if a.verify or a.verify_chain:
        verify_gaps(fx, fx["task_rank"], fx["null_rank"], a.verify_chain,
                    a.lora_rank if a.lora_rank is not None else fx["lora_rank"], a.compat)


if __name__ == "__main__":
    main()
