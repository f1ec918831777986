"""Fine-tune all-MiniLM-L6-v2 once per task and cache the checkpoints as safetensors.

Only the tensors that NUFILT treats (nufilt's all-linear preset: every 2-D `*.weight` outside
the embeddings, i.e. the 36 attention and feed-forward projections of the 6 encoder layers)
are trained; biases, LayerNorms, embeddings and the (unused) pooler stay at their pre-trained
values. NUFILT leaves every untreated tensor at the base value, so training them would give
the fine-tuned references an advantage that no treated-only merge could keep; freezing them
makes the merge benchmark measure exactly what the methods merge (as in the paper, where only
the encoder is fine-tuned and the frozen heads are never merged).

Head: frozen label-prompt embeddings from the pre-trained encoder, logits = 20 * cosine.
Optimiser: AdamW (lr 3e-5, weight decay 0.01 on the trained matrices, constant rate), batch
16, 120 steps, dropout as in the checkpoint's config (0.1), seeded per task.

Output, in the cache (never the repository):
  CACHE/ckpt-KEY/TASK.safetensors   every tensor of the base file, trained ones replaced
  CACHE/ckpt-KEY/references.json    zero-shot and fine-tuned test accuracies, timings
KEY hashes the data file, the base weights and the training settings, so changing any of
them rebuilds and an unchanged setup reuses the cache.
"""
import argparse
import fcntl
import hashlib
import json
import os
import random
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import data  # noqa: E402

SETTINGS = {"steps": 120, "lr": 3e-5, "batch": 16, "weight_decay": 0.01, "seed": 0,
            "max_tokens": common.MAX_TOKENS, "trained": "all-linear", "version": 1}


def ckpt_dir(tasks_sha, settings=SETTINGS):
    base_sha = common.file_sha256(os.path.join(common.base_dir(), "model.safetensors"))
    key = hashlib.sha256(json.dumps({"data": tasks_sha, "base": base_sha, "s": settings},
                                    sort_keys=True).encode()).hexdigest()[:12]
    return os.path.join(common.CACHE, f"ckpt-{key}")


def batch_tensors(ids):
    L = max(len(q) for q in ids)
    x = torch.zeros(len(ids), L, dtype=torch.long)
    m = torch.zeros(len(ids), L, dtype=torch.long)
    for r, q in enumerate(ids):
        x[r, :len(q)] = torch.tensor(q)
        m[r, :len(q)] = 1
    return x, m


def finetune_task(task, index, tok, base_state, settings, log):
    torch.manual_seed(settings["seed"] * 1000 + index)
    rng = random.Random(f"{settings['seed']}:{task['name']}:order")
    model = common.new_encoder()
    head = common.class_embeddings(model, tok, task["prompts"])
    for name, p in model.named_parameters():
        p.requires_grad_(common.is_treated(name, tuple(p.shape)))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=settings["lr"], weight_decay=settings["weight_decay"])
    ids = common.tokenize(tok, [t for t, _ in task["train"]])
    ys = [y for _, y in task["train"]]
    order = []
    model.train()
    t0, c0 = time.time(), time.process_time()
    losses = []
    for step in range(settings["steps"]):
        if len(order) < settings["batch"]:
            perm = list(range(len(ids)))
            rng.shuffle(perm)
            order += perm
        idx, order = order[:settings["batch"]], order[settings["batch"]:]
        x, m = batch_tensors([ids[i] for i in idx])
        y = torch.tensor([ys[i] for i in idx])
        logits = common.LOGIT_SCALE * common.embed(model, x, m) @ head.T
        loss = torch.nn.functional.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if (step + 1) % 20 == 0:
            log(f"  {task['name']}: step {step + 1}/{settings['steps']} loss "
                f"{sum(losses[-20:]) / 20:.3f} ({(time.time() - t0) / (step + 1):.2f} s/step)")
    train_s = time.time() - t0
    train_cpu = time.process_time() - c0
    model.eval()
    trained = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    out = {}
    for k, v in base_state.items():
        out[k] = trained[k].clone() if k in trained else v
    return model, out, train_s, train_cpu, losses


def update_refs(ref_path, settings, tasks_sha, name, entry):
    """Add one task's entry to references.json under a lock (parallel jobs share the file)."""
    with open(ref_path + ".lock", "w") as lk:
        fcntl.flock(lk, fcntl.LOCK_EX)
        refs = common.read_json(ref_path, {"settings": settings, "data_sha256": tasks_sha,
                                           "tasks": {}})
        refs["tasks"][name] = entry
        common.write_json(ref_path, refs)


