#!/bin/bash
# nufilt's GPU check, in one run (see bench/gpu/README.md): on a machine with a GPU that reaches
# no package registry, with the bundle that bench/gpu/fetch.sh made here (.gpu-bundle/).
#
#   bench/gpu/run.sh [--budget SECONDS] [--small] [--reps N] [--llama|--no-llama] [--prebuilt]
#                    [--bundle-tools] [--bundle DIR] [--work DIR]
#
#  1. unpacks the bundle's Debian packages into a prefix (never installed), builds a release
#     nufilt there with meson + ninja (the machine's, else the bundle's wheels) against it, or
#     falls back to the bundle's prebuilt binaries when it cannot (no compiler, a failed
#     configure; the table says which ran); prints `nufilt devices`;
#  2. points the Vulkan loader at the NVIDIA ICD (/usr/local/nvidia/share/vulkan/icd.d) and the
#     OpenCL loader at an NVIDIA OpenCL library when the machine registers none;
#  3. runs the cross-backend suite (check_backend_ops) for cpu, opencl and vulkan, and the
#     end-to-end device test (tests/e2e/devices_vs_cpu.py) on every device `nufilt devices`
#     lists besides the CPU;
#  4. times a ViT-B/32-shaped NUFILT step 2 (bench/perf/gen.py inputs, default options) on the
#     CPU and on opencl:0 and vulkan:0 where listed, interleaved, --reps times, and compares the
#     merged task vectors with the CPU's; then a LLaMA-style step the same way when the time
#     budget leaves room (--llama forces it, --no-llama skips it);
#  5. writes $OUT/gpu-check.json and $OUT/gpu-check.md (one table), with the log
#     $OUT/gpu-check.log and the logs of every stage in $OUT/gpu-check-logs.tar.gz.
#
# --budget: seconds for the whole run [480]; a stage that would not fit is skipped and says
# so. --small: one-layer models (a quick test of the script on software devices, not a
# measurement). --prebuilt: do not build, use the bundle's binaries. --bundle-tools: build with
# the bundle's meson and ninja wheels even where the machine has its own. Without $OUT the
# results go to gpu-out/ in the repository.
set -uo pipefail
T0=$(date +%s)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$ROOT/bench/gpu
BUNDLE=$ROOT/.gpu-bundle
WORK=${NUFILT_GPU_WORK:-/tmp/nufilt-gpu}
BUDGET=480 SMALL=0 REPS=1 LLAMA=auto PREBUILT=0 BUNDLE_TOOLS=0
while [ $# -gt 0 ]; do
  case $1 in
    --budget) BUDGET=$2; shift 2 ;;
    --small) SMALL=1; shift ;;
    --reps) REPS=$2; shift 2 ;;
    --llama) LLAMA=1; shift ;;
    --no-llama) LLAMA=0; shift ;;
    --prebuilt) PREBUILT=1; shift ;;
    --bundle-tools) BUNDLE_TOOLS=1; shift ;;
    --bundle) BUNDLE=$(cd "$2" && pwd); shift 2 ;;
    --work) WORK=$2; shift 2 ;;
    -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown option $1 (--help lists them)" >&2; exit 2 ;;
  esac
done
RESULTS=${OUT:-$ROOT/gpu-out}
mkdir -p "$RESULTS" "$WORK"
rm -f "$WORK/stages.tsv"
exec > >(tee "$RESULTS/gpu-check.log") 2>&1

elapsed() { echo $(( $(date +%s) - T0 )); }
left() { echo $(( BUDGET - $(elapsed) )); }
say() { printf '[%4ss] %s\n' "$(elapsed)" "$*"; }
# stage NAME STATUS SECONDS DETAIL: one line of the table's stage list
stage() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$(echo "$4" | tr '\t\n' '  ' | cut -c1-400)" >> "$WORK/stages.tsv"
          say "stage $1: $2 (${3}s) $4"; }

# ---------------------------------------------------------------- 0. the machine
PYANY= PY=
for p in python3 /usr/bin/python3 /opt/torch/.venv/bin/python3; do
  command -v "$p" >/dev/null 2>&1 || continue
  [ -n "$PYANY" ] || PYANY=$(command -v "$p")
  if "$p" -c 'import numpy' 2>/dev/null; then PY=$(command -v "$p"); break; fi
