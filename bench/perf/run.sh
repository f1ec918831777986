#!/bin/bash
# NUFILT step benchmark (issue 4): nufilt against a straightforward PyTorch implementation,
# on generated ViT-B/32-shaped and LLaMA-style (TinyLlama-1.1B-shaped) checkpoints.
#
#   bench/perf/run.sh [--reps N] [--gpu-reps N] [--torch-reps N] [--llama-reps N] [--llama-torch-reps N]
#                     [--no-llama] [--no-torch] [--no-gpu] [--vulkan] [--rsvd] [--small]
#
# One command: builds nufilt (build-perf/) if missing, makes a venv with PyPI's torch,
# safetensors and numpy under ${XDG_CACHE_HOME:-$HOME/.cache}/nufilt-perf/venv if missing
# (PyPI's Linux torch wheel brings its CUDA libraries: about 6 GB; nothing here uses them),
# generates the inputs if missing (bench/perf/gen.py, about 1.4 GB + 6.6 GB), then, in the
# same session:
#
#  ViT step t = 2 (prev = nufilt's merged model after step 1, paper mode, default ranks):
#    cpu-gesdd   nufilt --device cpu --svd gesdd        (LAPACK's SVD, the method's definition)
#    cpu-gram    nufilt --device cpu --svd gram
#    cpu-fast    nufilt --device cpu --svd fast         (the default)
#    cpu-rand    nufilt --device cpu --svd randomized
#    opencl      nufilt --device opencl:0 (if listed; PoCL is a software device on this CPU)
#    vulkan      nufilt --device vulkan:0 (only with --vulkan: lavapipe, a software device,
#                takes about 35x the CPU backend's time here, a quarter of an hour per run)
#    torch       bench/perf/torch_nufilt.py (exact torch.linalg.svd, autograd, torch.optim.Adam,
#                A drawn with nufilt's generator so that the weights can be compared)
#  each repeated N times (default 3; the GPU backends --gpu-reps, default 1; PyTorch
#  --torch-reps, default N), interleaved
#  round-robin so that changes in machine load hit every configuration alike; wall and CPU
#  time and peak RssAnon from bench/perf/measure.py, SVD / training / rest from nufilt's
#  --report; then the relative error of every configuration's merged task vectors against
#  cpu-gesdd and against torch (bench/perf/compare.py).
#  LLaMA-style step t = 2 with --svd gesdd and the default --svd fast (--llama-reps each,
#  default 1), --svd gram and --svd randomized once, and the PyTorch implementation
#  (--llama-torch-reps, default 1; it holds tau and prev of the treated matrices in float32):
#  time and peak RssAnon, and the errors against cpu-gesdd and torch.
#  --small runs everything on one-layer models (quick check of the pipeline, not a benchmark).
#  --rsvd also runs bench/perf/rsvd_accuracy.py, bench/perf/svd_bench and bench/perf/gemm_bench
#  (the randomized-SVD study and the micro-benchmarks of docs/performance.md).
#
# Results: $CACHE/results/<date>/ (JSON per run, summary.md); the summary is also printed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$ROOT/bench/perf
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/nufilt-perf
VENV=${NUFILT_PERF_VENV:-$CACHE/venv}
PY_REQS="torch==2.15.0 safetensors==0.8.0 numpy"
SYSPY=/usr/bin/python3
REPS=3 GPU_REPS=1 TORCH_REPS= LLAMA_REPS=1 LLAMA_TORCH_REPS=1 DO_LLAMA=1 DO_TORCH=1 DO_GPU=1 DO_VULKAN=0 DO_RSVD=0 SMALL=0
while [ $# -gt 0 ]; do
  case $1 in
    --reps) REPS=$2; shift 2 ;;
    --gpu-reps) GPU_REPS=$2; shift 2 ;;
    --torch-reps) TORCH_REPS=$2; shift 2 ;;
    --llama-reps) LLAMA_REPS=$2; shift 2 ;;
    --llama-torch-reps) LLAMA_TORCH_REPS=$2; shift 2 ;;
    --no-llama) DO_LLAMA=0; shift ;;
    --no-torch) DO_TORCH=0; shift ;;
    --no-gpu) DO_GPU=0; shift ;;
    --vulkan) DO_VULKAN=1; shift ;;
    --rsvd) DO_RSVD=1; shift ;;
    --small) SMALL=1; shift ;;
    -h|--help) sed -n '2,40p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
say() { echo "== $*" >&2; }
TORCH_REPS=${TORCH_REPS:-$REPS}

