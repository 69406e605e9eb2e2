"""Standard Webhooks secrets and signature headers (signed by the `standardwebhooks` package)."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime

from standardwebhooks import Webhook

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32


def new_secret() -> str:
    """Return a fresh endpoint secret: `whsec_` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def signature_headers(
    *, msg_id: str, body: str, keys: Sequence[str], at: datetime | None = None
) -> dict[str, str]:
    """Return the webhook-* headers for `body` as sent now, one v1 signature per secret."""
    at = (at or datetime.now(UTC)).replace(microsecond=0)
    signatures = " ".join(Webhook(key).sign(msg_id=msg_id, timestamp=at, data=body) for key in keys)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signatures,
    }
