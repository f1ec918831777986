#!/usr/bin/python3
"""End-to-end comparison of the `nufilt` binary with the independent NumPy reference.

    /usr/bin/python3 tests/e2e/nufilt_vs_ref.py --nufilt BUILD/host/nufilt --workdir DIR \
        --case CASE [--size small|vit4] [--spectrum gap|decay] [--chain|--no-chain] [--keep]

CASE: default gap decay lora0 null0 task0 reference merge-vs-steps seed f16 bf16
      sharded-in sharded-out all   (see tests/e2e/README.md)

Exit status: 0 all checks passed, 1 at least one failed, 77 skipped (reason printed),
2 usage error.
"""

import argparse
import os
import shutil
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "ref"))
import gen_fixtures as gf  # noqa: E402
import nufilt_ref as nr  # noqa: E402
import st  # noqa: E402

TOL = {"gap": 1e-4, "decay": 2e-3, "lowrank": 1e-4}
CLI_DEFAULTS = {"null_rank": 128, "task_rank": 8, "lora_rank": 64}
ALL_CASES = ["default", "decay", "lora0", "null0", "task0", "reference", "merge-vs-steps", "seed",
             "f16", "bf16", "sharded-in", "sharded-out", "lowrank", "preset-auto", "svd-gram",
             "svd-gram-decay", "svd-fast", "svd-fast-decay", "svd-gesdd", "svd-gesdd-decay",
             "svd-exact-alias", "svd-mixed"]
SKIP = 77


class Skip(Exception):
    pass


class NufiltFailed(Exception):
    pass


class Ctx:
    def __init__(self, binary, workdir, size, spectrum, chain, verbose):
        self.bin = binary
        self.workdir = workdir
        self.size = size
        self.spectrum = spectrum
        self.chain = chain
        self.verbose = verbose
        self.results = []          # (ok, line)
        self.step_flag = None

    def report(self, ok, case, check, detail):
        line = "%s %s/%s: %s" % ("PASS" if ok else "FAIL", case, check, detail)
        print(line, flush=True)
        self.results.append((ok, line))
        return ok


# ----------------------------------------------------------------------------- running nufilt

def run_nufilt(ctx, args, expect_ok=True):
    cmd = [ctx.bin] + [str(a) for a in args]
    t0 = time.time()
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=900)
    except subprocess.TimeoutExpired:
        raise NufiltFailed("timeout: " + " ".join(cmd))
    dt = time.time() - t0
    if ctx.verbose:
        print("  $ %s   (%.1fs, rc=%d)" % (" ".join(cmd), dt, p.returncode), flush=True)
    if expect_ok and p.returncode != 0:
        raise NufiltFailed("rc=%d: %s\n  stderr: %s" % (p.returncode, " ".join(cmd),
                                                         p.stderr.decode(errors="replace")[-2000:]))
    return p


def rank_args(r_p, r_v, r_l, seed, compat):
    a = []
    for flag, v, key in (("--null-rank", r_p, "null_rank"), ("--task-rank", r_v, "task_rank"),
                         ("--lora-rank", r_l, "lora_rank")):
        if v != CLI_DEFAULTS[key]:
            a += [flag, v]
    if seed != 0:
        a += ["--seed", seed]
    if compat != "paper":
        a += ["--compat", compat]
    return a + ["--preset", "clip"]


def step_path(dirpath, t, as_file):
    return os.path.join(dirpath, "step%02d" % t + (".safetensors" if as_file else ""))


# ----------------------------------------------------------------------------- comparing


def tv_relerr(nuf, ref, base):
    """||(nuf - base) - (ref - base)||_F / ||ref - base||_F  (float64)."""
    num = np.linalg.norm((nuf - base) - (ref - base))
    den = np.linalg.norm(ref - base)
    if den == 0:
        return 0.0 if num == 0 else float("inf")
    return float(num / den)


