"""Webhook endpoints: register, list, remove, rotate the secret; the deliveries log, replay, recover."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from api_shim import handover, schemas
from api_shim.auth import TenantDep
from api_shim.deps import SessionDep
from api_shim.pagination import PageDep
from bflow_tasks.engine.webhooks import endpoints
from bflow_tasks.models import WebhookEndpoint

router = APIRouter(tags=["webhooks"])

DeliveryStatus = Annotated[
    str | None, Query(pattern="^(pending|retrying|delivered|failed)$", description="delivery status")
]


@router.post("/webhooks", status_code=201, response_model=schemas.WebhookCreated)
def create_webhook(
    body: schemas.WebhookCreate, session: SessionDep, tenant_id: TenantDep
) -> schemas.WebhookCreated:
    """Register an endpoint; the answer carries its signing secret, shown this once."""
    endpoint, secret = endpoints.register(session, tenant_id=tenant_id, url=body.url, events=body.events)
    handover.commit(session)
    return schemas.WebhookCreated(**_read(endpoint).model_dump(), secret=secret)


@router.get("/webhooks", response_model=schemas.WebhookPage)
def list_webhooks(
    request: Request, page: PageDep, session: SessionDep, tenant_id: TenantDep
) -> schemas.WebhookPage:
    """List the tenant's endpoints (never their secrets), oldest first."""
    count, rows = endpoints.list_endpoints(
        session, tenant_id=tenant_id, offset=page.offset, limit=page.page_size
    )
    next_url, previous_url = page.links(request, count)
    return schemas.WebhookPage(
        count=count, next=next_url, previous=previous_url, results=[_read(row) for row in rows]
    )


@router.get("/webhooks/{endpoint_id}", response_model=schemas.WebhookRead)
def get_webhook(endpoint_id: str, session: SessionDep, tenant_id: TenantDep) -> schemas.WebhookRead:
    """Return one endpoint (without its secret)."""
    return _read(endpoints.get_endpoint(session, tenant_id=tenant_id, endpoint_id=endpoint_id))


@router.delete("/webhooks/{endpoint_id}", status_code=204)
def delete_webhook(endpoint_id: str, session: SessionDep, tenant_id: TenantDep) -> Response:
    """Remove an endpoint and its deliveries log."""
    endpoints.delete_endpoint(session, tenant_id=tenant_id, endpoint_id=endpoint_id)
    handover.commit(session)
    return Response(status_code=204)


@router.post("/webhooks/{endpoint_id}/rotate-secret", response_model=schemas.WebhookSecretRead)
def rotate_secret(endpoint_id: str, session: SessionDep, tenant_id: TenantDep) -> schemas.WebhookSecretRead:
    """Issue a new secret, shown this once; the old one keeps signing too for 24 h."""
    endpoint, secret = endpoints.rotate(session, tenant_id=tenant_id, endpoint_id=endpoint_id)
    handover.commit(session)
    return schemas.WebhookSecretRead(
        id=endpoint.id, secret=secret, previous_secret_expires_at=endpoint.previous_secret_expires_at
    )


@router.post("/webhooks/{endpoint_id}/enable", response_model=schemas.WebhookRead)
def enable_webhook(endpoint_id: str, session: SessionDep, tenant_id: TenantDep) -> schemas.WebhookRead:
    """Re-enable a disabled endpoint; the deliveries it had not sent yet go out again."""
    endpoint = endpoints.enable_endpoint(session, tenant_id=tenant_id, endpoint_id=endpoint_id)
    handover.commit(session)  # the touched streams are enqueued after this commit
    return _read(endpoint)


@router.get("/webhooks/{endpoint_id}/deliveries", response_model=schemas.WebhookDeliveryPage)
def list_deliveries(
    endpoint_id: str,
    request: Request,
    page: PageDep,
    session: SessionDep,
    tenant_id: TenantDep,
    status: DeliveryStatus = None,
) -> schemas.WebhookDeliveryPage:
    """List an endpoint's deliveries, newest first, each with its latest attempts."""
    count, rows, attempts = endpoints.list_deliveries(
        session,
        tenant_id=tenant_id,
        endpoint_id=endpoint_id,
        status=status,
        offset=page.offset,
        limit=page.page_size,
    )
    next_url, previous_url = page.links(request, count)
    results = [
        schemas.WebhookDeliveryRead.model_validate(
            {
                **{name: getattr(row, name) for name in _DELIVERY_COLUMNS},
                "attempt_count": attempts[row.id][0],
                "attempts": [schemas.WebhookAttemptRead.model_validate(a) for a in attempts[row.id][1]],
            }
        )
        for row in rows
    ]
    return schemas.WebhookDeliveryPage(count=count, next=next_url, previous=previous_url, results=results)


@router.post(
    "/webhook-deliveries/{delivery_id}/replay", status_code=202, response_model=schemas.WebhookReplayAccepted
)
def replay_delivery(
    delivery_id: str, session: SessionDep, tenant_id: TenantDep
) -> schemas.WebhookReplayAccepted:
    """Deliver again, with the same webhook-id and body; 202 once it is committed as pending."""
    delivery = endpoints.replay(session, tenant_id=tenant_id, delivery_id=delivery_id)
    # The commit enqueues the stream; if the broker is down, the sweep will.
    handover.commit(session)
    return schemas.WebhookReplayAccepted(delivery_id=delivery.id)


@router.post(
    "/webhooks/{endpoint_id}/recover", status_code=202, response_model=schemas.WebhookRecoverAccepted
)
def recover(
    endpoint_id: str,
    session: SessionDep,
    tenant_id: TenantDep,
    since: Annotated[
        schemas.QueryTime, Query(description="ISO-8601; replay failed deliveries created since")
    ],
) -> schemas.WebhookRecoverAccepted:
    """Replay every failed (dead-lettered) delivery of the endpoint created since a time."""
    replayed = endpoints.recover(session, tenant_id=tenant_id, endpoint_id=endpoint_id, since=since)
    handover.commit(session)
    return schemas.WebhookRecoverAccepted(endpoint_id=endpoint_id, since=since, replayed=replayed)


_DELIVERY_COLUMNS = [
    name for name in schemas.WebhookDeliveryRead.model_fields if name not in ("attempt_count", "attempts")
]


def _read(endpoint: WebhookEndpoint) -> schemas.WebhookRead:
    return schemas.WebhookRead.model_validate(endpoint)
