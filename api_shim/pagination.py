"""Page-number pagination: `?page=1&page_size=50` in, `count, next, previous, results` out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query, Request

MAX_PAGE_SIZE = 200
# Bounds the OFFSET a page asks the database for (well inside any SQL integer).
MAX_PAGE = 1_000_000


@dataclass(frozen=True)
class PageParams:
    page: int
    page_size: int

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.page_size

    def links(self, request: Request, count: int) -> tuple[str | None, str | None]:
        """Return the absolute URLs of the next and previous pages (None at either end)."""
        url = request.url
        more = self.offset + self.page_size < count
        next_url = str(url.include_query_params(page=self.page + 1)) if more else None
        previous_url = None
        if self.page > 1:
            # A page past the end points back at the last page that has results.
            last = max(1, -(-count // self.page_size))
            previous_url = str(url.include_query_params(page=min(self.page - 1, last)))
        return next_url, previous_url


def page_params(
    page: Annotated[int, Query(ge=1, le=MAX_PAGE, description="1-based page number")] = 1,
    page_size: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 50,
) -> PageParams:
    """Read and bound the page parameters."""
    return PageParams(page=page, page_size=page_size)


PageDep = Annotated[PageParams, Depends(page_params)]
