#!/usr/bin/python3
"""Tables (Markdown) from a bench/perf/run.sh results folder.

    /usr/bin/python3 bench/perf/summarize.py RESULTS_DIR

Per configuration: median over repetitions of wall seconds, CPU seconds (user + system),
the split of the wall time into SVD, training and the rest, and peak RssAnon; the ratio
PyTorch / nufilt of the medians; the relative errors of the merged task vectors.

nufilt's --report gives svd_seconds and train_seconds summed over its worker threads (one
per core on the CPU device, one per GPU device); they are turned into wall seconds in
proportion of the workers' busy time (treated_tensor_seconds): svd_wall = wall * svd_seconds /
treated_tensor_seconds, likewise train; rest = wall - svd - train (reading, writing, untreated
tensors, the filter and the final products, process start).  torch_nufilt.py reports wall
seconds of its phases directly; its rest is everything but the SVDs and the training loop.
"""

import glob
import json
import os
import re
import statistics
import sys


def med(v):
    return statistics.median(v) if v else float("nan")


def load_runs(res, prefix):
    runs = {}
    for p in sorted(glob.glob(os.path.join(res, prefix + "-*.measure.json"))):
        m = re.match(re.escape(prefix) + r"-(.+)-(\d+)\.measure\.json$", os.path.basename(p))
        if not m:
            continue
        cfg, rep = m.group(1), int(m.group(2))
        with open(p) as f:
            meas = json.load(f)
        rp = p.replace(".measure.json", ".report.json")
        rep_json = None
        if os.path.exists(rp):
            with open(rp) as f:
                rep_json = json.load(f)
        ld = p.replace(".measure.json", ".load")
        load = float(open(ld).read().split()[0]) if os.path.exists(ld) else float("nan")
        runs.setdefault(cfg, []).append(dict(rep=rep, m=meas, r=rep_json, load=load))
    return runs


def split(run):
    """(svd, train, rest) wall seconds of one run."""
    wall = run["m"]["wall_s"]
    r = run["r"]
    if r is None:
        return (float("nan"),) * 3
    if r.get("tool") == "torch_nufilt":
        return r["svd"], r["train"], wall - r["svd"] - r["train"]
    t = r["steps"][-1]["totals"]
    busy = t["treated_tensor_seconds"] or 1.0
    svd = wall * t["svd_seconds"] / busy
    train = wall * t["train_seconds"] / busy
    return svd, train, wall - svd - train


def table(runs, order, ref_torch=True):
    lines = ["| configuration | runs | wall s | CPU s | SVD s | training s | rest s | peak RssAnon MB | load avg (1 min) | PyTorch / this (wall) | PyTorch / this (CPU) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    tw = med([x["m"]["wall_s"] for x in runs.get("torch", [])])
    tc = med([x["m"]["cpu_s"] for x in runs.get("torch", [])])
    for cfg in order:
        if cfg not in runs:
            continue
        rs = runs[cfg]
        wall = med([x["m"]["wall_s"] for x in rs])
        cpu = med([x["m"]["cpu_s"] for x in rs])
        sp = [split(x) for x in rs]
        svd, tr, rest = (med([s[i] for s in sp]) for i in range(3))
        rss = max(x["m"]["peak_rss_anon_mb"] for x in rs)
        loads = [x["load"] for x in rs]
        ratio = "%.1fx" % (tw / wall) if cfg != "torch" and tw == tw else "-"
        ratio_c = "%.1fx" % (tc / cpu) if cfg != "torch" and tc == tc else "-"
        lines.append("| %s | %d | %.2f | %.2f | %.2f | %.2f | %.2f | %.0f | %.2f-%.2f | %s | %s |"
                     % (cfg, len(rs), wall, cpu, svd, tr, rest, rss, min(loads), max(loads), ratio, ratio_c))
    return "\n".join(lines)


def errors(res, name, title):
    p = os.path.join(res, name)
    if not os.path.exists(p):
        return ""
    with open(p) as f:
        js = json.load(f)
    title = title.replace("{n}", str(js[0]["treated"]) if js else "?")
    out = ["", title, "", "| configuration | max rel. error | median | worst tensor | untreated identical |",
           "| --- | --- | --- | --- | --- |"]
    for e in js:
        cfg = re.sub(r"^.*step2-(.+)\.safetensors$", r"\1", e["candidate"])
        out.append("| %s | %.2e | %.2e | %s | %s |" % (cfg, e["max"], e["median"], e["worst"],
                                                     "yes" if e["untreated_identical"] else "NO"))
    return "\n".join(out)


def main():
    res = sys.argv[1]
    out = ["# bench/perf results: %s" % os.path.basename(os.path.normpath(res)), "", "```"]
    out += open(os.path.join(res, "machine.txt")).read().rstrip().split("\n")
    out += ["```", ""]
    order = ["cpu-gesdd", "cpu-gram", "cpu-fast", "cpu-rand", "opencl", "vulkan", "torch"]
    vit = load_runs(res, "vit")
    if vit:
        out += ["## ViT-B/32-shaped step t=2 (medians)", "", table(vit, order)]
        out.append(errors(res, "vit-err-vs-gesdd.json",
                          "Merged task vectors (merged - base) against nufilt cpu-gesdd, per treated tensor ({n}):"))
        out.append(errors(res, "vit-err-vs-torch.json",
                          "Against the PyTorch implementation (same A from nufilt's generator):"))
        if "torch" in vit:
            t = [x["r"] for x in vit["torch"] if x["r"]]
            if t:
                out.append("\nPyTorch objective (sum over matrices): first iteration %.6g, last %.6g"
                           % (t[0]["loss_first"], t[0]["loss_last"]))
        r = [x["r"] for x in vit.get("cpu-gesdd", []) if x["r"]]
        if r:
            tt = r[0]["steps"][-1]["totals"]
            out.append("nufilt cpu-gesdd objective: before %.6g, after %.6g; GEMM work %.0f GFLOP"
                       % (tt["objective_before"], tt["objective_after"], tt["gflop"]))
    llama = load_runs(res, "llama")
    if llama:
        out += ["", "## LLaMA-style (1.1B, BF16) step t=2 (medians)", "", table(llama, order)]
        out.append(errors(res, "llama-err-vs-gesdd.json",
                          "Merged task vectors against cpu-gesdd, per treated tensor ({n}):"))
        out.append(errors(res, "llama-err-vs-torch.json",
                          "Against the PyTorch implementation:"))
    print("\n".join(out))


if __name__ == "__main__":
    main()
