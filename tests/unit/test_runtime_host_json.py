"""The embedded runtime reads host.json's Service Bus settings, and the app settings Azure lets override them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.runtime.host import read_host_json


def _host(tmp_path: Path) -> Path:
    path = tmp_path / "host.json"
    service_bus = {"maxConcurrentCalls": 8, "maxAutoLockRenewalDuration": "00:10:00"}
    path.write_text(json.dumps({"extensions": {"serviceBus": service_bus}}), encoding="utf-8")
    return path


def test_host_json_values_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AzureFunctionsJobHost__extensions__serviceBus__maxConcurrentCalls", raising=False)
    monkeypatch.delenv("AzureFunctionsJobHost__extensions__serviceBus__maxAutoLockRenewalDuration", raising=False)
    assert read_host_json(_host(tmp_path)) == {"max_concurrent_calls": 8, "max_lock_renewal_seconds": 600.0}


def test_the_app_settings_azure_honours_override_host_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AzureFunctionsJobHost__extensions__serviceBus__maxConcurrentCalls", "4")
    monkeypatch.setenv("AzureFunctionsJobHost__extensions__serviceBus__maxAutoLockRenewalDuration", "00:01:30")
    assert read_host_json(_host(tmp_path)) == {"max_concurrent_calls": 4, "max_lock_renewal_seconds": 90.0}
