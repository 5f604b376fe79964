# Both services in one small image: `capture` and `apply`.
FROM rust:1.88-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p capture -p apply --bins

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home syncbridge
COPY --from=build /src/target/release/capture /src/target/release/apply /usr/local/bin/
COPY schemas/mapping /etc/sync-bridge/mapping
USER syncbridge
ENV SYNC_BRIDGE_LOG_FORMAT=json
ENTRYPOINT []
