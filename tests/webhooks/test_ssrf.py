"""SSRF guard: internal addresses are refused in every spelling, at registration and at send time."""

from __future__ import annotations

import ipaddress

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from bflow_tasks.engine.webhooks import address_policy
from bflow_tasks.settings import settings
from bflow_tasks.worker import webhook_sender
from tests.engine.driver import Driver
from tests.factories import leave_request_definition
from tests.webhooks.receiver import Receiver
from tests.webhooks.support import add_endpoint, attempts, deliveries

FORBIDDEN = [
    "127.0.0.1",
    "10.0.0.1",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",
    "100.64.0.1",
    "100.100.100.200",
    "0.0.0.0",
    "224.0.0.1",
    "240.0.0.1",
    "255.255.255.255",
    "192.0.0.192",
    "::1",
    "::",
    "::ffff:127.0.0.1",
    "::ffff:169.254.169.254",
    "fe80::1",
    "fc00::1",
    "fd00:ec2::254",
    "fec0::1",
    "ff02::1",
    "2002:a00:1::",  # 6to4 for 10.0.0.1
    "64:ff9b::a00:1",  # NAT64 for 10.0.0.1
]
PUBLIC = ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]

REFUSED_URLS = [
    "http://127.0.0.1/hook",
    "http://10.0.0.1/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::1]:8080/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://100.64.0.1/hook",
    "http://localhost:8080/hook",
    "http://2130706433/hook",  # 127.0.0.1 as one decimal number
    "http://0x7f.1/hook",
]


@pytest.mark.parametrize("address", FORBIDDEN)
def test_internal_addresses_are_forbidden(address: str) -> None:
    assert address_policy.forbidden_reason(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are_allowed(address: str) -> None:
    assert address_policy.forbidden_reason(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize("url", REFUSED_URLS)
def test_urls_resolving_to_internal_addresses_are_refused_unless_allowed(url: str) -> None:
    with pytest.raises(address_policy.UnsafeUrl):
        address_policy.check_url(url, allow_private=False)
    with pytest.raises(address_policy.UnsafeUrl):
        address_policy.resolve(url, allow_private=False)
    address_policy.check_url(url, allow_private=True)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/hook",
        "file:///etc/passwd",
        "http:///no-host",
        "javascript:alert(1)",
        "http://h:99999/",
    ],
)
def test_only_http_urls_with_a_host_are_accepted_even_when_private_targets_are(url: str) -> None:
    with pytest.raises(address_policy.UnsafeUrl):
        address_policy.check_url(url, allow_private=True)


# urlsplit drops or strips every one of these and parses the rest as if they were not there.
INVISIBLE_URLS = [
    "https://erp.example.com/hook\n",
    "https://erp.example.com/ho\r\nok",
    "https://erp.exa\tmple.com/hook",
    "https://erp.example.com\x00/hook",
    "https://erp.example.com/hook\x7f",
    " https://erp.example.com/hook",
    "https://erp.example.com/a hook",
    "https://erp.example.com/\u00a0hook",
    "https://erp.example.com/\u200bhook",
]


@pytest.mark.parametrize("url", INVISIBLE_URLS)
def test_urls_with_control_characters_or_whitespace_are_refused(url: str) -> None:
    for allow_private in (True, False):
        with pytest.raises(
            address_policy.UnsafeUrl, match=r"the URL contains (a control character|whitespace) \(U\+"
        ):
            address_policy.check_url(url, allow_private=allow_private)
        with pytest.raises(address_policy.UnsafeUrl, match="the URL contains"):
            address_policy.resolve(url, allow_private=allow_private)


# Read as one host by urlsplit (the check) and as another by urllib3 (what requests sends
# with), or carrying credentials: refused whatever the addresses, before any lookup.
AMBIGUOUS_URLS = [
    ("http://127.0.0.1:6379\\@93.184.215.14/hook", "a backslash at position 21"),
    ("http://93.184.215.14\\@127.0.0.1/hook", "a backslash at position 20"),
    ("https://erp.example.com/a\\b", "a backslash at position 25"),
    ("http://127.0.0.1:6379/\\", "a backslash at position 22"),
    ("http://user@93.184.215.14/hook", "carries a user name or password"),
    ("http://user:pw@93.184.215.14/hook", "carries a user name or password"),
    ("http://127.0.0.1:6379@93.184.215.14/hook", "carries a user name or password"),
    ("http://@93.184.215.14/hook", "carries a user name or password"),
    ("http://a@b@localhost/hook", "carries a user name or password"),
]


@pytest.mark.parametrize(("url", "reason"), AMBIGUOUS_URLS)
def test_urls_with_a_backslash_or_userinfo_are_refused_even_when_private_targets_are(
    url: str, reason: str
) -> None:
    for allow_private in (True, False):
        with pytest.raises(address_policy.UnsafeUrl, match=reason):
            address_policy.check_url(url, allow_private=allow_private)
        with pytest.raises(address_policy.UnsafeUrl, match=reason):
            address_policy.resolve(url, allow_private=allow_private)


def test_a_public_address_resolves_to_itself_with_the_host_kept() -> None:
    target = address_policy.resolve("https://93.184.215.14/hook", allow_private=False)
    assert target == address_policy.Target(
        scheme="https", host="93.184.215.14", port=443, address="93.184.215.14"
    )
    assert address_policy.resolve("http://localhost:8080/x", allow_private=True).address in (
        "127.0.0.1",
        "::1",
    )


def test_an_unresolvable_host_is_refused() -> None:
    with pytest.raises(address_policy.Unresolvable):
        address_policy.resolve("http://does-not-exist.invalid/hook", allow_private=True)


def test_a_send_to_an_internal_address_is_refused_and_counts_as_a_failure(
    session_factory: sessionmaker[Session],
    engine: Engine,
    receiver: Receiver,
    api_engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    driver = Driver(session_factory)
    # Registered while loopback targets were allowed; the rule is checked again at send time.
    endpoint_id, _ = add_endpoint(session_factory, driver.tenant_id, receiver.url)
    runtime_id = driver.submit(driver.workflow(leave_request_definition()), {"amount": 10})
    monkeypatch.setattr(settings, "webhook_allow_private", False)
    retry_in = webhook_sender.drain(endpoint_id=endpoint_id, runtime_id=runtime_id)
    assert retry_in is not None and retry_in > 0
    head = deliveries(engine, endpoint_id=endpoint_id, runtime_id=runtime_id)[0]
    assert head.status == "retrying" and head.attempts == 1
    (attempt,) = attempts(engine, head.id)
    assert attempt.error_class == "UnsafeUrl" and attempt.status_code is None
    assert "127.0.0.1" in (attempt.error or "")
    assert receiver.requests() == []
