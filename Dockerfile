# homefeed: one image for the ranking service (default command), the stream consumer
# (`homefeed stream consume`) and the batch jobs. Build: docker build -t homefeed .
# torch comes from PyTorch's CPU index by default (no CUDA libraries in the image); a CUDA
# build: --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
# All run-time state (offline log, Feast registry, GX results, models) lives under
# HOMEFEED_HOME=/var/lib/homefeed: mount a volume there.
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}

ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOMEFEED_HOME=/var/lib/homefeed \
    HOMEFEED_FEATURE_REPO=/app/feature_repo \
    HOMEFEED_VALIDATION_DIR=/app/validation \
    BENTOML_HOME=/var/lib/homefeed/bentoml \
    BENTOML_DO_NOT_TRACK=true

WORKDIR /app
RUN useradd --create-home --uid 10001 homefeed \
    && mkdir -p /var/lib/homefeed \
    && chown homefeed /var/lib/homefeed

# torch first (the biggest layer, changes least). The CPU index's local version (+cpu) sorts
# above PyPI's build of the same version, so pip takes it; its dependencies come from PyPI.
# hadolint ignore=DL3013
RUN pip install --extra-index-url "$TORCH_INDEX_URL" "$TORCH_SPEC"

# Dependencies next, from pyproject.toml alone (a stub package), so code edits reuse this layer.
COPY pyproject.toml README.md ./
# hadolint ignore=DL3013
RUN mkdir -p src/homefeed && touch src/homefeed/__init__.py \
    && pip install "$TORCH_SPEC" . \
    && pip uninstall -y homefeed && rm -rf src build

COPY src ./src
# hadolint ignore=DL3013
RUN pip install --no-deps . && rm -rf build

COPY homefeed.toml ./
COPY feature_repo ./feature_repo
COPY validation ./validation
COPY training ./training
COPY bento ./bento

USER 10001
EXPOSE 3000
# The ranking service's liveness; the consumer's compose service checks its metrics port instead.
HEALTHCHECK --interval=10s --timeout=3s --start-period=90s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:3000/livez', timeout=2)"]
# The model comes from the BentoML model store under $BENTOML_HOME (`homefeed export` into it).
CMD ["bentoml", "serve", "bento.service:Ranking", "--host", "0.0.0.0", "--port", "3000"]