# ---------------------------------------------------------------- build, venv, inputs
BUILD=${NUFILT_PERF_BUILD:-$ROOT/build-perf}
NUFILT=$BUILD/host/nufilt
if [ ! -x "$NUFILT" ]; then
  say "building nufilt in $BUILD"
  [ -d "$BUILD" ] || meson setup "$BUILD" "$ROOT" >/dev/null
  ninja -C "$BUILD" >/dev/null
fi
"$SYSPY" -c 'import numpy' 2>/dev/null || { echo "run.sh: needs Debian's python3-numpy (apt-get install python3-numpy)" >&2; exit 1; }
if [ "$DO_TORCH" = 1 ] && ! "$VENV/bin/python" -c 'import torch, safetensors, numpy' 2>/dev/null; then
  say "creating $VENV ($PY_REQS; PyPI's torch wheel brings its CUDA libraries, about 6 GB)"
  rm -rf "$VENV"
  "$SYSPY" -m venv "$VENV" || { echo "run.sh: cannot create a venv (apt-get install python3-venv)" >&2; exit 1; }
  "$VENV/bin/pip" install -q --disable-pip-version-check $PY_REQS
fi
say "inputs (bench/perf/gen.py, cached in $CACHE)"
GEN=() SFX=
[ "$SMALL" = 1 ] && GEN=(--layers 1) SFX=-L1
VIT=$CACHE/vit-s0$SFX LLAMA=$CACHE/llama-s0$SFX
"$SYSPY" "$HERE/gen.py" vit --out "$VIT" "${GEN[@]}" >/dev/null
[ "$DO_LLAMA" = 1 ] && "$SYSPY" "$HERE/gen.py" llama --out "$LLAMA" "${GEN[@]}" >/dev/null

STAMP=$(date +%Y%m%d-%H%M%S)
RES=$CACHE/results/$STAMP$SFX
WORK=$CACHE/work$SFX
mkdir -p "$RES" "$WORK"
say "results in $RES"

# ---------------------------------------------------------------- machine
{
  echo "date: $(date -Is)"
  echo "cpu: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores online"
  echo "memory: $(free -g | awk '/^Mem:/ {print $2}') GB"
  echo "kernel: $(uname -r)"
  echo "nufilt: $("$NUFILT" --version 2>&1 | head -1) ($(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?'))"
  "$NUFILT" devices 2>&1 | sed 's/^/  /'
  [ "$DO_TORCH" = 1 ] && echo "torch: $("$VENV/bin/python" -c 'import torch; print(torch.__version__, "threads", torch.get_num_threads(), torch.backends.mkl.is_available() and "MKL" or "no MKL")')"
  echo "inputs: $VIT (ViT-B/32 shapes, F32, $(du -sh "$VIT/base.safetensors" | cut -f1) per model)"
  [ "$DO_LLAMA" = 1 ] && echo "        $LLAMA (LLaMA-style 1.1B, BF16, $(du -sh "$LLAMA/base.safetensors" | cut -f1) per model)"
  echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} > "$RES/machine.txt"
cat "$RES/machine.txt" >&2

