#!/usr/bin/python3
"""Runs a command and measures it: wall time, CPU time (user + system of the whole process
tree, from wait4), and peak anonymous memory (the sum of RssAnon in /proc/PID/status over the
process and its descendants, sampled every --interval seconds, 20 ms by default).

    /usr/bin/python3 bench/perf/measure.py [--interval 0.02] [--json FILE] -- CMD ARGS...

Prints one JSON line {"cmd", "rc", "wall_s", "cpu_s", "peak_rss_anon_mb", "samples"} on
standard error (and to --json); the command's own output passes through.  Exit status: the
command's.
"""

import json
import os
import subprocess
import sys
import time


def rss_anon_kb(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid):
    out = []
    try:
        for t in os.listdir("/proc/%d/task" % pid):
            try:
                with open("/proc/%d/task/%s/children" % (pid, t)) as f:
                    out += [int(c) for c in f.read().split()]
            except OSError:
                pass
    except OSError:
        pass
    return out


def tree_rss_kb(pid):
    total, todo, seen = 0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        total += rss_anon_kb(p)
        todo += children(p)
    return total


def main(argv):
    interval, jpath = 0.02, None
    while argv and argv[0] != "--":
        if argv[0] == "--interval":
            interval = float(argv[1])
            argv = argv[2:]
        elif argv[0] == "--json":
            jpath = argv[1]
            argv = argv[2:]
        else:
            sys.exit("measure.py: unknown option %s" % argv[0])
    cmd = argv[1:]
    if not cmd:
        sys.exit(__doc__)
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd)
    peak, samples, status, ru = 0, 0, None, None
    while True:
        pid, st, r = os.wait4(p.pid, os.WNOHANG)
        if pid == p.pid:
            status, ru = st, r
            break
        kb = tree_rss_kb(p.pid)
        samples += 1
        peak = max(peak, kb)
        time.sleep(interval)
    wall = time.perf_counter() - t0
    rc = os.waitstatus_to_exitcode(status)
    res = dict(cmd=" ".join(cmd), rc=rc, wall_s=round(wall, 3),
               cpu_s=round(ru.ru_utime + ru.ru_stime, 3), user_s=round(ru.ru_utime, 3),
               peak_rss_anon_mb=round(peak / 1024.0, 1), max_rss_mb=round(ru.ru_maxrss / 1024.0, 1),
               samples=samples)
    line = json.dumps(res)
    print(line, file=sys.stderr, flush=True)
    if jpath:
        with open(jpath, "w") as f:
            f.write(line + "\n")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
