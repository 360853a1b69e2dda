"""Health checks run on kept probe threads: a hung check is reported down in time and holds nobody else."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from typing import Any

from shared.services import health


def test_a_hung_check_is_down_by_the_deadline_and_the_next_checks_get_their_own_threads() -> None:
    release = threading.Event()
    try:
        for _ in range(2):  # the second round: the first round's hung thread is still held
            started = time.perf_counter()
            results = health._run_all({"hung": release.wait, "quick": lambda: "fine"}, deadline_seconds=0.3)
            assert time.perf_counter() - started < 1.0
            assert results["hung"]["status"] == "down" and "no answer within" in results["hung"]["error"]
            assert results["quick"] == {"status": "up", "detail": "fine", "ms": results["quick"]["ms"]}
    finally:
        release.set()


def _probe_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "health-check"}


def test_probe_threads_are_kept_between_checks() -> None:
    health._run_all({"a": lambda: None}, deadline_seconds=1.0)
    kept = _probe_threads()
    assert kept
    for _ in range(20):
        assert health._run_all({"a": lambda: None}, deadline_seconds=1.0)["a"]["status"] == "up"
    assert _probe_threads() == kept  # the same threads: none started, none ended


def test_operators_asking_while_a_check_runs_share_it_and_later_ones_get_a_new_one(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    running = threading.Event()

    def slow_check(b: object) -> dict[str, object]:
        running.set()
        time.sleep(0.2)
        return {"status": "ok", "n": cache.checks + 1}

    monkeypatch.setattr(health, "check", slow_check)
    cache = health.HealthCache(max_age_seconds=60)
    answers: list[dict[str, object]] = []
    first = threading.Thread(target=lambda: answers.append(cache.get(None, fresh=True)))  # type: ignore[arg-type]
    first.start()
    running.wait(1)
    answers.append(cache.get(None, fresh=True))  # type: ignore[arg-type] # asked while the first check ran
    first.join()
    assert cache.checks == 1 and answers[0] is answers[1]
    later = cache.get(None, fresh=True)  # type: ignore[arg-type] # asked after it finished: a check of its own
    assert cache.checks == 2 and later["n"] == 2
    assert cache.get(None) is later  # type: ignore[arg-type] # anonymous: within max_age_seconds, no new check


def _run(coroutine: Any) -> Any:
    """asyncio.run on a thread of its own: in a whole-suite run, pytest-playwright's session-wide sync
    API keeps an event loop running on the main thread, where asyncio.run refuses to start."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def test_async_callers_share_one_check_and_wait_without_a_thread_each(monkeypatch) -> None:  # type: ignore[no-untyped-def]

    threads_during_check: list[int] = []

    def slow_check(b: object) -> dict[str, object]:
        time.sleep(0.2)
        threads_during_check.append(threading.active_count())
        return {"status": "ok", "n": cache.checks + 1}

    monkeypatch.setattr(health, "check", slow_check)
    cache = health.HealthCache(max_age_seconds=60)
    before = [0]

    async def fifty_operators_and_a_sync_caller() -> list[dict[str, object]]:
        before[0] = threading.active_count()
        asked = [asyncio.create_task(cache.get_async(None, fresh=True)) for _ in range(50)]  # type: ignore[arg-type]
        await asyncio.sleep(0.05)  # the check is running: a thread's caller shares it as well
        sync = asyncio.create_task(asyncio.to_thread(cache.get, None, fresh=True))  # type: ignore[arg-type]
        return [*(await asyncio.gather(*asked)), await sync]

    answers = _run(fifty_operators_and_a_sync_caller())
    assert cache.checks == 1 and all(a is answers[0] for a in answers)
    assert threads_during_check[0] <= before[0] + 2  # the check's worker and the sync caller, not fifty
    later = _run(cache.get_async(None, fresh=True))  # type: ignore[arg-type] # asked after: a new check
    assert cache.checks == 2 and later["n"] == 2
    assert _run(cache.get_async(None)) is later  # type: ignore[arg-type] # anonymous: cached, no check
