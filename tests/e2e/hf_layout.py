#!/usr/bin/env python3
"""Hugging Face directory fidelity, on generated BERT-shaped models (no transformers needed).

    /usr/bin/python3 tests/e2e/hf_layout.py --nufilt PATH [--workdir DIR] [--only CASE ...]
        [--keep] [--list]

Cases (each checks the real program's output against rules written here, independently):

  tree          a sentence-transformers-shaped base (modules.json, 1_Pooling/, an empty
                2_Normalize/, 2_Dense/ with its own weights, onnx/, openvino/, pytorch_model.bin,
                tf_model.h5, .git/, links inside and outside the tree, folders nested deeper
                than copied): the output holds exactly the expected tree, contents equal, links
                copied as their targets' content; --report notes the module weights and the link
                left out; --save-steps' steps hold the tree; --force over an output with
                subfolders leaves nothing behind; a failing step leaves no temporary tree
  hf-cache      a model id (org/name) looked up in HF_HUB_CACHE (refs/main, snapshots of links
                into blobs/): the output's files are the blobs' contents, the card names the id,
                tasks given as snapshot paths are recorded as their ids, NAME=PATH names win,
                a missing id names the folder it looked for
  position-ids  an I64 buffer only in the base (tasks saved by transformers 5) and only in the
                tasks: accepted, the output carries the buffer from the side that has it, every
                float tensor is bit-identical to a run where all sides have it, --report notes
                it; a float tensor on one side only is still refused
  card          README.md: front matter (base_model, library_name from the base card, tags
                merge, nufilt, the method), the hyper-parameters, the tasks in merge order with
                the fingerprints recorded in the weights' metadata, the version, the command
                line (read back by a shell parser, equal to the one run); the base card's prose
                is not copied
  config-dtype  --dtype f16 / bf16 / f32: config.json's torch_dtype and dtype follow, every other
                byte of the file unchanged; with neither key, torch_dtype is added; a base
                config.json that is not JSON is copied unchanged and noted
  zero-treated  --preset t5 on BERT names and --layers matching nothing are refused (naming the
                preset and example tensor names), no output; inspect of a model merged with
                --layers shows the recorded selection
  pytorch-bin   a directory with only pytorch_model.bin: refused, saying it is a pickle and
                giving the conversion command

Exit status 0 when every check passes, 1 otherwise. Standard library and NumPy only.
"""
import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "ref"))
try:
    import numpy as np
    import st  # noqa: E402
except ImportError as e:  # pragma: no cover
    print("SKIP: %s" % e)
    sys.exit(77)

D = 16
FAILS = []


def check(ok, case, what, detail=""):
    print("%s  %-13s %s%s" % ("ok  " if ok else "FAIL", case, what,
                               "" if ok or not detail else ": " + str(detail)[:600]))
    if not ok:
        FAILS.append((case, what))
    return ok


def bert(seed, pos_ids=True, extra=None, scale=1.0):
    """A 2-layer BERT-shaped state dict (float32) with an I64 position_ids buffer."""
    rng = np.random.default_rng(seed)
    t = {}
    t["embeddings.word_embeddings.weight"] = rng.standard_normal((32, D)).astype(np.float32)
    t["embeddings.LayerNorm.weight"] = np.ones(D, np.float32)
    for l in range(2):
        p = "encoder.layer.%d." % l
        for m in ("attention.self.query", "attention.self.key", "attention.self.value",
                  "attention.output.dense", "intermediate.dense", "output.dense"):
            t[p + m + ".weight"] = (scale * rng.standard_normal((D, D))).astype(np.float32)
            t[p + m + ".bias"] = (scale * rng.standard_normal(D)).astype(np.float32)
    if pos_ids:
        t["embeddings.position_ids"] = np.arange(24, dtype=np.int64).reshape(1, 24)
    if extra:
        t.update(extra)
    return t


def task_of(base, seed, pos_ids=True):
    rng = np.random.default_rng(1000 + seed)
    t = {}
    for k, v in base.items():
        if v.dtype == np.int64:
            if pos_ids:
                t[k] = v.copy()
        else:
            t[k] = (v + 0.01 * rng.standard_normal(v.shape)).astype(np.float32)
    if pos_ids and "embeddings.position_ids" not in t:
        t["embeddings.position_ids"] = np.arange(24, dtype=np.int64).reshape(1, 24)
    return t


