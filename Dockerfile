# The project's image: the README's set-up (scripts/setup.sh) on a Python base, for the pods of a
# Kubernetes deployment (deploy/k8s/) or any machine. Weights are never in it: they are mounted at
# run time (deploy/k8s/dagster.yaml mounts them read-only at /project/weights). CPU by default;
# for GPUs, a CUDA base and the CUDA build of torch:
#
#   docker build -t m2m .
#   docker build -t m2m:cu128 \
#     --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#     --build-arg M2M_TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" .
#
# (M2M_EXTRAS=standard adds the paper's metrics; pyproject.toml says which torchvision to add to the
# spec then.) docs/scale-out.md: the build itself has not run in this repository's CI.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ARG M2M_TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
ARG M2M_EXTRAS=""

# git: runs record the commit of the project they ran in. A CUDA base has no Python of its own.
RUN apt-get update \
    && apt-get install -y --no-install-recommends git ca-certificates \
    && if ! python3 -m venv --help > /dev/null 2>&1; then \
         apt-get install -y --no-install-recommends python3 python3-venv; \
       fi \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/m2m
COPY . .
RUN PIP_NO_CACHE_DIR=1 M2M_TORCH_SPEC="$M2M_TORCH_SPEC" M2M_EXTRAS="$M2M_EXTRAS" bash scripts/setup.sh

# The project folder (dvc.yaml, params.yaml, assets/, weights/) is a volume mounted at /project;
# the Dagster instance's folder is the pod's own (device leases must not be shared between pods).
ENV PATH=/opt/m2m/.venv/bin:$PATH \
    M2M_PROJECT_ROOT=/project \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    DVC_NO_ANALYTICS=1
RUN mkdir -p /opt/dagster/dagster_home

# No ENTRYPOINT: dagster-k8s gives each pod its command (`dagster api execute_run ...`) as the
# container's args, and the Helm chart's code server runs `dagster api grpc -m orchestration.k8s.definitions`.
CMD ["m2m", "--help"]
