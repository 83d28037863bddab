# The shadow tool, for running beside production (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app

COPY pyproject.toml README.md ./
COPY shadow ./shadow
COPY connectors ./connectors
COPY rollout ./rollout
RUN pip install --no-cache-dir . \
 && useradd --create-home --uid 10001 shadow \
 && mkdir -p /data && chown shadow /data

USER shadow
VOLUME /data
ENV SHADOW_DB=/data/shadow.duckdb
ENTRYPOINT ["shadow"]
CMD ["--help"]
