# hebdo: one image for web (gunicorn), Celery workers and beat; docker-compose.yml picks the
# command. The wheel is built in a first stage (its build compiles the gettext catalogs) and
# installed, dependencies pinned as pyproject.toml pins them, into a virtualenv of a slim
# image: no source tree in the image, run as an unprivileged user.
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml setup.py MANIFEST.in README.md ./
COPY service ./service
COPY worker ./worker
COPY templates ./templates
COPY static ./static
COPY translations ./translations
COPY migrations ./migrations
RUN pip wheel --no-cache-dir --no-deps -w /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# Dependencies first, exactly as pinned in pyproject.toml: a code change reuses this layer.
COPY pyproject.toml /tmp/pyproject.toml
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/python -c "import tomllib; print('\n'.join(tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && /opt/venv/bin/pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/pyproject.toml /tmp/requirements.txt

# Then hebdo itself, the wheel (its `hebdo` console script included), compiled to bytecode
# as root: at run time the service user can write nothing but /data.
COPY --from=build /wheels /wheels
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps /wheels/hebdo-*.whl \
    && rm -r /wheels \
    && /opt/venv/bin/python -m compileall -q /opt/venv/lib \
    && groupadd --system --gid 10001 hebdo \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data --shell /usr/sbin/nologin hebdo \
    && mkdir /data \
    && chown hebdo:hebdo /data

# The hebdo user (numeric, so a runtime that checks for non-root can tell).
USER 10001:10001
WORKDIR /data
# Writes only the beat schedule here (a volume in docker-compose.yml) and the metrics folder.
# Production by default: the image listens on 0.0.0.0, where development mode's sample page
# and (served on loopback only anyway) mailbox have no business. It needs HEBDO_SECRET_KEY
# and HEBDO_SMTP_HOST; `-e HEBDO_ENV=development` for a look around.
ENV HEBDO_DATA_DIR=/data \
    HEBDO_ENV=production
EXPOSE 8000
# No HEALTHCHECK here: the same image runs workers and beat, which serve no HTTP; the web
# service's check (/readyz) is in docker-compose.yml.
CMD ["gunicorn", "--bind", "0.0.0.0:8000", "--workers", "2", "service.wsgi:app"]
