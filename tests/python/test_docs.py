"""docs/python.md's tour runs as printed: its Python blocks, in order, in one namespace, from
a directory that sees the repository's examples/ and tests/ref/ as the repository root does."""
import contextlib
import io
import os
import re

from conftest import ROOT


def test_python_md_tour(tmp_path, monkeypatch):
    text = (ROOT / "docs" / "python.md").read_text()
    blocks = re.findall(r"^```python\n(.*?)^```", text, re.M | re.S)
    assert len(blocks) >= 6
    for d in ("examples", "tests"):
        os.symlink(ROOT / d, tmp_path / d)
    monkeypatch.chdir(tmp_path)
    ns = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for i, b in enumerate(blocks):
            exec(compile(b, "docs/python.md block %d" % (i + 1), "exec"), ns)
    printed = out.getvalue()
    # what the page says the in-memory block prints
    assert "3 nufilt\nTrue\n" in printed
    assert "cancelled:" in printed and "NF_E_EXISTS" in printed
    assert not os.path.exists("cancelled.safetensors")
