# Platform services (crm, iot-platform, commerce, connector) and the `topics` CLI in one image.
# Used by docker-compose.kafka.yml; without Docker use scripts/infra + cargo run.

# ---- build ------------------------------------------------------------------
FROM rust:1-bookworm AS builder
# rdkafka's `cmake-build` compiles the bundled librdkafka (cmake, C/C++ toolchain);
# `curl-static` builds libcurl, which links OpenSSL (libssl-dev, pkg-config).
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake build-essential pkg-config libssl-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin crm --bin iot-platform --bin topics --bin commerce --bin connector --bin queries --bin orderflow \
 && mkdir -p /out/bin /out/crm-data \
 && cp target/release/crm target/release/iot-platform target/release/topics target/release/commerce target/release/connector target/release/queries target/release/orderflow /out/bin/ \
 && if [ -d crm/data ]; then cp -r crm/data/. /out/crm-data/; fi

# ---- runtime ----------------------------------------------------------------
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin app
COPY --from=builder /out/bin/ /usr/local/bin/
# The CRM's seed file; the compiled-in default path points into the build tree.
COPY --from=builder /out/crm-data/ /app/crm/data/
# The order flow's mail and audit logs (a volume in docker-compose.kafka.yml takes this owner).
RUN mkdir -p /app/orderflow-data && chown app:app /app/orderflow-data
ENV CRM_SEED_CSV=/app/crm/data/customers.csv \
    CRM_LISTEN_ADDR=0.0.0.0:3005 \
    IOT_LISTEN_ADDR=0.0.0.0:3008 \
    RUST_LOG=info
WORKDIR /app
USER app
EXPOSE 3005 3008 3010 3011 3012 3013 3020 3021
# Pick the binary with the service's command: crm | iot-platform | commerce <service> | connector -c FILE | topics apply
CMD ["crm"]
