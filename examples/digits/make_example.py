#!/usr/bin/python3
"""Builds the bundled digits example for nufilt (checkpoints + heads + test data).

1. Pre-trains a small residual-MLP encoder (plus a throw-away 10-way head) on Fashion-MNIST
   shrunk to 8 x 8 (Debian package dataset-fashion-mnist).
2. Defines 8 tasks: sklearn's 8 x 8 digits (python3-sklearn) seen through the 8 symmetries of
   the square; one seeded, stratified train/test split of the 1,797 digits shared by all tasks.
3. Per task, builds a class-prototype head from the frozen pre-trained encoder's features of
   the task's train split (the "zero-shot" head, stand-in for CLIP's frozen text-embedding
   heads; never trained), then fine-tunes the encoder's 2-D weights with that head frozen. Biases and LayerNorm parameters are frozen too: NUFILT
   treats only 2-D weights and keeps everything else at the base value, so every method here
   merges exactly what was fine-tuned.
4. Writes base.safetensors, tasks/<task>.safetensors, heads.safetensors and
   data/test.safetensors next to this script (or under --out), and prints the accuracies.

Deterministic: fixed seeds, single-threaded BLAS (set below, before NumPy is imported). Same
machine, same NumPy/BLAS -> same bytes; a different BLAS or CPU kernel may round differently.
Uses only /usr/bin/python3 with python3-numpy and python3-sklearn; no torch, no pip.
"""

import os

# Single-threaded BLAS before NumPy loads: threaded GEMM may split sums differently.
for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse
import gzip
import hashlib
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import TASKS  # noqa: E402

FASHION_DIR = "/usr/share/datasets/fashion-mnist"

# ---- configuration (changing any of these changes the bundled files) ---------------------
SEED = 20260101
WIDTH = 64            # D: embedding / residual width
HIDDEN = 96           # H: MLP hidden width
LAYERS = 2            # residual MLP blocks
TEST_FRACTION = 0.3   # of each digit class, shared by all tasks

PRETRAIN_EPOCHS = 6
PRETRAIN_BATCH = 128
PRETRAIN_LR = 2e-3

HEAD_SCALE = 2.0      # prototype head: logits = HEAD_SCALE * <z, unit class direction>

FT_EPOCHS = 12
FT_BATCH = 64
FT_LR = 3e-4        # small steps: task vectors stay a few % of the weights, as in real fine-tunes


# ---- data --------------------------------------------------------------------------------

def _read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def shrink_28_to_8(images):
    """[n, 28, 28] uint8 -> [n, 8, 8] uint8 in 0..16, made the way sklearn's digits were:
    the 28 x 28 image is padded to 32 x 32 and every 4 x 4 block becomes the block's mean
    intensity times 16, rounded (digits count the set pixels of 4 x 4 blocks of a 32 x 32
    bitmap)."""
    x = np.pad(images.astype(np.float64) / 255.0, ((0, 0), (2, 2), (2, 2)))
    x = x.reshape(-1, 8, 4, 8, 4).mean(axis=(2, 4)) * 16.0
    return np.rint(x).astype(np.uint8)


def load_fashion():
    out = []
    for split in ("train", "t10k"):
        img = _read_idx(os.path.join(FASHION_DIR, "%s-images-idx3-ubyte.gz" % split))
        lab = _read_idx(os.path.join(FASHION_DIR, "%s-labels-idx1-ubyte.gz" % split))
        out.append((shrink_28_to_8(img), lab.astype(np.int64)))
    return out


def load_digits():
    from sklearn.datasets import load_digits as _ld
    d = _ld()
    return d.images.astype(np.uint8), d.target.astype(np.int64)


def stratified_split(y, fraction, rng):
    test = []
    for c in range(10):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        test.append(idx[:int(round(fraction * len(idx)))])
    test = np.sort(np.concatenate(test))
    train = np.setdiff1d(np.arange(len(y)), test)
    return train, test


def to_input(images8):
    """[n, 8, 8] uint8 in 0..16 -> [n, 64] float32 in [0, 1] (digits and Fashion alike)."""
    return (images8.reshape(len(images8), 64).astype(np.float32) / np.float32(16.0))


# ---- model -------------------------------------------------------------------------------

