#!/usr/bin/python3
"""Evaluates continual merges of the digits example.

For every run (one merged checkpoint per step, in task order, e.g. the files that
`nufilt merge --save-steps DIR` writes) it computes a(t, i), the accuracy of the model merged
after t tasks on task i's test set (i <= t), and from it

    ACC = mean over i of a(T, i)                      (final model, all T tasks)
    BWT = mean over i < T of a(T, i) - a(i, i)        (what later merges did to earlier tasks)

It prints one row per run (final accuracy per task, ACC, BWT) under two reference rows:
zero-shot (the pre-trained encoder base.safetensors with each task's frozen head) and
fine-tuned (each task's own fine-tuned encoder, tasks/<task>.safetensors).

    evaluate.py --run nufilt=out/nufilt/steps --run wa=out/wa/steps [--json results.json]
    evaluate.py --summary out/order*/results.json          (mean and std over task orders)

A run is NAME=PATH where PATH is a directory holding step01.safetensors, step02.safetensors,
... (used in sorted order) or a comma-separated list of checkpoint files. Only NumPy needed.
"""

import os

for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse
import glob
import json
import re
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402

SHORT = {"identity": "id", "rot90": "r90", "rot180": "r180", "rot270": "r270",
         "flip_h": "flip_h", "flip_v": "flip_v", "transpose": "transp", "antitranspose": "antitr"}


def step_files(path):
    if os.path.isdir(path):
        files = sorted(glob.glob(os.path.join(path, "step*.safetensors")),
                       key=lambda f: int(re.sub(r"\D", "", os.path.basename(f)) or 0))
        if not files:
            sys.exit("evaluate.py: no step*.safetensors in %s" % path)
        return files
    files = [f for f in path.split(",") if f]
    for f in files:
        if not os.path.isfile(f):
            sys.exit("evaluate.py: no such file: %s" % f)
    return files


class Evaluator:
    def __init__(self, root):
        self.heads = common.load_safetensors(os.path.join(root, "heads.safetensors"))
        data = common.load_safetensors(os.path.join(root, "data", "test.safetensors"))
        self.images, self.labels = data["images"], data["labels"].astype(np.int64)
        self.x = {}
        self.root = root

    def inputs(self, task):
        if task not in self.x:
            img = common.transform(self.images, task)
            self.x[task] = img.reshape(len(img), 64).astype(np.float32) / np.float32(16.0)
        return self.x[task]

    def acc(self, params, task):
        if "heads.%s.weight" % task not in self.heads:
            sys.exit("evaluate.py: no head for task %r in heads.safetensors" % task)
        return 100.0 * common.accuracy(params, self.heads, task, self.inputs(task), self.labels)

    def acc_file(self, path, task):
        return self.acc(common.load_safetensors(path), task)


def evaluate_run(ev, files, tasks):
    T = len(files)
    if T > len(tasks):
        sys.exit("evaluate.py: %d checkpoints but only %d tasks" % (T, len(tasks)))
    a = [[None] * T for _ in range(T)]
    for t, f in enumerate(files):
        params = common.load_safetensors(f)
        for i in range(t + 1):
            a[t][i] = ev.acc(params, tasks[i])
    final = a[T - 1]
    acc = float(np.mean(final))
    bwt = float(np.mean([final[i] - a[i][i] for i in range(T - 1)])) if T > 1 else 0.0
    return {"steps": files, "tasks": list(tasks[:T]), "a": a, "final": final,
            "ACC": acc, "BWT": bwt}


def fmt_row(label, values, ncols, acc=None, bwt=None, w=7, lw=12):
    cells = [("%*.1f" % (w, v)) if v is not None else " " * (w - 1) + "-" for v in values]
    cells += [" " * (w - 1) + "-"] * (ncols - len(values))
    tail = ""
    if acc is not None:
        tail = "  %6.1f" % acc + ("  %6.1f" % bwt if bwt is not None else "       -")
    return "%-*s" % (lw, label) + "".join(cells) + tail


