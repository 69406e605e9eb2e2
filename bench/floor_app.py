"""The floor under the shim: the same HTTP stack and publish, with none of Bflow's own work.

`POST /api/v1/runtime/execute` validates the body with the shim's schema and publishes the
chain a submit publishes, as the shim does it (`publishing.publish_command`, from FastAPI's
thread pool), but checks no token and touches no database. `bench/submit.py` serves it with
the same uvicorn command and loads it with the same `wrk` script as the shim, so that the
gap between raw publishing and the shim splits into what uvicorn, FastAPI and the publish
cost together and what Bflow's own work (token, workflow, two INSERTs, commit) adds.
"""

from __future__ import annotations

from fastapi import FastAPI

from api_shim import schemas
from bflow_tasks.models import RuntimeCommand
from bflow_tasks.models.base import new_id
from bflow_tasks.worker import publishing

app = FastAPI()


@app.get("/api/v1/health/ready")
def ready() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/api/v1/runtime/execute", status_code=202, response_model=schemas.RuntimeAccepted)
def execute(body: schemas.RuntimeCreate) -> schemas.RuntimeAccepted:
    command = RuntimeCommand(id=new_id(), runtime_id=new_id(), kind="start", payload={})
    publishing.publish_command(command)
    return schemas.RuntimeAccepted(runtime_id=command.runtime_id, status="pending")