def compare_model(ctx, case, label, out_path, base_raw, base64, ref, tol, dtype, treated, elem_check=True,
                  prev=None, infos=None):
    """Compare one nufilt output with the reference (float64, unrounded).
    Returns (ok, max relerr over treated tensors)."""
    ok = True
    try:
        raw = st.raw_bytes(out_path)
        out = st.load(out_path)
    except Exception as e:  # noqa: BLE001
        return ctx.report(False, case, label + "/read", "cannot read %s: %s" % (out_path, e)), float("inf")
    # names, dtypes, shapes
    if set(raw) != set(base_raw):
        ok = ctx.report(False, case, label + "/names", "tensor names differ from base: missing %s extra %s"
                        % (sorted(set(base_raw) - set(raw))[:3], sorted(set(raw) - set(base_raw))[:3]))
        return ok, float("inf")
    bad = [k for k in base_raw if raw[k][0] != base_raw[k][0] or tuple(raw[k][1]) != tuple(base_raw[k][1])]
    if bad:
        ctx.report(False, case, label + "/dtype-shape", "%d tensors changed dtype/shape, e.g. %s: %s %s -> %s %s"
                   % (len(bad), bad[0], base_raw[bad[0]][0], base_raw[bad[0]][1], raw[bad[0]][0], raw[bad[0]][1]))
        return False, float("inf")
    # untreated: exact bytes
    untreated = [k for k in base_raw if k not in treated]
    diff = [k for k in untreated if raw[k][2] != base_raw[k][2]]
    ok &= ctx.report(not diff, case, label + "/untreated",
                     "%d untreated tensors byte-identical to base" % len(untreated) if not diff else
                     "%d of %d untreated tensors differ from base, e.g. %s" % (len(diff), len(untreated), diff[0]))
    # treated.  nufilt's stored value is round_out(M32) with M32 its float32 result, so
    # |nuf - M32| <= ulp_out/2 (+ ulp_f32/2 for the float32 sum when out is F16/BF16).
    # Bound for a relative error measured against `den`: tol + ||that floor||_F / den.
    # The floor is ~1e-6 for F32 outputs against the task vector; it matters for
    # F16/BF16 and for the step-update metric (the update is much smaller than M).
    lowp = dtype in ("F16", "BF16")
    tv = dict(worst=0.0, name=None, floor=0.0, fails=[])
    up = dict(worst=0.0, name=None, floor=0.0, fails=[])
    lora_worst, lora_share = 0.0, 0.0
    max_ulps, n_diff, n_tot, n_over, n_ulp_gt1, over_ex = 0.0, 0, 0, 0, 0, ""

    def account(acc, k, e, floor):
        acc["floor"] = max(acc["floor"], floor)
        if e > tol + floor:
            acc["fails"].append((k, e, tol + floor))
        if acc["name"] is None or e > acc["worst"]:
            acc["worst"], acc["name"] = e, k

    for k in treated:
        nuf = out.f64(k)
        half = 0.5 * st.ulp(nuf, dtype)
        if lowp:
            half = half + 0.5 * st.ulp(nuf, "F32")
        fl = float(np.linalg.norm(half))
        den = float(np.linalg.norm(ref[k] - base64[k]))
        account(tv, k, tv_relerr(nuf, ref[k], base64[k]), fl / den if den > 0 else 0.0)
        if prev is not None:
            # error relative to this step's update M(t) - M(t-1) (same prev for both)
            den_u = float(np.linalg.norm(ref[k] - prev[k]))
            account(up, k, tv_relerr(nuf, ref[k], prev[k]), fl / den_u if den_u > 0 else 0.0)
            lo = (infos or {}).get(k, {}).get("lora")
            if lo is not None and den_u > 0 and np.linalg.norm(lo) > 1e-6 * den_u:
                # nufilt's adapter term, taking the reference's filter part as exact
                lo_nuf = (nuf - prev[k]) - ((ref[k] - prev[k]) - lo)
                lora_worst = max(lora_worst, float(np.linalg.norm(lo_nuf - lo) / np.linalg.norm(lo)))
                lora_share = max(lora_share, float(np.linalg.norm(lo) / den_u))
        if lowp:
            ref_r = st.to_float64(st.from_float(ref[k], dtype), dtype)
            u = st.ulp(np.maximum(np.abs(nuf), np.abs(ref_r)), dtype)
            # allowance for float32 computational error, the tolerance spread evenly:
            # matters only where the value cancels to far below the tensor's typical
            # magnitude (there one ulp is tiny); negligible against an ulp elsewhere
            slack = tol * float(np.sqrt(np.mean((ref[k] - base64[k]) ** 2)))
            d = np.abs(nuf - ref_r)
            ul = d / u
            max_ulps = max(max_ulps, float(ul.max()))
            over = d > u + slack
            n_over += int(np.count_nonzero(over))
            n_ulp_gt1 += int(np.count_nonzero(ul > 1))
            if over.any():
                i = np.unravel_index(np.argmax(np.where(over, d - u, -1)), d.shape)
                over_ex = over_ex or "%s%s: nufilt %.6e, reference %.6e (rounded %.6e)" % (
                    k, list(i), nuf[i], ref[k][i], ref_r[i])
            n_diff += int(np.count_nonzero(nuf != ref_r))
            n_tot += nuf.size

    def fails_txt(acc):
        if not acc["fails"]:
            return ""
        k, e, b = max(acc["fails"], key=lambda f: f[1] / f[2])
        return "; %d tensors over, worst %s %.3e > %.3e" % (len(acc["fails"]), k, e, b)

    ok &= ctx.report(not tv["fails"], case, label + "/treated-tv",
                     "max rel TV error %.3e (%s), tolerance %.0e + rounding floor <= %.1e, %d tensors"
                     % (tv["worst"], tv["name"], tol, tv["floor"], len(treated)) + fails_txt(tv))
    if prev is not None:
        detail = "max rel error of the step's update M(t)-M(t-1) %.3e (%s), tolerance %.0e + rounding floor " \
                 "<= %.1e" % (up["worst"], up["name"], tol, up["floor"])
        if lora_share > 0:
            detail += "; adapter term tau B A is up to %.0f%% of the update, its rel error %.2e" % (
                100 * lora_share, lora_worst)
        ok &= ctx.report(not up["fails"], case, label + "/treated-update", detail + fails_txt(up))
    if lowp:
        detail = ("%d of %d elements beyond 1 ulp + tol*rms(TV) of round(ref); %.4f%% differ from round(ref), "
                  "%d by more than 1 ulp (max %.2f ulp)"
                  % (n_over, n_tot, 100.0 * n_diff / max(1, n_tot), n_ulp_gt1, max_ulps))
        if n_over:
            detail += "; e.g. " + over_ex
        if elem_check:
            ok &= ctx.report(n_over == 0, case, label + "/treated-ulp", detail)
        else:
            print("INFO %s/%s/treated-ulp: %s (not asserted for this spectrum)" % (case, label, detail))
    return ok, tv["worst"]


