#!/usr/bin/env bash
# Serve UniSAR with the official TF Serving GPU image (production setup, one host).
#
# Usage: serving/deploy/docker_gpu.sh [SERVING_DIR] [extra tensorflow_model_server flags...]
# Needs Docker with the NVIDIA Container Toolkit (for --gpus). Image, ports, mounts and flags:
# tf_serving_docker.sh; see docs/deployment.md.
set -euo pipefail
VARIANT=gpu exec bash "$(dirname "${BASH_SOURCE[0]}")/tf_serving_docker.sh" "$@"
