#!/bin/sh
# The bundled digits example, end to end: merges the 8-task stream with NUFILT and two
# baselines (continual weight averaging, task arithmetic with lambda 0.3), evaluates every
# intermediate model and prints the accuracy table.
#
#   examples/digits/run.sh [path-to-nufilt]
#
# Environment: NUFILT_EXTRA (options appended to NUFILT's, e.g. "--null-rank 0"), OUT
# (output directory, default examples/digits/out), ORDERS (how many task orders to run:
# 1 = the canonical order only (default); N > 1 adds N-1 seeded random orders and prints
# mean +- std over them), PYTHON (default /usr/bin/python3; needs NumPy only).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
NUFILT=${1:-}
if [ -z "$NUFILT" ]; then
    for c in "$here/../../build/host/nufilt" "$here"/../../build*/host/nufilt; do
        if [ -x "$c" ]; then NUFILT=$(cd "$(dirname "$c")" && pwd)/nufilt; break; fi
    done
fi
if [ -z "$NUFILT" ]; then NUFILT=$(command -v nufilt || true); fi
if [ -z "$NUFILT" ] || [ ! -x "$NUFILT" ]; then
    echo "run.sh: no nufilt binary found; build it (meson setup build && ninja -C build)" \
         "or pass its path as the first argument" >&2
    exit 1
fi
OUT=${OUT:-$here/out}
ORDERS=${ORDERS:-1}
PY=${PYTHON:-/usr/bin/python3}

# NUFILT's ranks for 64- and 96-wide layers, chosen by the sweep in README.md (the defaults,
# r_p 128 / r_v 8 / r_l 64, are meant for 768-wide transformer layers).
NUFILT_OPTS="--preset all-linear --null-rank 32 --task-rank 8 --lora-rank 16 --lr 1e-3 --iters 50 ${NUFILT_EXTRA:-}"
# The baselines: continual weight averaging, and task arithmetic at its usual lambda 0.3 (the
# best lambda on this example, see README.md).

start=$(date +%s)

# merge DIR ORDER [nufilt options...]: the whole stream into DIR, every step kept as
# DIR/steps/stepNN.safetensors; non-zero (after nufilt's message) if nufilt refuses, for
# example a method this build does not have yet
merge() {
    m_dir=$1; m_order=$2; shift 2
    rm -rf "$m_dir"
    mkdir -p "$m_dir"
    for t in $(echo "$m_order" | tr ',' ' '); do
        set -- "$@" "$here/tasks/$t.safetensors"
    done
    "$NUFILT" merge --base "$here/base.safetensors" --out "$m_dir/final.safetensors" \
        --save-steps "$m_dir/steps" --report "$m_dir/report.json" --quiet "$@"
}

# run_method LABEL DIR ORDER [options...]: merge; on success the run joins the table
run_method() {
    r_label=$1; r_dir=$2; r_order=$3; shift 3
    if merge "$r_dir" "$r_order" "$@"; then
        runs="$runs|--run|$r_label=$r_dir/steps"
    else
        echo "run.sh: skipping $r_label (nufilt failed, see above)" >&2
        rm -rf "$r_dir"
    fi
}

# run_order DIR ORDER: the three methods on one task order, then the table
run_order() {
    o_dir=$1; o_order=$2
    echo "== task order: $o_order"
    runs=""
    # shellcheck disable=SC2086  # NUFILT_OPTS is a list of words on purpose
    run_method nufilt "$o_dir/nufilt" "$o_order" --method nufilt $NUFILT_OPTS
    run_method wa "$o_dir/wa" "$o_order" --method wa
    run_method "ta(0.3)" "$o_dir/ta" "$o_order" --method ta --scale 0.3
    # $runs is "|--run|label=dir|--run|..."; split on | only (labels and paths keep spaces)
    set --
    if [ -n "$runs" ]; then
        old_ifs=$IFS; IFS='|'
        # shellcheck disable=SC2086
        set -- $runs
        IFS=$old_ifs
        shift  # the empty field before the first |
    fi
    "$PY" "$here/evaluate.py" --dir "$here" --tasks "$o_order" "$@" --json "$o_dir/results.json"
    echo
}

mkdir -p "$OUT"
canonical=identity,rot90,rot180,rot270,flip_h,flip_v,transpose,antitranspose
if [ "$ORDERS" -le 1 ]; then
    run_order "$OUT" "$canonical"
else
    results=""
    i=1
    while [ "$i" -le "$ORDERS" ]; do
        if [ "$i" -eq 1 ]; then
            order=$canonical
        else
            # seeded shuffles (seeds 42, 43, ... as in the paper's task orders)
            order=$("$PY" -c "import numpy as np, sys; t=sys.argv[1].split(','); \
print(','.join(t[j] for j in np.random.default_rng(int(sys.argv[2])).permutation(len(t))))" \
                "$canonical" $((40 + i)))
        fi
        run_order "$OUT/order$i" "$order"
        results="$results $OUT/order$i/results.json"
        i=$((i + 1))
    done
    # shellcheck disable=SC2086
    "$PY" "$here/evaluate.py" --summary $results --json "$OUT/summary.json"
fi
echo "run.sh: $NUFILT, NUFILT options: $NUFILT_OPTS; outputs in $OUT; $(( $(date +%s) - start )) s"
