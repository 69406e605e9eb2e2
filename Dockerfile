# One image for every Bflow process: migrate, worker, beat, shim and flower differ only in command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

COPY pyproject.toml README.md alembic.ini celeryconfig.py beat_schedule.py ./
COPY alembic ./alembic
COPY bflow_tasks ./bflow_tasks
COPY api_shim ./api_shim
# Editable, as the README installs it: `bflow db upgrade` finds alembic/ beside the package.
RUN pip install -e '.[ops]' \
    && useradd --system --home-dir /var/lib/bflow --create-home bflow
USER bflow
EXPOSE 8000 5555
CMD ["uvicorn", "api_shim.app:app", "--host", "0.0.0.0", "--port", "8000"]
