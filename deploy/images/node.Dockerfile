# A CPU node: `sentinel node` (a SuperNode running the Sentinel ClientApp).
#   docker build -f deploy/images/node.Dockerfile -t sentinel-node .
# GPU servers use node-gpu.Dockerfile (CUDA torch). Edge devices that only run the
# ONNX bundle need neither: see deploy/EDGE.md.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
WORKDIR /app
COPY pyproject.toml README.md constraints-cpu.txt ./
COPY models ./models
COPY client ./client
COPY server ./server
COPY ledger ./ledger
COPY governance ./governance
COPY protos ./protos
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu -c constraints-cpu.txt '.[demo]' \
    && ! pip list 2>/dev/null | grep -qiE '^nvidia-'

RUN useradd --create-home sentinel
USER sentinel
# The node's key files are mounted read-only at /keys (its signing key, SuperNode key, the CA).
ENTRYPOINT ["sentinel", "node"]
CMD ["--help"]
