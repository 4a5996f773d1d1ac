# Stand-in for redis:7 on a machine without a registry: Debian's Redis,
# serving other containers like the official image does (protected mode off,
# data in /data). Built by scripts/compose-test.sh on its Debian base; see
# deploy/compose.offline.yaml.
ARG BASE
FROM ${BASE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/* /usr/share/doc /usr/share/man \
 && mkdir -p /data && chown redis:redis /data \
 && printf '#!/bin/sh\n# The official image serves other containers without a password.\nif [ "$1" = redis-server ]; then shift; exec redis-server --protected-mode no "$@"; fi\nexec "$@"\n' \
      > /usr/local/bin/standin-redis \
 && chmod +x /usr/local/bin/standin-redis
WORKDIR /data
USER redis
EXPOSE 6379
ENTRYPOINT ["/usr/local/bin/standin-redis"]
CMD ["redis-server"]