def treated_names(base):
    return [k for k in base if nr.is_treated(k, base[k].shape, "clip")]


# ----------------------------------------------------------------------------- a merge run + comparison


def fixtures(ctx, name, dtype="F32", layout="file", spectrum=None, base_std=None, seed=0):
    d = os.path.join(ctx.workdir, "fx-" + name)
    shutil.rmtree(d, ignore_errors=True)
    if base_std is None:
        base_std = 2e-3 if dtype in ("F16", "BF16") else 0.02
    fx = gf.generate(d, ctx.size, tasks=4, dtype=dtype, layout=layout, shard_size="150KB",
                     seed=seed, spectrum_kind=spectrum or ctx.spectrum, base_std=base_std,
                     verbose=ctx.verbose)
    return fx


def merge_and_compare(ctx, case, fx, dtype="F32", compat="paper", r_p=None, r_v=None, r_l=None, seed=0,
                      out_kind="file", extra=(), spectrum=None, chain=None, tag=""):
    """nufilt merge --save-steps, then per-step reference with nufilt's own prev, then
    (F32) the reference's own chain.  Returns (ok, step_dir, out_path)."""
    spectrum = spectrum or ctx.spectrum
    tol = TOL[spectrum]
    r_p = fx["null_rank"] if r_p is None else r_p
    r_v = fx["task_rank"] if r_v is None else r_v
    r_l = fx["lora_rank"] if r_l is None else r_l
    run_dir = os.path.join(ctx.workdir, "run-" + case + tag)
    shutil.rmtree(run_dir, ignore_errors=True)
    os.makedirs(run_dir)
    as_file = out_kind == "file"
    out_path = os.path.join(run_dir, "merged.safetensors" if as_file else "merged")
    steps_dir = os.path.join(run_dir, "steps")
    args = ["merge", "--base", fx["base"], "--out", out_path, "--save-steps", steps_dir] \
        + rank_args(r_p, r_v, r_l, seed, compat) + list(extra) + fx["tasks"]
    run_nufilt(ctx, args)
    params = nr.make_params(null_rank=r_p, task_rank=r_v, lora_rank=r_l, seed=seed, compat=compat)
    base_t = st.load(fx["base"])
    base_raw = st.raw_bytes(fx["base"])
    base64 = nr.as_f64(base_t)
    treated = treated_names(base64)
    T = len(fx["tasks"])
    ok = True
    worst = 0.0
    gaps_p, gaps_t = [], []
    tasks64 = [nr.as_f64(st.load(p)) for p in fx["tasks"]]
    elem = spectrum == "gap"
    t_start = time.time()
    for t in range(1, T + 1):
        prev = None if t == 1 else nr.as_f64(st.load(step_path(steps_dir, t - 1, as_file)))
        infos = {}
        ref = nr.nufilt_step(base64, prev, tasks64[t - 1], t, params, infos)
        gaps_p += [i["gap_p"] for i in infos.values() if "gap_p" in i]
        gaps_t += [i["gap_t"] for i in infos.values() if "gap_t" in i]
        o, w = compare_model(ctx, case, tag.lstrip("-") + "step%d" % t, step_path(steps_dir, t, as_file),
                             base_raw, base64, ref, tol, dtype, treated, elem, prev, infos)
        ok &= o
        worst = max(worst, w)
    # the step count nufilt records (if it records one) must be t
    recorded = [st.read_metadata(step_path(steps_dir, t, as_file)).get("nufilt.step") for t in range(1, T + 1)]
    if any(r is not None for r in recorded):
        ok &= ctx.report(recorded == [str(t) for t in range(1, T + 1)], case, "metadata-step",
                         "nufilt.step metadata of steps 1..%d: %s" % (T, ",".join(str(r) for r in recorded)))
    # final OUT equals the last saved step, byte for byte
    ok &= same_bytes(ctx, case, "out==step%d" % T, out_path, step_path(steps_dir, T, as_file))
    print("INFO %s: per-step max rel TV error %.3e over %d steps (%.1fs reference); min gap ratio at r_p cut "
          "%.2f, at r_v cut %.2f" % (case, worst, T, time.time() - t_start,
                                     min(gaps_p) if gaps_p else float("inf"),
                                     min(gaps_t) if gaps_t else float("inf")), flush=True)
    if chain is None:
        chain = ctx.chain
    if chain and dtype == "F32":
        t_start = time.time()
        prev = None
        wc = 0.0
        for t in range(1, T + 1):
            prev = nr.nufilt_step(base64, prev, tasks64[t - 1], t, params)
        fin = st.load(out_path)
        for k in treated:
            wc = max(wc, tv_relerr(fin.f64(k), prev[k], base64[k]))
        ok &= ctx.report(wc <= tol, case, "chain-final",
                         "reference's own %d-step chain vs nufilt final: max rel TV error %.3e, tolerance %.0e "
                         "(%.1fs)" % (T, wc, tol, time.time() - t_start))
    return ok, steps_dir, out_path


