"""PEFT LoRA adapters as tasks: every method's merge of a stream of adapter directories equals
its merge of the densified checkpoints (base + delta, written by NumPy here), within 1e-5.

The adapters are written by hand in PEFT's save format (adapter_config.json +
adapter_model.safetensors, keys base_model.model.<module>.lora_A.weight, adapter name
removed) and cover: plain LoRA, use_rslora (alpha / sqrt(r)), rank_pattern and alpha_pattern
(PEFT's match: the first key K for which "(.*\\.)?(K)$" matches the module name),
fan_in_fan_out (Conv1D weights stored in x out: delta (B A)^T), embedding LoRA
(lora_embedding_A r x num, lora_embedding_B dim x r, delta (B A)^T), lora_bias (lora_B.bias,
scaled), modules_to_save in both the current layout (<module>.weight) and the older one
(<module>.modules_to_save.weight), biases saved with bias="all" (<module>.base_layer.bias),
tensors the adapter does not touch (tau = 0), an int64 buffer. The densified twin of an
adapter is computed in float64 from the same arrays with the PEFT formulas, independently of
nufilt's code.

Then the refusals: DoRA, another PEFT type, an unknown key, a key of a module the base lacks,
a rank the configuration contradicts, pickle-only weights.

Usage: peft_adapters.py --nufilt build/host/nufilt --workdir DIR [--method M ...]
Exit 0 pass, 1 fail, 77 skip.
"""

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys

SKIP = 77
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "ref"))
try:
    import numpy as np
    import st  # tests/ref/st.py
except ImportError as e:  # pragma: no cover
    print("SKIP: cannot import numpy or the test helpers (%s)" % e)
    sys.exit(SKIP)

TOL = 1e-5
METHODS = ["nufilt", "wa", "ta", "ties", "magmax", "opcm", "wudi", "isoc", "tsvm"]
D, FF, V, NL = 24, 40, 50, 2
LAYERS = r".*(query|key|value|dense|c_attn)\.weight"
NUFILT_ARGS = ["--null-rank", "6", "--task-rank", "2", "--lora-rank", "4", "--iters", "25",
               "--layers", LAYERS]


def base_model(rng):
    t, dt = {}, {}

    def add(name, shape, std=0.02, center=0.0):
        # float32 values, as the stored base holds them
        t[name] = (center + std * rng.standard_normal(shape)).astype(np.float32).astype(np.float64)
        dt[name] = "F32"

    add("embeddings.word_embeddings.weight", (V, D))
    add("embeddings.LayerNorm.weight", (D,), 0.1, 1.0)
    add("embeddings.LayerNorm.bias", (D,))
    t["embeddings.position_ids"] = np.arange(20, dtype=np.int64).reshape(1, 20)
    dt["embeddings.position_ids"] = "I64"
    for i in range(NL):
        p = "encoder.layer.%d." % i
        for m in ("query", "key", "value"):
            add(p + "attention.self.%s.weight" % m, (D, D))
            add(p + "attention.self.%s.bias" % m, (D,))
        add(p + "attention.output.dense.weight", (D, D))
        add(p + "attention.output.dense.bias", (D,))
        add(p + "intermediate.dense.weight", (FF, D))
        add(p + "intermediate.dense.bias", (FF,))
        add(p + "output.dense.weight", (D, FF))
        add(p + "output.dense.bias", (D,))
        add(p + "output.LayerNorm.weight", (D,), 0.1, 1.0)
        add(p + "output.LayerNorm.bias", (D,))
    # a GPT-2 style Conv1D weight, stored in x out, for fan_in_fan_out
    add("h.0.attn.c_attn.weight", (D, 3 * D))
    add("h.0.attn.c_attn.bias", (3 * D,))
    add("classifier.weight", (3, D))
    add("classifier.bias", (3,))
    return t, dt


def pattern_value(patterns, module, default):
    for k, v in patterns.items():
        if re.match(r"(.*\.)?(%s)$" % k, module):
            return v
    return default


