# The ranking service image (serving/ranking_service.py): the service, the history store
# client and the online feature rules, on the pinned stack. It runs no model (TF Serving
# does); TensorFlow is here for the TF Serving protos the client speaks. Build from the
# repository root:
#
#   docker build -f serving/deploy/ranking.Dockerfile -t REGISTRY/unisar-ranking:TAG .
#
# Used by serving/deploy/docker-compose.yaml (as unisar-ranking:latest) and
# serving/deploy/ranking_kubernetes.yaml; flags: python -m serving.ranking_service --help.
FROM python:3.10-slim

WORKDIR /unisar
COPY requirements.lock ./
# The lock as constraints: these packages and every dependency they pull in get the lock's
# versions (protobuf 3.20.3 for the generated serving/protos code).
RUN pip install --no-cache-dir -c requirements.lock \
        tensorflow tensorflow-serving-api grpcio numpy scipy redis
COPY feature_specs ./feature_specs
COPY unisar_tf ./unisar_tf
COPY serving ./serving
ENV PYTHONPATH=/unisar \
    TF_CPP_MIN_LOG_LEVEL=3 \
    PYTHONUNBUFFERED=1
# HTTP/JSON and gRPC (the CLI's defaults).
EXPOSE 8080 8081
USER nobody
ENTRYPOINT ["python", "-m", "serving.ranking_service"]
