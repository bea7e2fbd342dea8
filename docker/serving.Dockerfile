# syntax=docker/dockerfile:1
# Triton with alloynet's own CPU backend (serving/triton/backend/alloynet_ort.cc): what serves the nightly's
# `triton/` package (backend alloynet_ort) on nodes without a GPU. On GPU nodes NVIDIA's stock tritonserver
# image serves the `triton-gpu/` package as it is (infra/k8s/triton.yaml), and this image is not needed.
# The model repository is not in the image: Triton reads it from S3 (--model-repository=s3://...) or a volume.
#
#   docker build -f docker/serving.Dockerfile -t "$REGISTRY/alloynet/triton:$(git rev-parse --short HEAD)" .
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:25.01-py3
ARG BUILD_IMAGE=python:3.12.8-slim-bookworm

FROM ${BUILD_IMAGE} AS backend
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++=4:12.2.0-3 rapidjson-dev=1.1.0+dfsg2-7.1 \
    && rm -rf /var/lib/apt/lists/*
# the ONNX Runtime library the backend links against, from the same wheel the serve extra pins
RUN pip install --no-cache-dir --target /ort onnxruntime==1.32.0
WORKDIR /build
COPY serving/triton/backend/alloynet_ort.cc .
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN capi=/ort/onnxruntime/capi \
    && lib=$(find "$capi" -maxdepth 1 -name 'libonnxruntime.so.1.*' -printf '%f\n' | head -1) \
    && mkdir -p /out/alloynet_ort \
    && cp "$capi/$lib" /out/alloynet_ort/ \
    && ln -s "$lib" /out/alloynet_ort/libonnxruntime.so.1 \
    && g++ -O2 -std=c++17 -Wall -Wextra -Werror -shared -fPIC -o /out/alloynet_ort/libtriton_alloynet_ort.so \
        alloynet_ort.cc -L"$capi" -l:"$lib" -Wl,-rpath,/opt/tritonserver/backends/alloynet_ort

FROM ${TRITON_IMAGE}
COPY --from=backend /out/alloynet_ort /opt/tritonserver/backends/alloynet_ort
# a user of our own with a fixed number (Kubernetes' runAsNonRoot checks a number; the base image's users'
# numbers vary between releases); Triton writes nothing outside /tmp
RUN groupadd --gid 10001 alloynet \
    && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin alloynet
USER 10001
EXPOSE 8000 8001 8002
CMD ["tritonserver", "--model-repository=/models"]
