# A GPU node: the same `sentinel node` with a CUDA build of torch. No constraints file:
# the package asks for torch>=2.6,<3 and this image takes PyTorch's CUDA wheel.
#   docker build -f deploy/images/node-gpu.Dockerfile --build-arg CUDA=cu124 -t sentinel-node-gpu .
# Run with the NVIDIA container toolkit (docker run --gpus all ...); the node uses
# CUDA when present (--device auto) or the device you name (--device cuda:0).
FROM nvidia/cuda:12.4.1-runtime-ubuntu22.04

ARG CUDA=cu124
ENV PIP_NO_CACHE_DIR=1 FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
    && rm -rf /var/lib/apt/lists/* && python3.11 -m venv /venv
ENV PATH=/venv/bin:$PATH
WORKDIR /app
COPY pyproject.toml README.md ./
COPY models ./models
COPY client ./client
COPY server ./server
COPY ledger ./ledger
COPY governance ./governance
COPY protos ./protos
RUN pip install --extra-index-url https://download.pytorch.org/whl/${CUDA} '.[demo]'

RUN useradd --create-home sentinel
USER sentinel
ENTRYPOINT ["sentinel", "node"]
CMD ["--help"]