def init_encoder(rng):
    p = {}

    def linear(name, d_out, d_in, gain=1.0):
        p[name + ".weight"] = (rng.standard_normal((d_out, d_in)) * gain / np.sqrt(d_in)
                               ).astype(np.float32)
        p[name + ".bias"] = np.zeros(d_out, np.float32)

    linear("encoder.input_proj", WIDTH, 64)
    for l in range(LAYERS):
        pre = "encoder.layers.%d." % l
        p[pre + "layer_norm.weight"] = np.ones(WIDTH, np.float32)
        p[pre + "layer_norm.bias"] = np.zeros(WIDTH, np.float32)
        linear(pre + "mlp.fc1", HIDDEN, WIDTH, gain=np.sqrt(2.0))
        linear(pre + "mlp.fc2", WIDTH, HIDDEN, gain=1.0 / np.sqrt(2 * LAYERS))
    p["encoder.post_layernorm.weight"] = np.ones(WIDTH, np.float32)
    p["encoder.post_layernorm.bias"] = np.zeros(WIDTH, np.float32)
    # fixed, readable tensor order: input_proj, layers in order, post_layernorm
    return p


def init_head(rng, n_classes=10):
    return {"weight": (rng.standard_normal((n_classes, WIDTH)) / np.sqrt(WIDTH)).astype(np.float32),
            "bias": np.zeros(n_classes, np.float32)}


def softmax_xent(logits, y):
    m = logits.max(axis=1, keepdims=True)
    e = np.exp(logits - m)
    s = e.sum(axis=1, keepdims=True)
    p = e / s
    loss = float(np.mean(np.log(s[:, 0]) + m[:, 0] - logits[np.arange(len(y)), y]))
    d = p
    d[np.arange(len(y)), y] -= 1.0
    return loss, (d / np.float32(len(y))).astype(np.float32)


class Adam:
    def __init__(self, params, names, lr, b1=0.9, b2=0.999, eps=1e-8):
        self.p, self.names, self.lr, self.b1, self.b2, self.eps = params, list(names), lr, b1, b2, eps
        self.m = {k: np.zeros_like(params[k]) for k in self.names}
        self.v = {k: np.zeros_like(params[k]) for k in self.names}
        self.t = 0

    def step(self, grads, lr=None):
        lr = self.lr if lr is None else lr
        self.t += 1
        c1 = 1.0 - self.b1 ** self.t
        c2 = 1.0 - self.b2 ** self.t
        for k in self.names:
            g = grads[k]
            self.m[k] = self.b1 * self.m[k] + (1 - self.b1) * g
            self.v[k] = self.b2 * self.v[k] + (1 - self.b2) * g * g
            upd = (lr / c1) * self.m[k] / (np.sqrt(self.v[k] / c2) + self.eps)
            self.p[k] -= upd.astype(np.float32)


def cosine_lr(base, step, total):
    return base * 0.5 * (1.0 + np.cos(np.pi * step / total))


def train_encoder(params, head, names, x, y, epochs, batch, lr, rng, train_head=False):
    """Minibatch Adam with a cosine schedule on the tensors in names (encoder) and, if
    train_head, on the head; everything else is frozen."""
    allp = dict(params)
    if train_head:
        allp["head.weight"], allp["head.bias"] = head["weight"], head["bias"]
        names = list(names) + ["head.weight", "head.bias"]
    opt = Adam(allp, names, lr)
    steps_per_epoch = (len(x) + batch - 1) // batch
    total = epochs * steps_per_epoch
    s = 0
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for i in range(0, len(x), batch):
            idx = order[i:i + batch]
            z, cache = common.encode(allp, x[idx], keep_cache=True)
            # (when train_head, allp["head.*"] are these same arrays, updated in place)
            logits = z @ head["weight"].T + head["bias"]
            _, dlog = softmax_xent(logits, y[idx])
            dz = dlog @ head["weight"]
            grads = common.encode_backward(allp, cache, dz)
            if train_head:
                grads["head.weight"] = dlog.T @ z
                grads["head.bias"] = dlog.sum(axis=0)
            opt.step(grads, cosine_lr(lr, s, total))
            s += 1
    for k in params:
        params[k] = allp[k]
    if train_head:
        head["weight"], head["bias"] = allp["head.weight"], allp["head.bias"]


def prototype_head(z, y, scale):
    """Class-prototype head on fixed features z: row c is the direction from the mean feature
    to the mean feature of class c, normalised, times scale; the bias is zero. Like CLIP's
    zero-shot heads it is computed once from the pre-trained encoder and never trained."""
    mu = np.stack([z[y == c].astype(np.float64).mean(axis=0) for c in range(10)])
    w = mu - mu.mean(axis=0)
    w = scale * w / np.linalg.norm(w, axis=1, keepdims=True)
    return w.astype(np.float32), np.zeros(10, np.float32)


def head_acc(params, w, b, x, y):
    z = common.encode(params, x)
    return float(((z @ w.T + b).argmax(axis=1) == y).mean())


