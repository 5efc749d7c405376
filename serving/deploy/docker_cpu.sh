#!/usr/bin/env bash
# Serve UniSAR with the official TF Serving CPU image (a workstation or a small CPU host):
# batching sized for 2-8 cores, ports published on 127.0.0.1 only.
#
# Usage: serving/deploy/docker_cpu.sh [SERVING_DIR] [extra tensorflow_model_server flags...]
# Image, ports, mounts and flags: tf_serving_docker.sh; see docs/deployment.md.
set -euo pipefail
VARIANT=cpu exec bash "$(dirname "${BASH_SOURCE[0]}")/tf_serving_docker.sh" "$@"