def same_bytes(ctx, case, label, a, b, expect_same=True, only=None):
    ra, rb = st.raw_bytes(a), st.raw_bytes(b)
    if set(ra) != set(rb):
        return ctx.report(False, case, label, "tensor names differ between %s and %s" % (a, b))
    names = [k for k in ra if only is None or k in only]
    diff = [k for k in names if ra[k] != rb[k]]
    if expect_same:
        return ctx.report(not diff, case, label, "all %d tensors bit-identical" % len(names) if not diff else
                          "%d of %d tensors differ, e.g. %s" % (len(diff), len(names), diff[0]))
    return ctx.report(len(diff) == len(names), case, label,
                      "%d of %d tensors differ (expected all)" % (len(diff), len(names)))


# ----------------------------------------------------------------------------- cases


def case_default(ctx, case, spectrum=None, **kw):
    fx = fixtures(ctx, case, spectrum=spectrum)
    return merge_and_compare(ctx, case, fx, spectrum=spectrum, **kw)[0]


def recorded_svd(ctx, case, label, steps_dir, T, want):
    """Every saved step records the SVD mode it used (metadata nufilt.svd)."""
    got = [st.read_metadata(step_path(steps_dir, t, True)).get("nufilt.svd") for t in range(1, T + 1)]
    return ctx.report(got == [want] * T, case, label,
                      "nufilt.svd of steps 1..%d: %s (expected %s)" % (T, ",".join(map(str, got)), want))


def svd_run(ctx, tag, fx, extra):
    """merge --save-steps with extra options, no reference; returns (steps_dir, out)."""
    run_dir = os.path.join(ctx.workdir, "run-" + tag)
    shutil.rmtree(run_dir, ignore_errors=True)
    os.makedirs(run_dir)
    out = os.path.join(run_dir, "merged.safetensors")
    steps = os.path.join(run_dir, "steps")
    run_nufilt(ctx, ["merge", "--base", fx["base"], "--out", out, "--save-steps", steps]
               + rank_args(fx["null_rank"], fx["task_rank"], fx["lora_rank"], 0, "paper")
               + list(extra) + fx["tasks"])
    return steps, out