def run(args, env=None, expect_ok=True):
    e = dict(os.environ)
    if env:
        e.update(env)
    p = subprocess.run(args, capture_output=True, text=True, env=e, timeout=300)
    return p


def nf(ctx, *a, env=None):
    return run([ctx.nufilt] + [str(x) for x in a], env=env)


def tree_of(root):
    """Relative paths: files as 'f path', folders as 'd path' (links reported as 'l path')."""
    out = set()
    for dp, dns, fns in os.walk(root):
        for d in dns:
            p = os.path.join(dp, d)
            out.add(("l " if os.path.islink(p) else "d ") + os.path.relpath(p, root))
        for f in fns:
            p = os.path.join(dp, f)
            out.add(("l " if os.path.islink(p) else "f ") + os.path.relpath(p, root))
    return out


def leftovers(parent):
    return [n for n in os.listdir(parent) if ".nufilt-" in n or ".steps-" in n or ".spill-" in n]


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)


BASE_CARD = """---
license: apache-2.0
library_name: sentence-transformers
tags:
- sentence-similarity
---

# all-MiniLM-L6-v2 look-alike

THIS PROSE BELONGS TO THE BASE CARD ONLY.
"""

CONFIG = """{
  "architectures": ["BertModel"],
  "hidden_size": 16,
  "layer_norm_eps": 1e-12,
  "torch_dtype": "float32",
  "model_type": "bert",
  "transformers_version": "4.8.2"
}
"""


def st_base(d, outside_file):
    """A sentence-transformers-shaped base directory; returns the expected copied tree."""
    st.save_dir(d, bert(1), metadata={"format": "pt"})
    files = {
        "config.json": CONFIG,
        "tokenizer.json": '{"version": "1.0"}\n',
        "vocab.txt": "[PAD]\n[UNK]\n",
        "modules.json": json.dumps([{"idx": 0, "name": "0", "path": "", "type": "T"},
                                    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "P"},
                                    {"idx": 2, "name": "2", "path": "2_Normalize", "type": "N"}]),
        "config_sentence_transformers.json": "{}",
        "sentence_bert_config.json": '{"max_seq_length": 256}',
        "generation_config.json": "{}",
        "1_Pooling/config.json": '{"pooling_mode_mean_tokens": true}',
        "2_Dense/config.json": '{"in_features": 16}',
        "2_Dense/model.safetensors": b"weights of the dense module",
        "onnx/model.onnx": b"onnx", "onnx/config.json": "{}",
        "openvino/openvino_model.xml": "<xml/>", "openvino_model.bin": b"ov",
        "pytorch_model.bin": b"pickle", "tf_model.h5": b"h5", "flax_model.msgpack": b"m",
        "model.onnx_data": b"x", "rust_model.ot": b"ot",
        "README.md": BASE_CARD,
        ".git/HEAD": "ref: refs/heads/main\n", ".gitattributes": "*.bin lfs\n",
        "a/b/c/d/e/f/deep.txt": "six levels", "a/b/c/d/e/f/g/deeper.txt": "seven levels",
    }
    for rel, data in files.items():
        write(os.path.join(d, rel), data)
    os.makedirs(os.path.join(d, "2_Normalize"))
    os.symlink("tokenizer.json", os.path.join(d, "tokenizer_link.json"))
    os.symlink("1_Pooling", os.path.join(d, "pool_link"))
    os.symlink(outside_file, os.path.join(d, "outside.txt"))
    os.symlink("missing-target", os.path.join(d, "dangling.txt"))
    os.symlink("..", os.path.join(d, "1_Pooling", "loop"))
    expected = {
        "f model.safetensors", "f README.md", "f config.json", "f tokenizer.json",
        "f vocab.txt", "f modules.json", "f config_sentence_transformers.json",
        "f sentence_bert_config.json", "f generation_config.json", "d 1_Pooling",
        "f 1_Pooling/config.json", "d 2_Normalize", "d 2_Dense", "f 2_Dense/config.json",
        "f tokenizer_link.json", "d pool_link", "f pool_link/config.json",
        "d a", "d a/b", "d a/b/c", "d a/b/c/d", "d a/b/c/d/e", "d a/b/c/d/e/f",
        "f a/b/c/d/e/f/deep.txt",
    }
    same_as = {"tokenizer_link.json": "tokenizer.json", "pool_link/config.json": "1_Pooling/config.json"}
    return expected, same_as


