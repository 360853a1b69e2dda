"""Each job's re-submission log: what the sweep and operators decided for its dead-lettered steps.

resubmissions/{job_id}.json lists one entry per dead-lettered message handled (keyed by its
sequence number and message id) and per operator re-submission. Entries are added with
If-Match and never changed, so deciding twice about one message returns the first decision:
a sweep that crashed after deciding but before completing the message redoes the same action
(same new message id, so duplicate detection drops a second send) and counts nothing twice.

The log lives beside the job record rather than in it because the step engine rewrites the
job's dead_letter note each time a step is dead-lettered again; Job.resubmissions is set
from this log (a projection), never incremented.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from shared.contracts import utcnow
from shared.engine import layout
from shared.engine.updates import update_json
from shared.errors import Conflict
from shared.ports import ObjectStore, QueueMessage

Action = Literal["resubmitted", "repaired", "failed", "cancelled", "stale", "superseded"]


class Resubmission(BaseModel):
    key: str = Field(description="dlq:{sequence_number}:{message_id} for a dead letter, operator:{id} otherwise.")
    step: int
    action: Action
    message_id: str | None = Field(None, description="The new message's id when the step was sent again.")
    cause: str | None = Field(
        None,
        description="The failure's cause (transient, lost_lock, permanent, poison, "
        "policy, budget), or operator / cancel_requested.",
    )
    reason: str | None = Field(None, description="The job's error reason when the decision ended the job.")
    detail: str = ""
    at: datetime = Field(default_factory=utcnow)


class ResubmissionLog(BaseModel):
    job_id: str
    entries: list[Resubmission] = Field(default_factory=list)

    def find(self, key: str) -> Resubmission | None:
        return next((e for e in self.entries if e.key == key), None)

    @property
    def resubmitted(self) -> int:
        return sum(e.action == "resubmitted" for e in self.entries)

    @property
    def repaired(self) -> int:
        """Next steps the stuck-job detector sent again (counted apart from dead-letter re-submissions)."""
        return sum(e.action == "repaired" for e in self.entries)

    def superseded(self, step: int, enqueued_at: datetime | None) -> bool:
        """Was this step sent again after the message was enqueued? Then the message is history."""
        if enqueued_at is None:
            return False
        return any(
            e.action in ("resubmitted", "repaired") and e.step == step and e.at > enqueued_at for e in self.entries
        )


class JobNotResubmittable(Conflict):
    """The job has finished (or is gone); sending its step again would do nothing. Re-run it instead."""

    kind = "job-state"


def dead_letter_key(message: QueueMessage) -> str:
    return f"dlq:{message.sequence_number}:{message.message_id}"


class ResubmissionStore:
    def __init__(self, objects: ObjectStore) -> None:
        self.objects = objects

    @staticmethod
    def _key(job_id: str) -> str:
        return layout.resubmissions_key(job_id)

    def get(self, job_id: str) -> ResubmissionLog:
        found = self.objects.get(self._key(job_id))
        return ResubmissionLog.model_validate_json(found.data) if found else ResubmissionLog(job_id=job_id)

    def decide(
        self, job_id: str, key: str, choose: Callable[[ResubmissionLog], Resubmission]
    ) -> tuple[ResubmissionLog, Resubmission]:
        """The recorded decision for key, or choose(log)'s, recorded atomically; first decision wins."""

        def change(log: ResubmissionLog | None) -> ResubmissionLog | None:
            log = log or ResubmissionLog(job_id=job_id)
            if log.find(key) is not None:
                return None
            entry = choose(log).model_copy(update={"key": key})
            return log.model_copy(update={"entries": [*log.entries, entry]})

        log = update_json(
            self.objects,
            self._key(job_id),
            change,
            load=ResubmissionLog.model_validate_json,
            dump=lambda log: log.model_dump_json().encode(),
        )
        log = log or ResubmissionLog(job_id=job_id)
        decided = log.find(key)
        assert decided is not None  # either this call or an earlier one recorded it
        return log, decided
