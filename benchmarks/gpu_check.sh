#!/usr/bin/env bash
# Every GPU path in one device call (well under 8 minutes): CUDA inference and its parity with the CPU,
# CUDA graphs (accelerate: cuda_graphs), a bf16-autocast training step and a DDP step over NCCL
# (benchmarks/gpu_check.py), then the CUDA policy latency benchmark.
#
# Two steps, because the GPU machine has PyTorch but not every package this one installs:
#   benchmarks/gpu_check.sh --prepare     # here: wheels of the missing pure-Python packages into .whl/ (ignored)
#   bash benchmarks/gpu_check.sh          # there, through the device tool with carry: [".whl"]
# Results land in $OUT (the device tool brings them back) or ./gpu_check_out.
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=(zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0 diffusers==0.42.1 importlib_metadata==10.2.0)

if [[ "${1:-}" == "--prepare" ]]; then
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "${WHEELS[@]}"
    exit $?
fi

OUT_DIR=${OUT:-gpu_check_out}
mkdir -p "$OUT_DIR"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

failed=0
timeout 300 python3 benchmarks/gpu_check.py --out "$OUT_DIR/gpu_check.json" 2>&1 | tee "$OUT_DIR/gpu_check.log" \
    || failed=1
timeout 150 python3 benchmarks/policy_latency.py --device cuda --threads 1 --loads quiet --rounds 200 --no-compile \
    --out "$OUT_DIR/policy_latency_cuda.json" > "$OUT_DIR/policy_latency_cuda.log" 2>&1 || failed=1
tail -5 "$OUT_DIR/policy_latency_cuda.log"
echo "gpu_check: $([[ $failed == 0 ]] && echo all passed || echo FAILED, see $OUT_DIR)"
exit $failed