class Adapter:
    """One adapter: config dict, tensors (as saved) and its float64 delta per base tensor."""

    def __init__(self, conditioned, config):
        self.conditioned = conditioned
        self.config = dict(config)
        self.config.setdefault("peft_type", "LORA")
        self.tensors, self.dtypes = {}, {}
        self.full = {}    # base name -> full value
        self.delta = {}   # base name -> float64 delta

    def lora(self, rng, module, base, emb=False, bias_vec=False):
        c = self.config
        r = pattern_value(c.get("rank_pattern") or {}, module, c["r"])
        alpha = pattern_value(c.get("alpha_pattern") or {}, module, c["lora_alpha"])
        scale = alpha / (math.sqrt(r) if c.get("use_rslora") else r)
        w = base[module + ".weight"]
        transpose = emb or c.get("fan_in_fan_out", False)
        out_f, in_f = (w.shape[1], w.shape[0]) if transpose else w.shape
        if self.conditioned:
            # orthonormal factors, B's columns weighted 1 .. 0.5: distinct, well separated
            # singular values
            A = 0.3 * math.sqrt(in_f) * np.linalg.qr(rng.standard_normal((in_f, r)))[0].T
            B = 0.05 * math.sqrt(out_f) * np.linalg.qr(rng.standard_normal((out_f, r)))[0] * \
                np.linspace(1.0, 0.5, r)
        else:
            A = 0.3 * rng.standard_normal((r, in_f))
            B = 0.05 * rng.standard_normal((out_f, r))
        pre = "base_model.model." + module
        if emb:
            self.put(pre + ".lora_embedding_A", A)
            self.put(pre + ".lora_embedding_B", B)
        else:
            self.put(pre + ".lora_A.weight", A)
            self.put(pre + ".lora_B.weight", B)
        d = scale * (B @ A)
        self.delta[module + ".weight"] = d.T if transpose else d
        if bias_vec:
            v = 0.05 * rng.standard_normal(out_f)
            self.put(pre + ".lora_B.bias", v)
            self.delta[module + ".bias"] = scale * v

    def put(self, key, arr, dtype="F32"):
        self.tensors[key] = arr
        self.dtypes[key] = dtype

    def save_full(self, key, base_name, value):
        self.put(key, value)
        self.full[base_name] = value

    def write(self, d):
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "adapter_config.json"), "w") as f:
            json.dump(self.config, f, indent=2)
        st.save_file(os.path.join(d, "adapter_model.safetensors"),
                     {k: st.from_float(v, self.dtypes[k]) for k, v in self.tensors.items()},
                     self.dtypes, {"format": "pt"})

    def twin(self, base, base_dt):
        """The densified checkpoint: base + delta, full tensors replaced (float32)."""
        out = {}
        for n, v in base.items():
            if base_dt[n] == "I64":
                out[n] = v
                continue
            x = np.asarray(v, dtype=np.float64)
            if n in self.full:
                x = np.asarray(self.full[n], dtype=np.float64)
            if n in self.delta:
                x = x + self.delta[n]
            out[n] = st.from_float(x, "F32")
        return out


def common_config(**kw):
    c = {"peft_type": "LORA", "task_type": None, "r": 4, "lora_alpha": 8, "lora_dropout": 0.0,
         "bias": "none", "use_rslora": False, "use_dora": False, "fan_in_fan_out": False,
         "rank_pattern": {}, "alpha_pattern": {}, "modules_to_save": None,
         "init_lora_weights": True, "base_model_name_or_path": "fixture", "inference_mode": True}
    c.update(kw)
    return c


