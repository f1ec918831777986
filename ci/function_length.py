#!/usr/bin/env python3
"""Function length check: no C function in src/ or host/ longer than LIMIT lines, counted from
the first line of its definition (return type, storage class) to its closing brace.

The count reads C, not text: comments, string and character literals and preprocessor lines
(with their continuations) are blanked before the braces are matched, so a brace in a comment,
a string or a macro neither opens nor closes a function. A definition is a brace block at file
scope whose header ends with ')' (parameter list) or a K&R-free attribute; struct, union and
enum bodies and initialisers ('=' before the brace) are not functions.

Usage: function_length.py [--limit N] [--list] ROOT...   (ROOT: files or directories)
Exit status 0 when every function is within the limit (or named in EXCEPTIONS with its reason),
1 otherwise; --list prints every function's length, longest first. Run by meson as the test
`function_length` (suite lint).
"""
import os
import re
import sys

LIMIT = 120

# Functions allowed over the limit ("FILE:FUNCTION", FILE relative to the repository), each
# with its reason.
EXCEPTIONS = {
    "src/methods/nufilt.c:nufilt_tensor":
        "follows NUFILT's equations in order (tau; V_p and V_t; tau P = tau - tau V_p V_p^T; "
        "the adapter's C and tau B A; W_new = W_merged + tau P + tau B A: docs/method.md), "
        "one commented block per equation; its matrices live across all of them, so a cut "
        "would hand a dozen of them from helper to helper",
}



def excepted(path, name, table):
    """The table's entry for function name in path, or None."""
    norm = os.path.normpath(os.path.abspath(path))
    for key, why in table.items():
        file, func = key.rsplit(":", 1)
        if func == name and norm.endswith(os.sep + os.path.normpath(file)):
            return why
    return None


def blank(text):
    """Return text with comments, string/char literals and preprocessor lines replaced by
    spaces (newlines kept, so line numbers stay)."""
    out = []
    i, n = 0, len(text)
    line_start = True
    while i < n:
        c = text[i]
        if line_start:
            # a preprocessor directive: '#' first on its line (after blanks), to the end of
            # the line and its backslash continuations
            j = i
            while j < n and text[j] in " \t":
                j += 1
            if j < n and text[j] == "#":
                k = j
                while k < n:
                    if text[k] == "\n" and text[k - 1] != "\\":
                        break
                    if text[k] == "/" and text[k + 1:k + 2] == "*":
                        # a comment inside a directive may span lines
                        e = text.find("*/", k + 2)
                        e = n if e < 0 else e + 2
                        k = e
                        continue
                    k += 1
                out.append(re.sub(r"[^\n]", " ", text[i:k]))
                i = k
                line_start = False
                continue
        if c == "/" and text[i + 1:i + 2] == "*":
            e = text.find("*/", i + 2)
            e = n if e < 0 else e + 2
            out.append(re.sub(r"[^\n]", " ", text[i:e]))
            i = e
            line_start = False
            continue
        if c == "/" and text[i + 1:i + 2] == "/":
            e = i
            while e < n and not (text[e] == "\n" and text[e - 1] != "\\"):
                e += 1
            out.append(re.sub(r"[^\n]", " ", text[i:e]))
            i = e
            continue
        if c in "\"'":
            e = i + 1
            while e < n and text[e] != c:
                e += 2 if text[e] == "\\" else 1
            e = min(e + 1, n)
            out.append(c + re.sub(r"[^\n]", " ", text[i + 1:e - 1]) + c)
            i = e
            line_start = False
            continue
        out.append(c)
        line_start = c == "\n"
        i += 1
    return "".join(out)


NAME_RE = re.compile(r"([A-Za-z_]\w*)\s*\($")


def functions(path):
    """Yield (name, first line, last line) of each function defined in path."""
    with open(path, encoding="utf-8", errors="replace") as f:
        text = blank(f.read())
    depth = 0
    head_start = 0          # offset where the current file-scope declaration began
    i, n = 0, len(text)
    open_at = None
    paren = 0
    while i < n:
        c = text[i]
        if depth == 0:
            if c == "(":
                paren += 1
            elif c == ")":
                paren -= 1
            elif c == ";" and paren == 0:
                head_start = i + 1
            elif c == "{" and paren == 0:
                open_at = i
                depth = 1
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                head = text[head_start:open_at]
                yield from _definition(text, head, head_start, open_at, i)
                head_start = i + 1
                # a following ';' (struct body, initialiser) ends that declaration
        i += 1


def _definition(text, head, head_start, open_at, close_at):
    stripped = head.strip()
    if not stripped.endswith(")") or "=" in _outside_parens(stripped):
        return
    if re.match(r"^(typedef\b|struct\b|union\b|enum\b)", stripped) and "(" not in stripped:
        return
    # the name: the identifier before the parameter list's '('
    depth, k = 0, len(stripped) - 1
    while k >= 0:
        if stripped[k] == ")":
            depth += 1
        elif stripped[k] == "(":
            depth -= 1
            if depth == 0:
                break
        k -= 1
    m = NAME_RE.search(stripped[:k + 1])
    if not m:
        return
    # drop attribute-like wrappers: NAME(...) where NAME is a macro (all caps) is kept as is
    first = head_start + (len(head) - len(head.lstrip()))
    first_line = text.count("\n", 0, first) + 1
    last_line = text.count("\n", 0, close_at) + 1
    yield m.group(1), first_line, last_line


def _outside_parens(s):
    out, depth = [], 0
    for ch in s:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif depth == 0:
            out.append(ch)
    return "".join(out)


def sources(roots):
    for root in roots:
        if os.path.isfile(root):
            yield root
            continue
        for d, dirs, files in os.walk(root):
            dirs.sort()
            for f in sorted(files):
                if f.endswith(".c"):
                    yield os.path.join(d, f)


def main(argv):
    limit, listing, roots = LIMIT, False, []
    args = iter(argv)
    for a in args:
        if a == "--limit":
            limit = int(next(args))
        elif a == "--list":
            listing = True
        else:
            roots.append(a)
    if not roots:
        print(__doc__)
        return 2
    rows = []
    for path in sources(roots):
        for name, first, last in functions(path):
            rows.append((last - first + 1, path, first, name))
    rows.sort(key=lambda r: (-r[0], r[1], r[2]))
    over, excused = [], []
    for r in rows:
        if r[0] > limit:
            known = excepted(r[1], r[3], EXCEPTIONS)
            (excused if known else over).append(r)
    if listing:
        try:
            for length, path, first, name in rows:
                print("%5d  %s:%d  %s" % (length, path, first, name))
        except BrokenPipeError:  # piped into head
            return 0
    print("%d functions in %d files; limit %d lines" %
          (len(rows), len({r[1] for r in rows}), limit))
    for length, path, first, name in excused:
        why = excepted(path, name, EXCEPTIONS)
        print("excepted: %s:%d %s, %d lines (%s)" % (path, first, name, length, why))
    for length, path, first, name in over:
        print("TOO LONG: %s:%d %s, %d lines (limit %d)" % (path, first, name, length, limit))
    if over:
        return 1
    print("OK: no other function over %d lines" % limit)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
