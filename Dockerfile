# syntax=docker/dockerfile:1
# pyserving as a drop-in for the tensorflow/serving image: the same MODEL_NAME and
# MODEL_BASE_PATH variables, ports (8500 gRPC, 8501 REST) and entrypoint arguments.
#   docker build -t pyserving .
#   docker run -p 8500:8500 -p 8501:8501 -e MODEL_NAME=half_plus_two \
#     -v "$PWD/models/half_plus_two:/models/half_plus_two" pyserving
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# tini as PID 1 forwards SIGTERM to the server and reaps children; a process that is PID 1
# itself would ignore the default-action SIGTERM the server relies on while models load.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*

# Everything is installed at build time; the server downloads nothing when it runs but models
# (the cloud extra reads s3:// and gs:// base paths).
COPY pyproject.toml README.md /tmp/pyserving/
COPY server /tmp/pyserving/server
COPY client /tmp/pyserving/client
RUN pip install "/tmp/pyserving[server,cloud]" && rm -rf /tmp/pyserving

COPY --chmod=755 deploy/docker/entrypoint.sh /usr/bin/pyserving_entrypoint.sh
# Names the tensorflow/serving image has, for deployments that override the command.
RUN ln -s /usr/bin/pyserving_entrypoint.sh /usr/bin/tf_serving_entrypoint.sh \
    && ln -s "$(command -v pyserving)" /usr/bin/tensorflow_model_server

ENV MODEL_BASE_PATH=/models
ENV MODEL_NAME=model
RUN mkdir -p "${MODEL_BASE_PATH}" \
    && groupadd --gid 1000 pyserving \
    && useradd --uid 1000 --gid 1000 --create-home --shell /usr/sbin/nologin pyserving

# gRPC
EXPOSE 8500
# REST
EXPOSE 8501

# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 1000:1000
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/bin/pyserving_entrypoint.sh"]
