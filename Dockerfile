# One image for every Courier process: `courier run <service>`, `courier migrate`, `courier dev`, and the
# operator (`python -m im_operator`). Build: `make image`, which makes the Debian base this starts from
# (debootstrap + docker import: no registry is needed) and passes it as BASE_IMAGE. By hand:
#   infra/images/courier-images courier courier:0.1.0
# The interpreter is Debian's python3.11, the same in both stages, so the venv's python links stay valid.

ARG BASE_IMAGE=courier-base:bookworm

# ---------------------------------------------------------------------------------------------------- build
FROM ${BASE_IMAGE} AS build

# HTTPS to the package registries from inside the build needs the build machine's CA bundle. It is copied into
# this stage only, at a path the ca-certificates package does not regenerate; the runtime stage never sees it.
COPY courier-build-ca.crt /opt/courier-build/ca.crt
ARG UV_VERSION=0.13.9
ENV SSL_CERT_FILE=/opt/courier-build/ca.crt \
    PIP_CERT=/opt/courier-build/ca.crt \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/bin/python3.11 \
    UV_PROJECT_ENVIRONMENT=/app/.venv

RUN apt-get update \
 && apt-get install -y python3.11 python3.11-venv \
 && python3.11 -m venv /opt/courier-build/uv \
 && /opt/courier-build/uv/bin/pip install --quiet "uv==${UV_VERSION}"

WORKDIR /src
# Dependencies first, from the lock file alone: this layer stays cached while only the code changes.
COPY pyproject.toml uv.lock ./
RUN /opt/courier-build/uv/bin/uv sync --frozen --no-dev --no-install-project

COPY README.md ./
COPY services ./services
COPY tools ./tools
COPY operator ./operator
# --no-editable installs the project as a wheel into the venv, so /src is not needed at run time.
RUN /opt/courier-build/uv/bin/uv sync --frozen --no-dev --no-editable \
 && mkdir -p /app/operator \
 && cp -r operator/im_operator /app/operator/im_operator \
 && /app/.venv/bin/python -m compileall -q /app/operator

# ---------------------------------------------------------------------------------------------------- runtime
FROM ${BASE_IMAGE} AS runtime

LABEL org.opencontainers.image.title="courier" \
      org.opencontainers.image.description="Courier instant-messaging services and the IMCluster operator" \
      org.opencontainers.image.licenses="Apache-2.0"

# The interpreter only: no pip, no compilers, no apt lists.
RUN apt-get update \
 && apt-get install -y python3.11 \
 && rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/* \
 && groupadd --system --gid 10001 courier \
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
