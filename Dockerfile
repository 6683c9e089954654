# syntax=docker/dockerfile:1
# Multi-stage build of peerpool; the runtime image runs as a non-root user.
# Untested here (no Docker engine on the build machines).

FROM rust:1-bookworm AS build
WORKDIR /src
# The workspace: the library (src/), the program (cli/) and the test kit.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY cli ./cli
COPY testkit ./testkit
COPY benches ./benches
COPY examples ./examples
COPY config ./config
COPY tests ./tests
RUN cargo build --release --locked -p peerpool-cli --bin peerpool

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/peerpool --create-home peerpool
COPY --from=build /src/target/release/peerpool /usr/local/bin/peerpool
USER 10001:10001
WORKDIR /var/lib/peerpool
# QUIC to peers, admin HTTP (/metrics /healthz /readyz /peers).
EXPOSE 4433/udp 9464/tcp
ENTRYPOINT ["/usr/local/bin/peerpool"]
CMD ["run", "--config", "/etc/peerpool/peerpool.toml"]
