#!/usr/bin/env bash
# shelfml GPU server entrypoint: make the TensorRT engines fit this GPU, then exec tritonserver.
#
# 0. `python -m shelfml verify $REPO` checks every file against the sha256 in repository.json (a corrupt or
#    replaced graph is refused before any backend loads it).
# 1. `python -m shelfml engines $REPO --cache $CACHE` builds, reuses or rebuilds the FP16
#    engine of every leaf model (a folder with graph.json); a stale or corrupt engine is removed, never loaded.
# 2. Only when that succeeded: exec tritonserver on the repository's stock configs, with any arguments given.
#
# Environment: SHELFML_MODEL_REPOSITORY (/models), SHELFML_ENGINE_CACHE (/engine-cache),
# SHELFML_ENGINES (build | skip), SHELFML_PYTHON (python3), SHELFML_TRITONSERVER (tritonserver),
# SHELFML_CACHE_MB (64: the response cache).
# The restricted APIs (logging, model-repository, trace, statistics) need the header shelfml-admin-key with
# the value of SHELFML_ADMIN_KEY (a Kubernetes Secret); without it they are closed to everyone.
# Exit codes: 2 bad set-up (no repository, bad setting), 3 engine step failed or refused, 4 corrupt repository.
set -euo pipefail

REPO="${SHELFML_MODEL_REPOSITORY:-/models}"
CACHE="${SHELFML_ENGINE_CACHE:-/engine-cache}"
ENGINES="${SHELFML_ENGINES:-build}"
PYTHON="${SHELFML_PYTHON:-python3}"
TRITONSERVER="${SHELFML_TRITONSERVER:-tritonserver}"

log() { printf 'shelfml-entrypoint: %s\n' "$*" >&2; }

if [[ ! -d "$REPO" ]]; then
    log "no model repository at $REPO: mount the exported repository there (or set SHELFML_MODEL_REPOSITORY)"
    exit 2
fi

if [[ "$ENGINES" != build && "$ENGINES" != skip ]]; then
    log "SHELFML_ENGINES must be 'build' or 'skip', got '$ENGINES'"
    exit 2
fi

log "checking $REPO against its repository.json"
if ! "$PYTHON" -m shelfml verify "$REPO"; then
    log "the repository's files do not match repository.json: refusing to start"
    exit 4
fi

ADMIN_KEY="${SHELFML_ADMIN_KEY:-$("$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(24))')}"
RESTRICTED="logging,model-repository,trace,statistics:shelfml-admin-key=${ADMIN_KEY}"

case "$ENGINES" in
    build)
        # Engines only load in the TensorRT they were built with: the python package must match the server's.
        if [[ -n "${TRT_VERSION:-}" ]]; then
            py_trt="$("$PYTHON" -c 'import tensorrt; print(tensorrt.__version__)' 2>/dev/null || true)"
            if [[ -n "$py_trt" && "$TRT_VERSION" != "$py_trt"* ]]; then
                log "python tensorrt $py_trt does not match this server's TensorRT $TRT_VERSION; its engines would not load. Refusing to start."
                exit 3
            fi
        fi
        log "preparing TensorRT engines in $REPO (cache: $CACHE)"
        if ! "$PYTHON" -m shelfml engines "$REPO" --cache "$CACHE"; then
            log "engine step failed: not starting tritonserver (it would serve missing or mismatched engines)"
            exit 3
        fi
        ;;
    skip)
        log "SHELFML_ENGINES=skip: no engine step (configs that need no TensorRT engine)"
        ;;
esac

log "starting $TRITONSERVER --model-repository=$REPO (restricted APIs: logging, model-repository, trace, statistics) $*"
# Explicit model control, every model loaded at start: `shelfml repository --add-version --server` rolls a new
# version out through the (restricted) load API without a restart. The local response cache backs the models'
# response_cache (SHELFML_CACHE_MB, 0 for none).
CACHE_MB="${SHELFML_CACHE_MB:-64}"
CACHE_ARGS=()
if [[ "$CACHE_MB" != 0 ]]; then CACHE_ARGS=(--cache-config="local,size=$((CACHE_MB * 1024 * 1024))"); fi
exec "$TRITONSERVER" --model-repository="$REPO" --http-restricted-api="$RESTRICTED" \
    --grpc-restricted-protocol="$RESTRICTED" --exit-timeout-secs=60 --model-control-mode=explicit --load-model='*' \
    "${CACHE_ARGS[@]}" "$@"