def case_default_mode(ctx, case):
    """No --svd: the reference comparison of the default case, the mode recorded is fast,
    and the outputs are bit-identical to an explicit --svd fast and differ from --svd gesdd
    (so the default really is fast, not gesdd)."""
    fx = fixtures(ctx, case)
    ok, steps, out = merge_and_compare(ctx, case, fx)
    T = len(fx["tasks"])
    ok &= recorded_svd(ctx, case, "recorded-mode", steps, T, "fast")
    _, out_fast = svd_run(ctx, case + "-fast", fx, ["--svd", "fast"])
    ok &= same_bytes(ctx, case, "default==--svd fast", out, out_fast)
    _, out_gesdd = svd_run(ctx, case + "-gesdd", fx, ["--svd", "gesdd"])
    tr = set(treated_names(st.load(fx["base"])))
    ok &= same_bytes(ctx, case, "default!=--svd gesdd", out, out_gesdd, expect_same=False, only=tr)
    return ok


def case_svd_mode(ctx, case, mode, spectrum):
    """--svd MODE against the reference, and the mode recorded in every step."""
    fx = fixtures(ctx, case, spectrum=spectrum)
    ok, steps, _ = merge_and_compare(ctx, case, fx, spectrum=spectrum, extra=["--svd", mode])
    return ok & recorded_svd(ctx, case, "recorded-mode", steps, len(fx["tasks"]),
                             "gesdd" if mode == "exact" else mode)


def case_exact_alias(ctx, case):
    """--svd exact is the old name of gesdd: bit-identical outputs, recorded as gesdd; under
    --compat reference every mode that has no gesdd of its own (fast, the default) is gesdd."""
    fx = fixtures(ctx, case)
    T = len(fx["tasks"])
    s1, o1 = svd_run(ctx, case + "-gesdd", fx, ["--svd", "gesdd"])
    s2, o2 = svd_run(ctx, case + "-exact", fx, ["--svd", "exact"])
    ok = same_bytes(ctx, case, "exact==gesdd", o1, o2)
    ok &= recorded_svd(ctx, case, "exact-recorded-as-gesdd", s2, T, "gesdd")
    s3, o3 = svd_run(ctx, case + "-ref", fx, ["--compat", "reference"])
    s4, o4 = svd_run(ctx, case + "-ref-gesdd", fx, ["--compat", "reference", "--svd", "gesdd"])
    ok &= same_bytes(ctx, case, "reference-default==reference-gesdd", o3, o4)
    ok &= recorded_svd(ctx, case, "reference-recorded-as-gesdd", s3, T, "gesdd")
    return ok