measure() { # NAME -- CMD...
  local name=$1; shift; shift
  echo "$(cut -d' ' -f1-3 /proc/loadavg)" > "$RES/$name.load"
  "$SYSPY" "$HERE/measure.py" --json "$RES/$name.measure.json" -- "$@" > "$RES/$name.stdout" 2> "$RES/$name.stderr" \
    || { echo "run.sh: $name failed:" >&2; tail -5 "$RES/$name.stderr" >&2; return 1; }
  echo "  $name: $(tail -1 "$RES/$name.stderr" | sed 's/^{"cmd": "[^"]*", //')" >&2
}

# ---------------------------------------------------------------- ViT step 2
say "ViT: step 1 (nufilt, paper mode: base + tau_1 on treated matrices)"
V1=$WORK/vit-step1.safetensors
[ -f "$V1" ] || "$NUFILT" step --base "$VIT/base.safetensors" --task "$VIT/task01.safetensors" --out "$V1" --quiet
STEP2=(step --base "$VIT/base.safetensors" --task "$VIT/task02.safetensors" --prev "$V1" --force --quiet)
CONFIGS=(cpu-gesdd cpu-gram cpu-fast cpu-rand)
DEVS=$("$NUFILT" devices 2>/dev/null || true)
if [ "$DO_GPU" = 1 ]; then
  grep -q '^opencl:0' <<<"$DEVS" && CONFIGS+=(opencl)
  [ "$DO_VULKAN" = 1 ] && grep -q '^vulkan:0' <<<"$DEVS" && CONFIGS+=(vulkan)
fi
[ "$DO_TORCH" = 1 ] && CONFIGS+=(torch)
say "ViT step 2: ${CONFIGS[*]}, $REPS repetitions (GPU backends $GPU_REPS, PyTorch $TORCH_REPS)"
for rep in $(seq 1 "$REPS"); do
  for c in "${CONFIGS[@]}"; do
    case $c in
      opencl|vulkan) [ "$rep" -le "$GPU_REPS" ] || continue ;;
      torch) [ "$rep" -le "$TORCH_REPS" ] || continue ;;
    esac
    out=$WORK/vit-step2-$c.safetensors
    rm -f "$out" # outside the clock: replacing a file costs the filesystem time, not the merge
    case $c in
      cpu-gesdd) measure "vit-$c-$rep" -- "$NUFILT" "${STEP2[@]}" --device cpu --svd gesdd --out "$out" --report "$RES/vit-$c-$rep.report.json" ;;
      cpu-gram) measure "vit-$c-$rep" -- "$NUFILT" "${STEP2[@]}" --device cpu --svd gram --out "$out" --report "$RES/vit-$c-$rep.report.json" ;;
      cpu-fast) measure "vit-$c-$rep" -- "$NUFILT" "${STEP2[@]}" --device cpu --svd fast --out "$out" --report "$RES/vit-$c-$rep.report.json" ;;
      cpu-rand) measure "vit-$c-$rep" -- "$NUFILT" "${STEP2[@]}" --device cpu --svd randomized --out "$out" --report "$RES/vit-$c-$rep.report.json" ;;
      opencl) measure "vit-$c-$rep" -- "$NUFILT" "${STEP2[@]}" --device opencl:0 --out "$out" --report "$RES/vit-$c-$rep.report.json" ;;
      vulkan) measure "vit-$c-$rep" -- "$NUFILT" "${STEP2[@]}" --device vulkan:0 --out "$out" --report "$RES/vit-$c-$rep.report.json" ;;
      torch) measure "vit-$c-$rep" -- "$VENV/bin/python" "$HERE/torch_nufilt.py" --base "$VIT/base.safetensors" \
               --task "$VIT/task02.safetensors" --prev "$V1" --step 2 --out "$out" --report "$RES/vit-$c-$rep.report.json" ;;
    esac
  done
done
say "ViT: merged task vectors compared"
cands=()
for c in "${CONFIGS[@]}"; do [ "$c" = cpu-gesdd ] || cands+=("$WORK/vit-step2-$c.safetensors"); done
"$SYSPY" "$HERE/compare.py" --base "$VIT/base.safetensors" --ref "$WORK/vit-step2-cpu-gesdd.safetensors" \
  --json "$RES/vit-err-vs-gesdd.json" "${cands[@]}" >&2
if [ "$DO_TORCH" = 1 ]; then
  cands=()
  for c in "${CONFIGS[@]}"; do [ "$c" = torch ] || cands+=("$WORK/vit-step2-$c.safetensors"); done
  "$SYSPY" "$HERE/compare.py" --base "$VIT/base.safetensors" --ref "$WORK/vit-step2-torch.safetensors" \
    --json "$RES/vit-err-vs-torch.json" "${cands[@]}" >&2
fi

