"""Evaluate encoder checkpoints on the tasks' test splits with the frozen label-prompt heads.

Tokenisation, padding and the heads are computed once; evaluating a checkpoint only loads
its tensors into one resident encoder and runs length-sorted batches under inference mode.
"""
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


class Evaluator:
    def __init__(self, tasks):
        self.tasks = {t["name"]: t for t in tasks}
        self.tok = common.tokenizer()
        self.model = common.new_encoder()
        self.heads = {}
        self.batches = {}
        for t in tasks:
            self.heads[t["name"]] = common.class_embeddings(self.model, self.tok, t["prompts"])
            ids = common.tokenize(self.tok, [x for x, _ in t["test"]])
            self.batches[t["name"]] = common.make_batches(ids, [y for _, y in t["test"]])
        self.loaded = None
        self.eval_seconds = 0.0
        self.eval_cpu_seconds = 0.0
        self.eval_count = 0

    def load(self, path_or_state):
        """Load a checkpoint path (or a state dict); returns False if it has non-finite values."""
        state = (common.load_state(path_or_state) if isinstance(path_or_state, str)
                 else path_or_state)
        finite = all(bool(torch.isfinite(v).all()) for v in state.values()
                     if v.is_floating_point())
        common.load_weights(self.model, state)
        self.model.eval()
        self.loaded = path_or_state if isinstance(path_or_state, str) else "<state>"
        return finite

    def accuracy(self, task_name):
        t0, c0 = time.time(), time.process_time()
        acc = common.accuracy(self.model, self.batches[task_name], self.heads[task_name])
        self.eval_seconds += time.time() - t0
        self.eval_cpu_seconds += time.process_time() - c0
        self.eval_count += 1
        return acc

    @torch.inference_mode()
    def layer_grams(self, task_name, n_examples):
        """Per treated linear layer: (X^T X, number of rows) over the non-padding token inputs
        of the first n_examples test examples of the task, through the loaded checkpoint."""
        grams, hooks = {}, []
        mask_box = {}

        def hook_for(name):
            def hook(module, inputs):
                x = inputs[0]
                m = mask_box["m"]
                rows = x[m.bool()].double()
                g, n = grams.get(name, (None, 0))
                gg = rows.T @ rows
                grams[name] = (gg if g is None else g + gg, n + rows.shape[0])
            return hook

        for mname, module in self.model.named_modules():
            if isinstance(module, torch.nn.Linear):
                wname = mname + ".weight"
                if common.is_treated(wname, tuple(module.weight.shape)):
                    hooks.append(module.register_forward_pre_hook(hook_for(wname)))
        try:
            t = self.tasks[task_name]
            ids = common.tokenize(self.tok, [x for x, _ in t["test"][:n_examples]])
            for x, m, _, _ in common.make_batches(ids, [0] * len(ids)):
                mask_box["m"] = m
                self.model(input_ids=x, attention_mask=m)
        finally:
            for h in hooks:
                h.remove()
        return {k: (g.float(), n) for k, (g, n) in grams.items()}


def mean_std(values):
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return float("nan"), float("nan")
    m = sum(vals) / len(vals)
    if len(vals) < 2:
        return m, 0.0
    # sample standard deviation (n - 1), as numpy.std(ddof=1)
    return m, math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))


def acc_bwt(acc, order):
    """acc: {(t, i): accuracy} with t, i 1-based positions in `order`.
    ACC = mean_i a(T, i); BWT = mean_{i<T} a(T, i) - a(i, i)."""
    T = len(order)
    final = [acc[(T, i)] for i in range(1, T + 1)]
    bwt = [acc[(T, i)] - acc[(i, i)] for i in range(1, T)]
    return sum(final) / T, (sum(bwt) / len(bwt) if bwt else 0.0)
