#!/usr/bin/env bash
# Cross-check nufilt's continual baselines against FusionBench's own code.
#
#   bench/peers/run.sh [NUFILT_BINARY]        (or NUFILT=... bench/peers/run.sh)
#
# Creates (once) a virtual environment with fusion-bench and a CPU torch under
# ${XDG_CACHE_HOME:-$HOME/.cache}/nufilt-peers/venv, builds a small random
# CLIPVisionModel and 4 perturbed "fine-tuned" copies, runs FusionBench's
# continual implementations on them (task1..task4 in order), runs nufilt with
# the same method and hyper-parameters, and prints per method the largest
# per-tensor relative difference of the merged task vectors.  Then installs nufilt's
# Python package into the venv and runs its FusionBench bridge (run_bridge.py) on the
# same models, printing its agreement with `nufilt merge`.  Not part of CI.
# Needs: Debian 12 python3 + python3-venv, network access to PyPI, ~7 GB disk
# (PyPI's Linux torch wheel pulls the CUDA libraries when the CPU-only index
# download.pytorch.org cannot be reached), a few minutes on 2 cores.
#
# Environment: NUFILT (binary; default build/host/nufilt if built),
#   NUFILT_PEERS_VENV (an existing venv with torch and fusion-bench is reused as is),
#   NUFILT_PEERS_WORK (default .../nufilt-peers/work),
#   FUSION_BENCH_SPEC (default fusion-bench==0.2.33), PYTHON (default /usr/bin/python3),
#   METHODS (default wa,ta,ties,magmax,opcm,wudi,isoc,tsvm).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/nufilt-peers
VENV=${NUFILT_PEERS_VENV:-$CACHE/venv}
WORK=${NUFILT_PEERS_WORK:-$CACHE/work}
PY=${PYTHON:-/usr/bin/python3}
FB_SPEC=${FUSION_BENCH_SPEC:-fusion-bench==0.2.33}
METHODS=${METHODS:-wa,ta,ties,magmax,opcm,wudi,isoc,tsvm}
NUFILT=${1:-${NUFILT:-}}
if [ -z "$NUFILT" ] && [ -x "$REPO/build/host/nufilt" ]; then
    NUFILT=$REPO/build/host/nufilt
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1

if [ ! -x "$VENV/bin/python" ]; then
    mkdir -p "$(dirname "$VENV")"
    "$PY" -m venv "$VENV" || { echo "run.sh: cannot create a venv (apt-get install python3-venv)" >&2; exit 1; }
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
if ! "$VENV/bin/python" -c "import fusion_bench.method.opcm, torch, transformers" >/dev/null 2>&1; then
    echo "== installing fusion-bench and torch into $VENV"
    "${PIP[@]}" install --upgrade pip
    if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
        # CPU-only wheel when the PyTorch index is reachable, else PyPI's wheel
        "${PIP[@]}" install --retries 0 --timeout 20 --index-url https://download.pytorch.org/whl/cpu torch \
            || "${PIP[@]}" install torch
    fi
    # fusion-bench 0.2.33 imports CLIPVisionTransformer, gone in transformers 5;
    # transformers 4.x needs huggingface-hub < 1, which pins an older datasets.
    "${PIP[@]}" install "$FB_SPEC" "transformers>=4.45,<5" "huggingface-hub<1" datasets
fi
"$VENV/bin/python" -c "import fusion_bench.method.opcm" >/dev/null

mkdir -p "$WORK"
echo "== models -> $WORK/models"
"$VENV/bin/python" "$HERE/make_models.py" --out "$WORK/models" --tasks 4 --seed 0 2>&1 | grep -v "it/s\]" || true
echo "== FusionBench -> $WORK/fusionbench"
"$VENV/bin/python" "$HERE/run_fusionbench.py" --models "$WORK/models" --out "$WORK/fusionbench" \
    --methods "$METHODS" > "$WORK/fusionbench.log" 2>&1 || {
    tail -40 "$WORK/fusionbench.log"; echo "run.sh: FusionBench run failed (log: $WORK/fusionbench.log)" >&2; exit 1; }
tail -25 "$WORK/fusionbench.log" | sed -n '/^{/,$p'
echo "== compare -> $WORK/compare"
args=(--models "$WORK/models" --fusionbench "$WORK/fusionbench" --out "$WORK/compare" --methods "$METHODS")
if [ -n "$NUFILT" ]; then args+=(--nufilt "$NUFILT"); fi
"$VENV/bin/python" "$HERE/compare.py" "${args[@]}"

# nufilt's Python package in FusionBench's machinery: the bridge algorithm
# (nufilt.fusion_bench.NufiltContinualMerging) instantiated from a `method:` config and run on a
# BaseModelPool of the same models, against `nufilt merge` (bit-identical expected)
echo "== nufilt's FusionBench bridge -> $WORK/bridge"
"${PIP[@]}" install --quiet "$REPO"
"$VENV/bin/python" "$HERE/run_bridge.py" --models "$WORK/models" --out "$WORK/bridge" \
    --nufilt "${NUFILT:-$VENV/bin/nufilt}" 2>&1 | grep "bit-identical"
