# syntax=docker/dockerfile:1
# The ai_assets image: code location server, webserver, daemon and run workers.
#   docker build -t ai-assets:0.1.0 --build-arg TORCH_INDEX_URL=<PyTorch's CPU wheel index> .
# Without TORCH_INDEX_URL pip resolves torch from its default index, which on Linux is the CUDA
# build: that is the GPU variant (run with classification.gpus > 0 in the Helm chart).
FROM python:3.11.11-slim-bookworm

ARG TORCH_INDEX_URL=""
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    HF_HUB_OFFLINE=1 \
    AI_ASSETS_MODEL=/opt/ai_assets/models/efficientnet-lite0 \
    MALLOC_MMAP_THRESHOLD_=1073741824 \
    MALLOC_TRIM_THRESHOLD_=1073741824 \
    DAGSTER_EVENT_BATCH_SIZE=1000

RUN groupadd --system --gid 10001 dagster \
    && useradd --system --uid 10001 --gid dagster --home-dir /opt/dagster --shell /usr/sbin/nologin dagster

WORKDIR /opt/dagster/app

# torch first, alone and pinned (the same pin as pyproject.toml): nothing may re-resolve it
RUN if [ -n "$TORCH_INDEX_URL" ]; then export PIP_INDEX_URL="$TORCH_INDEX_URL"; fi \
    && pip install torch==2.13.0

# the project's dependencies, read from pyproject.toml, before the code: a code change keeps
# this layer cached; the GPU variant (no TORCH_INDEX_URL) adds the gpu extra (nvJPEG)
COPY pyproject.toml README.md ./
RUN python -c "import os, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + ([] if os.environ.get('TORCH_INDEX_URL') else p['optional-dependencies']['gpu'])))" > /tmp/requirements.txt \
    && pip install --requirement /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# the code location runs from this WORKDIR: `-m ai_assets.definitions` imports this copy, beside
# the pyproject.toml whose [tool.dg] block `dg.load_from_defs_folder` reads
COPY ai_assets ./ai_assets
RUN pip install --no-deps . \
    && python -c "from pathlib import Path; from ai_assets.vision.convert import convert; convert(Path('$AI_ASSETS_MODEL'))" \
    && mkdir -p "$DAGSTER_HOME" /opt/dagster/workspace \
    && chown -R dagster:dagster /opt/dagster

COPY --chown=dagster:dagster workspace.yaml /opt/dagster/workspace/

USER 10001:10001
EXPOSE 3000 4000 8000
CMD ["dagster", "api", "grpc", "-m", "ai_assets.definitions", "-h", "0.0.0.0", "-p", "4000"]
