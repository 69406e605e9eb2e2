"""Request-scoped dependencies: one database session per request."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from bflow_tasks import db


async def get_session() -> AsyncIterator[Session]:
    """Yield a session from the one sessionmaker; write handlers commit it themselves.

    Whatever was not committed is rolled back: on an error, and at the end of a read. Async,
    because a sync dependency costs two hops to a worker thread per request, and making a
    session does no I/O; closing one that still holds a connection does (the rollback), so
    that part runs in a worker thread.
    """
    session = db.get_sessionmaker()()
    try:
        yield session
    finally:
        if session.in_transaction():
            await run_in_threadpool(session.close)
        else:
            session.close()


SessionDep = Annotated[Session, Depends(get_session)]
