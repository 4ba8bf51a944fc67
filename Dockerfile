# cargohold: manager, node agent and CSI driver in one image (deploy/ picks the command).
FROM debian:12-slim
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      python3 python3-venv e2fsprogs xfsprogs util-linux mount fuse3 libnbd-bin nbd-client \
      ca-certificates \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/cargohold
COPY pyproject.toml setup.py README.md ./
COPY cargohold ./cargohold
# the CSI stubs are in cargohold/csi/_gen (checked in): no grpcio-tools in the image.
# gcc, python3-dev and libssl-dev build the block cipher's C extension (setup.py;
# docs/encryption.md, "Cost") and go again; it links the libcrypto python3 already needs
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      gcc libc6-dev python3-dev libssl-dev \
    && python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir . \
    && /opt/venv/bin/python -c 'import cargohold.encryption._gcm_runs' \
    && apt-get purge -y -qq gcc libc6-dev python3-dev libssl-dev \
    && apt-get autoremove -y -qq && rm -rf /var/lib/apt/lists/*
ENV PATH=/opt/venv/bin:$PATH
ENTRYPOINT ["cargohold"]