done
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "os: $( (. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME") || uname -s), kernel $(uname -r)"
  echo "glibc: $(ldd --version 2>/dev/null | head -1 | awk '{print $NF}')"
  echo "cpu: $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores"
  echo "memory: $(free -g 2>/dev/null | awk '/^Mem:/ {print $2}') GB"
  if command -v nvidia-smi >/dev/null 2>&1; then
    echo "gpu: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -2 | tr '\n' ';')"
  else
    echo "gpu: no nvidia-smi"
  fi
  echo "compiler: $( (command -v cc >/dev/null && cc --version | head -1) || echo none)"
  echo "python with numpy: ${PY:-none} (any python3: ${PYANY:-none})"
  echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "bundle: $(head -2 "$BUNDLE/MANIFEST" 2>/dev/null | tr '\n' ' ')"
} > "$WORK/machine.txt"
cat "$WORK/machine.txt"
if [ -z "$PYANY" ]; then
  stage machine fail 0 "no python3 on this machine: the bundle cannot be unpacked and no test can run"
fi

# ---------------------------------------------------------------- 1. prefix and build
PREFIX=$WORK/prefix
L=$PREFIX/usr/lib/x86_64-linux-gnu
t0=$(date +%s)
if [ ! -d "$BUNDLE/deb" ]; then
  stage bundle fail 0 "no $BUNDLE/deb: run bench/gpu/fetch.sh first and carry .gpu-bundle"
