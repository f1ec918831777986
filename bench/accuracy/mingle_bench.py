"""MINGLE on the accuracy benchmark's text suite (bench/accuracy/run.sh --methods mingle).

MINGLE is test-time, not data-free: at each task it takes a seed buffer of unlabeled inputs
drawn from that task's test split (100 inputs, as the official NLP configuration's
seed_buffer_size; random.Random(42 + v).sample(range(n_test), 100) for order v, the same
indices for every task as the official code's fixed-seed draw), and those inputs are excluded
from the task's evaluation. NUFILT is merged (`nufilt merge`, the Table 1 arguments) and
evaluated here on the same held-out test sets, so the two rows compare on the same examples.
The stream runs through nufilt.mingle (the package in python/, the library built beside it);
its costs (parameters added, test-time training time per task, inference time against the
base encoder) are measured and printed. Results: CACHE/results/mingle/*.json and a section of
docs/results.md between the markers <!-- mingle:begin --> and <!-- mingle:end -->.
"""
import argparse
import os
import random
import resource
import shutil
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402
import data  # noqa: E402
import evaluate  # noqa: E402
import finetune  # noqa: E402

BUFFER = 100
BEGIN, END = "<!-- mingle:begin -->", "<!-- mingle:end -->"
LAYERS = r"^encoder\.layer\.\d+\."  # the 36 attention and feed-forward matrices


def log(msg):
    print(time.strftime("[%H:%M:%S] ") + msg, flush=True)


def pad(ids):
    L = max(len(x) for x in ids)
    x = torch.zeros(len(ids), L, dtype=torch.long)
    m = torch.zeros(len(ids), L, dtype=torch.long)
    for r, s in enumerate(ids):
        x[r, :len(s)] = torch.tensor(s)
        m[r, :len(s)] = 1
    return {"input_ids": x, "attention_mask": m}


def logits_fn_for(head):
    def fn(model, batch):
        # a batch of the buffer is cut to its longest input (padding per batch, as a
        # DataLoader's collate would), since the gates average over every position
        m = batch["attention_mask"]
        L = max(int(m.sum(1).max()), 1)
        return common.LOGIT_SCALE * common.embed(model, batch["input_ids"][:, :L],
                                                 m[:, :L]) @ head.T
    return fn


def timed_accuracy(model, batches, head):
    """Accuracy, wall seconds and CPU seconds (this process, all its threads)."""
    t0, c0 = time.perf_counter(), time.process_time()
    a = common.accuracy(model, batches, head)
    return a, time.perf_counter() - t0, time.process_time() - c0


