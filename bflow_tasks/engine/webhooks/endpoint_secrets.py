"""Endpoint secrets at rest: Fernet with a key derived from BFLOW_SECRET_KEY (or a key file)."""

from __future__ import annotations

import base64
import functools
import hashlib
import logging
import os
import secrets
from pathlib import Path

from cryptography.fernet import Fernet

from bflow_tasks.settings import settings

log = logging.getLogger(__name__)

# Domain separation: the same BFLOW_SECRET_KEY may one day key something else too.
_KDF_CONTEXT = b"bflow webhook secrets v1\x00"


def encrypt(secret: str) -> str:
    """Encrypt a webhook secret for storage."""
    return _fernet().encrypt(secret.encode()).decode()


def decrypt(token: str) -> str:
    """Decrypt a stored webhook secret (cryptography.fernet.InvalidToken if the key changed)."""
    return _fernet().decrypt(token.encode()).decode()


def _fernet() -> Fernet:
    if settings.secret_key is not None:
        return _fernet_for(settings.secret_key.get_secret_value())
    return _fernet_for(_key_from_file(settings.secret_key_file.resolve()))


@functools.cache
def _fernet_for(master_key: str) -> Fernet:
    """Derive the Fernet key: any string in, 32 bytes out (SHA-256 of context and key)."""
    digest = hashlib.sha256(_KDF_CONTEXT + master_key.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


@functools.cache
def _key_from_file(path: Path) -> str:
    """Read the key file, creating it (mode 0600) with a random key the first time."""
    if not path.exists():
        _create_key_file(path)
    elif not settings.is_sqlite:
        log.warning("webhook secrets use the key file %s: set BFLOW_SECRET_KEY on every host", path)
    key = path.read_text().strip()
    if not key:
        raise RuntimeError(f"the secret key file {path} is empty")
    return key


def _create_key_file(path: Path) -> None:
    # Write a private temporary file, then link it into place: of two processes starting at
    # once, exactly one key wins and nobody reads a half-written file.
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, (secrets.token_urlsafe(32) + "\n").encode())
    finally:
        os.close(fd)
    try:
        os.link(temporary, path)
        log.info("created the webhook secret key file %s", path)
    except FileExistsError:
        pass
    finally:
        os.unlink(temporary)
