# syntax=docker/dockerfile:1
# shelfml GPU server: Triton 2.51 (NGC 24.10: CUDA 12.6, TensorRT 10.5, Python 3.10) serving the exported
# repository on its stock configs. At start the entrypoint builds (or reuses from /engine-cache) the FP16
# TensorRT engine of every leaf model for the GPU it finds, then execs tritonserver.
#
#   docker build -f docker/server.Dockerfile -t shelfml/server:24.10 .
#   docker run --gpus all --shm-size=1g -p 8000:8000 -p 8001:8001 -p 8002:8002 \
#       -v "$PWD/runs/repository:/models" -v shelfml-engines:/engine-cache shelfml/server:24.10
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3
FROM ${TRITON_IMAGE}

# The python tensorrt that builds the engines must be the TensorRT the server loads them with (10.5.0 in 24.10;
# the entrypoint compares it with the image's TRT_VERSION). No torch and no transformers: the python models
# only tokenise (Rust tokenizers) and decode; the graphs run in the TensorRT backend (shelfml[serve]).
ARG TENSORRT_VERSION=10.5.0
ARG UID=10001

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUTF8=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SHELFML_MODEL_REPOSITORY=/models \
    SHELFML_ENGINE_CACHE=/engine-cache

WORKDIR /opt/shelfml

COPY pyproject.toml README.md ./
COPY shelfml/ shelfml/
COPY training/ training/
COPY export/ export/
COPY model_repository/ model_repository/
COPY client/ client/
COPY benchmarks/ benchmarks/
COPY docker/entrypoint.sh docker/entrypoint.sh

# numpy<2: Triton's python backend corrupts tensors with numpy 2 (pinned by the project too).
# The sources of every stage are copied (one distribution), but only the serve extra's dependencies are installed:
# the training and export modules cannot run here, and the check below fails the build if torch crept in.
# hadolint ignore=DL3013  # "." is this project (with an extra), not an unpinned package
RUN python3 -m pip install --no-cache-dir ".[serve]" "tensorrt==${TENSORRT_VERSION}" "numpy<2" \
    && python3 -c "import importlib.util as u, tensorrt, numpy; assert numpy.__version__ < '2', numpy.__version__; \
assert u.find_spec('torch') is None and u.find_spec('transformers') is None, 'torch in the server image'; \
print('tensorrt', tensorrt.__version__)"

RUN groupadd --gid "${UID}" shelfml \
    && useradd --uid "${UID}" --gid "${UID}" --create-home --shell /usr/sbin/nologin shelfml \
    && mkdir -p /models /engine-cache \
    && chown shelfml:shelfml /models /engine-cache
USER ${UID}:${UID}

# 8000 HTTP (health: /v2/health/ready), 8001 gRPC, 8002 Prometheus metrics.
EXPOSE 8000 8001 8002
VOLUME ["/engine-cache"]
# The first start on a new GPU builds engines before the server listens: a long start period.
HEALTHCHECK --interval=30s --timeout=5s --start-period=900s --retries=3 \
    CMD ["python3", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=4).status != 200)"]

ENTRYPOINT ["/opt/shelfml/docker/entrypoint.sh"]
CMD ["--http-port=8000", "--grpc-port=8001", "--metrics-port=8002", "--strict-readiness=true", "--http-address=0.0.0.0", "--grpc-address=0.0.0.0", "--metrics-address=0.0.0.0"]
