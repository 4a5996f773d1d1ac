# Stand-in for rust:1-bookworm on a machine without a registry: the Debian
# base with a C toolchain and the host's own Rust toolchain (cargo and rustc,
# copied in by scripts/compose-test.sh as the build context's `toolchain/`).
ARG BASE
FROM ${BASE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev ca-certificates \
 && rm -rf /var/lib/apt/lists/* /usr/share/doc /usr/share/man
COPY toolchain /usr/local/rust
ENV PATH=/usr/local/rust/bin:$PATH
