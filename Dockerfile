# One image for every Bflow process: migrate, worker, beat, shim and flower differ only in command.
# Bflow is installed as a release is: from its wheel, which carries the migrations
# (bflow_tasks/migrations), celeryconfig and beat_schedule; the image holds no checkout.

# --- build: the wheel, from the files it is made of ---
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md celeryconfig.py beat_schedule.py ./
COPY bflow_tasks ./bflow_tasks
COPY api_shim ./api_shim
RUN pip wheel --no-deps --wheel-dir /wheels .

# --- the image: the wheel and its dependencies, with the ops extra (flower) ---
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /wheels /tmp/wheels
RUN set -- /tmp/wheels/bflow-*.whl \
    && pip install "$1[ops]" \
    && rm -rf /tmp/wheels \
    && useradd --system --home-dir /var/lib/bflow --create-home bflow
# Nothing is read from the working directory: the commands find everything in site-packages.
WORKDIR /app
USER bflow
EXPOSE 8000 5555
CMD ["uvicorn", "api_shim.app:app", "--host", "0.0.0.0", "--port", "8000"]
