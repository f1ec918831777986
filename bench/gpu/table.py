#!/usr/bin/env python3
"""The GPU check's results (bench/gpu/run.sh): one JSON file and one markdown table.

    python3 bench/gpu/table.py --work WORK --out DIR [--built 0|1] [--small 0|1]
        [--elapsed S] [--budget S]

Reads WORK/machine.txt, WORK/devices.txt, WORK/stages.tsv and, under WORK/timed/, bench/perf's
measure.py JSON, nufilt's --report and compare.py's agreement JSON of every timed step; writes
DIR/gpu-check.json and DIR/gpu-check.md. Standard library only.
"""
import argparse
import glob
import json
import os
import re
import statistics

DEVICE_ORDER = ["cpu", "opencl:0", "vulkan:0"]


def read(path, default=""):
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return default


def read_json(path):
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def stages(work):
    out = []
    for line in read(os.path.join(work, "stages.tsv")).splitlines():
        f = line.split("\t")
        if len(f) >= 4:
            out.append({"stage": f[0], "status": f[1], "seconds": int(f[2] or 0), "detail": f[3]})
    return out


def devices(work):
    """`nufilt devices`: id, type, memory, name (the first line of each device)."""
    out = []
    for line in read(os.path.join(work, "devices.txt")).splitlines():
        m = re.match(r"^([a-z]+:\d+)\s+(\S+)\s+(\S+ \S+|-)\s+(.*)$", line)
        if m:
            out.append({"id": m.group(1), "type": m.group(2), "memory": m.group(3),
                        "name": m.group(4).strip()})
    return out


def timed(work, kind):
    """Per configuration: the medians over repetitions of wall, CPU, peak RssAnon, and the
    SVD and training seconds from nufilt's report."""
    rows = {}
    for mj in sorted(glob.glob(os.path.join(work, "timed", f"{kind}-*-*.measure.json"))):
        stem = os.path.basename(mj)[:-len(".measure.json")]
        conf = stem[len(kind) + 1:].rsplit("-", 1)[0]
        m = read_json(mj)
        if not m or m.get("rc") != 0:
            rows.setdefault(conf, {"runs": []})["failed"] = True
            continue
        rep = read_json(mj.replace(".measure.json", ".report.json")) or {}
        st = (rep.get("steps") or [{}])[0]
        tot = st.get("totals", {})
        rows.setdefault(conf, {"runs": []})["runs"].append({
            "wall_s": m.get("wall_s"), "cpu_s": m.get("cpu_s"),
            "peak_rss_anon_mb": m.get("peak_rss_anon_mb"), "svd_s": tot.get("svd_seconds"),
            "train_s": tot.get("train_seconds"), "device": st.get("device"),
            "svd": st.get("svd")})
    agree = {}
    for r in read_json(os.path.join(work, "timed", f"{kind}-agreement.json")) or []:
        conf = os.path.basename(r["candidate"])[len(kind) + 1:-len(".safetensors")]
        agree[conf] = {"max": r["max"], "median": r["median"], "worst": r["worst"],
                       "untreated_identical": r["untreated_identical"]}
    out = []
    for conf, d in rows.items():
        dev = {"cpu": "cpu", "opencl0": "opencl:0", "vulkan0": "vulkan:0"}.get(conf, conf)
        runs = d["runs"]

        def med(k):
            v = [r[k] for r in runs if r.get(k) is not None]
            return statistics.median(v) if v else None
        out.append({"model": kind, "device": dev, "reps": len(runs),
                    "failed": bool(d.get("failed")), "wall_s": med("wall_s"),
                    "cpu_s": med("cpu_s"), "peak_rss_anon_mb": med("peak_rss_anon_mb"),
                    "svd_s": med("svd_s"), "train_s": med("train_s"),
                    "device_name": runs[0]["device"] if runs else None,
                    "svd": runs[0]["svd"] if runs else None,
                    "vs_cpu": None if dev == "cpu" else agree.get(conf)})
    out.sort(key=lambda r: DEVICE_ORDER.index(r["device"]) if r["device"] in DEVICE_ORDER else 9)
    return out


