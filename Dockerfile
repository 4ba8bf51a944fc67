# cargohold: manager, node agent and CSI driver in one image (deploy/ picks the command).
FROM debian:12-slim
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      python3 python3-venv e2fsprogs xfsprogs util-linux mount fuse3 libnbd-bin nbd-client \
      ca-certificates \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/cargohold
COPY pyproject.toml README.md ./
COPY cargohold ./cargohold
# the CSI stubs are in cargohold/csi/_gen (checked in): no grpcio-tools in the image
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir .
ENV PATH=/opt/venv/bin:$PATH
ENTRYPOINT ["cargohold"]
