#!/bin/sh
# The image's entrypoint, as tensorflow/serving's tf_serving_entrypoint.sh: the model is
# ${MODEL_BASE_PATH}/${MODEL_NAME} (defaults /models and model), gRPC on 8500, REST on 8501, and
# the container's arguments are appended; a later flag wins, so `--port=9000` or
# `--model_config_file=...` work as they do with tensorflow_model_server.
# PYSERVING_BIN replaces the server binary (default: pyserving on PATH).
set -eu
# exec: the server itself receives SIGTERM and drains in-flight requests before it exits.
exec "${PYSERVING_BIN:-pyserving}" --port=8500 --rest_api_port=8501 \
    --model_name="${MODEL_NAME:-model}" \
    --model_base_path="${MODEL_BASE_PATH:-/models}/${MODEL_NAME:-model}" \
    "$@"
