"""The package's keyword arguments against the one description of the options
(src/merge/options.h, the table the library and the nufilt program derive theirs from): every
nf_options field it describes is a keyword argument of merge/step/merge_state_dicts (the one
exception named below), converted as its kind says, a field of the ctypes nf_options, and named
in the package's docstrings and docs/python.md's list of parameters."""
import inspect
import re

import nufilt
from nufilt import _api, _lib

from conftest import ROOT

# fields of the table the package does not take, and why
NOT_KEYWORDS = {"resume": "nf_merge's --resume of the program; the package has no resume yet"}
# fields that are named arguments of merge/step/merge_state_dicts rather than **params
NAMED = {"device"}


def table():
    text = (ROOT / "src" / "merge" / "options.h").read_text()
    recipe = re.findall(r"^\s+X\((\w+), (\w+), \"([a-z-]+)\", (\w+),", text, re.M)
    run = re.findall(r"^\s+Y\((\w+), \"([a-z-]+)\", (\w+),", text, re.M)
    rows = {f: kind for _, f, _, kind in recipe}
    rows.update({f: kind for f, _, kind in run})
    assert len(recipe) >= 14 and len(run) >= 10, "options.h's rows were not found"
    return rows


def test_keywords_are_the_table():
    rows = table()
    for f in NAMED:
        for fn in (nufilt.merge, nufilt.step, nufilt.merge_state_dicts):
            assert f in inspect.signature(fn).parameters, (fn.__name__, f)
    fields = set(rows) - set(NOT_KEYWORDS) - NAMED
    assert fields <= set(_api.PARAMS), sorted(fields - set(_api.PARAMS))
    # the package's own extra: the task's recorded name (nf_options.task_name, not an option of
    # the program)
    assert set(_api.PARAMS) - fields == {"task_name"}


def test_kinds():
    for f, kind in table().items():
        if kind == "INT":
            assert f in _api._INT, f
        elif kind == "NUM":
            assert f in _api._FLOAT, f
        elif kind == "FLAG" and f not in NOT_KEYWORDS:
            assert f in _api._FLAG, f
        else:
            assert f not in _api._INT + _api._FLOAT, f


def test_ctypes_struct_has_every_field():
    names = {n for n, _ in _lib.Options._fields_}
    missing = set(table()) - names - set(NOT_KEYWORDS)
    assert not missing, missing


def test_docstrings_name_every_keyword():
    fields = set(table()) - set(NOT_KEYWORDS) - NAMED
    assert NAMED <= set(re.findall(r"[a-z_]+", nufilt.merge.__doc__))
    py_md = (ROOT / "docs" / "python.md").read_text()
    params = py_md[py_md.index("Parameters (`**params`)"):]
    params = params[:params.index("Paths are")]
    for where, text in (("nufilt.__doc__", nufilt.__doc__), ("merge.__doc__", nufilt.merge.__doc__),
                        ("docs/python.md", params)):
        words = set(re.findall(r"[a-z_]+", text))
        assert fields <= words, (where, sorted(fields - words))