def case_svd_mixed(ctx, case):
    """A stream whose steps use different modes: step 2 with --svd gesdd on a prev made with
    fast is allowed, matches the reference, and --report says the mode changed; a prev that
    records an unknown mode is refused with its file named."""
    fx = fixtures(ctx, case)
    run_dir = os.path.join(ctx.workdir, "run-" + case)
    shutil.rmtree(run_dir, ignore_errors=True)
    os.makedirs(run_dir)
    base = fx["base"]
    ra = rank_args(fx["null_rank"], fx["task_rank"], fx["lora_rank"], 0, "paper")
    s1 = os.path.join(run_dir, "s1.safetensors")
    s2 = os.path.join(run_dir, "s2.safetensors")
    rep1 = os.path.join(run_dir, "r1.json")
    rep2 = os.path.join(run_dir, "r2.json")
    run_nufilt(ctx, ["step", "--base", base, "--task", fx["tasks"][0], "--out", s1, "--report", rep1] + ra)
    run_nufilt(ctx, ["step", "--base", base, "--task", fx["tasks"][1], "--prev", s1, "--out", s2,
                     "--svd", "gesdd", "--report", rep2] + ra)
    import json
    st1 = json.load(open(rep1))["steps"][0]
    st2 = json.load(open(rep2))["steps"][0]
    ok = ctx.report(st1.get("svd") == "fast" and "svd_previous" not in st1, case, "report-step1",
                    "first step: svd=%s, svd_previous %s" % (st1.get("svd"), st1.get("svd_previous", "absent")))
    ok &= ctx.report(st2.get("svd") == "gesdd" and st2.get("svd_previous") == "fast"
                     and st2.get("svd_changed") is True, case, "report-step2",
                     "step on a fast prev with --svd gesdd: svd=%s svd_previous=%s svd_changed=%s"
                     % (st2.get("svd"), st2.get("svd_previous"), st2.get("svd_changed")))
    ok &= ctx.report(st.read_metadata(s2).get("nufilt.svd") == "gesdd", case, "recorded",
                     "step 2 records %s" % st.read_metadata(s2).get("nufilt.svd"))
    # step 2 against the reference, with nufilt's own step 1 as prev
    params = nr.make_params(null_rank=fx["null_rank"], task_rank=fx["task_rank"], lora_rank=fx["lora_rank"],
                            seed=0, compat="paper")
    base64 = nr.as_f64(st.load(base))
    prev = nr.as_f64(st.load(s1))
    ref = nr.nufilt_step(base64, prev, nr.as_f64(st.load(fx["tasks"][1])), 2, params)
    got = st.load(s2)
    err = max(tv_relerr(got.f64(k), ref[k], base64[k]) for k in treated_names(base64))
    ok &= ctx.report(err <= TOL["gap"], case, "step2-vs-ref",
                     "max rel TV error %.3e, tolerance %.0e" % (err, TOL["gap"]))
    # the same step with the same mode as the previous one: svd_changed false
    s2b = os.path.join(run_dir, "s2b.safetensors")
    rep3 = os.path.join(run_dir, "r3.json")
    run_nufilt(ctx, ["step", "--base", base, "--task", fx["tasks"][1], "--prev", s1, "--out", s2b,
                     "--report", rep3] + ra)
    st3 = json.load(open(rep3))["steps"][0]
    ok &= ctx.report(st3.get("svd_previous") == "fast" and st3.get("svd_changed") is False, case,
                     "report-same-mode", "svd_previous=%s svd_changed=%s"
                     % (st3.get("svd_previous"), st3.get("svd_changed")))
    # a prev whose nufilt.svd is not a known mode
    bad = os.path.join(run_dir, "bad-prev.safetensors")
    t1 = st.load(s1)
    meta = dict(st.read_metadata(s1))
    meta["nufilt.svd"] = "qr"
    st.save_file(bad, t1, dtypes=t1.dtypes, metadata=meta)
    p = run_nufilt(ctx, ["step", "--base", base, "--task", fx["tasks"][1], "--prev", bad, "--out",
                         os.path.join(run_dir, "never.safetensors")] + ra, expect_ok=False)
    msg = p.stderr.decode(errors="replace")
    ok &= ctx.report(p.returncode != 0 and "bad-prev.safetensors" in msg and "nufilt.svd" in msg
                     and not os.path.exists(os.path.join(run_dir, "never.safetensors")), case,
                     "unknown-recorded-mode", "rc=%d: %s" % (p.returncode, msg.strip()[:200]))
    return ok


def case_merge_vs_steps(ctx, case):
    fx = fixtures(ctx, case)
    ok, steps_dir, out = merge_and_compare(ctx, case, fx, chain=False)
    run_dir = os.path.dirname(out)
    prev = None
    for t, task in enumerate(fx["tasks"], start=1):
        sp = os.path.join(run_dir, "chain%02d.safetensors" % t)
        args = ["step", "--base", fx["base"], "--task", task, "--out", sp]
        if prev:
            args += ["--prev", prev]
        args += rank_args(fx["null_rank"], fx["task_rank"], fx["lora_rank"], 0, "paper")
        args += step_index_args(ctx, t)
        run_nufilt(ctx, args)
        ok &= same_bytes(ctx, case, "step%d" % t, sp, step_path(steps_dir, t, True))
        prev = sp
    ok &= same_bytes(ctx, case, "final", prev, out)
    return ok


def step_index_args(ctx, t):
    """The CLI contract gives `step` no explicit step index; if the binary documents a
    flag for it, pass it (t is 1-based), else rely on the binary's own bookkeeping."""
    if ctx.step_flag is None:
        p = run_nufilt(ctx, ["step", "--help"], expect_ok=False)
        txt = (p.stdout + p.stderr).decode(errors="replace")
        ctx.step_flag = ""
        for f in ("--step-index", "--step"):
            if (f + " ") in txt or (f + "=") in txt:
                ctx.step_flag = f
                break
        print("INFO step index flag: %s" % (ctx.step_flag or "(none documented)"))
    return [ctx.step_flag, t] if ctx.step_flag else []


