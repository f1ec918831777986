"""Continual-merging accuracy benchmark: merge with `nufilt merge --save-steps`, evaluate
every step, compute ACC / BWT over task orders, the stability / plasticity surrogates and the
subspace affinity, and write docs/results.md plus figures under docs/img/.

All merging is done by the nufilt program; this script only calls it and evaluates.
Usage: see bench/accuracy/README.md (normally run through bench/accuracy/run.sh).
"""
import argparse
import glob
import hashlib
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import analysis  # noqa: E402
import common  # noqa: E402
import data  # noqa: E402
import evaluate  # noqa: E402
import finetune  # noqa: E402

NUFILT_ARGS = ["--method", "nufilt", "--preset", "all-linear"]
# (key, label, arguments). Paper defaults: NUFILT r_p 128, r_v 8, r_l 64, lr 1e-3, 50 iters;
# baselines as in docs/baselines.md (8-task defaults).
METHODS = [  # NUFILT first: a run cut short by its time budget still has it
    ("nufilt", "NUFILT (r_p 128, r_v 8, r_l 64)", NUFILT_ARGS),
    ("nufilt-lora0", "NUFILT null-space only (--lora-rank 0)",
     NUFILT_ARGS + ["--lora-rank", "0"]),
    ("nufilt-null0", "NUFILT w/o null-space filter (--null-rank 0)",
     NUFILT_ARGS + ["--null-rank", "0"]),
    ("wa", "Weight Averaging", ["--method", "wa"]),
    ("ta", "Task Arithmetic (λ = 0.3)", ["--method", "ta", "--scale", "0.3"]),
    ("ties", "TIES-Merging (λ = 0.3, keep 20%)",
     ["--method", "ties", "--scale", "0.3", "--keep", "0.2"]),
    ("magmax", "MagMax (λ = 0.5)", ["--method", "magmax", "--scale", "0.5"]),
    ("opcm", "OPCM (α = 0.5)", ["--method", "opcm", "--alpha", "0.5"]),
    ("wudi", "WUDI (50 Adam steps, lr 1e-5)", ["--method", "wudi"]),
    ("isoc", "Iso-C (λ = 1)", ["--method", "isoc", "--scale", "1"]),
    ("tsvm", "TSV-M (λ = 1)", ["--method", "tsvm", "--scale", "1"]),
]
METHOD_KEYS = [m[0] for m in METHODS]
# NUFILT's ranks one at a time around the paper's defaults (which were chosen for 768-wide CLIP
# layers; all-MiniLM's are 384 and 1536 wide), on the first task order only (paper Figure 4).
SWEEP = ([(f"nufilt-rp{r}", f"r_p = {r}", NUFILT_ARGS + ["--null-rank", str(r)])
          for r in (32, 64, 256)] +
         [(f"nufilt-rv{r}", f"r_v = {r}", NUFILT_ARGS + ["--task-rank", str(r)])
          for r in (2, 32)] +
         [(f"nufilt-rl{r}", f"r_l = {r}", NUFILT_ARGS + ["--lora-rank", str(r)])
          for r in (16, 128)])
SWEEP_KEYS = [m[0] for m in SWEEP]
# NUFILT's SVD modes side by side over every task order (--svd-modes): gesdd is LAPACK's
# float32 SVD, the method's definition; fast is the float32 Gram-matrix eigen-solve, the
# default since it was measured here within 0.3 points of gesdd.
SVD_MODES = [(f"nufilt-svd-{m}", f"NUFILT --svd {m}", NUFILT_ARGS + ["--svd", m])
             for m in ("gesdd", "fast")]
SVD_KEYS = [m[0] for m in SVD_MODES]


def add_run(summary, res):
    k = res.get("method")
    summary["sweep_runs" if k in SWEEP_KEYS else "svd_runs" if k in SVD_KEYS
            else "runs"].append(res)
BENCH_VERSION = 1


def log(msg):
    print(time.strftime("[%H:%M:%S] ") + msg, flush=True)