def wait_for_checkpoint(ckpt, name, wait):
    """finetune.py renames a checkpoint into place, then adds its references entry."""
    def ready():
        refs = common.read_json(os.path.join(ckpt, "references.json"), {})
        return (os.path.exists(os.path.join(ckpt, name + ".safetensors"))
                and name in refs.get("tasks", {}))
    if not wait or ready():
        return
    log("waiting for the fine-tuned %s" % name)
    while not ready():
        time.sleep(10)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--orders", type=int, default=5)
    ap.add_argument("--first-order", type=int, default=0)
    ap.add_argument("--tasks", default="", help="a subset of the tasks (a partial run)")
    ap.add_argument("--nufilt", default=os.environ.get("NUFILT", ""),
                    help="the nufilt program for the NUFILT comparison (none: skipped)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--docs", default=os.path.join(common.REPO, "docs"))
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--wait-checkpoints", action="store_true",
                    help="start while finetune.py is still running: wait for each task's "
                    "checkpoint when the stream reaches it")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    # libnufilt computes MINGLE's SVDs with the system OpenBLAS, loaded below, which would
    # otherwise start one thread per core and wait for them by spinning on sched_yield: on a
    # shared, oversubscribed 2-core machine a single task's step then took 20 minutes of wall
    # time for half a minute of CPU. The run is --threads N throughout.
    os.environ["OPENBLAS_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = str(a.threads)
    if not os.environ.get("NUFILT_LIBRARY") and a.nufilt:
        # the library built beside the program (build*/src/libnufilt.so)
        lib = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(a.nufilt))), "src",
                           "libnufilt.so")
        if os.path.exists(lib):
            os.environ["NUFILT_LIBRARY"] = lib
    sys.path.insert(0, os.path.join(common.REPO, "python"))

    tasks, tasks_sha = data.load_or_build(common.CACHE)
    if a.tasks:
        keep = a.tasks.split(",")
        tasks = [t for t in tasks if t["name"] in keep]
    names = [t["name"] for t in tasks]
    byname = {t["name"]: t for t in tasks}
    ckpt = finetune.ckpt_dir(tasks_sha)
    out_dir = os.path.join(common.CACHE, "results", "mingle")
    os.makedirs(out_dir, exist_ok=True)
    tag = "tasks-" + "-".join(sorted(names)) if a.tasks else "all"
    missing = [n for n in names if not os.path.exists(os.path.join(ckpt, n + ".safetensors"))]
    if missing and not a.report_only and not a.wait_checkpoints:
        log("missing fine-tuned checkpoints in %s: %s (run finetune.py first)"
            % (ckpt, ", ".join(missing)))
        return 2
    refs = common.read_json(os.path.join(ckpt, "references.json"), {}).get("tasks", {})
    if a.report_only:
        report(out_dir, tag, names, refs, a.docs, len(names))
        return 0
    from nufilt import mingle
    tok = common.tokenizer()
    base_enc = common.new_encoder()
    heads = {n: common.class_embeddings(base_enc, tok, byname[n]["prompts"]) for n in names}

    orders = []
    for v in range(a.first_order, a.first_order + a.orders):
        o = list(names)
        random.seed(42 + v)
        random.shuffle(o)
        orders.append((v, o))

    for v, order in orders:
        path = os.path.join(out_dir, "%s-order%d.json" % (tag, v))
        if os.path.exists(path):
            log("order %d: cached (%s)" % (v, path))
            continue
        rng_seed = 42 + v
        split = {}
        for n in names:
            test = byname[n]["test"]
            buf = set(random.Random(rng_seed).sample(range(len(test)), min(BUFFER, len(test))))
            ids = common.tokenize(tok, [x for x, _ in test])
            held = [i for i in range(len(test)) if i not in buf]
            split[n] = (pad([ids[i] for i in sorted(buf)]),
                        common.make_batches([ids[i] for i in held], [test[i][1] for i in held]))
        res = {"order_index": v, "order": order, "buffer": BUFFER, "tasks": names,
               "threads": a.threads, "machine": common.machine(),
               "started": time.strftime("%Y-%m-%d %H:%M:%S"),
               "nufilt_sha256": common.file_sha256(a.nufilt) if a.nufilt else None,
               "loadavg": [os.getloadavg()]}
        # MINGLE
        model = common.new_encoder()
        t_all = time.perf_counter()
        stream = mingle.MingleStream(model, recipe="nlp", layers=LAYERS, max_steps=a.steps,
                                     seed=v, verbose=True)
        acc, steps = {}, []
        for t, n in enumerate(order, 1):
            teacher = common.new_encoder()
            wait_for_checkpoint(ckpt, n, a.wait_checkpoints)
            common.load_weights(teacher, common.load_state(os.path.join(ckpt, n +
                                                                        ".safetensors")))
            teacher.eval()
            stream.logits_fn = logits_fn_for(heads[n])
            c0 = time.process_time()
            st = stream.add_task(teacher, split[n][0], name=n)
            st["cpu_s"] = time.process_time() - c0  # experts + gate training + bases
            model.eval()
            acc["%d,%d" % (t, t)], _, _ = timed_accuracy(model, split[n][1], heads[n])
            res["loadavg"].append(os.getloadavg())
            st["params_total"] = stream.added_parameters()
            steps.append(st)
            log("mingle order %d step %d %s: a(t,t) %.1f" % (v, t, n,
                                                            100 * acc["%d,%d" % (t, t)]))
            del teacher
        T = len(order)
        t_mingle, t_base, c_mingle, c_base = 0.0, 0.0, 0.0, 0.0
        for i, n in enumerate(order, 1):
            if i < T:
                acc["%d,%d" % (T, i)], dt, dc = timed_accuracy(model, split[n][1], heads[n])
            else:
                _, dt, dc = timed_accuracy(model, split[n][1], heads[n])
            t_mingle += dt
            c_mingle += dc
            _, db, dcb = timed_accuracy(base_enc, split[n][1], heads[n])
            t_base += db
            c_base += dcb
        res["mingle"] = {"acc": acc, "steps": steps, "seconds": time.perf_counter() - t_all,
                         "params_added": stream.added_parameters(),
                         "params_base": sum(p.numel() for p in base_enc.parameters()),
                         "eval_seconds_final": t_mingle, "eval_seconds_base": t_base,
                         "eval_cpu_seconds_final": c_mingle, "eval_cpu_seconds_base": c_base}
        aa = {tuple(map(int, k.split(","))): x for k, x in acc.items()}
        res["mingle"]["ACC"], res["mingle"]["BWT"] = evaluate.acc_bwt(aa, order)
        log("mingle order %d: ACC %.1f BWT %+.1f, %d parameters added, inference %.2fx base"
            % (v, 100 * res["mingle"]["ACC"], 100 * res["mingle"]["BWT"],
               res["mingle"]["params_added"], t_mingle / max(t_base, 1e-9)))
        # NUFILT on the same held-out examples
        if a.nufilt:
            for n in order:
                wait_for_checkpoint(ckpt, n, a.wait_checkpoints)
            work = os.path.join(common.CACHE, "work", "mingle-nufilt-order%d" % v)
            shutil.rmtree(work, ignore_errors=True)  # no step file of an earlier run stays
            os.makedirs(os.path.join(work, "steps"), exist_ok=True)
            cmd = [a.nufilt, "merge", "--base", common.base_dir(), "--out",
                   os.path.join(work, "merged.safetensors"), "--save-steps",
                   os.path.join(work, "steps"), "--quiet", "--force", "--threads",
                   str(a.threads), "--method", "nufilt", "--preset", "all-linear"] + \
                [os.path.join(ckpt, n + ".safetensors") for n in order]
            t0 = time.perf_counter()
            ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            p = subprocess.run(cmd, capture_output=True, text=True)
            ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            merge_s = time.perf_counter() - t0
            merge_cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
            if p.returncode:
                res["nufilt_error"] = (p.stderr or p.stdout)[-1000:]
                log("nufilt failed: " + res["nufilt_error"])
            else:
                nacc = {}
                enc = common.new_encoder()
                for t in range(1, T + 1):
                    common.load_weights(enc, common.load_state(
                        os.path.join(work, "steps", "step%02d.safetensors" % t)))
                    enc.eval()
                    todo = [t] if t < T else list(range(1, T + 1))
                    for i in todo:
                        nacc["%d,%d" % (t, i)] = common.accuracy(enc, split[order[i - 1]][1],
                                                                 heads[order[i - 1]])
                na = {tuple(map(int, k.split(","))): x for k, x in nacc.items()}
                nA, nB = evaluate.acc_bwt(na, order)
                res["nufilt"] = {"acc": nacc, "ACC": nA, "BWT": nB,
                                 "merge_seconds": merge_s, "merge_cpu_seconds": merge_cpu}
                log("nufilt order %d (same held-out examples): ACC %.1f BWT %+.1f"
                    % (v, 100 * nA, 100 * nB))
            shutil.rmtree(work, ignore_errors=True)  # 8 step files, about 700 MB
        res["loadavg"].append(os.getloadavg())
        common.write_json(path, res)
    refs = common.read_json(os.path.join(ckpt, "references.json"), {}).get("tasks", {})
    report(out_dir, tag, names, refs, a.docs, len(names))
    return 0


