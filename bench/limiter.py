"""What the limits cost per request: the SQLite-shared counters against no limiter, in the same run.

Two measurements, each alternated in rounds so drift hits both sides alike:

- the limiter alone: `Limits.admit` (per key and per tenant, from blocks reserved by one UPSERT
  each) plus `check_address` (a read at most every second per address), as every authenticated
  request runs them, against the same calls on a limiter whose
  storage counts nothing (the anchor: the `limits` library's own work without a store);
- a whole request: GET /api/jobs through the app (ASGI, in process: middleware, authentication,
  route) with the real limits, against the same app whose limits admit everything without counting.

    python bench/limiter.py [--requests 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fastapi.testclient import TestClient  # noqa: E402

from shared.api.app import create_api  # noqa: E402
from shared.api.limiting import Limits  # noqa: E402
from shared.bootstrap import build_backends  # noqa: E402
from shared.settings import DEV_API_KEY, Settings  # noqa: E402


class _Unlimited:
    """The anchor: the same calls, no counting and no store."""

    def admit(self, tenant: str, key_id: str, *, quick: bool = False) -> None:
        pass

    def check_address(self, address: str, *, quick: bool = False) -> None:
        pass

    def failed(self, address: str) -> None:
        pass


def per_call_us(limits: Limits | _Unlimited, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        limits.check_address("192.0.2.1")
        limits.admit("dev", f"key-{i % 8}")
    return (time.perf_counter() - start) / n * 1e6


def per_request_us(client: TestClient, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        response = client.get("/api/jobs?limit=1")
        assert response.status_code == 200, response.text
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            DATA_DIR=Path(tmp),
            RATE_LIMIT_PER_MINUTE=10**9,
            TENANT_RATE_LIMIT_PER_MINUTE=10**9,
            ALLOWED_HOSTS=["testserver"],  # the test client's Host
        )  # type: ignore[call-arg]
        b = build_backends(settings)
        real = Limits.from_settings(settings)
        limited_app, anchor_app = create_api(b), create_api(b)
        anchor_app.state.gate.limits = _Unlimited()
        calls = {"sqlite limits": [], "no limiter": []}
        requests = {"sqlite limits": [], "no limiter": []}
        headers = {"X-API-Key": DEV_API_KEY}
        with TestClient(limited_app, headers=headers) as limited, TestClient(anchor_app, headers=headers) as anchor:
            per_request_us(limited, 100), per_request_us(anchor, 100)  # warm both
            for _ in range(args.rounds):
                calls["sqlite limits"].append(per_call_us(real, args.requests))
                calls["no limiter"].append(per_call_us(_Unlimited(), args.requests))
                requests["sqlite limits"].append(per_request_us(limited, args.requests))
                requests["no limiter"].append(per_request_us(anchor, args.requests))
        b.close()
    print(f"limiter overhead, {args.rounds} rounds x {args.requests} (median of rounds, µs):")
    for title, figures in (("limiter calls per request", calls), ("GET /api/jobs per request", requests)):
        with_limits, without = statistics.median(figures["sqlite limits"]), statistics.median(figures["no limiter"])
        print(f"  {title:28} sqlite {with_limits:8.1f}   none {without:8.1f}   overhead {with_limits - without:7.1f}")


if __name__ == "__main__":
    main()
