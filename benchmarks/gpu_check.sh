#!/usr/bin/env bash
# One-shot GPU check (issue 12): run from the repository root on a machine with CUDA.
#
#   bash benchmarks/gpu_check.sh [RESULTS_DIR]        (default: benchmarks/results/gpu_<date>)
#
# Writes into one folder: env.txt, conformance.txt (conformance suite with --device $DEV: fp32,
# float64/bf16 dtypes, bf16 + fp16 autocast training steps), models.txt + gpu_models_check.json
# (every model: train step fp32 / bf16 / fp16 autocast, eval under autocast vs fp32), bench/
# (`visattn bench` on the GPU, every mechanism and its peers, fp32 and bf16), training_speed.*
# (issue-12 ratios on the GPU), models_vs_timm.* (our model pairs on the GPU) and train/
# (a short `visattn train --amp bf16` on the built-in digits data). Each step has its own time
# limit (435 s in all, so < 8 min with start-up); a failing step is recorded in summary.txt and
# the script goes on.
# GPU_CHECK_DEVICE=cpu runs the same steps on the CPU (a dry run of the script itself; slow).
set -u
cd "$(dirname "$0")/.."
OUT="${1:-benchmarks/results/gpu_$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT"
PY="${PYTHON:-python}"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"

step() {  # step NAME SECONDS LOGFILE COMMAND...
    local name="$1" limit="$2" log="$3"
    shift 3
    local t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$log" 2>&1
    local rc=$?
    local verdict="ok"
    [ "$rc" -eq 124 ] && verdict="TIMED OUT after ${limit}s"
    [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && verdict="FAILED (exit $rc)"
    printf '%-22s %-28s %4ss  log: %s\n' "$name" "$verdict" "$((SECONDS - t0))" "$log" | tee -a "$SUMMARY"
}

DEV="${GPU_CHECK_DEVICE:-cuda}"
if [ "$DEV" != cpu ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: CUDA is not available here (torch.cuda.is_available() is False); nothing to do" | tee -a "$SUMMARY"
    exit 2
fi

{
    date -u
    nvidia-smi || true
    "$PY" -c "import torch, visattn; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version()); print(torch.cuda.get_device_name(0)); print('visattn', visattn.__version__ if hasattr(visattn, '__version__') else '?')"
    git rev-parse HEAD 2>/dev/null || true
} > "$OUT/env.txt" 2>&1

# 1. conformance suite on the GPU (compile/ONNX/TorchScript tests stay on the CPU; they ignore --device)
step conformance 120 conformance.txt "$PY" -m pytest tests/test_conformance.py -q -x --device $DEV -p no:cacheprovider \
    -k "shapes or dtypes or batch_independence or gradient or autocast"
# 2. every model: train step fp32 / bf16 / fp16 autocast, eval vs fp32
step models 60 models.txt "$PY" benchmarks/gpu_models_check.py --device $DEV --size 64 --out "$OUT"
# 3. `visattn bench` on the GPU: every mechanism with its variants, fp32 then bf16
step bench-fp32 60 bench_fp32.txt "$PY" -m visattn.cli bench --device $DEV --variants -r 28 56 112 --min-time 0.05 \
    --no-progress -o "$OUT/bench_fp32"
step bench-bf16 40 bench_bf16.txt "$PY" -m visattn.cli bench --device $DEV --dtype bfloat16 -r 28 56 112 --min-time 0.05 \
    --no-progress -o "$OUT/bench_bf16"
# 4. issue-12 training-speed ratios on the GPU
step training-speed 45 training_speed.txt "$PY" benchmarks/training_speed.py --device $DEV --rounds 7 --out-dir "$OUT"
# 5. model-level pairs (ours only; timm peers when this environment has timm)
step models-speed 60 models_vs_timm.txt "$PY" benchmarks/models_vs_timm.py --device $DEV --rounds 5 --batch 16 --out-dir "$OUT"
# 6. a short training run under bf16 autocast
step train-bf16 50 train.txt "$PY" -m visattn.cli train --model resnet_tiny --attention slide --data digits --epochs 1 \
    --batch-size 64 --amp bf16 --device $DEV --no-progress --output "$OUT/train"

echo "results in $OUT" | tee -a "$SUMMARY"
