"""Endpoint secrets: the whsec_ format, Fernet at rest (key from settings or a 0600 file), signatures."""

from __future__ import annotations

import base64
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.fernet import InvalidToken
from pydantic import SecretStr
from standardwebhooks import Webhook, WebhookVerificationError

from bflow_tasks.engine.webhooks import endpoint_secrets, signatures
from bflow_tasks.settings import settings


@pytest.fixture
def key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """No BFLOW_SECRET_KEY: the key lives in a file created on first use."""
    path = tmp_path / "keys" / "bflow-secret.key"
    monkeypatch.setattr(settings, "secret_key", None)
    monkeypatch.setattr(settings, "secret_key_file", path)
    yield path
    endpoint_secrets._key_from_file.cache_clear()


def test_a_secret_is_whsec_and_32_random_bytes() -> None:
    secret = signatures.new_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    assert signatures.new_secret() != secret


def test_secrets_are_encrypted_at_rest_and_need_the_same_key(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = signatures.new_secret()
    token = endpoint_secrets.encrypt(secret)
    assert secret not in token and secret.removeprefix("whsec_") not in token
    assert endpoint_secrets.decrypt(token) == secret
    monkeypatch.setattr(settings, "secret_key", SecretStr("another key"))
    with pytest.raises(InvalidToken):
        endpoint_secrets.decrypt(token)


def test_without_a_configured_key_one_is_created_once_in_a_private_file(key_file: Path) -> None:
    token = endpoint_secrets.encrypt("whsec_dGVzdA==")
    assert key_file.exists() and stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text()
    endpoint_secrets._key_from_file.cache_clear()  # as a restarted process would
    assert endpoint_secrets.decrypt(token) == "whsec_dGVzdA=="
    assert key_file.read_text() == key


def test_headers_carry_one_signature_per_secret_over_the_exact_body() -> None:
    old, new = signatures.new_secret(), signatures.new_secret()
    body = '{"type":"runtime.completed","sequence":7}'
    headers = signatures.signature_headers(msg_id="d-1", body=body, keys=[new, old])
    assert headers["webhook-id"] == "d-1" and headers["webhook-timestamp"].isdigit()
    assert [s.split(",")[0] for s in headers["webhook-signature"].split(" ")] == ["v1", "v1"]
    for secret in (new, old):
        assert Webhook(secret).verify(body, headers) == {"type": "runtime.completed", "sequence": 7}
    with pytest.raises(WebhookVerificationError):
        Webhook(signatures.new_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new).verify(body.replace("7", "8"), headers)
