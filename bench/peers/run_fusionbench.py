"""Run FusionBench's own implementations of the continual baselines on the
models written by make_models.py, in the order task1, task2, ..., and save
each method's final merged model as a Hugging Face directory:

    python run_fusionbench.py --models DIR --out OUT [--methods wa,ta,...]

OUT/<method>/ (config.json + model.safetensors) and OUT/fusionbench.json
(versions, hyper-parameters, timings).

What is called (fusion_bench 0.2.x, read from the installed package):
  wa     fusion_bench.method.opcm.weight_average.ContinualWeightAverageForCLIP
  ta     fusion_bench.method.opcm.task_arithmetic.ContinualTaskArithmeticForCLIP
         (scaling_factor 0.3)
  ties   fusion_bench.method.opcm.ties_merging.ContinualTiesMergingForCLIP
         (scaling_factor 0.3, threshold 0.2, merge_func "sum")
  magmax fusion_bench.method.magmax.MagMaxAlgorithm (scaling_factor 0.5): a
         streaming fold over the models (its running max-magnitude task vector
         is the continual state)
  opcm   fusion_bench.method.opcm.opcm.OPCMForCLIP (alpha 0.5)
  wudi   fusion_bench.method.wudi.wudi.wudi_merging (FusionBench has no
  isoc   fusion_bench.method.isotropic_merging.iso_utils.iso_c    continual
  tsvm   fusion_bench.method.task_singular_vector.utils.TSVM_utils.
         compute_and_sum_svd_mem_reduction                        class for
         these three: they are applied pairwise to [M(t-1) - theta0, tau_t],
         the continual form of the spec; first step theta_1 for wudi,
         theta_0 + tau_1 for isoc/tsvm; lambda 1)
All with shuffle_order=False, on CPU, float32.
"""

import argparse
import json
import os
import sys
import time
from types import SimpleNamespace

import torch

import lightning as L
from transformers import CLIPVisionModel

import fusion_bench
from fusion_bench.modelpool import BaseModelPool

METHODS = ["wa", "ta", "ties", "magmax", "opcm", "wudi", "isoc", "tsvm"]
HPARAMS = {
    "wa": {},
    "ta": {"scaling_factor": 0.3},
    "ties": {"scaling_factor": 0.3, "threshold": 0.2, "merge_func": "sum"},
    "magmax": {"scaling_factor": 0.5},
    "opcm": {"alpha": 0.5},
    "wudi": {"iter_num": 50, "lr": 1e-5},
    "isoc": {"scaling_factor": 1.0},
    "tsvm": {"alpha": 1.0},
}


def load(path):
    m = CLIPVisionModel.from_pretrained(path, torch_dtype=torch.float32)
    return m.eval()


def make_pool(models_dir, names):
    d = {"_pretrained_": load(os.path.join(models_dir, "base"))}
    for n in names:
        d[n] = load(os.path.join(models_dir, n))
    return BaseModelPool(d)


def prepare(algo):
    """What fusion_bench's program would set up: a fabric on CPU and a
    program with an (empty) task pool; no logging, no evaluation, no shuffle."""
    algo.fabric = L.Fabric(accelerator="cpu", devices=1)
    algo._program = SimpleNamespace(taskpool=SimpleNamespace(_test_datasets={}))
    return algo


def run_class(method, models_dir, names):
    from fusion_bench.method.opcm import (ContinualTaskArithmeticForCLIP, ContinualTiesMergingForCLIP,
                                          ContinualWeightAverageForCLIP, OPCMForCLIP)
    common = dict(shuffle_order=False, save_on_every_step=False, evaluate_on_every_step=False)
    if method == "wa":
        algo = ContinualWeightAverageForCLIP(**common)
    elif method == "ta":
        algo = ContinualTaskArithmeticForCLIP(scaling_factor=HPARAMS["ta"]["scaling_factor"], **common)
    elif method == "ties":
        h = HPARAMS["ties"]
        algo = ContinualTiesMergingForCLIP(scaling_factor=h["scaling_factor"], threshold=h["threshold"],
                                           merge_func=h["merge_func"], **common)
    elif method == "opcm":
        algo = OPCMForCLIP(alpha=HPARAMS["opcm"]["alpha"], **common)
    elif method == "magmax":
        from fusion_bench.method.magmax import MagMaxAlgorithm
        algo = MagMaxAlgorithm(scaling_factor=HPARAMS["magmax"]["scaling_factor"])
    else:
        raise ValueError(method)
    prepare(algo)
    pool = make_pool(models_dir, names)
    merged = algo.run(pool)
    return {k: v.detach().clone() for k, v in merged.state_dict().items()}