def task_orders(names, n):
    """Orders of the published runs: random.seed(42 + v); random.shuffle(names)."""
    out = []
    for v in range(n):
        o = list(names)
        random.seed(42 + v)
        random.shuffle(o)
        out.append(o)
    return out


def find_nufilt(explicit):
    cands = [explicit, os.environ.get("NUFILT")]
    cands += sorted(glob.glob(os.path.join(common.REPO, "build*", "host", "nufilt")),
                    key=lambda p: -os.path.getmtime(p))
    cands.append(shutil.which("nufilt"))
    for c in cands:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return os.path.abspath(c)
    return None


def nufilt_methods(binary):
    """Methods `nufilt methods` lists as available (a line "NAME  description", without
    "not yet available")."""
    known = ("nufilt", "wa", "ta", "ties", "magmax", "opcm", "wudi", "isoc", "tsvm")
    try:
        out = subprocess.run([binary, "methods"], capture_output=True, text=True, timeout=60)
    except OSError as e:
        return None, str(e)
    text = out.stdout + out.stderr
    found = set()
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] in known and len(line) > len(parts[0]) and \
                line[len(parts[0])] in " \t" and "not yet available" not in line:
            found.add(parts[0])
    return (found or None), text


def pin_binary(path, sha):
    """Copy the program into the cache so a rebuild during the run cannot change it."""
    d = os.path.join(common.CACHE, "bin")
    os.makedirs(d, exist_ok=True)
    dst = os.path.join(d, f"nufilt-{sha[:12]}")
    if not os.path.exists(dst):
        shutil.copy2(path, dst + ".tmp")
        os.replace(dst + ".tmp", dst)
    return dst


def recorded_svd(path):
    """The SVD mode a merged model records (metadata nufilt.svd), or None."""
    try:
        from safetensors import safe_open
        if os.path.isdir(path):
            path = sorted(glob.glob(os.path.join(path, "*.safetensors")))[0]
        with safe_open(path, "pt") as fh:
            return (fh.metadata() or {}).get("nufilt.svd")
    except Exception:  # noqa: BLE001 (older binaries record none)
        return None


def needed_pairs(T, full):
    if full:
        return [(t, i) for t in range(1, T + 1) for i in range(1, t + 1)]
    pairs = {(t, t) for t in range(1, T + 1)} | {(T, i) for i in range(1, T + 1)}
    return sorted(pairs)