def _ms(vals):
    m, s = evaluate.mean_std(vals)
    return "%.1f ± %.1f" % (100 * m, 100 * s) if len(vals) > 1 else "%.1f" % (100 * m)


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else float("nan")


def report(out_dir, tag, names, refs, docs, ntasks):
    runs = []
    for f in sorted(os.listdir(out_dir)):
        if f.startswith(tag + "-order") and f.endswith(".json"):
            runs.append(common.read_json(os.path.join(out_dir, f)))
    if not runs:
        return
    m = [r["mingle"] for r in runs]
    nf = [r["nufilt"] for r in runs if "nufilt" in r]
    ft = [refs[n]["finetuned"] for n in names if n in refs]
    steps = [s for x in m for s in x["steps"]]
    per_task_train = [s["train_s"] for s in steps]  # wall, gate training only
    per_task_cpu = _mean([s.get("cpu_s") for s in steps])  # CPU, the whole add_task
    per_task_params = m[0]["params_added"] / ntasks  # experts, gate rows, basis columns
    over = sum(x["eval_seconds_final"] for x in m) / sum(x["eval_seconds_base"] for x in m)
    over_cpu = (sum(x["eval_cpu_seconds_final"] for x in m) /
                sum(x["eval_cpu_seconds_base"] for x in m)
                if all("eval_cpu_seconds_final" in x for x in m) else float("nan"))
    merge_cpu = _mean([x.get("merge_cpu_seconds") for x in nf])
    loads = [la[0] for r in runs for la in r.get("loadavg", [])]
    shas = sorted({(r.get("nufilt_sha256") or "?")[:16] for r in runs})
    partial = "" if (ntasks == 8 and len(runs) == 5) else (
        " **Partial run: %d of 5 task orders (order%s %s), %d of 8 tasks.** The mean ± std "
        "below is over the orders that finished." % (
            len(runs), "s" if len(runs) > 1 else "",
            ", ".join(str(r["order_index"]) for r in runs), ntasks))
    lines = [BEGIN, "## MINGLE (test-time, not data-free)", "",
             "Written by `bench/accuracy/mingle_bench.py` (`bench/accuracy/run.sh --methods "
             "mingle`) on %s, nufilt binary sha256 `%s` (the program for NUFILT, its "
             "`libnufilt.so` for MINGLE's SVDs); runs started %s; machine: %s; load average "
             "(1 min) sampled after each task: %.1f to %.1f, mean %.1f; %d torch thread(s) per "
             "run.%s" % (
                 time.strftime("%Y-%m-%d %H:%M"), ", ".join(shas),
                 ", ".join(r.get("started", "?") for r in runs), runs[0].get("machine", "?"),
                 min(loads) if loads else float("nan"), max(loads) if loads else float("nan"),
                 _mean(loads), runs[0]["threads"], partial), "",
             "Protocol: MINGLE (docs/mingle.md; `nufilt.mingle`, official NLP recipe: rank 64, "
             "Adam lr 1e-3, batch 8, 50 steps, KD T = 2, subspace_k 3, γ 1, β 0.99, "
             "batch_reduce, train-mode dropout) over the same task orders. Its seed buffer: "
             "%d unlabeled inputs drawn from each task's test split "
             "(`random.Random(42 + v)`, the same draw for every task, as the official "
             "fixed-seed sampling), **excluded from that task's evaluation**; NUFILT "
             "(`--method nufilt --preset all-linear`, no data) is evaluated on the same "
             "held-out examples in the same run, so the two columns compare on identical test "
             "sets (slightly different from Table 1's full test sets)." % BUFFER, "",
             "| Method | ACC ↑ | BWT ↑ | orders | parameters added | work per task (CPU s) "
             "| inference (CPU time × base) |",
             "|---|---:|---:|---:|---:|---:|---:|",
             "| Individual fine-tuned (full test sets) | %s | – | – | – | – | 1.00 |" % _ms(
                 [sum(ft) / len(ft)]) if ft else None,
             "| NUFILT (no data) | %s | %s | %d | 0 | merge %.1f | 1.00 (a checkpoint of the "
             "base's shape) |" % (
                 _ms([x["ACC"] for x in nf]), _ms([x["BWT"] for x in nf]), len(nf),
                 merge_cpu / ntasks) if nf else None,
             "| **MINGLE (100 test inputs per task)** | **%s** | **%s** | %d | %.2f M per task "
             "(%.0f %% of the encoder) | test-time %.1f | %.2f |" % (
                 _ms([x["ACC"] for x in m]), _ms([x["BWT"] for x in m]), len(m),
                 per_task_params / 1e6, 100 * per_task_params / m[0]["params_base"],
                 per_task_cpu, over_cpu), "",
             "Costs (measured in these runs, %d torch thread(s)): after %d tasks MINGLE adds "
             "%.2f M parameters (experts, gates, bases) to the %.1f M of the encoder. Its "
             "test-time work per task (building the experts by SVD, training the gates "
             "50 Adam steps with student and teacher forwards, extending the bases) takes "
             "%.1f CPU s on average (wall on this shared machine: experts %.1f s, gate training "
             "%.1f s, bases %.1f s); NUFILT's merge takes %.1f CPU s per task for the whole "
             "program run, with no data. Evaluating MINGLE's final model takes %.2f× the base "
             "encoder's CPU time on the same batches (%.2f× in wall time)." % (
                 runs[0]["threads"], ntasks, m[0]["params_added"] / 1e6,
                 m[0]["params_base"] / 1e6, per_task_cpu, _mean([s["expert_s"] for s in steps]),
                 _mean(per_task_train), _mean([s["basis_s"] for s in steps]),
                 merge_cpu / ntasks, over_cpu, over), ""]
    lines.append("Per order (ACC / BWT, %): " + "; ".join(
        "order %d: MINGLE %.1f / %+.1f%s" % (
            r["order_index"], 100 * r["mingle"]["ACC"], 100 * r["mingle"]["BWT"],
            (", NUFILT %.1f / %+.1f" % (100 * r["nufilt"]["ACC"], 100 * r["nufilt"]["BWT"])
             if "nufilt" in r else "")) for r in runs) + ".")
    if nf:  # the reading: where the test-time data buys accuracy, and what it costs
        dacc = [r["mingle"]["ACC"] - r["nufilt"]["ACC"] for r in runs if "nufilt" in r]
        dbwt = [r["mingle"]["BWT"] - r["nufilt"]["BWT"] for r in runs if "nufilt" in r]
        per_task = {}
        for r in runs:
            if "nufilt" not in r:
                continue
            T = len(r["order"])
            for i, n in enumerate(r["order"], 1):
                k = "%d,%d" % (T, i)
                per_task.setdefault(n, []).append(r["mingle"]["acc"][k] - r["nufilt"]["acc"][k])
        pt = sorted(((sum(v) / len(v), n) for n, v in per_task.items()), reverse=True)

        def diag(r, key):  # mean a(t, t): each task's accuracy right after it is added
            T = len(r["order"])
            return sum(r[key]["acc"]["%d,%d" % (t, t)] for t in range(1, T + 1)) / T
        both = [r for r in runs if "nufilt" in r]
        lines += ["", "Mean a(t, t), each task's accuracy right after it is added (%%), MINGLE / "
                  "NUFILT: %s; mean difference %+.1f points. Paired ACC difference per order, "
                  "MINGLE − NUFILT: %s (sample std %.1f)." % (
                      "; ".join("order %d %.1f / %.1f" % (r["order_index"],
                                                          100 * diag(r, "mingle"),
                                                          100 * diag(r, "nufilt"))
                                for r in both),
                      100 * _mean([diag(r, "mingle") - diag(r, "nufilt") for r in both]),
                      ", ".join("%+.1f" % (100 * d) for d in dacc),
                      100 * evaluate.mean_std(dacc)[1])]
        lines += ["", "Reading (from these runs): MINGLE's ACC is %+.1f points and its BWT %+.1f "
                  "points against data-free NUFILT on the same held-out examples (mean over "
                  "%d order(s)). Final accuracy difference per task, MINGLE − NUFILT: %s. "
                  "What it costs: %d unlabeled test inputs per task (withheld here from the "
                  "evaluation), %.2f M extra parameters per task (linear in the number of "
                  "tasks: the result is the base plus %d experts and gates, not one checkpoint "
                  "of the base's size as NUFILT's), %.1f CPU s of test-time work per task "
                  "(NUFILT: %.1f CPU s of merging per task), and %.2f× the base encoder's "
                  "inference CPU time after %d tasks (one gate and one rank-64 product per "
                  "expert in each of the 36 layers). With batch_reduce (the official default) "
                  "an input's prediction also depends on the other inputs of its evaluation "
                  "batch (length-sorted batches of 64 of one task here, which favours the gate)."
                  % (100 * sum(dacc) / len(dacc), 100 * sum(dbwt) / len(dbwt), len(dacc),
                     ", ".join("%s %+.1f" % (n, 100 * d) for d, n in pt), BUFFER,
                     per_task_params / 1e6, ntasks, per_task_cpu, merge_cpu / ntasks,
                     over_cpu, ntasks)]
        if partial:
            lines[-1] += (" With %d of 5 orders these are few measurements: a difference of "
                          "about a point is within the order-to-order spread that Table 1 "
                          "shows." % len(runs))
    lines += ["", END]
    text = "\n".join(x for x in lines if x is not None) + "\n"
    path = os.path.join(docs, "results.md")
    doc = open(path, encoding="utf-8").read() if os.path.exists(path) else ""
    if BEGIN in doc and END in doc:
        i, j = doc.index(BEGIN), doc.index(END) + len(END)
        doc = doc[:i] + text.rstrip("\n") + doc[j:]
    else:
        anchor = "## Discussion"
        doc = doc.replace(anchor, text + "\n" + anchor, 1) if anchor in doc else doc + "\n" + text
    with open(path + ".tmp", "w", encoding="utf-8") as fh:
        fh.write(doc)
    os.replace(path + ".tmp", path)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
