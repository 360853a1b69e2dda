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
