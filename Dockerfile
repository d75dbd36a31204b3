# One image for every Courier process: `courier run <service>`, `courier migrate`, `courier dev`, and the
# operator (`python -m im_operator`). Build: `make image` (or `docker build -t courier:0.1.0 .`, the tag the chart
# defaults to). The cache mounts need BuildKit, Docker's default builder since 23.0.

# Exact tag: the same interpreter in both stages, so the venv's python links stay valid. Pin by digest too
# (python:3.11.13-slim-bookworm@sha256:...) where the registry can be asked for it.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# ---------------------------------------------------------------------------------------------------- build
FROM ${PYTHON_IMAGE} AS build

ARG UV_VERSION=0.13.9
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PROJECT_ENVIRONMENT=/app/.venv \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m pip install "uv==${UV_VERSION}"

WORKDIR /src
# Dependencies first, from the lock file alone: this layer stays cached while only the code changes.
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-project

COPY README.md ./
COPY services ./services
COPY tools ./tools
COPY operator ./operator
# --no-editable installs the project as a wheel into the venv, so /src is not needed at run time.
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable \
 && mkdir -p /app/operator \
 && cp -r operator/im_operator /app/operator/im_operator \
 && /app/.venv/bin/python -m compileall -q /app/operator

# ---------------------------------------------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="courier" \
      org.opencontainers.image.description="Courier instant-messaging services and the IMCluster operator" \
      org.opencontainers.image.licenses="Apache-2.0"

RUN groupadd --system --gid 10001 courier \
 && useradd --system --uid 10001 --gid courier --home-dir /var/lib/courier --create-home \
        --shell /usr/sbin/nologin courier

# Owned by root and not writable by the runtime user: the code cannot be changed by the process running it.
COPY --from=build /app /app

# PYTHONPATH makes the operator importable as `im_operator` whether or not the wheel carries it.
# COURIER_HOST: inside a container loopback is unreachable from the Service, so bind every address.
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONPATH=/app/operator \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    COURIER_HOST=0.0.0.0

# `courier dev` keeps its SQLite file and objects under ./.courier: the working directory is the user's.
WORKDIR /var/lib/courier
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["courier"]
CMD ["--help"]
