# One image for the three processes mlvisor runs on Kubernetes, told apart by their command:
#   operator: mlvisor operator        (the default CMD)
#   trainer:  python -m mlvisor.trainer ...   (worker pods, built by the operator)
#   server:   python -m mlvisor.server ...    (ModelServer pods, built by the operator)
#
# BASE: any Debian with Python 3.11 (python, venv, groupadd/useradd). The test suite's node builds
# on a debootstrap bookworm where Docker Hub cannot be reached (tests/controlplane/images.py).
ARG BASE=python:3.11-slim

# Build stage: a virtualenv with mlvisor and its dependencies (all from wheels).
FROM ${BASE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/mlvisor
WORKDIR /src
# Dependencies first, in their own layer that only pyproject.toml invalidates: code and README
# changes do not reinstall (or recompile) scikit-learn.
COPY pyproject.toml ./
RUN python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
    > /tmp/requirements.txt
RUN /opt/mlvisor/bin/pip install -r /tmp/requirements.txt \
 && /opt/mlvisor/bin/python -m compileall -q /opt/mlvisor/lib
COPY README.md ./
COPY operator/ operator/
COPY server/ server/
COPY trainer/ trainer/
# A regular (non-editable) install; bytecode is compiled here because the final root
# filesystem is read-only at run time.
RUN /opt/mlvisor/bin/pip install --no-deps . \
 && /opt/mlvisor/bin/python -m compileall -q /opt/mlvisor/lib

# Final stage: the same slim base, the virtualenv, a non-root user; no compilers, no pip cache.
FROM ${BASE}
LABEL org.opencontainers.image.title="mlvisor" \
      org.opencontainers.image.description="Train and serve scikit-learn models on Kubernetes, supervised like Erlang/OTP" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 10001 mlvisor \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin mlvisor
COPY --from=build /opt/mlvisor /opt/mlvisor
ENV PATH=/opt/mlvisor/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /tmp
EXPOSE 8080 8081 9090
CMD ["mlvisor", "operator"]
