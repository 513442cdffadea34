# hebdo: one image for web (gunicorn), Celery workers and beat; docker-compose.yml picks the
# command. Slim base, the pinned dependencies in a virtualenv, the code in /app owned by root
# (read-only for the service), run as an unprivileged user.
FROM python:3.11-slim

# The code runs from /app, not from site-packages: service/ finds templates/, migrations/
# and translations/ beside itself, so the five folders stay side by side and the package
# itself is not installed (neither as a wheel, which would leave them behind, nor editable).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app

# Dependencies first, exactly as pinned in pyproject.toml: a code change reuses this layer.
COPY pyproject.toml /tmp/pyproject.toml
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/python -c "import tomllib; print('\n'.join(tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && /opt/venv/bin/pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/pyproject.toml /tmp/requirements.txt

# `hebdo …` runs the CLI from /app, as the installed console script would; the service user
# owns only /data.
RUN printf '#!/bin/sh\nexec /opt/venv/bin/python -m service.cli "$@"\n' > /opt/venv/bin/hebdo \
    && chmod 755 /opt/venv/bin/hebdo \
    && groupadd --system --gid 10001 hebdo \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data --shell /usr/sbin/nologin hebdo \
    && mkdir /data \
    && chown hebdo:hebdo /data

WORKDIR /app
COPY service ./service
COPY worker ./worker
COPY templates ./templates
COPY migrations ./migrations
COPY translations ./translations
# The gettext catalogs compiled (the .mo files are never committed: without them every page
# would show the English ids), then bytecode, as root: at run time the service user cannot
# write to /app.
RUN pybabel compile -d translations \
    && python -m compileall -q service worker migrations

# The hebdo user (numeric, so a runtime that checks for non-root can tell).
USER 10001:10001
# Writes only the beat schedule here (a volume in docker-compose.yml) and the metrics folder.
ENV HEBDO_DATA_DIR=/data
EXPOSE 8000
# No HEALTHCHECK here: the same image runs workers and beat, which serve no HTTP; the web
# service's check (/readyz) is in docker-compose.yml.
CMD ["gunicorn", "--bind", "0.0.0.0:8000", "--workers", "2", "service.wsgi:app"]
