#!/usr/bin/env bash
# One miner window's memory per preset, measured on a GPU machine (docs/hardware.md, "Measured"):
# torch.cuda.max_memory_allocated / max_memory_reserved against the computed bytes, with
# nvidia-smi's memory.used sampled every 100 ms beside it (the whole device: CUDA context included).
#
#   scripts/device_memory.sh                       # tiny and 150M on cuda, results under $OUT
#   DEVICE=cpu PRESETS=tiny scripts/device_memory.sh   # the same steps on CPU (no nvidia-smi)
#   STEPS=probe scripts/device_memory.sh           # only scripts/device_memory_probe.py: the window
#       at 3 inner steps, at half the rows and half the sequence, stage 2's evaluation, a GPipe
#       stage (bf16 autocast, as pipeline.worker trains) and two StageWorkers over loopback, each
#       measured beside its count (probe.jsonl)
#   STEPS=probe PROBE_ARGS="--cases stage,workers" scripts/device_memory.sh   # the stages only
#
# STEPS (default "measure probe pytest") picks the steps.
#
# Run from the checkout's root. Packages the machine lacks travel as wheels in .whl/ (installed
# to /tmp/site first, when .whl/ exists); results go to $OUT (default /tmp/device_memory).
set -uo pipefail
OUT=${OUT:-/tmp/device_memory}
DEVICE=${DEVICE:-cuda}
PRESETS=${PRESETS:-tiny 150M}
PY=${PYTHON:-python3}
STEPS=${STEPS:-measure probe pytest}
WHEELS=${WHEELS:-.whl}  # WHEELS=none: use what $PY has
mkdir -p "$OUT"
if compgen -G "$WHEELS/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl || exit 1
    export PYTHONPATH=/tmp/site:.
else
    export PYTHONPATH=.
fi
export PYTHONUNBUFFERED=1
{
    date -u +%FT%TZ
    if [ "$DEVICE" != cpu ]; then nvidia-smi; fi
    "$PY" -c "import sys, torch, transformers; print(sys.version.split()[0], 'torch', torch.__version__, \
'cuda', torch.version.cuda, 'transformers', transformers.__version__, \
torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no cuda')"
} 2>&1 | tee "$OUT/env.txt"

: >"$OUT/measure.jsonl"
case " $STEPS " in *" measure "*) ;; *) PRESETS_MEASURE= ;; esac
for preset in ${PRESETS_MEASURE-$PRESETS}; do
    smi=""
    if [ "$DEVICE" != cpu ]; then
        nvidia-smi --query-gpu=timestamp,memory.used --format=csv,noheader,nounits -lms 100 >"$OUT/smi_$preset.csv" &
        smi=$!
    fi
    start=$(date +%s)
    "$PY" -m neurons.cli memory --hparams "$preset" --device "$DEVICE" --measure --json >>"$OUT/measure.jsonl"
    rc=$?
    if [ -n "$smi" ]; then kill "$smi"; wait "$smi" 2>/dev/null; fi
    echo "$preset on $DEVICE: rc $rc, $(( $(date +%s) - start )) s"
    if [ -n "$smi" ]; then
        echo "$preset nvidia-smi memory.used peak: $(cut -d, -f2 "$OUT/smi_$preset.csv" | sort -n | tail -1) MiB"
    fi
done
cat "$OUT/measure.jsonl"

case " $STEPS " in *" probe "*)
    start=$(date +%s)
    # shellcheck disable=SC2086 # PROBE_ARGS is a list of flags
    "$PY" scripts/device_memory_probe.py --device "$DEVICE" --presets "${PRESETS// /,}" ${PROBE_ARGS:-} | tee "$OUT/probe.jsonl"
    echo "probe on $DEVICE: rc ${PIPESTATUS[0]}, $(( $(date +%s) - start )) s"
esac

if [ "$DEVICE" != cpu ] && [[ " $STEPS " == *" pytest "* ]]; then  # the CUDA-only test (no conftest: the S3 fixtures need boto3)
    "$PY" -m pytest -q -p no:cacheprovider --noconftest tests/neurons/test_memory.py -k cuda 2>&1 | tee "$OUT/pytest.txt"
fi