class Bench:
    def __init__(self, args):
        self.args = args
        self.tasks, self.tasks_sha = data.load_or_build(common.CACHE)
        if args.tasks:  # a subset, in the canonical order (for quick checks)
            self.tasks = [t for t in self.tasks if t["name"] in args.tasks.split(",")]
        self.names = [t["name"] for t in self.tasks]
        self.ckpt_dir = finetune.ckpt_dir(self.tasks_sha)
        self.refs = common.read_json(os.path.join(self.ckpt_dir, "references.json"))
        missing = [n for n in self.names
                   if not os.path.exists(self.task_path(n))
                   or n not in (self.refs or {}).get("tasks", {})]
        if missing:
            raise SystemExit(f"fine-tuned checkpoints missing for {missing}: "
                             f"run finetune.py first (bench/accuracy/run.sh does)")
        self.base = os.path.join(common.base_dir(), "model.safetensors")
        self.nufilt = find_nufilt(args.nufilt)
        self.nufilt_sha = common.file_sha256(self.nufilt) if self.nufilt else "none"
        self.nufilt_source = self.nufilt
        if self.nufilt:
            self.nufilt = pin_binary(self.nufilt, self.nufilt_sha)
        self.results_dir = os.path.join(common.CACHE, "results",
                                        os.path.basename(self.ckpt_dir), self.nufilt_sha[:12])
        os.makedirs(self.results_dir, exist_ok=True)
        # scratch space of this benchmark process and its workers only (several benchmarks
        # may share one cache)
        self.work = os.path.join(common.CACHE, "work", str(getattr(args, "work_id", None)
                                                         or os.getpid()))
        self.evaluator = None
        self.grams = None
        self.task_states = None

    def task_path(self, name):
        return os.path.join(self.ckpt_dir, f"{name}.safetensors")

    def ensure_evaluator(self):
        if self.evaluator is None:
            t0 = time.time()
            self.evaluator = evaluate.Evaluator(self.tasks)
            log(f"evaluator ready ({time.time() - t0:.1f} s: tokenised test sets, heads)")
        return self.evaluator

    def grams_path(self):
        tag = hashlib.sha256(",".join(self.names).encode()).hexdigest()[:8]
        return os.path.join(common.CACHE, "results", os.path.basename(self.ckpt_dir),
                            f"grams-n{analysis.N_EXAMPLES}-{tag}.pt")

    def ensure_grams(self):
        """Layer-input Gram matrices per task (through the task's fine-tuned encoder),
        computed once and cached on disk (about 75 MB per task)."""
        if self.grams is None:
            path = self.grams_path()
            if os.path.exists(path):
                self.grams = torch.load(path, mmap=True, weights_only=True)
            else:
                ev = self.ensure_evaluator()
                t0 = time.time()
                grams = {}
                for n in self.names:
                    ev.load(self.task_path(n))
                    g = ev.layer_grams(n, analysis.N_EXAMPLES)
                    grams[n] = {k: {"C": C, "n": torch.tensor(cnt)} for k, (C, cnt) in g.items()}
                torch.save(grams, path + ".tmp")
                os.replace(path + ".tmp", path)
                log(f"layer-input Gram matrices for {len(self.names)} tasks "
                    f"({time.time() - t0:.1f} s)")
                self.grams = grams
            self.grams = {n: {k: (d["C"], int(d["n"])) for k, d in g.items()}
                          for n, g in self.grams.items()}
        if self.task_states is None:
            self.task_states = {}
            for n in self.names:
                state = common.load_state(self.task_path(n))
                self.task_states[n] = {k: v for k, v in state.items()
                                       if common.is_treated(k, tuple(v.shape))}
        return self.grams

    # ------------------------------------------------------------------ one run

    def run_key(self, method_args, order, full, analyse):
        blob = json.dumps({"v": BENCH_VERSION, "nufilt": self.nufilt_sha, "args": method_args,
                           "order": order, "ckpt": os.path.basename(self.ckpt_dir),
                           "full": full, "analyse": analyse, "threads": self.args.merge_threads},
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def result_path(self, key, method_args, v, order, full, analyse):
        rkey = self.run_key(method_args, order, full, analyse)
        return os.path.join(self.results_dir, f"{key}-order{v}-{rkey}.json")

    def run_one(self, key, label, method_args, v, order, full, analyse):
        rpath = self.result_path(key, method_args, v, order, full, analyse)
        cached = common.read_json(rpath)
        if cached is not None and not self.args.no_cache:
            log(f"{key} order {v}: cached")
            cached["cached"] = True
            return cached
        T = len(order)
        run_dir = os.path.join(self.work, f"{key}-order{v}")
        shutil.rmtree(run_dir, ignore_errors=True)
        os.makedirs(run_dir)
        steps_dir = os.path.join(run_dir, "steps")
        os.makedirs(steps_dir)
        out = os.path.join(run_dir, "merged.safetensors")
        cmd = [self.nufilt, "merge", "--base", self.base, "--out", out, "--save-steps", steps_dir,
               "--quiet", "--report", os.path.join(run_dir, "report.json")]
        if self.args.merge_threads:
            cmd += ["--threads", str(self.args.merge_threads)]
        cmd += method_args + [self.task_path(n) for n in order]
        res = {"method": key, "label": label, "args": method_args, "order_index": v,
               "order": order, "command": " ".join(cmd), "full_triangle": full}
        log(f"{key} order {v}: merging {T} tasks")
        res["loadavg_start"] = os.getloadavg()  # 1, 5, 15 min (the machine may be shared)
        t0 = time.time()
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        res["merge_seconds"] = time.time() - t0
        res["merge_cpu_seconds"] = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
        if proc.returncode != 0:
            res["error"] = (f"nufilt exited {proc.returncode}: "
                            f"{(proc.stderr or proc.stdout).strip()[-2000:]}")
            log(f"{key} order {v}: FAILED: {res['error'][:300]}")
            shutil.rmtree(run_dir, ignore_errors=True)
            return res  # failures are reported, not cached: the next run tries again
        rep = common.read_json(os.path.join(run_dir, "report.json"))
        if rep is not None:  # keep a compact version: per step, device and tensor seconds
            res["nufilt_report"] = [
                {"step": st.get("step"), "device": st.get("device"),
                 "tensor_seconds": sum(x.get("seconds", 0) for x in st.get("tensors", []))}
                for st in rep.get("steps", [])]
        step_files = [os.path.join(steps_dir, f"step{t:02d}.safetensors") for t in range(1, T + 1)]
        if not all(os.path.exists(p) for p in step_files):
            alt = [os.path.join(steps_dir, f"step{t:02d}") for t in range(1, T + 1)]
            if all(os.path.isdir(p) for p in alt):
                step_files = alt
            else:
                res["error"] = f"--save-steps wrote {sorted(os.listdir(steps_dir))[:12]}"
                log(f"{key} order {v}: FAILED: {res['error']}")
                shutil.rmtree(run_dir, ignore_errors=True)
                return res
        res["svd_recorded"] = recorded_svd(step_files[-1])
        ev = self.ensure_evaluator()
        pairs = needed_pairs(T, full)
        acc, nonfinite = {}, []
        t0 = time.time()
        c0 = ev.eval_cpu_seconds
        n0 = ev.eval_count
        step_states = []
        for t in range(1, T + 1):
            todo = [i for (tt, i) in pairs if tt == t]
            if not todo and not analyse:
                continue
            state = common.load_state(step_files[t - 1])
            if not ev.load(state):
                nonfinite.append(t)
            for i in todo:
                acc[f"{t},{i}"] = ev.accuracy(order[i - 1])
            if analyse:
                step_states.append({k: v for k, v in state.items()
                                    if common.is_treated(k, tuple(v.shape))})
        res["eval_seconds"] = time.time() - t0
        res["eval_count"] = ev.eval_count - n0
        res["eval_cpu_seconds"] = ev.eval_cpu_seconds - c0
        res["acc"] = acc
        if nonfinite:
            res["nonfinite_steps"] = nonfinite
        a = {tuple(map(int, k.split(","))): x for k, x in acc.items()}
        res["ACC"], res["BWT"] = evaluate.acc_bwt(a, order)
        if analyse:
            t0 = time.time()
            grams = self.ensure_grams()  # also loads self.task_states
            res["surrogates"] = analysis.surrogates(step_states, self.task_states, order, grams)
            res["analysis_seconds"] = time.time() - t0
        res["loadavg_end"] = os.getloadavg()
        log(f"{key} order {v}: ACC {100 * res['ACC']:.1f} BWT {100 * res['BWT']:+.1f} "
            f"(merge {res['merge_seconds']:.0f} s, {res['eval_count']} evals "
            f"{res['eval_seconds']:.0f} s)")
        common.write_json(rpath, res)
        shutil.rmtree(run_dir, ignore_errors=True)
        return res

    # ------------------------------------------------------------------ whole benchmark

    def affinity(self):
        path = os.path.join(common.CACHE, "results", os.path.basename(self.ckpt_dir),
                            f"affinity-v{BENCH_VERSION}-"
                            f"{hashlib.sha256(','.join(self.names).encode()).hexdigest()[:8]}.json")
        cached = common.read_json(path)
        if cached is not None and not self.args.no_cache:
            return cached
        grams = self.ensure_grams()
        base = common.load_state(self.base)
        tv = {n: {k: v - base[k] for k, v in self.task_states[n].items()} for n in self.names}
        t0 = time.time()
        res = analysis.affinity(grams, tv, self.names)
        res["seconds"] = time.time() - t0
        common.write_json(path, res)
        return res

    def run(self):
        a = self.args
        t_start = time.time()
        methods = [m for m in METHODS if m[0] in a.methods.split(",")] if a.methods else METHODS
        orders = task_orders(self.names, a.orders)
        summary = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": common.machine(),
                   "nufilt": self.nufilt_source,
                   "nufilt_sha256": self.nufilt_sha, "orders": orders, "tasks": self.tasks_meta(),
                   "references": self.refs, "ckpt_dir": self.ckpt_dir, "runs": [],
                   "sweep_runs": [], "sweep": [(k, l, m) for k, l, m in SWEEP] if a.sweep else [],
                   "svd_runs": [],
                   "svd_modes": [(k, l, m) for k, l, m in SVD_MODES] if a.svd_modes else [],
                   "skipped": {}, "methods": [(k, l, m) for k, l, m in methods],
                   "settings": {"orders": a.orders, "triangle_orders": a.triangle_orders,
                                "analysis_order": 0, "threads": torch.get_num_threads(),
                                "jobs": a.jobs, "merge_threads": a.merge_threads}}
        if self.nufilt is None:
            raise SystemExit("no nufilt binary: build it (meson setup build && ninja -C build) "
                             "or pass --nufilt PATH / NUFILT=PATH")
        supported, text = nufilt_methods(self.nufilt)
        log(f"nufilt: {self.nufilt_source} (sha256 {self.nufilt_sha[:12]}); methods: "
            f"{sorted(supported) if supported else text.strip()[:200]}")
        if not a.no_analysis:
            self.ensure_grams()
            summary["affinity"] = self.affinity()
        jobs = []
        for v, order in enumerate(orders):
            for key, label, margs in methods:
                mname = margs[margs.index("--method") + 1]
                if supported is not None and mname not in supported:
                    summary["skipped"][key] = f"`nufilt methods` does not list {mname}"
                    continue
                jobs.append((key, label, margs, v, order, v < a.triangle_orders,
                             v == 0 and not a.no_analysis))
            if v == 0 and a.sweep:
                jobs += [(key, label, margs, 0, order, False, False)
                         for key, label, margs in SWEEP]
            if a.svd_modes:
                jobs += [(key, label, margs, v, order, False, False)
                         for key, label, margs in SVD_MODES]
        if a.report_only:  # no merging: the runs already in the cache
            for job in jobs:
                key, label, margs, v, order, full, analyse = job
                r = common.read_json(self.result_path(key, margs, v, order, full, analyse))
                if r is None:  # same run made with other thread settings
                    for p in sorted(glob.glob(os.path.join(self.results_dir,
                                                           f"{key}-order{v}-*.json")),
                                    key=os.path.getmtime, reverse=True):
                        c = common.read_json(p)
                        if (c.get("args") == margs and c.get("order") == order
                                and c.get("full_triangle") == full
                                and (not analyse or "surrogates" in c or "error" in c)):
                            r = c
                            break
                if r is not None:
                    r["cached"] = True
                    add_run(summary, r)
            n_orders = len({r["order_index"] for r in summary["runs"]})
            n_main = len([j for j in jobs if j[0] not in SWEEP_KEYS + SVD_KEYS])
            if len(summary["runs"]) < n_main:
                summary["partial"] = (f"{len(summary['runs'])} of {n_main} (method, order) "
                                      f"runs finished, in {n_orders} of {len(orders)} orders")
            jobs = []
        per_order = {}
        for j in jobs:
            per_order[j[3]] = per_order.get(j[3], 0) + 1
        done = {}

        def finished(job, res):
            add_run(summary, res)
            done[job[3]] = done.get(job[3], 0) + 1
            if done[job[3]] == per_order[job[3]] and a.docs:
                self.partial_report(summary, t_start)

        def budget_left(v):
            """Order 0 always runs; a later order starts only within the time budget."""
            return not (a.time_budget and v > 0 and v not in done
                        and time.time() - t_start > 60 * a.time_budget)

        if a.jobs <= 1:
            for job in jobs:
                if not budget_left(job[3]):
                    summary["stopped_before_order"] = job[3]
                    log(f"time budget of {a.time_budget} min spent: stopping before order {job[3]}")
                    break
                done.setdefault(job[3], 0)
                finished(job, _safe_run(self, job))
        else:
            import concurrent.futures as cf
            import multiprocessing
            ctx = multiprocessing.get_context("spawn")
            with cf.ProcessPoolExecutor(max_workers=a.jobs, mp_context=ctx,
                                        initializer=_worker_init, initargs=(vars(a),)) as pool:
                pending = {}
                for job in jobs:
                    while len(pending) >= a.jobs:
                        fin, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                        for f in fin:
                            finished(pending.pop(f), f.result())
                    if not budget_left(job[3]):
                        summary["stopped_before_order"] = job[3]
                        log(f"time budget of {a.time_budget} min spent: no new order from "
                            f"{job[3]} on")
                        break
                    done.setdefault(job[3], 0)
                    pending[pool.submit(_worker_run, job)] = job
                for f in cf.as_completed(list(pending)):
                    finished(pending.pop(f), f.result())
        summary["runs"].sort(key=lambda r: (r["order_index"], METHOD_KEYS.index(r["method"])))
        summary["svd_runs"].sort(key=lambda r: (r["order_index"], SVD_KEYS.index(r["method"])))
        ev_runs = [r for r in summary["runs"] if "eval_count" in r]
        summary["eval_seconds"] = sum(r["eval_seconds"] for r in ev_runs)
        summary["eval_cpu_seconds"] = sum(r.get("eval_cpu_seconds", 0) for r in ev_runs)
        summary["eval_count"] = sum(r["eval_count"] for r in ev_runs)
        summary["bench_seconds"] = time.time() - t_start
        if not a.report_only:
            common.write_json(os.path.join(self.results_dir, "summary.json"), summary)
            shutil.rmtree(self.work, ignore_errors=True)
        return summary

    def partial_report(self, summary, t_start):
        """Rewrite the documents with the task orders finished so far (all methods each)."""
        import report
        if self.args.only_svd_modes:  # only the SVD-mode section of results.md
            part = dict(summary)
            per = {}
            for r in summary["svd_runs"]:
                per[r["order_index"]] = per.get(r["order_index"], 0) + 1
            n = sum(1 for c in per.values() if c == len(SVD_MODES))
            if n < len(summary["orders"]):
                part["partial"] = f"{n} of {len(summary['orders'])} task orders finished"
            try:
                report.write_svd_section(part, self.args.docs)
                log(f"SVD-mode section of results.md updated ({len(summary['svd_runs'])} runs)")
            except Exception as e:  # a report problem must not lose the runs
                log(f"report failed: {e!r}")
            return
        n_methods = {}
        for r in summary["runs"]:
            n_methods[r["order_index"]] = n_methods.get(r["order_index"], 0) + 1
        if not n_methods:
            return
        full = max(n_methods.values())
        complete = sorted(v for v, n in n_methods.items() if n == full)
        part = dict(summary)
        part["runs"] = [r for r in summary["runs"] if r["order_index"] in complete]
        part["bench_seconds"] = time.time() - t_start
        part["partial"] = f"{len(complete)} of {len(summary['orders'])} task orders finished"
        ev_runs = [r for r in part["runs"] if "eval_count" in r]
        part["eval_seconds"] = sum(r["eval_seconds"] for r in ev_runs)
        part["eval_cpu_seconds"] = sum(r.get("eval_cpu_seconds", 0) for r in ev_runs)
        part["eval_count"] = sum(r["eval_count"] for r in ev_runs)
        if self.args.timings and os.path.exists(self.args.timings):
            with open(self.args.timings) as fh:
                part["setup_timings"] = json.load(fh)
        try:
            report.write(part, self.args.docs)
            log(f"report updated ({part['partial']})")
        except Exception as e:  # a report problem must not lose the runs
            log(f"report failed: {e!r}")

    def tasks_meta(self):
        return [{"name": t["name"], "source": t["source"], "classes": t["classes"],
                 "prompts": t["prompts"], "n_train": len(t["train"]), "n_test": len(t["test"])}
                for t in self.tasks]