def read(p, mode="rb"):
    with open(p, mode) as f:
        return f.read()


def case_tree(ctx):
    c = "tree"
    w = os.path.join(ctx.work, c)
    base = os.path.join(w, "base")
    secret = os.path.join(w, "secret.txt")
    write(secret, "outside the base")
    expected, same_as = st_base(base, secret)
    b = bert(1)
    for i in (1, 2):
        st.save_dir(os.path.join(w, "t%d" % i), task_of(b, i), metadata={"format": "pt"})
    out = os.path.join(w, "out", "merged")
    rep = os.path.join(w, "report.json")
    p = nf(ctx, "merge", "--method", "ta", "--base", base, "--out", out, "--report", rep,
           "--save-steps", os.path.join(w, "steps"), os.path.join(w, "t1"), os.path.join(w, "t2"))
    if not check(p.returncode == 0, c, "merge of a sentence-transformers-shaped base", p.stderr):
        return
    got = tree_of(out)
    check(got == expected, c, "output tree is exactly the base's less weights, dot entries and "
          "links leaving it", "missing %s, extra %s" % (sorted(expected - got), sorted(got - expected)))
    for e in expected:
        rel = e[2:]
        if e[0] != "f" or rel in ("model.safetensors", "README.md"):
            continue
        src = os.path.join(base, same_as.get(rel, rel))
        if read(os.path.join(out, rel)) != read(src):
            check(False, c, "content of %s" % rel)
            break
    else:
        check(True, c, "every copied file equals the base's (links: their targets')")
    links = [r for r in got if r.startswith("l ")]
    check(not links, c, "no symbolic link in the output", links)
    notes = json.load(open(rep))["steps"][-1].get("notes", [])
    joined = "\n".join(notes)
    check("2_Dense/model.safetensors" in joined and "outside.txt" in joined and
          "a/b/c/d/e/f/g" in joined and "dangling.txt" in joined and
          "1_Pooling/loop: symbolic link to a folder that holds it" in joined, c,
          "--report notes the module weights, the outside, dangling and looping links, the deep "
          "folder", notes)
    check("onnx" not in joined and "pytorch_model.bin" not in joined, c,
          "weights in other formats at the top level are left out without a note", notes)
    step1 = os.path.join(w, "steps", "step01")
    check(os.path.isfile(os.path.join(step1, "1_Pooling", "config.json")) and
          os.path.isdir(os.path.join(step1, "2_Normalize")), c,
          "--save-steps' step01 holds the subfolders", sorted(tree_of(step1))[:8])
    check(os.path.isfile(os.path.join(w, "steps", "step02", "a/b/c/d/e/f/deep.txt")), c,
          "--save-steps' last step (a link or copy of the output) holds the whole tree")
    # --force over an output with subfolders: the old tree goes entirely (a file nufilt does
    # not write would make --force refuse: docs/security.md)
    p = nf(ctx, "merge", "--method", "ta", "--base", base, "--out", out, "--force",
           os.path.join(w, "t1"), os.path.join(w, "t2"))
    check(p.returncode == 0 and tree_of(out) == expected and not leftovers(os.path.dirname(out)),
          c, "--force replaces an output with subfolders, nothing left beside it",
          (p.stderr, leftovers(os.path.dirname(out))))
    # a step that fails after its tree was copied leaves no temporary behind: a base whose
    # tree is too large to copy (more entries than the bound) fails at commit
    big = os.path.join(w, "bigbase")
    st.save_dir(big, b, metadata={"format": "pt"})
    for i in range(10001):
        if i % 1000 == 0:
            sub = os.path.join(big, "many%d" % (i // 1000))
            os.makedirs(sub)
        open(os.path.join(sub, "f%d" % i), "w").close()
    out2 = os.path.join(w, "out2", "m")
    p = nf(ctx, "step", "--method", "ta", "--base", big, "--task", os.path.join(w, "t1"),
           "--out", out2)
    check(p.returncode != 0 and "10000" in p.stderr and not os.path.exists(out2) and
          not leftovers(os.path.dirname(out2)), c,
          "a base tree over the entry bound: error, no output, no temporary tree",
          (p.returncode, p.stderr.strip(), leftovers(os.path.dirname(out2))))


def make_cache(root, org, name, tensors, files, rev="0123456789abcdef0123456789abcdef01234567"):
    """An HF hub cache entry: blobs/<hash>, snapshots/<rev>/<file> -> ../../blobs/<hash>."""
    repo = os.path.join(root, "models--%s--%s" % (org, name))
    os.makedirs(os.path.join(repo, "blobs"))
    os.makedirs(os.path.join(repo, "refs"))
    write(os.path.join(repo, "refs", "main"), rev)
    snap = os.path.join(repo, "snapshots", rev)
    tmp = os.path.join(root, "_tmp_%s" % name)
    st.save_dir(tmp, tensors, metadata={"format": "pt"})
    allf = dict(files)
    allf["model.safetensors"] = read(os.path.join(tmp, "model.safetensors"))
    shutil.rmtree(tmp)
    for i, (rel, data) in enumerate(sorted(allf.items())):
        blob = os.path.join(repo, "blobs", "blob%04d" % i)
        write(blob, data)
        link = os.path.join(snap, rel)
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(os.path.relpath(blob, os.path.dirname(link)), link)
    return snap


def case_hf_cache(ctx):
    c = "hf-cache"
    w = os.path.join(ctx.work, c)
    cache = os.path.join(w, "hub")
    b = bert(3)
    files = {"config.json": CONFIG, "1_Pooling/config.json": '{"pooling": 1}',
             "modules.json": "[]", "README.md": BASE_CARD}
    bsnap = make_cache(cache, "sentence-transformers", "mini", b, files)
    snap1 = make_cache(cache, "someone", "task-one", task_of(b, 1), {"config.json": CONFIG})
    # a link from the base's snapshot into another repository's blobs: outside the base
    other_blob = os.path.join(cache, "models--someone--task-one", "blobs", "blob0000")
    os.symlink(os.path.relpath(other_blob, bsnap), os.path.join(bsnap, "stolen.json"))
    t2 = os.path.join(w, "t2")
    st.save_dir(t2, task_of(b, 2), metadata={"format": "pt"})
    env = {"HF_HUB_CACHE": cache}
    out = os.path.join(w, "out")
    rep = os.path.join(w, "rep.json")
    p = nf(ctx, "merge", "--method", "ta", "--base", "sentence-transformers/mini", "--out", out,
           "--report", rep, snap1, "second=" + t2, env=env)
    if not check(p.returncode == 0, c, "merge with --base org/name from HF_HUB_CACHE", p.stderr):
        return
    notes = " ".join(json.load(open(rep))["steps"][-1].get("notes", []))
    check(not os.path.exists(os.path.join(out, "stolen.json")) and "stolen.json" in notes, c,
          "a link into another cached repository's blobs is not followed, and noted", notes)
    check(read(os.path.join(out, "1_Pooling", "config.json"), "r") == '{"pooling": 1}' and
          not os.path.islink(os.path.join(out, "config.json")), c,
          "the snapshot's links into blobs/ are copied as content")
    card = read(os.path.join(out, "README.md"), "r")
    check('base_model: "sentence-transformers/mini"' in card, c, "the card names the model id",
          card[:200])
    meta = st.read_metadata(os.path.join(out, "model.safetensors"))
    names = [t["name"] for t in json.loads(meta["nufilt.tasks"])]
    check(names == ["someone/task-one", "second"], c,
          "task names: the id of a cache snapshot path, then NAME=PATH", names)
    p = nf(ctx, "step", "--base", "nobody/nothing", "--task", t2, "--out", os.path.join(w, "x"),
           env=env)
    check(p.returncode != 0 and "models--nobody--nothing" in p.stderr and cache in p.stderr, c,
          "a missing id: the error names the cache folder it looked for", p.stderr.strip())
    p = nf(ctx, "step", "--base", "nobody/nothing", "--task", t2, "--out", os.path.join(w, "x"),
           env={"HF_HUB_CACHE": "", "HF_HOME": os.path.join(w, "home")})
    check(p.returncode != 0 and os.path.join(w, "home", "hub") in p.stderr, c,
          "HF_HOME/hub when HF_HUB_CACHE is unset", p.stderr.strip())


def case_position_ids(ctx):
    c = "position-ids"
    w = os.path.join(ctx.work, c)
    full = bert(5)
    nopos = {k: v for k, v in full.items() if k != "embeddings.position_ids"}
    paths = {}
    for tag, base_t, task_pos in (("hub-base", full, False), ("all", full, True),
                                  ("new-base", nopos, True)):
        d = os.path.join(w, tag)
        st.save_dir(os.path.join(d, "base"), base_t, metadata={"format": "pt"})
        for i in (1, 2):
            st.save_dir(os.path.join(d, "t%d" % i), task_of(full, i, pos_ids=task_pos),
                        metadata={"format": "pt"})
        out = os.path.join(d, "out.safetensors")
        rep = os.path.join(d, "rep.json")
        p = nf(ctx, "merge", "--method", "ta", "--base", os.path.join(d, "base"), "--out", out,
               "--report", rep, os.path.join(d, "t1"), os.path.join(d, "t2"))
        check(p.returncode == 0, c, "%s: merge accepted" % tag, p.stderr.strip())
        paths[tag] = (out, rep)
    if not all(os.path.exists(o) for o, _ in paths.values()):
        return
    ref = st.load(paths["all"][0])
    for tag in ("hub-base", "new-base"):
        got = st.load(paths[tag][0])
        same = set(got) == set(ref) and all(
            got.dtypes[k] == ref.dtypes[k] and np.array_equal(got[k], ref[k]) for k in ref)
        check(same, c, "%s: every tensor bit-identical to the run where all sides have "
              "position_ids" % tag, sorted(set(ref) ^ set(got)))
        notes = " ".join(n for s in json.load(open(paths[tag][1]))["steps"] for n in s.get("notes", []))
        want = "taken from the base" if tag == "hub-base" else "taken from the task model"
        check("embeddings.position_ids" in notes and want in notes, c,
              "%s: --report notes the buffer and where it came from" % tag, notes[:300])
    # step by step with --prev (the previous merge carries the buffer the base lacks)
    d = os.path.join(w, "new-base")
    s1, s2 = os.path.join(d, "s1.safetensors"), os.path.join(d, "s2.safetensors")
    ok = nf(ctx, "step", "--method", "ta", "--base", os.path.join(d, "base"), "--task",
            os.path.join(d, "t1"), "--out", s1).returncode == 0
    p = nf(ctx, "step", "--base", os.path.join(d, "base"), "--task", os.path.join(d, "t2"),
           "--prev", s1, "--out", s2)
    check(ok and p.returncode == 0 and read(s2) == read(paths["new-base"][0]), c,
          "new-base: the chain of steps equals the merge byte for byte", p.stderr.strip())
    # a float tensor on one side only stays an error
    d = os.path.join(w, "float")
    st.save_dir(os.path.join(d, "base"), full, metadata={"format": "pt"})
    t = task_of(full, 1)
    del t["encoder.layer.0.output.dense.bias"]
    st.save_dir(os.path.join(d, "t1"), t, metadata={"format": "pt"})
    p = nf(ctx, "step", "--base", os.path.join(d, "base"), "--task", os.path.join(d, "t1"),
           "--out", os.path.join(d, "o"))
    check(p.returncode != 0 and "encoder.layer.0.output.dense.bias" in p.stderr and
          "missing" in p.stderr, c, "a float tensor missing from the task is still refused",
          p.stderr.strip())


def front_matter(card):
    m = re.match(r"---\n(.*?)\n---\n", card, re.S)
    return m.group(1) if m else ""


def case_card(ctx):
    c = "card"
    w = os.path.join(ctx.work, c)
    base = os.path.join(w, "the_base")
    b = bert(7)
    st.save_dir(base, b, metadata={"format": "pt"})
    write(os.path.join(base, "README.md"), BASE_CARD)
    write(os.path.join(base, "config.json"), CONFIG)
    tasks = []
    for i in (1, 2, 3):
        tasks.append(os.path.join(w, "task %d" % i))  # a space: quoting in the command line
        st.save_dir(tasks[-1], task_of(b, i), metadata={"format": "pt"})
    out = os.path.join(w, "out")
    argv = ["merge", "--method", "ties", "--scale", "0.4", "--base", base, "--out", out,
            "a|b=" + tasks[2], tasks[0], tasks[1]]
    p = nf(ctx, *argv)
    if not check(p.returncode == 0, c, "merge", p.stderr):
        return
    card = read(os.path.join(out, "README.md"), "r")
    fm = front_matter(card)
    check('base_model: "%s"' % base in fm and "library_name: sentence-transformers" in fm and
          re.search(r"tags:\n- merge\n- nufilt\n- ties$", fm) is not None, c,
          "front matter: base_model, library_name from the base card, tags merge/nufilt/ties", fm)
    check(("merges 3 fine-tuned models of the base model %s (fingerprint " %
           base.replace("_", "\\_")) in card, c, "the prose names the base, Markdown-escaped",
          card[card.find("# "):][:300])
    check("THIS PROSE BELONGS" not in card and "license" not in fm, c,
          "the base card's prose and other keys are not copied")
    check(re.search(r"\| scale \| 0\.4 \|", card) and re.search(r"\| keep \| 0\.2 \|", card), c,
          "hyper-parameters listed (scale as given, keep's default)")
    meta = st.read_metadata(os.path.join(out, "model.safetensors"))
    rec = json.loads(meta["nufilt.tasks"])
    rows = re.findall(r"^\| (\d+) \| (.*?) \| ([0-9a-f]{16}) \|$", card, re.M)
    check([r[0] for r in rows] == ["1", "2", "3"] and
          [r[1] for r in rows] == ["a\\|b", "task 1", "task 2"] and
          [r[2] for r in rows] == [t.get("fingerprint") for t in rec], c,
          "tasks in merge order (Markdown-escaped names), with the fingerprints the metadata records",
          rows)
    check(len({r[2] for r in rows}) == 3, c, "three different tasks, three fingerprints")
    check(("nufilt " + meta["nufilt.version"]) in card, c, "nufilt's version")
    m = re.search(r"```sh\n(.*?)\n```", card, re.S)
    words = shlex.split(m.group(1)) if m else []
    check(words == ["nufilt"] + argv, c, "the command line, read back by a shell parser, is the "
          "one run", words)
    # a file output has no card; a step's card gives the step command
    p = nf(ctx, "step", "--base", base, "--task", tasks[0], "--out", os.path.join(w, "o.safetensors"))
    check(p.returncode == 0 and sorted(os.listdir(w)).count("README.md") == 0, c,
          "a .safetensors output writes no card beside it")


def case_config_dtype(ctx):
    c = "config-dtype"
    w = os.path.join(ctx.work, c)
    b = bert(9)
    variants = {
        "torch_dtype": CONFIG,
        "both": CONFIG.replace('"model_type"', '"dtype": "float32",\n  "model_type"'),
        "neither": CONFIG.replace('  "torch_dtype": "float32",\n', ""),
        "not-json": CONFIG.replace("}", ",}"),
        # a sub-config's own keys are not the model's: left as they are
        "nested": CONFIG.replace('"model_type"', '"text_config": {"torch_dtype":"int8", '
                                 '"dtype":"int8"},\n  "model_type"'),
    }
    for tag, text in variants.items():
        d = os.path.join(w, tag)
        st.save_dir(os.path.join(d, "base"), b, metadata={"format": "pt"})
        write(os.path.join(d, "base", "config.json"), text)
        st.save_dir(os.path.join(d, "t1"), task_of(b, 1), metadata={"format": "pt"})
        for flag, name, dt in (("f16", "float16", "F16"), ("bf16", "bfloat16", "BF16"),
                               ("f32", "float32", "F32")):
            out = os.path.join(d, "out-" + flag)
            rep = os.path.join(d, "rep-%s.json" % flag)
            p = nf(ctx, "step", "--method", "ta", "--dtype", flag, "--base",
                   os.path.join(d, "base"), "--task", os.path.join(d, "t1"), "--out", out,
                   "--report", rep)
            if not check(p.returncode == 0, c, "%s --dtype %s" % (tag, flag), p.stderr):
                continue
            got = read(os.path.join(out, "config.json"), "r")
            t = st.load(out)
            dts = {t.dtypes[k] for k in t if k != "embeddings.position_ids"}
            if tag == "not-json":
                notes = " ".join(json.load(open(rep))["steps"][0].get("notes", []))
                check(got == text and "config.json" in notes, c,
                      "%s %s: copied unchanged and noted" % (tag, flag), notes)
                continue
            if tag == "neither":
                exp = text.replace("{\n", '{\n  "torch_dtype": "%s",\n' % name, 1)
            else:
                exp = text.replace('"torch_dtype": "float32"', '"torch_dtype": "%s"' % name)
                exp = exp.replace('"dtype": "float32"', '"dtype": "%s"' % name)
            check(got == exp and dts == {dt}, c, "%s --dtype %s: config says %s, tensors are %s, "
                  "every other byte unchanged" % (tag, flag, name, dt), got)
    # keep: config.json copied as it is
    d = os.path.join(w, "torch_dtype")
    out = os.path.join(d, "out-keep")
    p = nf(ctx, "step", "--method", "ta", "--base", os.path.join(d, "base"), "--task",
           os.path.join(d, "t1"), "--out", out)
    check(p.returncode == 0 and read(os.path.join(out, "config.json"), "r") == CONFIG, c,
          "--dtype keep: config.json unchanged")


def case_zero_treated(ctx):
    c = "zero-treated"
    w = os.path.join(ctx.work, c)
    b = bert(11)
    os.makedirs(w)
    base = os.path.join(w, "base.safetensors")
    st.save_file(base, b, metadata={"format": "pt"})
    t1 = os.path.join(w, "t1.safetensors")
    st.save_file(t1, task_of(b, 1), metadata={"format": "pt"})
    for flags, needle in ((["--preset", "t5"], "--preset t5"),
                          (["--layers", "nomatch"], "--layers 'nomatch'")):
        out = os.path.join(w, "o.safetensors")
        p = nf(ctx, "step", "--base", base, "--task", t1, "--out", out, *flags)
        check(p.returncode != 0 and needle in p.stderr and
              "encoder.layer.0.attention.self.query.weight" in p.stderr and
              not os.path.exists(out), c, "%s: refused, naming it and example tensor names"
              % " ".join(flags), p.stderr.strip())
    out = os.path.join(w, "sel.safetensors")
    p = nf(ctx, "step", "--base", base, "--task", t1, "--out", out, "--layers", r"attention\.self",
           "--null-rank", "4", "--task-rank", "2", "--lora-rank", "2", "--iters", "2")
    if check(p.returncode == 0, c, "--layers attention\\.self merges", p.stderr):
        q = nf(ctx, "inspect", out)
        treated = len(re.findall(r" treated$", q.stdout, re.M))
        check("--layers 'attention\\.self' (recorded by its merge)" in q.stdout and treated == 6,
              c, "inspect shows the recorded --layers selection (6 query/key/value weights)",
              (treated, [l for l in q.stdout.splitlines() if "selection" in l or "preset" in l]))
        q = nf(ctx, "inspect", "--preset", "all-linear", out)
        check("preset all-linear:" in q.stdout, c, "an explicit --preset still wins in inspect",
              [l for l in q.stdout.splitlines() if "preset" in l])


def case_pytorch_bin(ctx):
    c = "pytorch-bin"
    w = os.path.join(ctx.work, c)
    os.makedirs(w)
    d = os.path.join(w, "bin-only")
    write(os.path.join(d, "pytorch_model.bin"), b"PK\x03\x04 a pickle")
    write(os.path.join(d, "config.json"), CONFIG)
    t = os.path.join(w, "t.safetensors")
    st.save_file(t, bert(1), metadata={"format": "pt"})
    p = nf(ctx, "step", "--base", d, "--task", t, "--out", os.path.join(w, "o"))
    check(p.returncode != 0 and "pytorch_model.bin" in p.stderr and "pickle" in p.stderr and
          "weights_only=True" in p.stderr and "save_file" in p.stderr, c,
          "refused with the reason and the one-line conversion", p.stderr.strip())
    q = nf(ctx, "inspect", d)
    check(q.returncode != 0 and "pytorch_model.bin" in q.stderr, c, "inspect says the same")


CASES = {"tree": case_tree, "hf-cache": case_hf_cache, "position-ids": case_position_ids,
         "card": case_card, "config-dtype": case_config_dtype, "zero-treated": case_zero_treated,
         "pytorch-bin": case_pytorch_bin}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nufilt", required=True)
    ap.add_argument("--workdir")
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--list", action="store_true")
    a = ap.parse_args()
    if a.list:
        print("\n".join(CASES))
        return 0

    class Ctx:
        pass
    ctx = Ctx()
    ctx.nufilt = os.path.abspath(a.nufilt)
    root = a.workdir or tempfile.mkdtemp(prefix="nf-hf-")
    if os.path.exists(root):
        shutil.rmtree(root)
    os.makedirs(root)
    ctx.work = root
    for name, fn in CASES.items():
        if a.only and name not in a.only:
            continue
        fn(ctx)
    print("%d failure(s)" % len(FAILS))
    if not FAILS and not a.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