# ---- main --------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=here, help="output directory (default: next to this script)")
    args = ap.parse_args()
    t0 = time.time()
    out = args.out
    os.makedirs(os.path.join(out, "tasks"), exist_ok=True)
    os.makedirs(os.path.join(out, "data"), exist_ok=True)

    (fx8, fy), (fxt8, fyt) = load_fashion()
    fx, fxt = to_input(fx8), to_input(fxt8)
    dimg, dy = load_digits()
    train_idx, test_idx = stratified_split(dy, TEST_FRACTION, np.random.default_rng(SEED + 1))

    # 1. pre-training on Fashion-MNIST 8 x 8 (all encoder tensors + a throw-away head)
    base = init_encoder(np.random.default_rng(SEED + 2))
    fhead = init_head(np.random.default_rng(SEED + 3))
    train_encoder(base, fhead, list(base), fx, fy, PRETRAIN_EPOCHS, PRETRAIN_BATCH,
                  PRETRAIN_LR, np.random.default_rng(SEED + 4), train_head=True)
    f_acc = head_acc(base, fhead["weight"], fhead["bias"], fxt, fyt)
    print("pre-training: Fashion-MNIST 8x8 test accuracy %.1f%% (%.1fs)" % (100 * f_acc, time.time() - t0))

    trainable = [k for k in base if base[k].ndim == 2]  # 2-D weights only
    heads = {}
    rows = []
    for ti, task in enumerate(TASKS):
        xtr = to_input(common.transform(dimg[train_idx], task))
        xte = to_input(common.transform(dimg[test_idx], task))
        ytr, yte = dy[train_idx], dy[test_idx]
        # 2. a prototype head from the frozen pre-trained features of the task's train split
        w, b = prototype_head(common.encode(base, xtr), ytr, HEAD_SCALE)
        heads["heads.%s.weight" % task], heads["heads.%s.bias" % task] = w, b
        zs = head_acc(base, w, b, xte, yte)
        # 3. fine-tune the encoder's 2-D weights with the head frozen
        ft = {k: v.copy() for k, v in base.items()}
        train_encoder(ft, {"weight": w, "bias": b}, trainable, xtr, ytr, FT_EPOCHS, FT_BATCH,
                      FT_LR, np.random.default_rng(SEED + 200 + ti))
        acc = head_acc(ft, w, b, xte, yte)
        tv = np.sqrt(sum(float(((ft[k] - base[k]) ** 2).sum()) for k in trainable))
        bn = np.sqrt(sum(float((base[k] ** 2).sum()) for k in trainable))
        rows.append((task, zs, acc, tv / bn))
        common.save_safetensors(os.path.join(out, "tasks", task + ".safetensors"), ft,
                                {"task": task, "fine_tuned_from": "base.safetensors",
                                 "example": "nufilt digits"})

    common.save_safetensors(os.path.join(out, "base.safetensors"), base,
                            {"example": "nufilt digits",
                             "pretrained_on": "Fashion-MNIST 8x8"})
    common.save_safetensors(os.path.join(out, "heads.safetensors"), heads,
                            {"tasks": ",".join(TASKS), "example": "nufilt digits"})
    common.save_safetensors(os.path.join(out, "data", "test.safetensors"),
                            {"images": dimg[test_idx], "labels": dy[test_idx].astype(np.uint8),
                             "index": test_idx.astype(np.int32)},
                            {"tasks": ",".join(TASKS),
                             "note": "untransformed sklearn digits (0..16); task i's test set is "
                                     "these images under task i's symmetry, see common.transform"})

    print("\n%-14s %10s %11s %14s" % ("task", "zero-shot", "fine-tuned", "|tau|/|base|"))
    for task, zs, acc, rel in rows:
        print("%-14s %9.1f%% %10.1f%% %14.3f" % (task, 100 * zs, 100 * acc, rel))
    print("%-14s %9.1f%% %10.1f%%" % ("mean", 100 * np.mean([r[1] for r in rows]),
                                      100 * np.mean([r[2] for r in rows])))
    print("\ntrain %d / test %d digits per task; %s" % (len(train_idx), len(test_idx),
                                                        "encoder params: %d" % sum(v.size for v in base.values())))
    total = 0
    for rel in ["base.safetensors", "heads.safetensors", "data/test.safetensors"] + \
               ["tasks/%s.safetensors" % t for t in TASKS]:
        path = os.path.join(out, rel)
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()[:16]
        size = os.path.getsize(path)
        total += size
        print("  %-34s %8d bytes  sha256 %s" % (rel, size, digest))
    print("  %-34s %8d bytes" % ("total", total))
    print("done in %.1fs" % (time.time() - t0))


if __name__ == "__main__":
    main()