def make_adapters(base, rng, full=False):
    """full: every rank D (= the smaller dimension of every adapted matrix), for Iso-C and
    TSV-M (see main)."""
    R = (lambda r: D) if full else (lambda r: r)
    ads = []
    # 1: plain LoRA on query/value, embedding LoRA, modules_to_save (current layout)
    a = Adapter(full, common_config(r=R(4), target_modules=["query", "value", "word_embeddings"],
                              modules_to_save=["classifier"]))
    for i in range(NL):
        for m in ("query", "value"):
            a.lora(rng, "encoder.layer.%d.attention.self.%s" % (i, m), base)
    a.lora(rng, "embeddings.word_embeddings", base, emb=True)
    for p in ("weight", "bias"):
        v = base["classifier." + p] + 0.01 * rng.standard_normal(base["classifier." + p].shape)
        a.save_full("base_model.model.classifier." + p, "classifier." + p, v)
    # what PEFT 0.21 also writes for a modules_to_save module when bias="all": the trained
    # copy under the adapter's name (the same values) and the frozen original (the base's)
    a.put("base_model.model.classifier.modules_to_save.default.bias", a.full["classifier.bias"])
    a.put("base_model.model.classifier.original_module.bias", base["classifier.bias"])
    ads.append(a)
    # 2: rsLoRA, rank_pattern / alpha_pattern, bias="all", modules_to_save (older layout)
    a = Adapter(full, common_config(r=R(8), lora_alpha=16, use_rslora=True, bias="all",
                              rank_pattern={"value": R(4), "layer.1.intermediate.dense": R(6)},
                              alpha_pattern={"layer.1.attention.self.query": 5},
                              target_modules=["query", "key", "value", "dense"],
                              modules_to_save=["classifier"]))
    for i in range(NL):
        for m in ("attention.self.query", "attention.self.key", "attention.self.value",
                  "intermediate.dense"):
            mod = "encoder.layer.%d.%s" % (i, m)
            a.lora(rng, mod, base)
            bn = mod + ".bias"
            a.save_full("base_model.model.%s.base_layer.bias" % mod, bn,
                        base[bn] + 0.01 * rng.standard_normal(base[bn].shape))
        bn = "encoder.layer.%d.output.LayerNorm.bias" % i
        a.save_full("base_model.model." + bn, bn, base[bn] + 0.01 * rng.standard_normal(D))
    v = base["classifier.weight"] + 0.01 * rng.standard_normal((3, D))
    a.save_full("base_model.model.classifier.modules_to_save.weight", "classifier.weight", v)
    ads.append(a)
    # 3: fan_in_fan_out (Conv1D) with lora_bias, in bf16 factors
    a = Adapter(full, common_config(r=R(4), lora_alpha=6, fan_in_fan_out=True, lora_bias=True,
                              target_modules=["c_attn"]))
    a.lora(rng, "h.0.attn.c_attn", base, bias_vec=True)
    for k in list(a.tensors):
        a.dtypes[k] = "BF16"
        a.tensors[k] = st.to_float64(st.from_float(a.tensors[k], "BF16"), "BF16")
    # the delta from the bf16-rounded factors, as nufilt reads them
    c = a.config
    A = a.tensors["base_model.model.h.0.attn.c_attn.lora_A.weight"]
    B = a.tensors["base_model.model.h.0.attn.c_attn.lora_B.weight"]
    a.delta["h.0.attn.c_attn.weight"] = (c["lora_alpha"] / c["r"] * (B @ A)).T
    a.delta["h.0.attn.c_attn.bias"] = c["lora_alpha"] / c["r"] * \
        a.tensors["base_model.model.h.0.attn.c_attn.lora_B.bias"]
    ads.append(a)
    # 4: one more plain adapter so that every method sees several later steps
    a = Adapter(full, common_config(r=R(4), lora_alpha=4, target_modules=["key", "dense"]))
    for i in range(NL):
        for m in ("attention.self.key", "attention.output.dense", "output.dense"):
            a.lora(rng, "encoder.layer.%d.%s" % (i, m), base)
    ads.append(a)
    return ads


class Report:
    def __init__(self):
        self.passed = self.failed = 0

    def check(self, cond, what, detail=""):
        if cond:
            self.passed += 1
            print("ok   " + what)
        else:
            self.failed += 1
            print("FAIL " + what + ("\n     " + detail if detail else ""))
        return cond


def run(cmd, timeout=600):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")


def method_args(m):
    if m == "nufilt":
        return ["--method", m] + NUFILT_ARGS
    return ["--method", m]


