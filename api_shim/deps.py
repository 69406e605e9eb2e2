"""Request-scoped dependencies: one database session per request."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends
from sqlalchemy.orm import Session

from bflow_tasks import db


def get_session() -> Iterator[Session]:
    """Yield a session from the one sessionmaker; write handlers commit it themselves.

    Whatever was not committed is rolled back: on an error, and at the end of a read.
    """
    session = db.get_sessionmaker()()
    try:
        yield session
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(get_session)]
