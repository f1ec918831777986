#!/usr/bin/env python3
"""Writes the n-th fenced code block of a language from a Markdown file (docs/api.md's
example program, compiled by the build)."""
import re
import sys

src, lang, out = sys.argv[1], sys.argv[2], sys.argv[3]
blocks = re.findall(r"^```" + re.escape(lang) + r"\n(.*?)^```", open(src).read(), re.M | re.S)
if not blocks:
    sys.exit("%s: no ```%s block" % (src, lang))
open(out, "w").write(blocks[0])