def compare(a_path, b_path):
    a, b = st.load(a_path), st.load(b_path)
    if set(a) != set(b):
        return float("inf"), "tensor names differ"
    worst, where = 0.0, ""
    for n in a:
        x = st.to_float64(a[n], a.dtypes[n]) if a.dtypes[n] != "I64" else a[n].astype(np.float64)
        y = st.to_float64(b[n], b.dtypes[n]) if b.dtypes[n] != "I64" else b[n].astype(np.float64)
        e = float(np.max(np.abs(x - y))) if x.size else 0.0
        if e > worst:
            worst, where = e, n
    return worst, where


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nufilt", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--method", action="append", choices=METHODS)
    a = ap.parse_args()
    exe = os.path.abspath(a.nufilt)
    if not os.access(exe, os.X_OK):
        print("SKIP: %s is not an executable" % exe)
        return SKIP
    wd = os.path.abspath(a.workdir)
    shutil.rmtree(wd, ignore_errors=True)
    os.makedirs(wd)
    rng = np.random.default_rng(20261207)
    base, base_dt = base_model(rng)
    base_path = os.path.join(wd, "base.safetensors")
    st.save_file(base_path, {k: st.from_float(v, base_dt[k]) if base_dt[k] != "I64" else v
                             for k, v in base.items()}, base_dt, {"format": "pt"})
    sets = {}
    for kind in ("low", "full"):
        ads = make_adapters(base, np.random.default_rng([20261207, kind == "full"]),
                            full=kind == "full")
        ad_paths, twin_paths = [], []
        for i, ad in enumerate(ads):
            d = os.path.join(wd, "%s-adapter%d" % (kind, i + 1))
            ad.write(d)
            ad_paths.append(d)
            tp = os.path.join(wd, "%s-twin%d.safetensors" % (kind, i + 1))
            st.save_file(tp, ad.twin(base, base_dt),
                         {k: ("I64" if base_dt[k] == "I64" else "F32") for k in base},
                         {"format": "pt"})
            twin_paths.append(tp)
        sets[kind] = (ad_paths, twin_paths)
    ad_paths = sets["low"][0]
    rep = Report()

    cases = [(m, []) for m in (a.method or METHODS)]
    if not a.method or "nufilt" in a.method:
        cases += [("nufilt", ["--svd", "exact"]), ("nufilt", ["--svd", "fast"]),
                  ("nufilt", ["--svd", "randomized"])]
    for m, extra in cases:
        tag = m + ("-" + extra[-1] if extra else "")
        out_a = os.path.join(wd, "merged-%s-adapters.safetensors" % tag)
        out_t = os.path.join(wd, "merged-%s-twins.safetensors" % tag)
        common = method_args(m) + extra + ["--threads", "2"]
        # Iso-C and TSV-M set every singular value of a 2-D update to the mean (Iso-C) or
        # orthogonalise the singular vectors (TSV-M): with rank-4 adapters the null directions
        # of the sum get full weight, and which directions those are is decided by float32
        # rounding in the densified input as much as in nufilt's; full-rank adapters make the
        # comparison well posed for them
        tasks_a, tasks_t = sets["full" if m in ("isoc", "tsvm") else "low"]
        rc1, o1, e1 = run([exe, "merge", "--base", base_path, "--out", out_a] + common + tasks_a)
        rc2, o2, e2 = run([exe, "merge", "--base", base_path, "--out", out_t] + common + tasks_t)
        if not rep.check(rc1 == 0 and rc2 == 0, "%s: both merges run" % tag,
                         (e1 + e2).strip()[-800:]):
            continue
        err, where = compare(out_a, out_t)
        moved, _ = compare(out_a, base_path)
        rep.check(err <= TOL and moved > 1e-3,
                  "%s: merge of the adapters = merge of the densified twins (max |diff| %.3g "
                  "at %s; moved %.3g from the base)" % (tag, err, where, moved))

    # ---- refusals, each by name
    def refused(label, mutate, expect):
        tag = re.sub(r"\W+", "-", label)
        d = os.path.join(wd, "bad-" + tag)
        shutil.copytree(ad_paths[0], d)
        mutate(d)
        rc, out, err = run([exe, "step", "--base", base_path, "--task", d, "--out",
                            os.path.join(wd, "bad-%s.safetensors" % tag), "--method", "ta"])
        msg = (out + err).strip()
        rep.check(rc != 0 and re.search(expect, msg) is not None and
                  not os.path.exists(os.path.join(wd, "bad-%s.safetensors" % tag)),
                  "refused: %s (rc %d)" % (label, rc), msg[-400:])

    def edit_config(**kw):
        def f(d):
            p = os.path.join(d, "adapter_config.json")
            c = json.load(open(p))
            c.update(kw)
            json.dump(c, open(p, "w"))
        return f

    def edit_tensors(fn):
        def f(d):
            p = os.path.join(d, "adapter_model.safetensors")
            t = st.load(p)
            t2, dts = fn(dict(t), dict(t.dtypes))
            st.save_file(p, t2, dts, {"format": "pt"})
        return f

    def add_key(key, shape):
        def fn(t, dts):
            t[key] = np.zeros(shape, dtype=np.float32)
            dts[key] = "F32"
            return t, dts
        return fn

    q0 = "base_model.model.encoder.layer.0.attention.self.query"
    refused("dora", edit_config(use_dora=True), r"DoRA")
    refused("dora-magnitude", edit_tensors(add_key(q0 + ".lora_magnitude_vector", (D,))), r"DoRA")
    refused("ia3", edit_config(peft_type="IA3"), r"IA3")
    refused("unknown-key", edit_tensors(add_key(q0 + ".lora_C.weight", (4, D))), r"lora_C")
    refused("foreign-module", edit_tensors(add_key("base_model.model.decoder.fc.lora_A.weight",
                                                   (4, D))), r"decoder\.fc")
    refused("not-peft-key", edit_tensors(add_key("model.layers.0.q.weight", (4, D))),
            r"not a PEFT LoRA key")
    refused("rank-contradicted", edit_config(r=6), r"rank 4 .*rank 6")
    refused("pissa", edit_config(init_lora_weights="pissa"), r"pissa")
    refused("a use_ flag of a newer variant", edit_config(use_bdlora=True), r"use_bdlora")
    refused("a variant's _config", edit_config(monteclora_config={"n": 2}), r"monteclora_config")
    refused("a modules_to_save copy that differs",
            edit_tensors(add_key("base_model.model.classifier.modules_to_save.default.weight",
                                 (3, D))), r"second time")

    def pickle_only(d):
        os.rename(os.path.join(d, "adapter_model.safetensors"),
                  os.path.join(d, "adapter_model.bin"))
    refused("pickle-only", pickle_only, r"safe_serialization")

    print("%d passed, %d failed" % (rep.passed, rep.failed))
    return 1 if rep.failed else 0


if __name__ == "__main__":
    sys.exit(main())