def fmt(x, f="{:.2f}"):
    return "–" if x is None else f.format(x)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--built", default="0")
    ap.add_argument("--small", default="0")
    ap.add_argument("--elapsed", type=int, default=0)
    ap.add_argument("--budget", type=int, default=0)
    a = ap.parse_args()
    machine = dict(l.split(": ", 1) for l in read(os.path.join(a.work, "machine.txt")).splitlines()
                   if ": " in l)
    res = {"machine": machine, "devices": devices(a.work), "stages": stages(a.work),
           "built_here": a.built == "1", "small_models": a.small == "1",
           "elapsed_s": a.elapsed, "budget_s": a.budget, "steps": []}
    for kind in ("vit", "llama"):
        res["steps"] += timed(a.work, kind)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "gpu-check.json"), "w", encoding="utf-8") as fh:
        json.dump(res, fh, indent=1)

    L = ["# nufilt GPU check (bench/gpu/run.sh)", ""]
    L.append(f"{machine.get('date', '?')}; {machine.get('os', '?')}; {machine.get('cpu', '?')}; "
             f"{machine.get('gpu', '?')}; load average {machine.get('load average at start', '?')} "
             f"at the start, {machine.get('load average at end', '?')} at the end. nufilt "
             + ("built on this machine" if res["built_here"] else "from the bundle's prebuilt "
                "binaries") + f"; {a.elapsed} s of a {a.budget} s budget."
             + (" **One-layer models (--small): a test of the script, not a measurement.**"
                if res["small_models"] else ""))
    L += ["", "| device | type | memory | name |", "|---|---|---:|---|"]
    for d in res["devices"]:
        L.append(f"| {d['id']} | {d['type']} | {d['memory']} | {d['name']} |")
    L += ["", "| stage | status | s | detail |", "|---|---|---:|---|"]
    for s in res["stages"]:
        L.append(f"| {s['stage']} | {s['status']} | {s['seconds']} | "
                 f"{s['detail'].replace('|', '/')} |")
    L += ["", "NUFILT step 2 (default options, prev = the CPU's step 1), medians over the "
          "repetitions. Wall and CPU seconds (user + system) and peak RssAnon of the process "
          "(bench/perf/measure.py); SVD and training: seconds summed over nufilt's worker threads "
          "(--report). vs cpu: relative Frobenius error of the merged task vectors against the "
          "CPU's, max and median over the treated tensors.", "",
          "| model | device | reps | wall s | CPU s | SVD worker-s | training worker-s | peak RssAnon MB | "
          "vs cpu, max | vs cpu, median | untreated identical |",
          "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in res["steps"]:
        v = r["vs_cpu"] or {}
        L.append(f"| {r['model']} | {r['device']}{' (failed)' if r['failed'] else ''} | "
                 f"{r['reps']} | {fmt(r['wall_s'])} | {fmt(r['cpu_s'])} | {fmt(r['svd_s'])} | "
                 f"{fmt(r['train_s'])} | {fmt(r['peak_rss_anon_mb'], '{:.0f}')} | "
                 + ("–" if r["device"] == "cpu" else fmt(v.get("max"), "{:.1e}")) + " | "
                 + ("–" if r["device"] == "cpu" else fmt(v.get("median"), "{:.1e}")) + " | "
                 + ("–" if r["device"] == "cpu" or "untreated_identical" not in v else
                    ("yes" if v["untreated_identical"] else "**no**")) + " |")
    if not res["steps"]:
        L.append("| – | – | 0 | – | – | – | – | – | – | – | – |")
    L.append("")
    with open(os.path.join(a.out, "gpu-check.md"), "w", encoding="utf-8") as fh:
        fh.write("\n".join(L))
    print("\n".join(L))


if __name__ == "__main__":
    main()
