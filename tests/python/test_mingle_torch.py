"""nufilt.mingle's torch part on a tiny model: the gated layer against the official
merged-weight forward, the torch projection against the NumPy rule, determinism, training,
save/load/continue. Skipped without torch (CI has none); the torch-free reference tests are in
test_mingle.py."""
import copy

import numpy as np
import pytest

import nufilt
from nufilt import mingle

# ---- torch --------------------------------------------------------------------------------

torch = pytest.importorskip("torch", reason="nufilt.mingle's models need torch "
                                            "(pip install .[mingle]); CI has none")


class Block(torch.nn.Module):
    def __init__(self, C):
        super().__init__()
        self.fc1 = torch.nn.Linear(C, 16)
        self.fc2 = torch.nn.Linear(16, C)
        self.drop = torch.nn.Dropout(0.1)

    def forward(self, h):
        return h + torch.tanh(self.fc2(self.drop(torch.relu(self.fc1(h)))))


class Tiny(torch.nn.Module):
    def __init__(self, C=12, K=4):
        super().__init__()
        self.emb = torch.nn.Linear(6, C)
        self.blocks = torch.nn.ModuleList([Block(C) for _ in range(2)])
        self.head = torch.nn.Linear(C, K)

    def forward(self, x):
        h = self.emb(x)
        for b in self.blocks:
            h = b(h)
        return self.head(h.mean(1))


def _setup(ntasks=3):
    torch.manual_seed(0)
    base = Tiny()
    tasks, data = [], []
    for t in range(ntasks):
        ft = copy.deepcopy(base)
        with torch.no_grad():
            for n, mod in ft.named_modules():
                if n.startswith("blocks.") and isinstance(mod, torch.nn.Linear):
                    mod.weight.add_(0.3 * torch.randn_like(mod.weight))
        tasks.append(ft)
        data.append(torch.randn(20, 5, 6) + t)
    return base, tasks, data


KW = dict(rank=4, max_steps=6, batch_size=8, seed=5)


def _state(stream):
    out = {}
    for k, l in stream.layers.items():
        G, c = l.gate_weights()
        out[k] = [G.detach().clone(), c.detach().clone(), l.A.clone(), l.B.clone(),
                  None if l.U is None else l.U.clone()]
    return out


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        for x, y in zip(a[k], b[k]):
            assert (x is None) == (y is None)
            if x is not None:
                assert torch.equal(x, y), k


def test_gated_layer_matches_official_forward():
    torch.manual_seed(1)
    lin = torch.nn.Linear(8, 5)
    G = mingle._gated_cls()
    for reduce in (True, False):
        g = G(copy.deepcopy(lin), batch_reduce=reduce)
        experts = [(torch.randn(5, 3), torch.randn(3, 8)) for _ in range(3)]
        for B, A in experts:
            g.add_expert(B, A, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            g.gate_b.fill_(0.4)
        x = torch.randn(4, 7, 8)
        # lora_moe.py: gate(x).mean(dim=1) [then .mean(0)], W = W0 + sum w_i B_i A_i
        Wg, cg = g.gate_weights()
        gw = (x @ Wg.T + cg).mean(dim=1)
        outs = []
        for i in range(4):
            w = gw.mean(0) if reduce else gw[i]
            W = lin.weight + sum(w[e] * experts[e][0] @ experts[e][1] for e in range(3))
            outs.append(torch.nn.functional.linear(x[i:i + 1], W, lin.bias))
        want = torch.cat(outs, 0)
        torch.testing.assert_close(g(x), want, rtol=1e-4, atol=1e-5)
        # the torch projection equals the NumPy rule
        U = torch.linalg.qr(torch.randn(8, 3))[0]
        g.U = U
        grad = torch.randn(1, 8, dtype=torch.float32)
        g.gate_w.grad = grad.clone()
        g.project_gate_grad(gamma=1.0, beta=0.99)
        want_g, want_h = mingle.project_gradient(grad.numpy(), U.numpy(), None, 0.99, 1.0)
        np.testing.assert_allclose(g.gate_w.grad.numpy(), want_g, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(g.h.numpy(), want_h, rtol=1e-5)


def test_stream_deterministic_and_trains():
    states = []
    for _ in range(2):
        base, tasks, data = _setup(2)
        s = mingle.MingleStream(base, **KW)
        st = [s.add_task(tasks[i], data[i]) for i in range(2)]
        states.append(_state(s))
    _same(states[0], states[1])
    assert st[0]["loss_last"] < st[0]["loss_first"]
    assert set(states[0]) == {"blocks.0.fc1", "blocks.0.fc2", "blocks.1.fc1", "blocks.1.fc2"}
    k = states[0]["blocks.0.fc1"]
    assert k[0].shape == (2, 12) and k[2].shape == (2, 4, 12) and k[4].shape == (12, 6)
    # a different seed gives different gates
    base, tasks, data = _setup(2)
    s = mingle.MingleStream(base, **dict(KW, seed=6))
    s.add_task(tasks[0], data[0])
    assert not torch.equal(s.layers["blocks.0.fc1"].gate_w, states[0]["blocks.0.fc1"][0][:1])
    assert s.added_parameters() == sum(
        4 * (16 + 12) + 12 + 1 + 3 * 12 if n.endswith("fc1") else 4 * (12 + 16) + 16 + 1 + 3 * 16
        for n in s.layers)


def test_save_load_continue(tmp_path):
    base, tasks, data = _setup(3)
    straight = mingle.MingleStream(base, **KW)
    for i in range(3):
        straight.add_task(tasks[i], data[i], name="t%d" % i)
    x = torch.randn(3, 5, 6)
    straight.model.eval()
    want = straight.model(x)

    base, tasks, data = _setup(3)
    s = mingle.MingleStream(base, **KW)
    for i in range(2):
        s.add_task(tasks[i], data[i], name="t%d" % i)
    s.save(str(tmp_path / "m"))
    with pytest.raises(nufilt.Error):
        s.save(str(tmp_path / "m"))  # exists, no force
    s.save(str(tmp_path / "m"), force=True)
    fresh, tasks2, data2 = _setup(3)
    s2 = mingle.load(str(tmp_path / "m"), fresh)
    assert s2.tasks == ["t0", "t1"] and s2.recipe == s.recipe
    _same(_state(s), _state(s2))
    s2.add_task(tasks2[2], data2[2], name="t2")
    _same(_state(straight), _state(s2))
    s2.model.eval()
    torch.testing.assert_close(s2.model(x), want, rtol=0, atol=0)
    s2.save(str(tmp_path / "m2"))
    s3 = mingle.load(str(tmp_path / "m2"), _setup(3)[0])
    s3.model.eval()
    torch.testing.assert_close(s3.model(x), want, rtol=0, atol=0)
    # a base model of another shape is refused
    with pytest.raises(nufilt.Error):
        mingle.load(str(tmp_path / "m2"), Tiny(C=10))
