# syntax=docker/dockerfile:1
#
# gapfix container images. Two targets:
#   docker build --target cpu -t gapfix:0.1.0-cpu .   # python:3.11-slim + CPU-only torch
#   docker build --target gpu -t gapfix:0.1.0-gpu .   # CUDA runtime + CUDA torch + GPU FAISS
# Both run the same command as the README: `gapfix serve --host 0.0.0.0 --port 8000`; everything
# else is configured with GAPFIX_* environment variables (see deploy/README.md).

ARG PYTHON_IMAGE=python:3.11-slim
# torch 2.14.1 wheels on PyPI are built against CUDA 13.0: the GPU image uses the matching runtime.
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-runtime-ubuntu24.04
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1

# ---------------------------------------------------------------------------------------------
# wheel: build the gapfix wheel (pure Python, so the same wheel serves both targets).
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gapfix ./gapfix
COPY service ./service
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# ---------------------------------------------------------------------------------------------
# cpu-venv: a virtual environment with CPU-only torch (a few hundred MB instead of several GB).
FROM ${PYTHON_IMAGE} AS cpu-venv
ARG TORCH_VERSION
ARG TORCHVISION_VERSION
ENV PATH=/opt/venv/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv \
    && pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"
COPY --from=wheel /wheels /wheels
# torch is already satisfied (2.14.1+cpu matches ==2.14.1), so PyPI only adds the rest.
RUN pip install --no-cache-dir /wheels/gapfix-*.whl \
    && python -c "import faiss, torch, gapfix.cli; assert not torch.version.cuda"

# ---------------------------------------------------------------------------------------------
# cpu: the runtime image.
FROM ${PYTHON_IMAGE} AS cpu
LABEL org.opencontainers.image.title="gapfix (CPU)" \
      org.opencontainers.image.description="Modality-gap corrected CLIP retrieval service" \
      org.opencontainers.image.licenses="MIT"
RUN groupadd --system --gid 10001 gapfix \
    && useradd --system --uid 10001 --gid gapfix --home-dir /home/gapfix --create-home gapfix \
    && mkdir -p /data /models \
    && chown gapfix:gapfix /data /models
COPY --from=cpu-venv /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GAPFIX_DATA_DIR=/data \
    GAPFIX_MODEL_CACHE=/models \
    HF_HOME=/models/huggingface \
    XDG_CACHE_HOME=/models/cache
VOLUME ["/data", "/models"]
USER 10001:10001
WORKDIR /home/gapfix
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["gapfix", "serve", "--host", "0.0.0.0", "--port", "8000"]

# ---------------------------------------------------------------------------------------------
# gpu-venv: CUDA torch from PyPI plus faiss-gpu (the `gpu` extra), built on the runtime's Python.
FROM ${CUDA_IMAGE} AS gpu-venv
ENV DEBIAN_FRONTEND=noninteractive \
    PATH=/opt/venv/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Ubuntu's python3 moves with the base tag; pinning its patch version would break every rebuild.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv
COPY --from=wheel /wheels /wheels
# faiss-cpu (a core dependency) and faiss-gpu-cu12 (the gpu extra) both install the `faiss`
# package, so whichever pip unpacks last wins: reinstall the GPU build alone, then prove it.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN whl="$(ls /wheels/gapfix-*.whl)" \
    && pip install --no-cache-dir "gapfix[gpu] @ file://${whl}" \
    && faiss_version="$(pip show faiss-gpu-cu12 | sed -n 's/^Version: //p')" \
    && pip uninstall -y faiss-cpu faiss-gpu-cu12 \
    && pip install --no-cache-dir --no-deps "faiss-gpu-cu12==${faiss_version}" \
    && python -c "import faiss, torch, gapfix.cli; assert hasattr(faiss, 'StandardGpuResources'); assert torch.version.cuda"

# ---------------------------------------------------------------------------------------------
# gpu: the runtime image (needs the NVIDIA container toolkit / device plugin and a driver that
# supports CUDA 13.0 on the host).
FROM ${CUDA_IMAGE} AS gpu
LABEL org.opencontainers.image.title="gapfix (GPU)" \
      org.opencontainers.image.description="Modality-gap corrected CLIP retrieval service" \
      org.opencontainers.image.licenses="MIT"
ENV DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 gapfix \
    && useradd --system --uid 10001 --gid gapfix --home-dir /home/gapfix --create-home gapfix \
    && mkdir -p /data /models \
    && chown gapfix:gapfix /data /models
COPY --from=gpu-venv /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    GAPFIX_DATA_DIR=/data \
    GAPFIX_MODEL_CACHE=/models \
    HF_HOME=/models/huggingface \
    XDG_CACHE_HOME=/models/cache
VOLUME ["/data", "/models"]
USER 10001:10001
WORKDIR /home/gapfix
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["gapfix", "serve", "--host", "0.0.0.0", "--port", "8000"]
