# syntax=docker/dockerfile:1
# nhi-operator image: build the wheel, install it with its dependencies into a virtualenv, and
# copy only that virtualenv into a slim runtime that runs as a numeric non-root user (65532,
# as the Helm chart's and kustomize base's securityContext expect).
#
#   docker build -t nhi-operator:dev .          (make image)
#
# Both stages use the same base image, so the virtualenv's interpreter links stay valid.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/
RUN python -m pip wheel --no-deps --wheel-dir /dist . \
 && python -m venv /opt/nhi \
 && /opt/nhi/bin/pip install --no-cache-dir /dist/nhi_operator-*.whl

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="nhi-operator" \
      org.opencontainers.image.description="Kubernetes operator for the lifecycle of non-human identities" \
      org.opencontainers.image.source="https://github.com/nhi-dev/nhi-operator" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/nhi/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NHI_LOG_FORMAT=json
COPY --from=build /opt/nhi /opt/nhi
# Numeric, so that Kubernetes can check runAsNonRoot without a passwd entry.
USER 65532:65532
# /healthz (liveness and readiness) and Prometheus metrics.
EXPOSE 8080 9090
ENTRYPOINT ["nhi-operator"]
