# One Socket.IO instance: gunicorn with one gevent-websocket worker, configured by gunicorn.conf.py and
# environment variables. Run several of these behind HAProxy (docker-compose.yml) to use more cores.
# Base images: one build argument each (docker-compose.yml passes NODE_IMAGE / PYTHON_IMAGE from .env),
# for a registry mirror or an air-gapped host (docs/docker.md#base-images).
ARG NODE_IMAGE=node:20-bookworm-slim
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- front-end assets ------------------------------------------------------------------------------------
# Every top-level folder whose package.json has a "build" script gets `npm ci` (from its package-lock.json) and
# `npm run build` (e.g. a page's socket.io client copied into <folder>/static/vendor/); with no such folder
# nothing is built and nothing is needed. The same rule as scripts/bootstrap.sh's build_assets natively.
# First only those package*.json files, in their folders (a COPY wildcard would flatten them, and one that
# matches nothing fails the classic builder), so `npm ci` stays cached until a lock file changes.
FROM ${NODE_IMAGE} AS manifests
WORKDIR /src
COPY . .
RUN mkdir /manifests \
    && for package in */package.json; do \
         if [ -f "$package" ] && grep -q '"build" *:' "$package"; then \
           mkdir -p "/manifests/${package%/*}" && cp "${package%/*}"/package*.json "/manifests/${package%/*}/"; \
         fi; \
       done

FROM ${NODE_IMAGE} AS assets
WORKDIR /src
COPY --from=manifests /manifests/ ./
RUN for package in */package.json; do \
      if [ -f "$package" ]; then (cd "${package%/*}" && npm ci --no-audit --no-fund) || exit 1; fi; \
    done
COPY . .
RUN for package in */package.json; do \
      if [ -f "$package" ] && [ -d "${package%/*}/node_modules" ]; then \
        (cd "${package%/*}" && npm run build && rm -rf node_modules) || exit 1; \
      fi; \
    done

# --- Python dependencies, pinned in requirements.txt, in a virtualenv copied into the final image -----
FROM ${PYTHON_IMAGE} AS python-deps
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY requirements.txt /tmp/requirements.txt
RUN pip install --no-cache-dir -r /tmp/requirements.txt \
    && pip check

# --- runtime ----------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Fixed ids: docker-compose.yml's secrets-init gives this group read access to the generated secrets.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --home-dir /app --shell /usr/sbin/nologin app
COPY --from=python-deps /opt/venv /opt/venv
WORKDIR /app
# The build context (app.py, wsgi.py, gunicorn.conf.py, application/, deployment/ ... filtered by .dockerignore)
# with what the assets stage built in it, without node_modules/.
# Files stay owned by root: the app cannot change its own code (and runs fine on a read-only root).
COPY --from=assets /src/ ./
USER 10001:10001
EXPOSE 8000
# Liveness only (no Redis round trip); slim images have no curl, so Python asks. Follows PORT if set.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'), timeout=2)"]
# The same command as the native stack (scripts/native_stack.py start_app): every setting is in the file.
CMD ["gunicorn", "--config", "gunicorn.conf.py"]
