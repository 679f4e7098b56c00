# syntax=docker/dockerfile:1
# shelfml CPU server: the same repository on its CPU configs (configs/cpu.pbtxt: python backend + ONNX Runtime),
# on any machine. The tritonserver binary is the one the tests use here: the nvidia-pytriton 0.7.0 wheel's
# (Triton 2.51), with its python backend stub for this Python copied into backends/python/.
#
#   docker build -f docker/cpu.Dockerfile -t shelfml/server-cpu .
#   docker run --shm-size=1g -p 8000:8000 -p 8001:8001 -p 8002:8002 -v "$PWD/runs/repository:/models:ro" shelfml/server-cpu
FROM python:3.11.10-slim-bookworm

ARG TORCH_VERSION=2.13.0
ARG PYTRITON_VERSION=0.7.0
ARG UID=10001

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUTF8=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SHELFML_MODEL_REPOSITORY=/models \
    SHELFML_ENGINES=skip \
    SHELFML_TRITONSERVER=/opt/triton/bin/tritonserver

WORKDIR /opt/shelfml
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}"

COPY pyproject.toml README.md ./
COPY shelfml/ shelfml/
COPY training/ training/
COPY export/ export/
COPY model_repository/ model_repository/
COPY client/ client/
COPY benchmarks/ benchmarks/
COPY docker/entrypoint.sh docker/entrypoint.sh

# numpy<2: the python backend corrupts tensors with numpy 2. The stub for Python 3.11 goes into backends/python/,
# and /opt/triton links the wheel's server so the entrypoint finds it (its bundled libraries sit beside it).
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3013  # "." is this project (with an extra), not an unpinned package
RUN pip install --no-cache-dir ".[train]" "nvidia-pytriton==${PYTRITON_VERSION}" "onnxruntime>=1.17,<2" "numpy<2" \
    && site="$(python -c 'import pytriton, pathlib; print(pathlib.Path(pytriton.__file__).parent / "tritonserver")')" \
    && cp "${site}/python_backend_stubs/3.11/triton_python_backend_stub" "${site}/backends/python/" \
    && ln -s "${site}" /opt/triton

ENV LD_LIBRARY_PATH=/usr/local/lib/python3.11/site-packages/nvidia_pytriton.libs

RUN groupadd --gid "${UID}" shelfml \
    && useradd --uid "${UID}" --gid "${UID}" --create-home --shell /usr/sbin/nologin shelfml && mkdir -p /models
USER ${UID}:${UID}

EXPOSE 8000 8001 8002
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=4).status != 200)"]

ENTRYPOINT ["/opt/shelfml/docker/entrypoint.sh"]
CMD ["--backend-directory=/opt/triton/backends", "--cache-directory=/opt/triton/caches", "--model-config-name=cpu", "--http-port=8000", "--grpc-port=8001", "--metrics-port=8002", "--strict-readiness=true", "--http-address=0.0.0.0", "--grpc-address=0.0.0.0", "--metrics-address=0.0.0.0"]
