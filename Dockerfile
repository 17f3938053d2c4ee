# The Babelgate ext_proc server (and the demo providers, and `babelgate certs`, which docker-compose.yaml runs from the
# same image).
#   docker build -t babelgate:local .
#   docker run --rm -v "$PWD/babelgate.yaml:/etc/babelgate/babelgate.yaml:ro" -v "$PWD/tls:/etc/babelgate-tls:ro" \
#       -p 50051:50051 babelgate:local
# Envoy runs in its own container (docker-compose.yaml) or pod (deploy/kubernetes/). The server listens on 0.0.0.0
# here, so it refuses to start in plaintext: the config needs `ext_proc.tls` (files from `babelgate certs`, only a
# client with Envoy's certificate is served) or, behind a service mesh that authenticates peers, `ext_proc.peers:
# mesh`. Port 50061 serves the gRPC health service alone, in plaintext, for the HEALTHCHECK and for probes.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY protos ./protos
COPY ext_proc ./ext_proc
RUN pip install . \
    && rm -rf /src \
    && groupadd --system --gid 10001 babelgate \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin babelgate

WORKDIR /etc/babelgate
# Numeric, so Kubernetes' runAsNonRoot can verify it without a runAsUser.
USER 10001:10001
EXPOSE 50051 50061

HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-m", "ext_proc.healthcheck", "127.0.0.1:50061"]

ENTRYPOINT ["babelgate"]
CMD ["serve", "-c", "/etc/babelgate/babelgate.yaml", "--host", "0.0.0.0", "--health-port", "50061"]
