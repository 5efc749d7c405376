#!/usr/bin/env bash
# Shared body of docker_gpu.sh and docker_cpu.sh: run TF Serving on the pushed models with
# the repo's configs. Called with VARIANT=gpu|cpu; use those two scripts, not this one.
#
# Args: [SERVING_DIR] [extra tensorflow_model_server flags...]. SERVING_DIR (argument, else
# $SERVING_DIR, else out/serving) is the directory the Pusher writes to: it must contain
# unisar/<version>/saved_model.pb. gRPC on 8500, REST on 8501. Same server flags as
# serving/deploy/kubernetes.yaml; see docs/deployment.md.
set -euo pipefail

# Pinned to the TensorFlow version the model is trained and exported with (2.15.1), so the
# server has every op the SavedModel uses.
case "${VARIANT:?VARIANT=gpu|cpu}" in
  gpu)
    IMAGE="tensorflow/serving:2.15.1-gpu"
    # Ports on all interfaces: TF Serving has no authentication, so the host must only be
    # reachable from the callers' private network (or put a proxy in front).
    DOCKER_OPTIONS=(--gpus all -p 8500:8500 -p 8501:8501)
    BATCHING_FILE="batching_gpu.config"
    DEFAULT_NAME="unisar-serving"
    ;;
  cpu)
    IMAGE="tensorflow/serving:2.15.1"
    # Ports only on 127.0.0.1: this variant is meant for a developer machine.
    DOCKER_OPTIONS=(-p 127.0.0.1:8500:8500 -p 127.0.0.1:8501:8501)
    BATCHING_FILE="batching_cpu.config"
    DEFAULT_NAME="unisar-serving-cpu"
    ;;
  *) echo "error: VARIANT must be gpu or cpu, not ${VARIANT}" >&2; exit 2 ;;
esac

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
# --rest_api_port/--port repeat the image entrypoint's defaults to make them explicit;
# --model_config_file replaces the entrypoint's --model_name/--model_base_path.
exec docker run --rm --name "${CONTAINER_NAME:-${DEFAULT_NAME}}" \
  "${DOCKER_OPTIONS[@]}" \
  --mount "type=bind,source=${MODEL_DIR},target=/models/unisar,readonly" \
  --mount "type=bind,source=${CONFIG_DIR},target=/config,readonly" \
  "${IMAGE}" \
  --port=8500 \
  --rest_api_port=8501 \
  --model_config_file=/config/models.config \
  --enable_batching \
  --batching_parameters_file="/config/${BATCHING_FILE}" \
  --monitoring_config_file=/config/monitoring.config \
  "$@"
