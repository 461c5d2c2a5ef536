#!/usr/bin/env bash
# The throughput table on a lent GPU machine, in under 8 minutes (its session has 15, the
# machine's start included): ResNet-50 at the ImageNet configs' crops in bfloat16, at the largest
# batch that fits (halved on each out-of-memory failure), and the supervised ResNet-50 224 px
# step's images/s and MFU.
#
#   bash benchmarks/gpu_check.sh          # from the repository root; writes $OUT (or /tmp/gpu_check)
#
# That machine has Python 3.12, jax (CUDA), flax, optax, orbax-checkpoint, chex, absl-py,
# tensorboard, scikit-learn and torch, but neither ml-collections nor TensorFlow / TFDS, and
# reaches no package index: the wheels committed in benchmarks/wheels/ (ml-collections 1.1.0,
# pure Python, 77 KB; its one other dependency, PyYAML, comes with flax) are installed from
# there. Nothing here imports TensorFlow: the table's data is synthetic. Pillow, if that machine
# lacks it, goes there too (pip download pillow --no-deps --python-version 3.12
# --only-binary=:all: -d benchmarks/wheels; about 5 MB of the 64 MiB a call carries).
#
# Environment: OUT (output folder), CONFIGS (default imagenet_10pct: every method has one;
# imagenet_1pct has the same crops), BATCH (first unlabelled batch tried, default 512),
# SUPERVISED_BATCH (first supervised batch, default 1024), DEADLINE_S (default 480),
# PEAK_TFLOPS (default: throughput.py's entry for the device).
set -euo pipefail

OUT=${OUT:-/tmp/gpu_check}
CONFIGS=${CONFIGS:-imagenet_10pct}
BATCH=${BATCH:-512}
SUPERVISED_BATCH=${SUPERVISED_BATCH:-1024}
DEADLINE_S=${DEADLINE_S:-480}
PYTHON=${PYTHON:-python3}
START=$SECONDS
mkdir -p "$OUT"

fail() {
  echo "gpu_check: $*" >&2
  exit 1
}

[[ -f benchmarks/throughput.py ]] ||
  fail 'benchmarks/throughput.py is missing: run from the repository root of a checkout that has it.'

if ! "$PYTHON" -c 'import ml_collections' 2>/dev/null; then
  "$PYTHON" -m pip install --quiet --no-index --no-deps benchmarks/wheels/*.whl ||
    fail 'installing the carried wheels of benchmarks/wheels/ failed (see above).'
fi
missing=$("$PYTHON" - <<'EOF'
import importlib
for name in ('jax', 'flax', 'optax', 'orbax.checkpoint', 'ml_collections', 'sklearn', 'PIL',
             'semi_ssl.train', 'benchmarks.throughput'):
  try:
    importlib.import_module(name)
  except ImportError as error:
    print(f'{name} ({error})')
EOF
)
[[ -z $missing ]] ||
  fail "cannot import: $missing. Put its wheel (pip download --no-deps --python-version 3.12) in benchmarks/wheels/."
"$PYTHON" -c 'import jax; print("gpu_check:", jax.__version__, jax.devices())'

peak=()
if [[ -n ${PEAK_TFLOPS:-} ]]; then
  peak=(--peak_tflops "$PEAK_TFLOPS")
fi

# Runs the table (logs $OUT/$1_batch_B.log) with --batch $2 and the further flags (5 timing
# rounds: a GPU step varies far less than a CPU one), halving the
# batch while XLA reports an out-of-memory error and time is left; prints the batch that fitted.
largest_batch_run() {
  local name=$1 batch=$2 log left
  shift 2
  while ((batch >= 8)); do
    left=$((DEADLINE_S - (SECONDS - START)))
    ((left > 30)) || fail "out of time (${DEADLINE_S} s) before a batch fitted: see $OUT/*.log."
    log="$OUT/${name}_batch_$batch.log"
    echo "gpu_check: --batch $batch ($left s left): $*" >&2
    if timeout "$left" "$PYTHON" -m benchmarks.throughput --batch "$batch" --dtype bfloat16 \
      --repeats 5 "${peak[@]}" "$@" >"$log" 2>&1; then
      cat "$log" >&2
      echo "$batch"
      return 0
    fi
    if ! grep -qiE 'RESOURCE_EXHAUSTED|out of memory' "$log"; then
      tail -n 40 "$log" >&2
      fail "benchmarks.throughput failed (not out of memory): $log."
    fi
    batch=$((batch / 2))
  done
  fail 'no batch of 8 or more fits.'
}

# The supervised ResNet-50 224 px step first: the figure the target (3,000 images/s) is about.
largest_batch_run supervised "$SUPERVISED_BATCH" --configs imagenet_10pct --methods supervised --no_micro \
  --json "$OUT/supervised.json" >/dev/null
for config in ${CONFIGS//,/ }; do
  largest_batch_run "$config" "$BATCH" --configs "$config" --pass_images 50000 --sela_n 1281167 \
    --json "$OUT/gpu_$config.json" >/dev/null
done
cp "$OUT/gpu_${CONFIGS%%,*}.json" "$OUT/gpu.json"

"$PYTHON" - "$OUT/supervised.json" <<'EOF'
import json, sys
rows = json.load(open(sys.argv[1]))['methods']
row = next(r for r in rows if r['method'] == 'supervised')
mfu = row.get('mfu_pct')
print(f"gpu_check: supervised ResNet-50 224 px, bfloat16: {row['images_per_s']:.0f} images/s, "
      f"MFU {'n/a' if mfu is None else f'{mfu:.1f}%'} (target: 3000 images/s)")
EOF
echo "gpu_check: done in $((SECONDS - START)) s; tables in $OUT."
