# The coordinator host: `sentinel server` (SuperLink + ledger and governance services)
# and the ServerApp it runs. CPU torch, pinned by constraints-cpu.txt.
# Build from the repository root (Docker is not available on the development machine;
# build these elsewhere):
#   docker build -f deploy/images/coordinator.Dockerfile -t sentinel-coordinator .
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
# The exact CPU build of torch from PyTorch's CPU index: no CUDA packages in this image.
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu -c constraints-cpu.txt '.[demo,postgres]' \
    && ! pip list 2>/dev/null | grep -qiE '^nvidia-'

RUN useradd --create-home sentinel && mkdir -p /data /keys && chown sentinel /data
USER sentinel
VOLUME ["/data"]
EXPOSE 9093 50052 50061
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s \
  CMD python -c "import sys; from sentinel.server.control import Link, healthy; sys.exit(0 if healthy(Link('127.0.0.1:9093', '/keys/ca/ca.crt')) else 1)"
ENTRYPOINT ["sentinel"]
CMD ["server", "--host", "0.0.0.0", "--data-dir", "/data", "--node-cards", "/keys/cards", \
     "--tls-cert", "/keys/server/server.pem", "--tls-key", "/keys/server/server.key", "--tls-ca", "/keys/ca/ca.crt"]
