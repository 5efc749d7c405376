#!/usr/bin/env bash
# Serve UniSAR with the official TF Serving CPU image (a workstation or a small CPU host).
#
# Usage: serving/deploy/docker_cpu.sh [SERVING_DIR] [extra tensorflow_model_server flags...]
#   SERVING_DIR (argument, else $SERVING_DIR, else out/serving) is the directory the Pusher
#   writes to: it must contain unisar/<version>/saved_model.pb.
# Same as docker_gpu.sh except the image, the batching file (sized for 2-8 cores) and the
# ports, which are published on 127.0.0.1 only. See docs/deployment.md.
set -euo pipefail

# Pinned to the TensorFlow version the model is trained and exported with (2.15.1).
IMAGE="tensorflow/serving:2.15.1"

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

# Mounts as in docker_gpu.sh: <serving_dir>/unisar at /models/unisar (models.config
# base_path), the configs at /config, both read-only.
# Ports only on 127.0.0.1: TF Serving has no authentication, and this variant is meant for
# a developer machine, not for other hosts to call.
exec docker run --rm --name "${CONTAINER_NAME:-unisar-serving-cpu}" \
  -p 127.0.0.1:8500:8500 -p 127.0.0.1:8501:8501 \
  --mount "type=bind,source=${MODEL_DIR},target=/models/unisar,readonly" \
  --mount "type=bind,source=${CONFIG_DIR},target=/config,readonly" \
  "${IMAGE}" \
  --port=8500 \
  --rest_api_port=8501 \
  --model_config_file=/config/models.config \
  --enable_batching \
  --batching_parameters_file=/config/batching_cpu.config \
  --monitoring_config_file=/config/monitoring.config \
  "$@"
