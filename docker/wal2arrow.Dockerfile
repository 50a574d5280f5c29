# The wal2arrow command line, for the compose file's `wal2arrow` service (streams the demo
# tables into Kafka). The plugin is built into the postgres image (docker/Dockerfile).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The Kafka sink builds its bundled librdkafka with gcc and make (both in this image).
RUN cargo build --release --locked -p wal2arrow-cli --bin wal2arrow

FROM debian:bookworm-slim
COPY --from=build /src/target/release/wal2arrow /usr/local/bin/wal2arrow
USER nobody
ENTRYPOINT ["wal2arrow"]
