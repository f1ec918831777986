"""The docs' option tables against the one description of the options (src/merge/options.h),
as the program prints it (`nufilt help --markdown`):

- docs/cli-contract.md holds that output verbatim between its markers;
- `nufilt help step` / `help merge` list every option of it;
- the defaults quoted by README.md's and docs/method.md's tables, docs/baselines.md's
  per-method column and each method's options line of `nufilt methods` (the methods' info
  strings) are the table's, and a method's line names exactly the options that method reads.

Exit 0 when all agree, 1 naming every disagreement. Regenerate the cli-contract copy with
`nufilt help --markdown` when an option changes.
"""
import argparse
import os
import re
import subprocess
import sys

BEGIN = "<!-- nufilt help --markdown: begin -->\n"
END = "<!-- nufilt help --markdown: end -->\n"


def run(exe, *args):
    return subprocess.run([exe] + list(args), capture_output=True, text=True, check=True).stdout


def parse_table(md):
    """flag -> {"field", "methods", "values", "defaults": {method: text} or text}"""
    rows = {}
    for line in md.splitlines()[2:]:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        flag = re.match(r"`--([a-z-]+)", cells[0]).group(1)
        methods = [m.strip() for m in cells[2].split(",")] if not cells[2].startswith("(") else []
        d = cells[4]
        per = {}
        for part in d.split(", "):
            m = re.fullmatch(r"([a-z]+) (\S+)", part)
            if m and m.group(1) in methods:
                per[m.group(1)] = m.group(2)
        if methods and not per:  # one value for every method that reads it
            per = {m: d for m in methods}
        rows[flag] = {"field": cells[1].strip("`"), "methods": methods, "default": d,
                      "per": per}
    return rows


def first_clause(text):
    return re.split(r"[:;]", text)[0].strip()


def check_quoted_table(path, rows, problems):
    """A Markdown table whose first cell names flags and whose second quotes their defaults:
    one default per flag, or one for the first flag; nufilt's value for a per-method default."""
    n = 0
    for line in open(path).read().splitlines():
        if not line.startswith("| `--"):
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        flags = re.findall(r"`--([a-z-]+)", cells[0])
        quoted = [q.strip() for q in cells[1].split(",")] if cells[1] else [""]
        if len(quoted) != len(flags):
            flags = flags[:1]
        for f, q in zip(flags, quoted):
            if f not in rows:
                problems.append("%s: --%s is not an option of the table" % (path, f))
                continue
            r = rows[f]
            want = r["per"].get("nufilt", r["default"]) if r["per"] else r["default"]
            if not (q == want or (q and q.startswith(first_clause(want))) or
                    (not q and not want)):
                problems.append("%s: --%s quoted with default %r, the table says %r" %
                                (path, f, q, r["default"]))
            n += 1
    if n == 0:
        problems.append("%s: no option rows found" % path)
    return n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nufilt", required=True)
    ap.add_argument("--root", required=True)
    a = ap.parse_args()
    problems = []
    md = run(a.nufilt, "help", "--markdown")
    rows = parse_table(md)

    # 1. the generated copy in docs/cli-contract.md
    cc = open(os.path.join(a.root, "docs", "cli-contract.md")).read()
    if BEGIN not in cc or END not in cc:
        problems.append("docs/cli-contract.md lacks the markers of the generated option table")
    else:
        copy = cc[cc.index(BEGIN) + len(BEGIN):cc.index(END)]
        if copy != md:
            diff = [l for l in set(copy.splitlines()) ^ set(md.splitlines())]
            problems.append("docs/cli-contract.md's option table differs from `nufilt help "
                            "--markdown` (regenerate it); differing rows:\n  " +
                            "\n  ".join(sorted(diff)))

    # 2. --help lists every option
    listed = set(re.findall(r"^  --([a-z-]+)", run(a.nufilt, "help", "step") +
                            run(a.nufilt, "help", "merge"), re.M))
    for f in rows:
        if f not in listed:
            problems.append("`nufilt help step/merge` does not list --%s" % f)

    # 3. the tables that quote defaults
    counted = 0
    for doc in ("README.md", os.path.join("docs", "method.md")):
        counted += check_quoted_table(os.path.join(a.root, doc), rows, problems)

    # 4. docs/baselines.md: a method's row ends with its options and their defaults
    for line in open(os.path.join(a.root, "docs", "baselines.md")).read().splitlines():
        m = re.match(r"\| `([a-z]+)` ", line)
        if not m:
            continue
        meth = m.group(1)
        for f, v in re.findall(r"`--([a-z-]+)` ([^,| ]+)", line.split("|")[-2]):
            want = rows.get(f, {}).get("per", {}).get(meth)
            if want != v:
                problems.append("docs/baselines.md: %s --%s %s, the table says %s" %
                                (meth, f, v, want))
            counted += 1

    # 5. `nufilt methods`: each method's options line against the table
    text = run(a.nufilt, "methods")
    for m in re.finditer(r"^([a-z]+) .*\n\s+options: (.*)$", text, re.M):
        meth, line = m.group(1), m.group(2)
        named = dict(re.findall(r"--([a-z-]+)(?: ([^ ,(/]+))?", line))
        reads = {f for f, r in rows.items() if meth in r["methods"]}
        if set(named) != reads:
            problems.append("`nufilt methods`: %s names %s, the table says it reads %s" %
                            (meth, sorted(named), sorted(reads)))
        for f, v in named.items():
            want = rows.get(f, {}).get("per", {}).get(meth, "")
            if f in reads and v != want:
                problems.append("`nufilt methods`: %s --%s %s, the table says %r" %
                                (meth, f, v, want))
            counted += 1

    for p in problems:
        print("FAIL:", p)
    print("%d options in the table, %d quoted defaults checked, %d problems" %
          (len(rows), counted, len(problems)))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