def print_table(tasks, refs, runs, matrix=False):
    n = len(tasks)
    w = max(7, max(len(SHORT.get(t, t)) for t in tasks) + 1)
    lw = max([12] + [len(k) + 1 for k in list(refs) + list(runs)])
    head = "%-*s" % (lw, "") + "".join("%*s" % (w, SHORT.get(t, t)[:w - 1]) for t in tasks) \
        + "  %6s  %6s" % ("ACC", "BWT")
    print(head)
    print("-" * len(head))
    for name, vals in refs.items():
        print(fmt_row(name, vals, n, float(np.mean(vals)), None, w, lw))
    for name, r in runs.items():
        print(fmt_row(name, r["final"], n, r["ACC"], r["BWT"], w, lw))
    print("\naccuracy (%) of each model on each task's test set; ACC = mean over the tasks;"
          "\nBWT = mean over i < T of a(T, i) - a(i, i) (0 = no forgetting)")
    if matrix:
        for name, r in runs.items():
            print("\n%s: a(t, i), row t = after merging task t" % name)
            for t, row in enumerate(r["a"]):
                print(fmt_row("t=%d %s" % (t + 1, SHORT.get(tasks[t], tasks[t])),
                              [v for v in row if v is not None], n, w=w, lw=lw))


def summarize(paths):
    """Mean and standard deviation over several results.json files (e.g. task orders)."""
    res = []
    for p in paths:
        with open(p) as f:
            res.append(json.load(f))
    names = []
    for r in res:
        for k in r["runs"]:
            if k not in names:
                names.append(k)
    lw = max([12] + [len(k) for k in names])
    print("%-*s %15s %15s   (mean +- std over %d results)" % (lw, "", "ACC", "BWT", len(res)))
    for ref in ("zero-shot", "fine-tuned"):
        vals = [float(np.mean(r["references"][ref])) for r in res if ref in r.get("references", {})]
        if vals:
            print("%-*s %8.1f +- %4.1f %15s" % (lw, ref, np.mean(vals), np.std(vals), "-"))
    out = {}
    for k in names:
        accs = [r["runs"][k]["ACC"] for r in res if k in r["runs"]]
        bwts = [r["runs"][k]["BWT"] for r in res if k in r["runs"]]
        out[k] = {"ACC_mean": float(np.mean(accs)), "ACC_std": float(np.std(accs)),
                  "BWT_mean": float(np.mean(bwts)), "BWT_std": float(np.std(bwts)), "n": len(accs)}
        print("%-*s %8.1f +- %4.1f %8.1f +- %4.1f" % (lw, k, np.mean(accs), np.std(accs),
                                                     np.mean(bwts), np.std(bwts)))
    return out


def main():
    ap = argparse.ArgumentParser(description="Evaluate continual merges of the digits example.",
                                 epilog="Example: evaluate.py --run nufilt=out/nufilt/steps "
                                        "--run wa=out/wa/steps --json out/results.json")
    ap.add_argument("--dir", default=HERE,
                    help="example directory with heads.safetensors, data/, base.safetensors, tasks/")
    ap.add_argument("--tasks", default=",".join(common.TASKS),
                    help="task order of the merges (comma-separated; default: the canonical order)")
    ap.add_argument("--run", action="append", default=[], metavar="NAME=PATH",
                    help="a merged run: a directory of stepNN.safetensors or a comma list of files")
    ap.add_argument("--no-references", action="store_true",
                    help="skip the zero-shot and fine-tuned rows")
    ap.add_argument("--matrix", action="store_true", help="also print a(t, i) for every run")
    ap.add_argument("--json", help="write every number to this JSON file")
    ap.add_argument("--summary", nargs="+", metavar="RESULTS.json",
                    help="instead: mean and std over results files written with --json")
    args = ap.parse_args()

    if args.summary:
        out = summarize(args.summary)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(out, f, indent=1)
        return

    tasks = [t for t in args.tasks.split(",") if t]
    ev = Evaluator(args.dir)
    refs = {}
    if not args.no_references:
        base = common.load_safetensors(os.path.join(args.dir, "base.safetensors"))
        refs["zero-shot"] = [ev.acc(base, t) for t in tasks]
        ft = []
        for t in tasks:
            p = os.path.join(args.dir, "tasks", t + ".safetensors")
            ft.append(ev.acc_file(p, t) if os.path.isfile(p) else None)
        if all(v is not None for v in ft):
            refs["fine-tuned"] = ft
    runs = {}
    for spec in args.run:
        if "=" not in spec:
            sys.exit("evaluate.py: --run wants NAME=PATH, got %r" % spec)
        name, path = spec.split("=", 1)
        runs[name] = evaluate_run(ev, step_files(path), tasks)
    print_table(tasks, refs, runs, args.matrix)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"tasks": tasks, "test_size": int(len(ev.labels)),
                       "references": refs, "runs": runs}, f, indent=1)


if __name__ == "__main__":
    main()