else
  rm -rf "$PREFIX"
  if "$PYANY" "$HERE/debx.py" "$PREFIX" "$BUNDLE"/deb/*.deb; then
    # what Debian's alternatives and its multiarch pkg-config personality would provide
    ln -sf ../openblas-pthread/pkgconfig/lapack-openblas.pc "$L/pkgconfig/lapack.pc"
    ln -sf ../openblas-pthread/pkgconfig/blas-openblas.pc "$L/pkgconfig/blas.pc"
    find "$PREFIX" -name '*.pc' -type f -exec sed -E -i "s#(=|-I|-L)/usr(/|\$)#\1$PREFIX/usr\2#g" {} +
    stage bundle ok $(( $(date +%s) - t0 )) "$(ls "$BUNDLE"/deb/*.deb | wc -l) packages unpacked into $PREFIX"
  else
    stage bundle fail $(( $(date +%s) - t0 )) "unpacking the Debian packages failed"
  fi
fi
export LD_LIBRARY_PATH="$L:$L/openblas-pthread:$PREFIX/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib; do
  [ -d "$d" ] && LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$d"
done
export PATH="$PREFIX/usr/bin:$PATH"
export PKG_CONFIG="$PREFIX/usr/bin/pkgconf"
export PKG_CONFIG_PATH="$L/pkgconfig:$L/openblas-pthread/pkgconfig:$PREFIX/usr/share/pkgconfig"
export LIBRARY_PATH="$L:$L/openblas-pthread"
export CPATH="$PREFIX/usr/include:$PREFIX/usr/include/x86_64-linux-gnu"

BIN=$WORK/bin
rm -rf "$BIN" && mkdir -p "$BIN"
BUILT=0
t0=$(date +%s)
why=
if [ "$PREBUILT" = 1 ]; then
  why="--prebuilt given"
elif ! command -v cc >/dev/null 2>&1; then
  why="no C compiler (cc) on this machine"
else
  MESON=() NINJA=
  if [ "$BUNDLE_TOOLS" = 0 ] && command -v meson >/dev/null 2>&1; then MESON=(meson)
  elif [ "$BUNDLE_TOOLS" = 0 ] && "$PYANY" -c 'import mesonbuild' 2>/dev/null; then MESON=("$PYANY" -m mesonbuild.mesonmain)
  elif ls "$BUNDLE"/wheels/meson-*.whl >/dev/null 2>&1; then
    rm -rf "$WORK/meson" && "$PYANY" -m zipfile -e "$(ls "$BUNDLE"/wheels/meson-*.whl | head -1)" "$WORK/meson"
    MESON=(env PYTHONPATH="$WORK/meson" "$PYANY" -m mesonbuild.mesonmain)
  fi
  if [ "$BUNDLE_TOOLS" = 0 ] && command -v ninja >/dev/null 2>&1; then NINJA=$(command -v ninja)
  elif ls "$BUNDLE"/wheels/ninja-*.whl >/dev/null 2>&1; then
    rm -rf "$WORK/ninja" && "$PYANY" -m zipfile -e "$(ls "$BUNDLE"/wheels/ninja-*.whl | head -1)" "$WORK/ninja"
    NINJA=$(find "$WORK/ninja" -type f -name ninja -path '*bin*' | head -1)
    chmod +x "$NINJA"
    export PATH="$(dirname "$NINJA"):$PATH"
  fi
  if [ ${#MESON[@]} -eq 0 ] || [ -z "$NINJA" ]; then
    why="meson or ninja missing (neither on the machine nor in the bundle)"
  else
    rm -rf "$WORK/build"
    if ! "${MESON[@]}" setup "$WORK/build" "$ROOT" --buildtype=release > "$WORK/meson-setup.log" 2>&1; then
      why="meson setup failed: $(grep -iE 'error|not found' "$WORK/meson-setup.log" | tail -2 | tr '\n' ' ')"
    elif ! "$NINJA" -C "$WORK/build" host/nufilt tests/check_backend_ops > "$WORK/ninja.log" 2>&1; then
      why="ninja failed: $(grep -iE 'error' "$WORK/ninja.log" | head -2 | tr '\n' ' ')"
    else
      cp "$WORK/build/host/nufilt" "$WORK/build/tests/check_backend_ops" "$BIN/"
      BUILT=1
      feats=$(grep -E '^\s*(opencl|vulkan)\b|OpenCL|Vulkan|Run-time dependency (OpenCL|vulkan|clblast)' "$WORK/meson-setup.log" | tr -s ' ' | tr '\n' ';' | cut -c1-200)
      stage build ok $(( $(date +%s) - t0 )) "release build with $(cc --version | head -1), meson $("${MESON[@]}" --version 2>/dev/null); $feats"
    fi
  fi
fi
if [ "$BUILT" = 0 ]; then
  if [ -x "$BUNDLE/prebuilt/nufilt" ] || [ -f "$BUNDLE/prebuilt/nufilt" ]; then
    cp "$BUNDLE/prebuilt/nufilt" "$BUNDLE/prebuilt/check_backend_ops" "$BIN/" && chmod +x "$BIN"/*
    stage build prebuilt $(( $(date +%s) - t0 )) "not built here ($why): the bundle's binaries ($(head -1 "$BUNDLE/MANIFEST" 2>/dev/null))"
  else
    stage build fail $(( $(date +%s) - t0 )) "$why, and the bundle has no prebuilt binaries"
  fi
fi
NUFILT=$BIN/nufilt
if ! "$NUFILT" --version >/dev/null 2>&1; then
  stage nufilt fail 0 "$NUFILT does not run: $("$NUFILT" --version 2>&1 | head -2 | tr '\n' ' ')"
fi

# ---------------------------------------------------------------- 2. drivers
for f in /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json /usr/share/vulkan/icd.d/nvidia_icd.json \
         /etc/vulkan/icd.d/nvidia_icd.json; do
  if [ -f "$f" ] && [ -z "${VK_DRIVER_FILES:-}" ] && [ -z "${VK_ICD_FILENAMES:-}" ]; then
    export VK_DRIVER_FILES=$f VK_ICD_FILENAMES=$f
    say "Vulkan: NVIDIA ICD $f"
    break
  fi
done
if ! ls /etc/OpenCL/vendors/*.icd >/dev/null 2>&1 && [ -z "${OCL_ICD_VENDORS:-}" ]; then
  lib=$(ls /usr/local/nvidia/lib64/libnvidia-opencl.so* /usr/lib/x86_64-linux-gnu/libnvidia-opencl.so* \
          /usr/lib64/libnvidia-opencl.so* 2>/dev/null | head -1)
  if [ -n "$lib" ]; then
    mkdir -p "$WORK/icd" && echo "$lib" > "$WORK/icd/nvidia.icd"
    export OCL_ICD_VENDORS=$WORK/icd
    say "OpenCL: no registered ICD; using $lib through $WORK/icd/nvidia.icd"
  else
    say "OpenCL: no ICD registered and no libnvidia-opencl found: opencl will be unavailable"
  fi
fi

"$NUFILT" devices > "$WORK/devices.txt" 2>&1
echo "--- nufilt devices"; cat "$WORK/devices.txt"; echo "---"
DEVICES=$(awk '/^[a-z]+:[0-9]+ / {print $1}' "$WORK/devices.txt" | grep -v '^cpu:' | tr '\n' ' ')
stage devices ok 0 "$(awk '/^[a-z]+:[0-9]+ / {$1=$1; print}' "$WORK/devices.txt" | tr '\n' ';')"

# ---------------------------------------------------------------- 3. tests
for api in cpu opencl vulkan; do
  [ "$(left)" -gt 60 ] || { stage "backend_ops_$api" skipped 0 "time budget spent"; continue; }
  t0=$(date +%s)
  timeout $(( $(left) - 30 )) "$BIN/check_backend_ops" "$api" > "$WORK/backend_ops_$api.log" 2>&1
  rc=$?
  sum=$(grep -E '^[0-9]+%: Checks' "$WORK/backend_ops_$api.log" | tail -1)
  case $rc in
    0) st=ok ;; 77) st=skipped ;; 124) st=timeout ;; *) st=fail ;;
  esac
  [ $rc = 77 ] && sum=$(grep -m1 '^SKIP' "$WORK/backend_ops_$api.log")
  stage "backend_ops_$api" $st $(( $(date +%s) - t0 )) "${sum:-rc $rc}"
  [ $st = fail ] && grep -E 'FAIL|:F:|:E:' "$WORK/backend_ops_$api.log" | head -5
done
for dev in $DEVICES; do
  if [ -z "$PY" ]; then stage "e2e_$dev" skipped 0 "no python3 with numpy"; continue; fi
  [ "$(left)" -gt 90 ] || { stage "e2e_$dev" skipped 0 "time budget spent"; continue; }
  t0=$(date +%s)
  timeout $(( $(left) - 60 )) "$PY" "$ROOT/tests/e2e/devices_vs_cpu.py" --nufilt "$NUFILT" --device "$dev" \
    --workdir "$WORK/e2e-${dev/:/}" > "$WORK/e2e_${dev/:/}.log" 2>&1
  rc=$?
  case $rc in 0) st=ok ;; 77) st=skipped ;; 124) st=timeout ;; *) st=fail ;; esac
  worst=$(grep -E '^(PASS|FAIL) ' "$WORK/e2e_${dev/:/}.log" | sed -E 's/.*error of merged task vectors ([0-9.e+-]+).*/\1/' | grep -E '^[0-9]' | sort -g | tail -1)
  n=$(grep -cE '^PASS ' "$WORK/e2e_${dev/:/}.log"); nf=$(grep -cE '^FAIL ' "$WORK/e2e_${dev/:/}.log")
  stage "e2e_$dev" $st $(( $(date +%s) - t0 )) "$n passed, $nf failed; largest error vs cpu ${worst:-n/a}"
  grep -E '^(FAIL|SKIP)' "$WORK/e2e_${dev/:/}.log" | head -5
