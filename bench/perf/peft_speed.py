#!/usr/bin/python3
"""A NUFILT step with a rank-r LoRA adapter as the task, against the same step with the
adapter densified (base + scale B A written as a checkpoint): the factored path (V_t from QRs
of the factors and an r x r SVD, K = tau^T tau from the factors) against the dense one.

    /usr/bin/python3 bench/perf/peft_speed.py [--nufilt build/host/nufilt] [--layers 2]
        [--rank 16] [--repeats 3] [--svd fast] [--threads 2] [--work DIR]

Uses bench/perf/gen.py's LLaMA-shaped checkpoints (TinyLlama-1.1B shapes, BF16) cut to
--layers layers: DIR/llama/base.safetensors and task01 (step 1 of the stream). The adapter
targets the seven linear modules of every layer (q, k, v, o, gate, up, down) with rank --rank,
lora_alpha 2r, factors in float32 (A ~ N(0, 1/in), B ~ N(0, 0.02 / sqrt(r)): an update of
element rms ~1e-3 like gen.py's task vectors); its twin stores base + 2 B A in BF16, as a merged
checkpoint of the base's dtype would. Then step 2 (--prev the merge of task01) is timed with
the adapter and with the twin, interleaved, --repeats times each; prints the medians and their
ratio. Needs only python3 + numpy.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gen  # noqa: E402  (bench/perf/gen.py)

MODULES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def write_adapter(base_path, shapes, layers, rank, adir, twin_path, seed=1):
    os.makedirs(adir, exist_ok=True)
    alpha = 2 * rank
    scale = alpha / rank
    cfg = {"peft_type": "LORA", "r": rank, "lora_alpha": alpha, "lora_dropout": 0.0,
           "bias": "none", "use_rslora": False, "use_dora": False, "fan_in_fan_out": False,
           "target_modules": [m.split(".")[1] for m in MODULES], "rank_pattern": {},
           "alpha_pattern": {}, "modules_to_save": None, "init_lora_weights": True,
           "task_type": "CAUSAL_LM", "base_model_name_or_path": "bench/perf llama"}
    with open(os.path.join(adir, "adapter_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    ashapes, factors = [], {}
    rng = np.random.default_rng(seed)
    shape_of = dict(shapes)
    for i in range(layers):
        for m in MODULES:
            name = "model.layers.%d.%s" % (i, m)
            out_f, in_f = shape_of[name + ".weight"]
            a = (rng.standard_normal((rank, in_f), dtype=np.float32) / np.sqrt(in_f))
            b = (rng.standard_normal((out_f, rank), dtype=np.float32) * (0.02 / np.sqrt(rank)))
            factors[name + ".weight"] = (a, b)
            ashapes += [("base_model.model.%s.lora_A.weight" % name, (rank, in_f)),
                        ("base_model.model.%s.lora_B.weight" % name, (out_f, rank))]
    w = gen.StreamWriter(os.path.join(adir, "adapter_model.safetensors"), ashapes, "F32",
                         {"format": "pt"})
    for n, _ in ashapes:
        mod = n[len("base_model.model."):].rsplit(".lora_", 1)[0] + ".weight"
        w.put(n, factors[mod][0] if ".lora_A." in n else factors[mod][1])
    w.close()
    # the densified twin, in the base's dtype
    tw = gen.StreamWriter(twin_path, shapes, "BF16", {"format": "pt"})
    for name, shape in shapes:
        raw = gen.read_tensor(base_path, name)
        if name in factors:
            a, b = factors[name]
            x = gen.bf16_bits_to_f32(raw) + np.float32(scale) * (b @ a)
            tw.put(name, gen.f32_to_bf16_bits(x))
        else:
            tw.put(name, np.asarray(raw))
    tw.close()


def run(cmd):
    """Wall seconds and CPU seconds (user + system) of one nufilt run."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    dt = time.monotonic() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        sys.exit("failed (%d): %s\n%s" % (p.returncode, " ".join(cmd),
                                          p.stderr.decode(errors="replace")))
    return dt, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nufilt", default=os.path.join(HERE, "..", "..", "build", "host", "nufilt"))
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--svd", default="fast")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default=os.path.join(gen.cache_dir(), "peft-speed"))
    a = ap.parse_args()
    exe = os.path.abspath(a.nufilt)
    wd = os.path.abspath(a.work)
    os.makedirs(wd, exist_ok=True)
    mdir = os.path.join(wd, "llama-L%d" % a.layers)
    base, task1 = gen.generate("llama", mdir, 1, 0, a.layers, quiet=True)
    shapes = gen.llama_shapes(L=a.layers)
    adir = os.path.join(wd, "adapter-L%d-r%d" % (a.layers, a.rank))
    twin = os.path.join(wd, "twin-L%d-r%d.safetensors" % (a.layers, a.rank))
    if not (os.path.exists(twin) and os.path.exists(os.path.join(adir, "adapter_config.json"))):
        write_adapter(base, shapes, a.layers, a.rank, adir, twin)
    m1 = os.path.join(wd, "m1-L%d.safetensors" % a.layers)
    common = ["--svd", a.svd, "--threads", str(a.threads), "--quiet", "--preset", "llama"]
    if not os.path.exists(m1):
        run([exe, "step", "--base", base, "--task", task1, "--out", m1] + common)
    out = os.path.join(wd, "m2.safetensors")
    rep = os.path.join(wd, "m2-report.json")
    keys = ("wall", "cpu", "svd", "train")
    times = {k: {x: [] for x in keys} for k in ("adapter", "densified")}
    for r in range(a.repeats):
        for kind, task in (("adapter", adir), ("densified", twin)):
            wall, cpu = run([exe, "step", "--base", base, "--prev", m1, "--task", task, "--out",
                             out, "--force", "--report", rep] + common)
            with open(rep) as f:
                tot = json.load(f)["steps"][0]["totals"]
            row = dict(wall=wall, cpu=cpu, svd=tot["svd_seconds"], train=tot["train_seconds"])
            for x in keys:
                times[kind][x].append(row[x])
            print("repeat %d  %-9s wall %7.2f s  CPU %7.2f s  SVD %7.2f s  training %7.2f s"
                  % (r + 1, kind, wall, cpu, row["svd"], row["train"]), flush=True)
    med = {k: {x: statistics.median(v[x]) for x in keys} for k, v in times.items()}
    print("LLaMA-shaped step (%d layers, %d x 7 LoRA modules of rank %d, --svd %s, %d threads), "
          "medians of %d interleaved runs:" % (a.layers, a.layers, a.rank, a.svd, a.threads,
                                               a.repeats))
    for x in keys:
        print("  %-6s adapter %8.2f s  densified %8.2f s  ratio %.2fx"
              % (x, med["adapter"][x], med["densified"][x],
                 med["densified"][x] / med["adapter"][x] if med["adapter"][x] else float("nan")))


if __name__ == "__main__":
    main()
