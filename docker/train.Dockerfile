# syntax=docker/dockerfile:1
# shelfml trainer on a GPU: `docker run ... shelfml/train tagger --data flipkart --shape small --out /runs/small`.
# The base ships a CUDA torch; shelfml's own torch pin is satisfied by it (installed without touching torch).
#
#   docker build -f docker/train.Dockerfile -t shelfml/train .
#   docker run --gpus all --shm-size=1g -v "$PWD/runs:/runs" -v "$PWD/../shared/data:/data:ro" -e SHELFML_DATA_DIR=/data \
#       shelfml/train tagger --data flipkart --shape small --epochs 12 --out /runs/flipkart-small
ARG TORCH_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
FROM ${TORCH_IMAGE}

ARG UID=10001
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

WORKDIR /opt/shelfml
COPY pyproject.toml README.md ./
COPY shelfml/ shelfml/
COPY training/ training/
COPY export/ export/
COPY model_repository/ model_repository/
COPY client/ client/
COPY benchmarks/ benchmarks/

# The base image's CUDA torch stays: the train extra's dependencies (with serve + client) other than torch, then
# the project without deps.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN python -c "import tomllib, pathlib; p = tomllib.loads(pathlib.Path('pyproject.toml').read_text())['project']; deps = p['dependencies'] + [d for x in ('serve', 'client', 'train') for d in p['optional-dependencies'][x]]; pathlib.Path('/tmp/deps.txt').write_text('\n'.join(d for d in deps if not d.startswith(('torch', 'shelfml'))))" \
    && pip install --no-cache-dir -r /tmp/deps.txt \
    && pip install --no-cache-dir --no-deps . \
    && python -c "import shelfml.cli, torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

RUN groupadd --gid "${UID}" shelfml \
    && useradd --uid "${UID}" --gid "${UID}" --create-home --shell /usr/sbin/nologin shelfml && mkdir -p /runs && chown shelfml /runs
USER ${UID}:${UID}
VOLUME ["/runs"]
ENTRYPOINT ["shelfml", "train"]
CMD ["--help"]
