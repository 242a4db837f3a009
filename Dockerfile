# regrow's container image: one image for the scheduler and the workers (the command
# says which), as in the manifests of kubernetes/.
#
#   docker build -t regrow .
#   docker run --rm regrow --help
#   docker run --rm -p 8786:8786 -p 8787:8787 -e REGROW_TOKEN=... regrow \
#       scheduler --host 0.0.0.0 --dashboard-address :8787
#
# PYTHON_IMAGE picks the base; it must have Python 3.11+ as `python` with its venv module
# (the default, python:3.11-slim, does).
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md /src/
COPY src /src/src
# regrow and its runtime dependencies only (no test or ecosystem extras), in a
# virtualenv the final stage copies whole.
RUN python -m venv /opt/regrow \
 && /opt/regrow/bin/pip install /src \
 && /opt/regrow/bin/regrow --version

FROM ${PYTHON_IMAGE}
COPY --from=build /opt/regrow /opt/regrow
# A numeric user, so that Kubernetes' runAsNonRoot can check it. /var/lib/regrow is where
# a scheduler keeps its journal (mount a volume there).
RUN groupadd --gid 10001 regrow \
 && useradd --uid 10001 --gid 10001 --home-dir /home/regrow --create-home \
        --shell /usr/sbin/nologin regrow \
 && mkdir -p /var/lib/regrow \
 && chown 10001:10001 /var/lib/regrow
ENV PATH=/opt/regrow/bin:$PATH \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /home/regrow
# 8786: the scheduler's port; 8787: the HTTP health endpoint (--dashboard-address).
EXPOSE 8786 8787
ENTRYPOINT ["regrow"]
CMD ["--help"]