def run_pairwise(method, models_dir, names):
    """Continual form of a batch method: R = FB_fn([M(t-1) - theta0, tau_t])."""
    base = load(os.path.join(models_dir, "base")).state_dict()
    base = {k: v.detach().clone() for k, v in base.items()}
    merged = None
    for i, n in enumerate(names):
        task = {k: v.detach().clone() for k, v in load(os.path.join(models_dir, n)).state_dict().items()}
        tau = {k: task[k] - base[k] for k in base}
        if i == 0:
            merged = {k: task[k].clone() if method == "wudi" else base[k] + tau[k] for k in base}
            continue
        m = {k: merged[k] - base[k] for k in base}
        if method == "wudi":
            from fusion_bench.method.wudi.wudi import wudi_merging
            r = wudi_merging([m, tau], accelerator="cpu", iter_num=HPARAMS["wudi"]["iter_num"])
            lam = 1.0
        elif method == "isoc":
            from fusion_bench.method.isotropic_merging.iso_utils import iso_c
            r = iso_c([m, tau], accelerator="cpu")
            lam = HPARAMS["isoc"]["scaling_factor"]
        elif method == "tsvm":
            from fusion_bench.method.task_singular_vector.utils.TSVM_utils import \
                compute_and_sum_svd_mem_reduction
            r = compute_and_sum_svd_mem_reduction([m, tau], accelerator="cpu")
            lam = HPARAMS["tsvm"]["alpha"]
        else:
            raise ValueError(method)
        merged = {k: (base[k] + lam * r[k].detach()).clone() for k in base}
    return merged


def save(state, models_dir, out):
    model = load(os.path.join(models_dir, "base"))
    model.load_state_dict(state)
    model.save_pretrained(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--tasks", type=int, default=4)
    ap.add_argument("--methods", default=",".join(METHODS))
    a = ap.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    names = ["task%d" % t for t in range(1, a.tasks + 1)]
    os.makedirs(a.out, exist_ok=True)
    info = {"fusion_bench": getattr(fusion_bench, "__version__", None) or _dist_version("fusion-bench"),
            "torch": torch.__version__, "transformers": __import__("transformers").__version__,
            "order": names, "hparams": HPARAMS, "seconds": {}, "errors": {}}
    for method in a.methods.split(","):
        t0 = time.time()
        print("== FusionBench %s" % method, flush=True)
        try:
            if method in ("wudi", "isoc", "tsvm"):
                state = run_pairwise(method, a.models, names)
            else:
                state = run_class(method, a.models, names)
            save(state, a.models, os.path.join(a.out, method))
        except Exception as e:  # noqa: BLE001 - report and go on with the next method
            import traceback
            traceback.print_exc()
            info["errors"][method] = "%s: %s" % (type(e).__name__, e)
            continue
        info["seconds"][method] = round(time.time() - t0, 2)
    with open(os.path.join(a.out, "fusionbench.json"), "w") as f:
        json.dump(info, f, indent=2)
    print(json.dumps({k: info[k] for k in ("fusion_bench", "torch", "transformers", "seconds", "errors")}, indent=1))
    return 1 if info["errors"] else 0


def _dist_version(name):
    try:
        from importlib.metadata import version
        return version(name)
    except Exception:  # noqa: BLE001
        return None


if __name__ == "__main__":
    sys.exit(main())