# ---------------------------------------------------------------- LLaMA-style step 2
if [ "$DO_LLAMA" = 1 ]; then
  say "LLaMA-style: step 1"
  L1=$WORK/llama-step1.safetensors
  [ -f "$L1" ] || "$NUFILT" step --base "$LLAMA/base.safetensors" --task "$LLAMA/task01.safetensors" --out "$L1" --quiet
  LSTEP2=(step --base "$LLAMA/base.safetensors" --task "$LLAMA/task02.safetensors" --prev "$L1" --force --quiet)
  for rep in $(seq 1 "$LLAMA_REPS"); do # gesdd and the default (fast), interleaved
    measure "llama-cpu-gesdd-$rep" -- "$NUFILT" "${LSTEP2[@]}" --svd gesdd --out "$WORK/llama-step2-cpu-gesdd.safetensors" \
      --report "$RES/llama-cpu-gesdd-$rep.report.json"
    measure "llama-cpu-fast-$rep" -- "$NUFILT" "${LSTEP2[@]}" --svd fast --out "$WORK/llama-step2-cpu-fast.safetensors" \
      --report "$RES/llama-cpu-fast-$rep.report.json"
  done
  measure "llama-cpu-gram-1" -- "$NUFILT" "${LSTEP2[@]}" --svd gram --out "$WORK/llama-step2-cpu-gram.safetensors" \
    --report "$RES/llama-cpu-gram-1.report.json"
  measure "llama-cpu-rand-1" -- "$NUFILT" "${LSTEP2[@]}" --svd randomized --out "$WORK/llama-step2-cpu-rand.safetensors" \
    --report "$RES/llama-cpu-rand-1.report.json"
  if [ "$DO_TORCH" = 1 ]; then
    for rep in $(seq 1 "$LLAMA_TORCH_REPS"); do
      measure "llama-torch-$rep" -- "$VENV/bin/python" "$HERE/torch_nufilt.py" --preset llama --base "$LLAMA/base.safetensors" \
        --task "$LLAMA/task02.safetensors" --prev "$L1" --step 2 --out "$WORK/llama-step2-torch.safetensors" \
        --report "$RES/llama-torch-$rep.report.json" || true
    done
  fi
  lc=("$WORK/llama-step2-cpu-gram.safetensors" "$WORK/llama-step2-cpu-fast.safetensors" "$WORK/llama-step2-cpu-rand.safetensors")
  [ -f "$WORK/llama-step2-torch.safetensors" ] && lc+=("$WORK/llama-step2-torch.safetensors")
  "$SYSPY" "$HERE/compare.py" --preset llama --base "$LLAMA/base.safetensors" --ref "$WORK/llama-step2-cpu-gesdd.safetensors" \
    --json "$RES/llama-err-vs-gesdd.json" "${lc[@]}" >&2
  if [ -f "$WORK/llama-step2-torch.safetensors" ]; then
    "$SYSPY" "$HERE/compare.py" --preset llama --base "$LLAMA/base.safetensors" --ref "$WORK/llama-step2-torch.safetensors" \
      --json "$RES/llama-err-vs-torch.json" "$WORK/llama-step2-cpu-gesdd.safetensors" "$WORK/llama-step2-cpu-fast.safetensors" >&2
  fi
fi

# ---------------------------------------------------------------- randomized-SVD study
if [ "$DO_RSVD" = 1 ]; then
  say "randomized SVD accuracy (bench/perf/rsvd_accuracy.py)"
  RL=(); [ "$SMALL" = 1 ] && RL=(--layers 0)
  "$SYSPY" "$HERE/rsvd_accuracy.py" --dir "$VIT" "${RL[@]}" --json "$RES/rsvd.json" > "$RES/rsvd.md"
  cat "$RES/rsvd.md" >&2
  say "micro-benchmarks (bench/perf/svd_bench.c, one thread)"
  cc -O2 -I "$ROOT/src/include" -I "$BUILD/src/include" -I "$ROOT/src" -o "$WORK/svd_bench" "$HERE/svd_bench.c" \
    "$BUILD/src/libnufilt.a" -llapacke -lopenblas -lm -lpthread
  {
    for t in 1 2; do
      "$SYSPY" "$HERE/gen.py" taskvec "$VIT" $t vision_model.encoder.layers.0.self_attn.q_proj.weight "$WORK/q$t.f32" >/dev/null
      "$SYSPY" "$HERE/gen.py" taskvec "$VIT" $t vision_model.encoder.layers.0.mlp.fc1.weight "$WORK/fc1-$t.f32" >/dev/null
    done
    "$WORK/svd_bench" svd "$WORK/q1.f32" 768 768 128 5
    "$WORK/svd_bench" svd "$WORK/fc1-1.f32" 3072 768 128 5
    "$WORK/svd_bench" svd "$WORK/q2.f32" 768 768 8 5
    "$WORK/svd_bench" svd "$WORK/fc1-2.f32" 3072 768 8 5
    "$WORK/svd_bench" train "$WORK/q2.f32" 768 768 20
    "$WORK/svd_bench" train "$WORK/fc1-2.f32" 3072 768 20
  } > "$RES/svd_bench.txt"
  cat "$RES/svd_bench.txt" >&2
  cc -O2 -I "$ROOT/src/include" -I "$BUILD/src/include" -I "$ROOT/src" -o "$WORK/gemm_bench" "$HERE/gemm_bench.c" \
    "$BUILD/src/libnufilt.a" -llapacke -lopenblas -lm -lpthread
  "$WORK/gemm_bench" > "$RES/gemm_bench.txt"
  cat "$RES/gemm_bench.txt" >&2
fi

echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$RES/machine.txt"
"$SYSPY" "$HERE/summarize.py" "$RES" | tee "$RES/summary.md"
