# syntax=docker/dockerfile:1
# The alloynet worker image: what every flow-run pod of the gpu-k8s pool runs (nightly, study cells, search
# trials). torch==2.14.1 from PyPI is the CUDA build (the NVIDIA libraries come as wheels: the node needs
# only the driver and the NVIDIA device plugin); the versions are pyproject.toml's pins.
#
#   docker build -f docker/worker.Dockerfile -t "$REGISTRY/alloynet/worker:$(git rev-parse --short HEAD)" .
#   docker push "$REGISTRY/alloynet/worker:$(git rev-parse --short HEAD)"
#
# Prefect runs flows from /opt/alloynet (prefect.yaml: set_working_directory), where the repository is.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY alloynet alloynet
COPY flows flows
COPY serving serving
COPY infra infra
# a regular (not editable) install: the image does not depend on /src
RUN pip install --no-cache-dir "./[train,flows,serve,pbt]"

FROM ${PYTHON_IMAGE}
RUN groupadd --gid 10001 alloynet \
    && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin alloynet
COPY --from=build /opt/venv /opt/venv
COPY --chown=10001:10001 . /opt/alloynet
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    DO_NOT_TRACK=1 \
    RAY_USAGE_STATS_ENABLED=0
WORKDIR /opt/alloynet
USER 10001
# the Kubernetes worker replaces the command with `prefect flow-run execute`
CMD ["prefect", "version"]
