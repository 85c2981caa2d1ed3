# syntax=docker/dockerfile:1
# The backup operator image: two static binaries (the operator and the data
# mover the backup/restore Jobs run), CA certificates and tzdata, no shell.
#   make docker-build IMG=registry.example.com/backup-operator:v0.1.0
# Machines without Docker build the same content with `make image` / `make image-load`
# (e2e/cluster/images.sh).

FROM rust:1-bookworm AS builder
RUN rustup target add x86_64-unknown-linux-musl \
 && apt-get update && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --target x86_64-unknown-linux-musl \
      -p backup-operator -p backup-mover --bin backup-operator --bin backup-mover \
 && mkdir -p /out \
 && cp target/x86_64-unknown-linux-musl/release/backup-operator \
       target/x86_64-unknown-linux-musl/release/backup-mover /out/

FROM debian:bookworm-slim AS runtime-files
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates tzdata \
 && rm -rf /var/lib/apt/lists/* && mkdir -p /rootfs/tmp && chmod 1777 /rootfs/tmp

FROM scratch
COPY --from=runtime-files /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=runtime-files /usr/share/zoneinfo /usr/share/zoneinfo
COPY --from=runtime-files /rootfs/ /
COPY --from=builder /out/backup-operator /backup-operator
COPY --from=builder /out/backup-mover /backup-mover
ENV PATH=/ SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
# No USER here: the mover must read and restore files of any owner, so the
# pod specs decide (the operator Deployment sets runAsNonRoot/runAsUser).
ENTRYPOINT ["/backup-operator"]
