"""Timer triggers on NCRONTAB (six-field, seconds first) schedules, as the Functions host runs them.

Each timer gets a real azure.functions TimerRequest; past_due is set when a run starts
later than its schedule said (the process was down or busy), like in Azure.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta

from azure.functions.timer import TimerRequest
from croniter import croniter

from shared.runtime.functions import TimerFunction

log = logging.getLogger("agent.runtime")
PAST_DUE_AFTER = timedelta(seconds=5)


def next_occurrence(schedule: str, after: datetime) -> datetime:
    if len(schedule.split()) != 6:
        raise ValueError(f"schedule {schedule!r} is not a six-field NCRONTAB expression (sec min hour day month dow)")
    when: datetime = croniter(schedule, after, second_at_beginning=True).get_next(datetime)
    return when


class TimerScheduler:
    def __init__(self, timers: list[TimerFunction]) -> None:
        self.timers = timers
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for timer in self.timers:
            next_occurrence(timer.schedule, datetime.now(UTC))  # fail fast on a bad schedule
            t = threading.Thread(target=self._loop, args=(timer,), name=f"timer-{timer.name}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 30.0) -> None:
        self._stopping.set()
        for t in self._threads:
            t.join(timeout)

    def _loop(self, timer: TimerFunction) -> None:
        if timer.run_on_startup:
            self._fire(timer, past_due=False, due=datetime.now(UTC))
        due = next_occurrence(timer.schedule, datetime.now(UTC))
        while not self._stopping.is_set():
            wait = (due - datetime.now(UTC)).total_seconds()
            if wait > 0 and self._stopping.wait(min(wait, 60.0)):
                return
            now = datetime.now(UTC)
            if now < due:
                continue
            self._fire(timer, past_due=now - due > PAST_DUE_AFTER, due=due)
            due = next_occurrence(timer.schedule, datetime.now(UTC))

    def _fire(self, timer: TimerFunction, *, past_due: bool, due: datetime) -> None:
        request = TimerRequest(
            past_due=past_due, schedule={"AdjustForDST": False}, schedule_status={"Last": due.isoformat(), "Next": None}
        )
        try:
            timer.run(**{timer.arg_name: request})
        except Exception:  # noqa: BLE001 - a failed run is logged; the next occurrence still fires
            log.exception("timer %s failed", timer.name)
