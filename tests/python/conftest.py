"""Shared fixtures of the Python package's tests: the repository, the bundled digits example,
the nufilt program installed with the package, and the NumPy safetensors reader of
tests/ref (independent of the package)."""
import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "examples" / "digits"
sys.path.insert(0, str(ROOT / "tests" / "ref"))


@pytest.fixture(scope="session")
def cli():
    """The nufilt program that pip installed beside this interpreter (or NUFILT_CLI)."""
    p = os.environ.get("NUFILT_CLI") or shutil.which(
        "nufilt", path=os.path.dirname(sys.executable))
    if not p:
        pytest.skip("no nufilt program next to %s (pip install . puts it there)"
                    % sys.executable)
    return p


@pytest.fixture(scope="session")
def digits():
    base = DIGITS / "base.safetensors"
    tasks = [DIGITS / "tasks" / (n + ".safetensors")
             for n in ("rot90", "flip_h", "transpose", "rot180")]
    return base, tasks
