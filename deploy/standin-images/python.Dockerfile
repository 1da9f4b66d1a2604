# Stands in for python:3.11-slim-bookworm: Debian's python3.11 with venv and pip; `python` is python3.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends python3 python3-venv python3-pip python-is-python3 \
    && rm -rf /var/lib/apt/lists/*
CMD ["python3"]
