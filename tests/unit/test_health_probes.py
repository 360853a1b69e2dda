"""Health checks run on kept probe threads: a hung check is reported down in time and holds nobody else."""

from __future__ import annotations

import threading
import time

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
