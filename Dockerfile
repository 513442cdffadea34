FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY service ./service
COPY worker ./worker
COPY templates ./templates
COPY migrations ./migrations
# Editable: templates/ and migrations/ are read from /app, next to the packages.
RUN pip install --no-cache-dir -e . && useradd --create-home --uid 10001 hebdo && mkdir /data && chown hebdo /data
USER hebdo
EXPOSE 8000
CMD ["gunicorn", "--bind", "0.0.0.0:8000", "--workers", "2", "service.wsgi:app"]