def case_seed(ctx, case):
    fx = fixtures(ctx, case)
    ok, s0, o0 = merge_and_compare(ctx, case, fx, seed=0, chain=False, tag="-s0")
    _, s0b, o0b = run_only(ctx, case + "-s0b", fx, seed=0)
    ok &= same_bytes(ctx, case, "same-seed-reproduces", o0, o0b)
    for t in range(1, len(fx["tasks"]) + 1):
        ok &= same_bytes(ctx, case, "same-seed-step%d" % t, step_path(s0, t, True), step_path(s0b, t, True))
    o, s7, o7 = merge_and_compare(ctx, case, fx, seed=7, chain=False, tag="-s7")
    ok &= o
    base = st.load(fx["base"])
    tr = set(treated_names(base))
    ok &= same_bytes(ctx, case, "seed-irrelevant-at-step1", step_path(s0, 1, True), step_path(s7, 1, True))
    for t in range(2, len(fx["tasks"]) + 1):
        ok &= same_bytes(ctx, case, "seed-changes-step%d" % t, step_path(s0, t, True), step_path(s7, t, True),
                         expect_same=False, only=tr)
    return ok


def run_only(ctx, tag, fx, seed=0):
    run_dir = os.path.join(ctx.workdir, "run-" + tag)
    shutil.rmtree(run_dir, ignore_errors=True)
    os.makedirs(run_dir)
    out = os.path.join(run_dir, "merged.safetensors")
    steps = os.path.join(run_dir, "steps")
    run_nufilt(ctx, ["merge", "--base", fx["base"], "--out", out, "--save-steps", steps]
               + rank_args(fx["null_rank"], fx["task_rank"], fx["lora_rank"], seed, "paper") + fx["tasks"])
    return True, steps, out


def case_dtype(ctx, case, dtype):
    fx = fixtures(ctx, case, dtype=dtype)
    return merge_and_compare(ctx, case, fx, dtype=dtype)[0]


def case_sharded_in(ctx, case):
    fx = fixtures(ctx, case, layout="sharded")
    nsh = len([f for f in os.listdir(fx["base"]) if f.endswith(".safetensors")])
    ok = ctx.report(nsh > 1, case, "fixture", "base has %d shards + index + config.json" % nsh)
    return ok & merge_and_compare(ctx, case, fx)[0]


def case_sharded_out(ctx, case):
    fx = fixtures(ctx, case)
    lim = 150 * 1000
    ok, steps, out = merge_and_compare(ctx, case, fx, out_kind="dir", extra=["--out-shard-size", "150KB"])
    for path in (out, step_path(steps, 2, False)):
        idx = os.path.join(path, st.INDEX_NAME)
        shards = sorted(f for f in os.listdir(path) if f.endswith(".safetensors")) if os.path.isdir(path) else []
        good = os.path.exists(idx) and len(shards) > 1
        over = []
        for f in shards:
            d, _ = st._parse_file(os.path.join(path, f))
            sz = sum(len(v[2]) for v in d.values())
            if sz > 150 * 1024 and len(d) > 1:
                over.append((f, sz))
        ok &= ctx.report(good and not over, case, "layout:" + os.path.relpath(path, ctx.workdir),
                         "%d shards + index, data per shard <= 150KB (1000- or 1024-based)" % len(shards)
                         if good and not over else
                         "expected a sharded directory with index: index=%s shards=%d over-limit=%s"
                         % (os.path.exists(idx), len(shards), over[:2]))
    return ok


def case_preset_auto(ctx, case):
    """Without --preset (auto), CLIP tensor names must select exactly the clip preset:
    byte-identical to the --preset clip run, for a file and for a directory with config.json."""
    ok = True
    for layout in ("file", "sharded"):
        fx = fixtures(ctx, case + "-" + layout, layout=layout)
        _, steps, out = merge_and_compare(ctx, case, fx, chain=False, tag="-" + layout)
        run_dir = os.path.join(ctx.workdir, "run-%s-%s-auto" % (case, layout))
        shutil.rmtree(run_dir, ignore_errors=True)
        os.makedirs(run_dir)
        out2 = os.path.join(run_dir, "merged.safetensors")
        ra = [a for a in rank_args(fx["null_rank"], fx["task_rank"], fx["lora_rank"], 0, "paper")]
        ra = ra[:-2]   # drop "--preset clip"
        run_nufilt(ctx, ["merge", "--base", fx["base"], "--out", out2] + ra + fx["tasks"])
        ok &= same_bytes(ctx, case, layout + "/auto==clip", out2, out)
    return ok


