# The tunefleet image of the Ray head and workers on Kubernetes (k8s/), which also runs a job's
# coordinator. CUDA's devel image, because the GPU workers compile candidates with nvcc and
# pycuda builds against its headers; tunefleet[cuda] in a virtual environment on PATH, with
# the cupy wheel of the image's CUDA 12 (compiled models run on the GPU through cupy); Ray
# pinned to the rayVersion of the manifests (k8s/base/ray/raycluster.yaml).
#
#   docker build -t REGISTRY/tunefleet:0.1.0 .
#   docker push REGISTRY/tunefleet:0.1.0
#
# The same image serves the CPU overlay (the C target needs only gcc, which is here too).
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-devel-ubuntu24.04
FROM ${CUDA_IMAGE}

ARG RAY_VERSION=2.52.0
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/tunefleet/bin:$PATH

# wget: KubeRay's health probes call it inside the Ray containers
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3 python3-venv python3-dev gcc g++ wget ca-certificates \
    && rm -rf /var/lib/apt/lists/*

COPY . /src
RUN python3 -m venv /opt/tunefleet \
    && pip install --upgrade pip \
    && pip install "tunefleet[cuda] @ file:///src" "ray[default]==${RAY_VERSION}" \
        "cupy-cuda12x>=13.0" \
    && rm -rf /src

RUN useradd --create-home --shell /bin/bash ray
USER ray
WORKDIR /home/ray
CMD ["tunefleet", "--help"]
