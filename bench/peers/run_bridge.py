"""nufilt's FusionBench bridge inside FusionBench's own machinery, against the nufilt program.

    python run_bridge.py --models DIR --nufilt PATH [--methods nufilt,wa,...] [--out OUT]

For every method: the algorithm is built the way a FusionBench YAML `method:` section is
(fusion_bench.utils.instantiate on {_target_: nufilt.fusion_bench.NufiltContinualMerging,
...}), run on a BaseModelPool of DIR/base (as `_pretrained_`) and DIR/task1..N loaded with
transformers, and its merged model's state dict is compared tensor by tensor with what
`nufilt merge --method M` writes for DIR/base and DIR/task1..N. Prints, per method, how many
tensors are bit-identical and the largest absolute difference; exits non-zero unless all
are identical.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import torch
from omegaconf import DictConfig
from safetensors.torch import load_file
from transformers import CLIPVisionModel

from fusion_bench.modelpool import BaseModelPool
from fusion_bench.utils import instantiate

METHODS = ["nufilt", "wa", "ta", "ties", "magmax", "opcm", "wudi", "isoc", "tsvm"]
# small NUFILT ranks for the width-64 models (the defaults exceed their dimensions)
PARAMS = {"nufilt": {"null_rank": 16, "task_rank": 4, "lora_rank": 8, "iters": 20}}


def load(path):
    return CLIPVisionModel.from_pretrained(path, torch_dtype=torch.float32).eval()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", required=True)
    ap.add_argument("--nufilt", required=True)
    ap.add_argument("--out", default=None)
    ap.add_argument("--tasks", type=int, default=4)
    ap.add_argument("--methods", default=",".join(METHODS))
    a = ap.parse_args()
    import nufilt
    names = ["task%d" % t for t in range(1, a.tasks + 1)]
    out = a.out or os.path.join(a.models, "..", "bridge")
    os.makedirs(out, exist_ok=True)
    results = {"nufilt": nufilt.__version__, "methods": {}}
    ok = True
    for method in a.methods.split(","):
        params = PARAMS.get(method, {})
        cfg = DictConfig({"_target_": "nufilt.fusion_bench.NufiltContinualMerging",
                          "method": method, "params": params, "shuffle_order": False,
                          "device": "cpu"})
        algo = instantiate(cfg)
        pool = BaseModelPool({"_pretrained_": load(os.path.join(a.models, "base")),
                              **{n: load(os.path.join(a.models, n)) for n in names}})
        t0 = time.time()
        merged = algo.run(pool).state_dict()
        secs = time.time() - t0
        cli_out = os.path.join(out, method + ".safetensors")
        flags = []
        for k, v in params.items():
            flags += ["--" + k.replace("_", "-"), str(v)]
        subprocess.run([a.nufilt, "merge", "--quiet", "--force", "--device", "cpu",
                        "--method", method, *flags, "--base", os.path.join(a.models, "base"),
                        "--out", cli_out] + [os.path.join(a.models, n) for n in names],
                       check=True)
        ref = load_file(cli_out)
        same, worst, missing = 0, 0.0, []
        for k, v in ref.items():
            if k not in merged:
                missing.append(k)
                continue
            m = merged[k].detach().cpu()
            if m.dtype == v.dtype and m.shape == v.shape and torch.equal(m, v):
                same += 1
            else:
                worst = max(worst, float((m.double() - v.double()).abs().max()))
        total = len(ref)
        ok &= same == total and not missing
        results["methods"][method] = {"identical": same, "tensors": total, "max_abs_diff": worst,
                                      "missing": missing, "seconds": round(secs, 2),
                                      "order": algo.order,
                                      "step": algo.state.step if algo.state else None}
        print("%-7s bridge vs nufilt merge: %d/%d tensors bit-identical%s (%.2f s)" %
              (method, same, total, "" if same == total else ", max |diff| %.3g" % worst, secs),
              flush=True)
    with open(os.path.join(out, "bridge.json"), "w") as f:
        json.dump(results, f, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
