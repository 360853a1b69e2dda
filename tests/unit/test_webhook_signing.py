"""Webhook signing (the Standard Webhooks test vector), the allow-list and the address checks."""

from __future__ import annotations

import pytest

from shared.services.webhooks import WebhookRefused, backoff, check_callback, resolve_checked, sign
from shared.settings import Settings, WebhookTenant


def settings(networks: list[str] | None = None) -> Settings:
    return Settings(
        webhook_tenants={"t": WebhookTenant(allowed_hosts=["hooks.example.com", "*.example.org", "127.0.0.1"])},
        webhook_allowed_networks=networks or [],
    )


def test_signature_matches_the_standard_webhooks_reference_vector() -> None:
    header = sign(
        ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, '{"test": 2432232314}'
    )
    assert header == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_every_key_signs_during_a_rotation() -> None:
    header = sign(["whsec_bmV3", "whsec_b2xk"], "id", 1, "{}")
    assert len(header.split()) == 2 and all(part.startswith("v1,") for part in header.split())


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/x",
        "https://a.example.org/x",
        "https://deep.a.example.org:8443/x?y=1",
    ],
)
def test_allow_listed_hosts_pass(url: str) -> None:
    assert check_callback(settings(), "t", url) == url


@pytest.mark.parametrize(
    "url",
    [
        "https://example.org/x",  # *.example.org covers subdomains only
        "https://evil.com/x",
        "ftp://hooks.example.com/x",
        "https://user:pw@hooks.example.com/x",
        "https://hooks.example.com.evil.com/x",
    ],
)
def test_other_hosts_and_schemes_are_refused(url: str) -> None:
    with pytest.raises(WebhookRefused):
        check_callback(settings(), "t", url)
    with pytest.raises(WebhookRefused):
        check_callback(settings(), "unknown-tenant", "https://hooks.example.com/x")


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.1.2.3", "192.168.0.10", "169.254.169.254", "[::1]", "[fe80::1]", "0.0.0.0", "100.64.0.1"],
)
def test_private_loopback_and_link_local_addresses_are_refused_after_resolution(address: str) -> None:
    with pytest.raises(WebhookRefused):
        resolve_checked(settings(), f"https://{address}/hook")


def test_the_operator_may_allow_a_network_and_plain_http_only_there() -> None:
    assert resolve_checked(settings(["127.0.0.0/8"]), "http://127.0.0.1:8080/hook") == "127.0.0.1"
    with pytest.raises(WebhookRefused):
        resolve_checked(settings(["127.0.0.0/8"]), "http://10.0.0.1/hook")


def test_localhost_by_name_is_loopback_once_resolved() -> None:
    with pytest.raises(WebhookRefused, match="loopback"):
        resolve_checked(settings(), "https://localhost/hook")


def test_backoff_grows_with_jitter_honours_retry_after_and_is_capped() -> None:
    s = Settings(webhook_retry_base_seconds=1.0, webhook_max_backoff_seconds=30.0)
    for attempt in (1, 2, 3, 4):
        assert 0.5 * 2 ** (attempt - 1) <= backoff(s, attempt, None) <= 2 ** (attempt - 1)
    assert backoff(s, 1, 10.0) == 10.0
    assert backoff(s, 20, None) <= 30.0 and backoff(s, 1, 999.0) == 30.0
