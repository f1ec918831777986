#!/usr/bin/python3
"""Generated checkpoints for the NUFILT performance benchmark (bench/perf/run.sh).

    /usr/bin/python3 bench/perf/gen.py vit   [--out DIR] [--tasks 3] [--seed 0]
    /usr/bin/python3 bench/perf/gen.py llama [--out DIR] [--tasks 2] [--seed 0] [--layers 16]
    /usr/bin/python3 bench/perf/gen.py taskvec DIR TASK NAME OUT.f32   (one task vector, raw)

Needs only Debian's python3 + python3-numpy.  Writes DIR/base.safetensors and
DIR/task01.safetensors ... and DIR/stamp.json (the parameters; a later call with the same
parameters and an existing stamp does nothing).  Default DIR:
${XDG_CACHE_HOME:-$HOME/.cache}/nufilt-perf/{vit,llama}-s<seed>.  Tensors are generated one
at a time and streamed to the file, so memory stays at a few tensors.  Everything is a
function of (seed, model, tensor index): deterministic by seed.

vit   A CLIP ViT-B/32 vision tower (12 layers, width 768, MLP 3072, patch 32, image 224, HF
      tensor names, F32): 48 treated 768x768 attention projections, 12 treated 3072x768 fc1.
      Base weights N(0, 0.02) (LayerNorm weights 1 + N(0, 0.1)).  Task t's treated matrices
      get tau = U diag(s) V^T with random orthonormal U, V (exact QR) and a smoothly decaying
      spectrum s_j = c j^-0.7 (1 + 0.05 noise), sorted, c ~ U(0.7, 1.3), scaled to element
      rms 1e-3 (5% of the weights), as real fine-tuning updates look.  Untreated tensors (fc2,
      biases, LayerNorms, embeddings incl. the [768,3,32,32] patch conv) get 5% relative noise.
llama A LLaMA-style decoder (TinyLlama-1.1B shapes: hidden 2048, MLP 5632, 16 layers, q/k/v/o
      2048x2048, gate/up 5632x2048, down 2048x5632, RMSNorm weights, embed_tokens and lm_head
      32000x2048), stored as BF16.  Building U diag(s) V^T exactly at 5632x2048 is costly, so
      task vectors are a sum of 64 rank-1 terms with weights j^-0.7 (Gaussian factors) plus a
      small full-rank noise (10% of the rms), element rms 1e-3 on weights of std 0.02.
      Untreated tensors get 1% relative noise.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

GEN_VERSION = 1


def cache_dir():
    c = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(c, "nufilt-perf")


# ----------------------------------------------------------------------------- shapes

# the CLIP vision tower's tensor list and the clip preset's rule are the test fixtures' own
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "ref"))
from gen_fixtures import clip_shapes, is_treated as vit_treated  # noqa: E402


def vit_shapes(D=768, L=12, P=32, image=224):
    return clip_shapes(D, L, P, image)


def llama_shapes(H=2048, I=5632, L=16, V=32000):
    sh = [("model.embed_tokens.weight", (V, H))]
    for i in range(L):
        p = "model.layers.%d." % i
        sh += [
            (p + "input_layernorm.weight", (H,)),
            (p + "self_attn.q_proj.weight", (H, H)),
            (p + "self_attn.k_proj.weight", (H, H)),
            (p + "self_attn.v_proj.weight", (H, H)),
            (p + "self_attn.o_proj.weight", (H, H)),
            (p + "post_attention_layernorm.weight", (H,)),
            (p + "mlp.gate_proj.weight", (I, H)),
            (p + "mlp.up_proj.weight", (I, H)),
            (p + "mlp.down_proj.weight", (H, I)),
        ]
    sh += [("model.norm.weight", (H,)), ("lm_head.weight", (V, H))]
    return sh


def llama_treated(name, shape):
    return len(shape) == 2 and ("self_attn" in name or "mlp" in name)


def is_norm(name):
    return ("norm" in name or "layrnorm" in name) and name.endswith(".weight")


# ----------------------------------------------------------------------------- storage

def f32_to_bf16_bits(x):
    """float32 -> bf16 bits, round to nearest even (no NaN here)."""
    b = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    lsb = (b >> np.uint32(16)) & np.uint32(1)
    return ((b + np.uint32(0x7FFF) + lsb) >> np.uint32(16)).astype(np.uint16)


def bf16_bits_to_f32(u):
    return (np.asarray(u, dtype=np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


ESIZE = {"F32": 4, "BF16": 2}


class StreamWriter:
    """safetensors file written tensor by tensor, in the order of `shapes`."""

    def __init__(self, path, shapes, dtype, metadata):
        self.path, self.tmp = path, path + ".tmp"
        hdr, off = {"__metadata__": metadata}, 0
        self.order = []
        for name, shape in shapes:
            n = int(np.prod(shape)) * ESIZE[dtype]
            hdr[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + n]}
            self.order.append((name, n))
            off += n
        h = json.dumps(hdr, separators=(",", ":")).encode()
        h += b" " * (-len(h) % 8)
        self.f = open(self.tmp, "wb")
        self.f.write(len(h).to_bytes(8, "little"))
        self.f.write(h)
        self.data_start = 8 + len(h)
        self.k = 0
        self.dtype = dtype

    def put(self, name, arr):
        want, n = self.order[self.k]
        assert name == want, (name, want)
        b = np.ascontiguousarray(arr).tobytes()
        assert len(b) == n, (name, len(b), n)
        self.f.write(b)
        self.k += 1

    def close(self):
        assert self.k == len(self.order)
        self.f.close()
        os.replace(self.tmp, self.path)


def read_tensor(path, name, cache={}):
    """np.memmap view of one tensor of a safetensors file (F32 or BF16 bits)."""
    if path not in cache:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            cache[path] = (json.loads(f.read(n)), 8 + n)
    hdr, start = cache[path]
    e = hdr[name]
    dt = {"F32": np.float32, "BF16": np.uint16}[e["dtype"]]
    a, b = e["data_offsets"]
    return np.memmap(path, dtype=dt, mode="r", offset=start + a, shape=tuple(e["shape"]))


# ----------------------------------------------------------------------------- task vectors

def orth(rng, m, n):
    q, r = np.linalg.qr(rng.standard_normal((m, n)))
    return q * np.sign(np.diag(r))


def decay_spectrum(rng, n, power=0.7):
    c = rng.uniform(0.7, 1.3)
    s = c * np.arange(1, n + 1) ** -power * (1.0 + 0.05 * rng.standard_normal(n))
    return np.sort(np.abs(s))[::-1]


def vit_task_vector(rng, shape, tv_rms):
    d_out, d_in = shape
    n = min(d_out, d_in)
    s = decay_spectrum(rng, n)
    s *= tv_rms * np.sqrt(d_out * d_in) / np.linalg.norm(s)
    U = orth(rng, d_out, n)
    V = orth(rng, d_in, n)
    return ((U * s) @ V.T).astype(np.float32)


def lowrank_task_vector(rng, shape, tv_rms, k=64, noise=0.1):
    d_out, d_in = shape
    w = np.arange(1, k + 1, dtype=np.float32) ** -0.7
    U = rng.standard_normal((d_out, k), dtype=np.float32)
    V = rng.standard_normal((k, d_in), dtype=np.float32)
    tau = (U * w) @ V
    tau *= np.float32(np.sqrt(1.0 - noise ** 2) * tv_rms / np.sqrt(np.mean(tau.astype(np.float64) ** 2)))
    tau += rng.standard_normal(shape, dtype=np.float32) * np.float32(noise * tv_rms)
    return tau


# ----------------------------------------------------------------------------- models

def base_tensor(rng, name, shape, std):
    x = rng.standard_normal(shape, dtype=np.float32)
    if is_norm(name):
        return np.float32(1.0) + np.float32(0.1) * x
    return np.float32(std) * x


def generate(kind, out, tasks, seed, layers, base_std=0.02, tv_rms=1e-3, quiet=False):
    if kind == "vit":
        shapes, treated, dtype = vit_shapes(L=layers or 12), vit_treated, "F32"
        untreated_rel = 0.05
    else:
        shapes, treated, dtype = llama_shapes(L=layers or 16), llama_treated, "BF16"
        untreated_rel = 0.01
    params = dict(gen=GEN_VERSION, kind=kind, tasks=tasks, seed=seed, layers=layers,
                  base_std=base_std, tv_rms=tv_rms)
    stamp = os.path.join(out, "stamp.json")
    names = ["base"] + ["task%02d" % t for t in range(1, tasks + 1)]
    paths = [os.path.join(out, n + ".safetensors") for n in names]
    try:
        with open(stamp) as f:
            if json.load(f) == params and all(os.path.exists(p) for p in paths):
                if not quiet:
                    print("gen.py: %s is up to date" % out)
                return paths
    except (OSError, ValueError):
        pass
    os.makedirs(out, exist_ok=True)
    if os.path.exists(stamp):
        os.unlink(stamp)
    enc = (lambda x: x.astype(np.float32)) if dtype == "F32" else f32_to_bf16_bits
    dec = (lambda a: np.asarray(a, dtype=np.float32)) if dtype == "F32" else bf16_bits_to_f32
    for mi, (nm, path) in enumerate(zip(names, paths)):
        t0 = time.time()
        meta = {"format": "pt", "nufilt-perf": json.dumps(dict(params, model=nm))}
        w = StreamWriter(path, shapes, dtype, meta)
        for ti, (name, shape) in enumerate(shapes):
            if mi == 0:
                x = base_tensor(np.random.default_rng([seed, 0, ti]), name, shape, base_std)
                w.put(name, enc(x))
                continue
            rng = np.random.default_rng([seed, mi, ti])
            b = dec(read_tensor(paths[0], name))
            if treated(name, shape):
                tau = (vit_task_vector(rng, shape, tv_rms) if kind == "vit"
                       else lowrank_task_vector(rng, shape, tv_rms))
                w.put(name, enc(b + tau))
            else:
                mag = np.float32(np.sqrt(np.mean(b.astype(np.float64) ** 2)))
                w.put(name, enc(b + np.float32(untreated_rel) * mag
                                * rng.standard_normal(shape, dtype=np.float32)))
        w.close()
        if not quiet:
            print("gen.py: wrote %s (%.1f MB, %.1f s)" % (path, os.path.getsize(path) / 1e6,
                                                          time.time() - t0), flush=True)
    with open(stamp, "w") as f:
        json.dump(params, f)
    return paths


def dump_task_vector(d, task, name, out):
    """Writes task_k - base of one tensor as raw row-major float32 (for svd_bench)."""
    b = read_tensor(os.path.join(d, "base.safetensors"), name)
    t = read_tensor(os.path.join(d, "task%02d.safetensors" % task), name)
    dec = (lambda a: np.asarray(a, dtype=np.float32)) if b.dtype == np.float32 else bf16_bits_to_f32
    tau = dec(t) - dec(b)
    tau.astype("<f4").tofile(out)
    print("%s %d %d" % (out, tau.shape[0], tau.shape[1]))


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "taskvec":
        # gen.py taskvec DIR TASK NAME OUT.f32
        return dump_task_vector(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=["vit", "llama"])
    ap.add_argument("--out")
    ap.add_argument("--tasks", type=int)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layers", type=int, help="fewer layers for quick tests (default: full model)")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args()
    tasks = a.tasks or (3 if a.kind == "vit" else 2)
    out = a.out or os.path.join(cache_dir(), "%s-s%d%s" % (a.kind, a.seed, "-L%d" % a.layers if a.layers else ""))
    for p in generate(a.kind, out, tasks, a.seed, a.layers, quiet=a.quiet):
        print(p)


if __name__ == "__main__":
    sys.exit(main())
