# Stand-in for rabbitmq:3.13-management on a machine without a registry:
# Debian's RabbitMQ with the management plugin, configured like the official
# image (guest may log in from other containers). Built by
# scripts/compose-test.sh on its Debian base; see deploy/compose.offline.yaml.
ARG BASE
FROM ${BASE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends rabbitmq-server \
 && rm -rf /var/lib/apt/lists/* /usr/share/doc /usr/share/man \
 && rabbitmq-plugins enable --offline rabbitmq_management \
 && printf 'loopback_users.guest = false\nlisteners.tcp.default = 5672\nmanagement.tcp.port = 15672\n' \
      > /etc/rabbitmq/rabbitmq.conf \
 && : > /etc/rabbitmq/rabbitmq-env.conf \
 && chown -R rabbitmq:rabbitmq /var/lib/rabbitmq /etc/rabbitmq
ENV HOME=/var/lib/rabbitmq RABBITMQ_LOGS=-
USER rabbitmq
EXPOSE 5672 15672
CMD ["rabbitmq-server"]
