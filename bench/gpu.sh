#!/usr/bin/env bash
# Every GPU figure of the feed in one command, well inside 8 minutes: the model's ceiling and the
# run's loop over images in memory (decode threads → batch slots → model → rows) in fp16, bf16
# and fp32, at the batch sizes an accelerator wants, fed by one decode thread per core plus one;
# and each precision's top-1 agreement on the device with the fp32 model on the CPU.
#
# A GPU machine without a package registry gets what it lacks as wheels: `make gpu-wheels` puts
# them in .whl/ (ignored; CPython 3.12, Linux x86-64, the versions this repo pins), and the
# converted model is in ai_assets/.cache/ (`make model`). Carry both; this script installs the
# wheels into /tmp/site first. On any machine, `PYTHON=.venv/bin/python bash bench/gpu.sh` runs
# the same figures on whatever device torch finds (the CPU where there is no GPU).
#
# Ends with bench/model_ceiling.py's line: RESULT device=… fp16_top1_agreement=… fp16_b256_loop_img_s=… …
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1

if compgen -G ".whl/*.whl" >/dev/null; then
    if "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site .whl/*.whl
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    else
        echo "not installing .whl/: its wheels are for CPython 3.12"
    fi
fi
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null ||
    echo "no NVIDIA GPU"
"$PYTHON" -c 'import os, torch, transformers
print(f"torch {torch.__version__} (CUDA: {torch.cuda.is_available()}), "
      f"transformers {transformers.__version__}, {os.cpu_count()} CPUs")'

# ~3 × 2 × (ceiling --seconds + a loop of about as long) + model loads and the corpus
timeout "${GPU_BENCH_TIMEOUT:-420}" "$PYTHON" bench/model_ceiling.py \
    --precisions "${PRECISIONS:-fp16,bf16,fp32}" \
    --batch-sizes "${BATCH_SIZES:-64,256}" \
    --images "${IMAGES:-1024}" \
    --seconds "${SECONDS_EACH:-8}"
