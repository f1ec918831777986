"""Build a small randomly initialised CLIPVisionModel (the 'pretrained' base) and
N perturbed 'fine-tuned' copies, saved as Hugging Face directories
(save_pretrained, safetensors):

    python make_models.py --out DIR [--tasks 4] [--seed 0] [--width 64]
        [--layers 2]

DIR/base/, DIR/task1/, ..., DIR/taskN/ (config.json + model.safetensors).

Every 2-D weight of task t gets tau = a U diag(s) V^T with random orthonormal
U, V (seeded per task) and a geometric spectrum with a step at k/2, i.e. the
kind of spectral structure OPCM, Iso-C and TSV-M act on, plus small i.i.d.
noise; 1-D and 4-D tensors get i.i.d. perturbations.  Element rms of a task
vector is 5% of the rms of the base tensor.
"""

import argparse
import os

import torch
from transformers import CLIPVisionConfig, CLIPVisionModel


def orth(gen, m, n):
    q, r = torch.linalg.qr(torch.randn(m, n, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def task_vector(p, gen):
    rms = p.detach().double().pow(2).mean().sqrt().item() or 1e-2
    if p.dim() == 2:
        d_out, d_in = p.shape
        k = min(d_out, d_in)
        i = torch.arange(k, dtype=torch.float64)
        w = 0.8 + 0.4 * torch.rand((), generator=gen, dtype=torch.float64)
        s = 10.0 ** (-i / k * w)
        s[k // 2:] *= 0.35
        tau = (orth(gen, d_out, k) * s) @ orth(gen, d_in, k).T
        tau += 0.02 * tau.pow(2).mean().sqrt() * torch.randn(d_out, d_in, generator=gen, dtype=torch.float64)
    else:
        tau = torch.randn(p.shape, generator=gen, dtype=torch.float64)
    amp = 0.7 + 0.6 * torch.rand((), generator=gen, dtype=torch.float64)
    return (tau * (amp * 0.05 * rms / tau.pow(2).mean().sqrt())).to(p.dtype)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--tasks", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    a = ap.parse_args()

    cfg = CLIPVisionConfig(hidden_size=a.width, intermediate_size=4 * a.width,
                           num_hidden_layers=a.layers, num_attention_heads=max(1, a.width // 16),
                           image_size=32, patch_size=8, projection_dim=a.width)
    torch.manual_seed(a.seed)
    base = CLIPVisionModel(cfg).eval()
    # The HF init leaves biases at 0 and LayerNorms at (1, 0): give them values so
    # that every tensor class is exercised.
    gen = torch.Generator().manual_seed(a.seed)
    with torch.no_grad():
        for n, p in base.named_parameters():
            if p.dim() == 1:
                p.add_(0.02 * torch.randn(p.shape, generator=gen))
    os.makedirs(a.out, exist_ok=True)
    base.save_pretrained(os.path.join(a.out, "base"), safe_serialization=True)
    for t in range(1, a.tasks + 1):
        gen = torch.Generator().manual_seed(1000 * (a.seed + 1) + t)
        model = CLIPVisionModel(cfg).eval()
        model.load_state_dict(base.state_dict())
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.add_(task_vector(p, gen))
        model.save_pretrained(os.path.join(a.out, "task%d" % t), safe_serialization=True)
    print("wrote %s/{base,%s}" % (a.out, ",".join("task%d" % t for t in range(1, a.tasks + 1))))


if __name__ == "__main__":
    main()
