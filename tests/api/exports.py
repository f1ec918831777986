#!/usr/bin/env python3
"""libnufilt.so exports exactly the functions its public header declares (NF_API), nothing
else: no internal helper, no compiler-made symbol (ifunc resolvers, clones). Compares the
header's declarations with `nm -D --defined-only` of the shared library."""
import argparse
import re
import shutil
import subprocess
import sys


def declared(header_paths):
    names = set()
    for p in header_paths:
        text = open(p).read()
        text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
        for m in re.finditer(r"\bNF_API\b([^;{]*?)\b(nf_\w+)\s*\(", text):
            names.add(m.group(2))
    return names


def exported(lib):
    out = subprocess.run(["nm", "-D", "--defined-only", lib], check=True,
                         capture_output=True, text=True).stdout
    syms = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 3:
            syms[parts[2].split("@")[0]] = parts[1]
    return syms


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True)
    ap.add_argument("headers", nargs="+")
    a = ap.parse_args()
    if not shutil.which("nm"):
        print("SKIP: nm (binutils) not found")
        return 77
    want = declared(a.headers)
    got = exported(a.lib)
    # data and linker symbols the toolchain adds to every shared object
    got = {k: v for k, v in got.items() if k not in ("_init", "_fini", "__bss_start", "_edata",
                                                      "_end")}
    extra = sorted(k for k in got if k not in want)
    missing = sorted(k for k in want if k not in got)
    print("%d functions declared, %d symbols exported" % (len(want), len(got)))
    for k in extra:
        print("exported but not declared: %s (%s)" % (k, got[k]))
    for k in missing:
        print("declared but not exported: %s" % k)
    return 1 if extra or missing else 0


if __name__ == "__main__":
    sys.exit(main())
