#!/usr/bin/env bash
# Serve UniSAR with the official TF Serving GPU image (production setup, one host).
#
# Usage: serving/deploy/docker_gpu.sh [SERVING_DIR] [extra tensorflow_model_server flags...]
#   SERVING_DIR (argument, else $SERVING_DIR, else out/serving) is the directory the Pusher
#   writes to: it must contain unisar/<version>/saved_model.pb.
# Needs Docker with the NVIDIA Container Toolkit (for --gpus). gRPC on 8500, REST on 8501.
# Same flags as serving/deploy/kubernetes.yaml; see docs/deployment.md.
set -euo pipefail

# Pinned to the TensorFlow version the model is trained and exported with (2.15.1), so the
# server has every op the SavedModel uses.
IMAGE="tensorflow/serving:2.15.1-gpu"

if [[ $# -gt 0 && "$1" != --* ]]; then
  SERVING_DIR="$1"
  shift
fi
SERVING_DIR="${SERVING_DIR:-out/serving}"

if [[ ! -d "${SERVING_DIR}/unisar" ]]; then
  echo "error: ${SERVING_DIR}/unisar not found; push a model first (python -m unisar_tf.export)" >&2
  exit 1
fi
# docker needs absolute host paths.
MODEL_DIR="$(cd "${SERVING_DIR}/unisar" && pwd)"
CONFIG_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/../config" && pwd)"
if ! compgen -G "${MODEL_DIR}/[0-9]*/saved_model.pb" > /dev/null; then
  # TF Serving starts anyway and waits (ports closed) until a version appears.
  echo "warning: no <version>/saved_model.pb under ${MODEL_DIR} yet" >&2
fi

# <serving_dir>/unisar is mounted at /models/unisar, the base_path in models.config; TF
# Serving sees new version directories the Pusher writes there without a restart. Both
# mounts are read-only: the server never writes to them.
# Ports are published on all interfaces: TF Serving has no authentication, so the host
# must only be reachable from the callers' private network (or put a proxy in front).
# --rest_api_port/--port repeat the image entrypoint's defaults to make them explicit;
# --model_config_file replaces the entrypoint's --model_name/--model_base_path.
exec docker run --rm --name "${CONTAINER_NAME:-unisar-serving}" \
  --gpus all \
  -p 8500:8500 -p 8501:8501 \
  --mount "type=bind,source=${MODEL_DIR},target=/models/unisar,readonly" \
  --mount "type=bind,source=${CONFIG_DIR},target=/config,readonly" \
  "${IMAGE}" \
  --port=8500 \
  --rest_api_port=8501 \
  --model_config_file=/config/models.config \
  --enable_batching \
  --batching_parameters_file=/config/batching_gpu.config \
  --monitoring_config_file=/config/monitoring.config \
  "$@"