def run_case(ctx, case):
    if case == "default":
        return case_default_mode(ctx, case)
    if case in ("svd-gesdd", "svd-gesdd-decay"):
        return case_svd_mode(ctx, case, "gesdd", "decay" if case.endswith("decay") else None)
    if case == "svd-exact-alias":
        return case_exact_alias(ctx, case)
    if case == "svd-mixed":
        return case_svd_mixed(ctx, case)
    if case == "gap":
        return case_default(ctx, case, spectrum="gap")
    if case == "decay":
        return case_default(ctx, case, spectrum="decay")
    if case in ("svd-gram", "svd-gram-decay", "svd-fast", "svd-fast-decay"):
        # --svd gram: the top vectors from the Gram matrix in double; --svd fast: in float32
        # (handing ill-conditioned matrices to gram); same tolerances as the default
        spectrum = "decay" if case.endswith("decay") else None
        fx = fixtures(ctx, case, spectrum=spectrum)
        mode = case.split("-")[1]
        return merge_and_compare(ctx, case, fx, spectrum=spectrum, extra=["--svd", mode])[0]
    if case == "lora0":
        fx = fixtures(ctx, case)
        return merge_and_compare(ctx, case, fx, r_l=0)[0]
    if case == "null0":
        fx = fixtures(ctx, case)
        return merge_and_compare(ctx, case, fx, r_p=0)[0]
    if case == "task0":
        fx = fixtures(ctx, case)
        return merge_and_compare(ctx, case, fx, r_v=0)[0]
    if case == "reference":
        fx = fixtures(ctx, case)
        return merge_and_compare(ctx, case, fx, compat="reference")[0]
    if case == "merge-vs-steps":
        return case_merge_vs_steps(ctx, case)
    if case == "seed":
        return case_seed(ctx, case)
    if case in ("f16", "F16"):
        return case_dtype(ctx, "f16", "F16")
    if case in ("bf16", "BF16"):
        return case_dtype(ctx, "bf16", "BF16")
    if case == "sharded-in":
        return case_sharded_in(ctx, case)
    if case == "sharded-out":
        return case_sharded_out(ctx, case)
    if case == "lowrank":
        # exactly low-rank task vectors: paper mode must drop prev's null singular vectors
        fx = fixtures(ctx, case, spectrum="lowrank", base_std=1e-3)
        return merge_and_compare(ctx, case, fx, spectrum="lowrank")[0]
    if case == "preset-auto":
        return case_preset_auto(ctx, case)
    raise KeyError(case)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nufilt", required=True, help="path to the nufilt binary")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--case", required=True, help="|".join(ALL_CASES + ["gap", "all"]))
    ap.add_argument("--size", choices=["small", "vit4"], default="small")
    ap.add_argument("--spectrum", choices=["gap", "decay", "lowrank"], default="gap",
                    help="spectrum of the fixtures for cases other than gap/decay")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--chain", dest="chain", action="store_true", default=None,
                   help="also compare with the reference's own chain (default: on for small, off for vit4)")
    g.add_argument("--no-chain", dest="chain", action="store_false")
    ap.add_argument("--keep", action="store_true", help="keep the work directory contents")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args()
    cases = ALL_CASES if a.case == "all" else [a.case]
    for c in cases:
        if c not in ALL_CASES + ["gap", "F16", "BF16"]:
            print("unknown case %s (known: %s all)" % (c, " ".join(ALL_CASES + ["gap"])))
            return 2
    if not (os.path.isfile(a.nufilt) and os.access(a.nufilt, os.X_OK)):
        print("SKIP: nufilt binary not found or not executable: %s" % a.nufilt)
        return SKIP
    chain = a.chain if a.chain is not None else (a.size == "small")
    os.makedirs(a.workdir, exist_ok=True)
    ctx = Ctx(os.path.abspath(a.nufilt), os.path.abspath(a.workdir), a.size, a.spectrum, chain, a.verbose)
    t0 = time.time()
    for c in cases:
        try:
            run_case(ctx, c)
        except NufiltFailed as e:
            ctx.report(False, c, "run", "nufilt failed: %s" % e)
        except Skip as e:
            print("SKIP %s: %s" % (c, e))
    n_fail = sum(1 for ok, _ in ctx.results if not ok)
    print("%s: %d checks, %d failed, cases %s, size %s, %.1fs"
          % ("FAILED" if n_fail else "ALL PASSED", len(ctx.results), n_fail, ",".join(cases), a.size,
             time.time() - t0))
    if not a.keep and not n_fail:
        for f in os.listdir(ctx.workdir):
            if f.startswith(("fx-", "run-")):
                shutil.rmtree(os.path.join(ctx.workdir, f), ignore_errors=True)
    if not ctx.results:
        return SKIP
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