def run_jobs(jobs, names, args):
    """Fine-tune `names` in `jobs` single-threaded worker processes (round robin)."""
    procs = []
    for j in range(jobs):
        part = names[j::jobs]
        if not part:
            continue
        cmd = [sys.executable, os.path.abspath(__file__), "--threads", "1", "--tasks",
               ",".join(part), "--steps", str(args.steps), "--lr", str(args.lr), "--quiet-data"]
        procs.append(subprocess.Popen(cmd))
    rc = 0
    for p in procs:
        rc = p.wait() or rc
    if rc:
        raise SystemExit(f"a fine-tuning job failed (exit {rc})")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--tasks", default="", help="comma-separated subset (default: all)")
    ap.add_argument("--steps", type=int, default=SETTINGS["steps"])
    ap.add_argument("--lr", type=float, default=SETTINGS["lr"])
    ap.add_argument("--jobs", type=int, default=1,
                    help="parallel single-threaded worker processes (one task each at a time)")
    ap.add_argument("--quiet-data", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    common.set_threads(args.threads)
    settings = dict(SETTINGS, steps=args.steps, lr=args.lr)

    def log(msg):
        print(msg, flush=True)

    tasks, tasks_sha = data.load_or_build(common.CACHE)
    if not args.quiet_data:
        log(data.summary(tasks))
    out_dir = ckpt_dir(tasks_sha, settings)
    os.makedirs(out_dir, exist_ok=True)
    ref_path = os.path.join(out_dir, "references.json")
    refs = common.read_json(ref_path, {"settings": settings, "data_sha256": tasks_sha,
                                       "tasks": {}})
    todo = [t["name"] for t in tasks
            if (not args.tasks or t["name"] in args.tasks.split(","))
            and not (os.path.exists(os.path.join(out_dir, f"{t['name']}.safetensors"))
                     and t["name"] in refs["tasks"])]
    if args.jobs > 1 and len(todo) > 1:
        run_jobs(args.jobs, todo, args)
        args.tasks = ",".join(t["name"] for t in tasks)  # report all, all cached now
        refs = common.read_json(ref_path)
    from safetensors.torch import save_file
    tok = common.tokenizer()
    base_state = common.load_state(common.base_dir())
    base_model = common.new_encoder()
    wanted = [t for t in tasks if not args.tasks or t["name"] in args.tasks.split(",")]
    for index, task in enumerate(tasks):
        if task not in wanted:
            continue
        path = os.path.join(out_dir, f"{task['name']}.safetensors")
        if os.path.exists(path) and task["name"] in refs["tasks"]:
            r = refs["tasks"][task["name"]]
            log(f"{task['name']}: cached ({path}); zero-shot {r['zero_shot']:.3f}, "
                f"fine-tuned {r['finetuned']:.3f}")
            continue
        log(f"{task['name']}: fine-tuning {settings['steps']} steps")
        test_ids = common.tokenize(tok, [t for t, _ in task["test"]])
        batches = common.make_batches(test_ids, [y for _, y in task["test"]])
        head = common.class_embeddings(base_model, tok, task["prompts"])
        t0 = time.time()
        zs = common.accuracy(base_model, batches, head)
        eval_s = time.time() - t0
        model, state, train_s, train_cpu, losses = finetune_task(task, index, tok, base_state, settings, log)
        ft = common.accuracy(model, batches, head)
        save_file(state, path + ".tmp", metadata={"format": "pt", "task": task["name"],
                                                  "finetune": json.dumps(settings)})
        os.replace(path + ".tmp", path)
        entry = {
            "zero_shot": zs, "finetuned": ft, "train_seconds": train_s,
            "train_cpu_seconds": train_cpu, "threads": torch.get_num_threads(),
            "seconds_per_step": train_s / settings["steps"], "eval_seconds": eval_s,
            "n_train": len(task["train"]), "n_test": len(task["test"]),
            "n_classes": len(task["classes"]), "final_loss": sum(losses[-20:]) / 20}
        update_refs(ref_path, settings, tasks_sha, task["name"], entry)
        refs["tasks"][task["name"]] = entry
        log(f"{task['name']}: zero-shot {zs:.3f} -> fine-tuned {ft:.3f} "
            f"(train {train_s:.0f} s, {train_s / settings['steps']:.2f} s/step; eval {eval_s:.1f} s)")
    return out_dir


if __name__ == "__main__":
    main()