_WORKER = None


def _worker_init(args_dict):
    global _WORKER
    args = argparse.Namespace(**args_dict)
    common.set_threads(args.threads or 1)
    _WORKER = Bench(args)


def _worker_run(job):
    return _safe_run(_WORKER, job)


def _safe_run(bench, job):
    """A harness error in one run is recorded as that run's failure, not fatal."""
    try:
        return bench.run_one(*job)
    except Exception as e:  # noqa: BLE001
        import traceback
        key, label, margs, v, order = job[:5]
        log(f"{key} order {v}: harness error {e!r}")
        return {"method": key, "label": label, "args": margs, "order_index": v,
                "order": order, "error": "benchmark harness: " + traceback.format_exc()[-1500:]}


def main(argv=None):
    ap = argparse.ArgumentParser(description="nufilt continual-merging accuracy benchmark")
    ap.add_argument("--nufilt", help="path of the nufilt program (default: $NUFILT, "
                    "build*/host/nufilt in the repository, then PATH)")
    ap.add_argument("--orders", type=int, default=5, help="task orders (seeds 42..) [5]")
    ap.add_argument("--triangle-orders", type=int, default=1,
                    help="orders for which every a(t, i), i <= t, is evaluated (the others get "
                         "only what ACC and BWT need) [1]")
    ap.add_argument("--methods", default="", help="comma-separated subset of " +
                    ",".join(METHOD_KEYS))
    ap.add_argument("--tasks", default="", help="comma-separated subset of the tasks (quick "
                    "checks; the headline run uses all)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads [all cores]")
    ap.add_argument("--merge-threads", type=int, default=None, help="nufilt --threads")
    ap.add_argument("--jobs", type=int, default=1,
                    help="parallel worker processes, each merging and evaluating one (method, "
                         "order) run with --threads torch threads [1]")
    ap.add_argument("--no-analysis", action="store_true",
                    help="skip the surrogates and the subspace affinity")
    ap.add_argument("--no-sweep", dest="sweep", action="store_false",
                    help="skip the rank sweep (NUFILT with one of r_p, r_v, r_l changed, "
                    "first task order only: " + ", ".join(k for k, _, _ in SWEEP) + ")")
    ap.add_argument("--svd-modes", action="store_true",
                    help="also run NUFILT with --svd gesdd and --svd fast over every task order "
                    "and compare them (" + ", ".join(SVD_KEYS) + ")")
    ap.add_argument("--only-svd-modes", action="store_true",
                    help="run only that comparison (no other method, sweep or analysis) and "
                    "rewrite only its section of results.md")
    ap.add_argument("--no-cache", action="store_true", help="recompute cached runs")
    ap.add_argument("--report-only", action="store_true",
                    help="merge nothing: write the documents from the runs already cached")
    ap.add_argument("--time-budget", type=float, default=0,
                    help="minutes; start no new task order after that (0: no limit)")
    ap.add_argument("--docs", default=os.path.join(common.REPO, "docs"),
                    help="where results.md and img/ go [docs/ of the repository]")
    ap.add_argument("--timings", default="", help="JSON file with setup timings (run.sh)")
    args = ap.parse_args(argv)
    if args.only_svd_modes:
        args.svd_modes, args.sweep, args.no_analysis, args.methods = True, False, True, "-"
    if args.jobs > 1 and not args.threads:
        args.threads = 1
    if args.jobs > 1 and not args.merge_threads:
        args.merge_threads = 1
    args.work_id = os.getpid()
    common.set_threads(args.threads)
    bench = Bench(args)
    summary = bench.run()
    if args.timings and os.path.exists(args.timings):
        with open(args.timings) as fh:
            summary["setup_timings"] = json.load(fh)
    import report
    if args.only_svd_modes:
        report.write_svd_section(summary, args.docs)
    else:
        report.write(summary, args.docs)
    if not args.report_only:
        common.write_json(os.path.join(bench.results_dir, "summary.json"), summary)
    log(f"wrote {os.path.join(args.docs, 'results.md')} "
        f"(benchmark {summary['bench_seconds'] / 60:.1f} min)")


if __name__ == "__main__":
    main()
