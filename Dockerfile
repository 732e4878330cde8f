# homefeed: one image for the ranking service (default command) and the stream consumer
# (`homefeed stream consume`). Build: docker build -t homefeed .
# CPU-only torch from PyTorch's CPU index: --build-arg TORCH_INDEX_URL=<that index>
FROM python:3.11-slim

ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX_URL=""

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HOMEFEED_HOME=/var/lib/homefeed \
    HOMEFEED_FEATURE_REPO=/app/feature_repo \
    HOMEFEED_VALIDATION_DIR=/app/validation \
    BENTOML_HOME=/var/lib/homefeed/bentoml

WORKDIR /app
RUN useradd --create-home --uid 10001 homefeed \
    && mkdir -p /var/lib/homefeed \
    && chown homefeed /var/lib/homefeed

# Dependencies first, so code edits do not reinstall torch.
COPY pyproject.toml README.md ./
COPY src ./src
# The project installs from this source tree; its dependency ranges live in pyproject.toml.
# hadolint ignore=DL3013
RUN if [ -n "$TORCH_INDEX_URL" ]; then pip install --index-url "$TORCH_INDEX_URL" "$TORCH_SPEC"; \
    else pip install "$TORCH_SPEC"; fi \
    && pip install .

COPY homefeed.toml ./
COPY feature_repo ./feature_repo
COPY validation ./validation
COPY bento ./bento
RUN chown -R homefeed /app/feature_repo

USER 10001
EXPOSE 3000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:3000/livez', timeout=2)"]
# The model comes from the BentoML model store under $BENTOML_HOME (mount it, or `homefeed export` into it).
CMD ["bentoml", "serve", "bento.service:Ranking", "--host", "0.0.0.0", "--port", "3000"]