done

# ---------------------------------------------------------------- 4. timed steps
TIMED=$WORK/timed
rm -rf "$TIMED" && mkdir -p "$TIMED"
timed_model() { # KIND (vit|llama) MIN_SECONDS_LEFT
  local kind=$1 need=$2 gen=() dir preset=()
  if [ -z "$PY" ]; then stage "step_$kind" skipped 0 "no python3 with numpy to generate the inputs"; return; fi
  if [ "$(left)" -lt "$need" ]; then stage "step_$kind" skipped 0 "time budget: $(left) s left, needs about $need"; return; fi
  [ "$SMALL" = 1 ] && gen=(--layers 1)
  [ "$kind" = llama ] && preset=(--preset llama)
  dir=$WORK/inputs-$kind$([ "$SMALL" = 1 ] && echo -L1)
  local t0; t0=$(date +%s)
  if ! "$PY" "$ROOT/bench/perf/gen.py" "$kind" --out "$dir" --tasks 2 "${gen[@]}" --quiet > "$TIMED/gen-$kind.log" 2>&1; then
    stage "step_$kind" fail $(( $(date +%s) - t0 )) "gen.py failed: $(tail -2 "$TIMED/gen-$kind.log" | tr '\n' ' ')"; return
  fi
  local tgen=$(( $(date +%s) - t0 ))
  local s1=$TIMED/$kind-step1.safetensors
  "$NUFILT" step --base "$dir/base.safetensors" --task "$dir/task01.safetensors" --out "$s1" --device cpu --quiet --force \
    || { stage "step_$kind" fail 0 "step 1 failed"; return; }
  local confs="cpu" d
  for d in opencl:0 vulkan:0; do grep -q "^$d " "$WORK/devices.txt" && confs="$confs $d"; done
  say "$kind step 2 on: $confs ($REPS repetition(s), inputs generated in ${tgen}s)"
  local rep c out failed=""
  for rep in $(seq 1 "$REPS"); do
    for c in $confs; do
      out=$TIMED/$kind-${c/:/}.safetensors
      rm -f "$out"
      if [ "$(left)" -lt 20 ]; then say "time budget spent: $kind on $c rep $rep left out"; continue; fi
      timeout $(( $(left) - 10 )) "$PY" "$ROOT/bench/perf/measure.py" --json "$TIMED/$kind-${c/:/}-$rep.measure.json" -- \
        "$NUFILT" step --base "$dir/base.safetensors" --task "$dir/task02.safetensors" --prev "$s1" --out "$out" \
        --device "$c" --quiet --force --report "$TIMED/$kind-${c/:/}-$rep.report.json" \
        > "$TIMED/$kind-${c/:/}-$rep.log" 2>&1 || {
          failed="$failed $c"
          say "$kind on $c rep $rep failed: $(tail -2 "$TIMED/$kind-${c/:/}-$rep.log" | tr '\n' ' ')"; }
    done
  done
  local cands=()
  for c in $confs; do [ "$c" = cpu ] || { [ -f "$TIMED/$kind-${c/:/}.safetensors" ] && cands+=("$TIMED/$kind-${c/:/}.safetensors"); }; done
  if [ ${#cands[@]} -gt 0 ] && [ -f "$TIMED/$kind-cpu.safetensors" ]; then
    "$PY" "$ROOT/bench/perf/compare.py" "${preset[@]}" --base "$dir/base.safetensors" --ref "$TIMED/$kind-cpu.safetensors" \
      --json "$TIMED/$kind-agreement.json" "${cands[@]}" > "$TIMED/$kind-compare.log" 2>&1
  fi
  if [ -n "$failed" ]; then
    stage "step_$kind" fail $(( $(date +%s) - t0 )) "step 2 on $confs; failed on:$failed (see gpu-check.log)"
  else
    stage "step_$kind" ok $(( $(date +%s) - t0 )) "step 2 on $confs"
  fi
}
if [ "$SMALL" = 1 ]; then VIT_NEED=60; LLAMA_NEED=120; else VIT_NEED=120; LLAMA_NEED=240; fi
timed_model vit $VIT_NEED
case $LLAMA in
  1) timed_model llama 0 ;;
  auto) timed_model llama $LLAMA_NEED ;;
  0) stage step_llama skipped 0 "--no-llama" ;;
esac

# ---------------------------------------------------------------- 5. the table
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$WORK/machine.txt"
# every log of the run (build, suites, device tests, timed steps), for a failure's details
tar -czf "$RESULTS/gpu-check-logs.tar.gz" -C "$WORK" --exclude=prefix --exclude=build --exclude=bin \
  --exclude=meson --exclude=ninja --exclude='inputs-*' --exclude='e2e-*' --exclude='*.safetensors' . 2>/dev/null
"${PY:-$PYANY}" "$HERE/table.py" --work "$WORK" --out "$RESULTS" --built "$BUILT" --small "$SMALL" \
  --elapsed "$(elapsed)" --budget "$BUDGET"
say "done in $(elapsed) s: $RESULTS/gpu-check.md, $RESULTS/gpu-check.json"
