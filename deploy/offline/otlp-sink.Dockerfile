# Stand-in for Jaeger on a machine without a registry: an OTLP/HTTP receiver
# that answers every export and logs which services sent spans, so that a
# test can see traces leave the containers. Built by scripts/compose-test.sh
# on its Debian base; see deploy/compose.offline.yaml.
ARG BASE
FROM ${BASE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/* /usr/share/doc /usr/share/man
COPY otlp_sink.py /usr/local/bin/otlp_sink.py
USER 65534:65534
EXPOSE 4318
CMD ["python3", "-u", "/usr/local/bin/otlp_sink.py"]
