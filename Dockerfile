# The image every component of the UniSAR TFX pipeline runs in on Kubeflow
# (pipeline/runners/kubeflow.py --image ...). Built on the official TFX image of the pinned
# TFX version, so TFX, TensorFlow 2.15, Beam and ML Metadata are the versions the pipeline
# was tested with; only what that image lacks is added, at the versions in requirements.lock.
#
#   docker build -t REGISTRY/unisar-tfx:TAG . && docker push REGISTRY/unisar-tfx:TAG
FROM tensorflow/tfx:1.15.1

# Keras 2 API under any TF: a no-op on TF 2.15, and what keeps the same code running if the
# base moves to TF 2.16+ (with tf-keras installed).
ENV TF_USE_LEGACY_KERAS=1

WORKDIR /unisar
COPY requirements.lock setup.py ./
# Pinned from the lock: the model's libraries and dill (tfx_bsl imports it).
RUN grep -E '^(tensorflow-recommenders|tensorflow-ranking|tensorflow-serving-api|dill)==' \
        requirements.lock > /tmp/extra-requirements.txt \
    && pip install --no-cache-dir -r /tmp/extra-requirements.txt
COPY feature_specs ./feature_specs
COPY unisar_tf ./unisar_tf
# pipeline/ includes pipeline/schemas/, the schema files `python -m pipeline.runners.kubeflow`
# writes when it compiles (docs/pipeline.md): build the image after compiling.
COPY pipeline ./pipeline
COPY serving ./serving
RUN pip install --no-cache-dir --no-deps -e .
ENV PYTHONPATH=/unisar
