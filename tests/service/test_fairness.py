"""Fair under overload: the engine sends a started job's next step as a continuation, which the
embedded queue serves before first steps of newer jobs, so started jobs finish first."""

from __future__ import annotations

from shared.contracts import StepMessage
from shared.engine.backends import Backends
from shared.services import jobs
from shared.services.messages import handle_message
from tests.fixtures.app import ingest_samples


def test_a_started_jobs_next_step_is_received_before_first_steps_of_waiting_jobs(backends: Backends) -> None:
    b = backends
    ingest_samples(b)
    request = jobs.JobRequest(task="How does the sweep handle dead letters?")
    started = jobs.submit(b, "dev", request)[0]
    waiting = [jobs.submit(b, "dev", request)[0] for _ in range(3)]

    [first] = b.queue.receive(1)  # type: ignore[attr-defined]
    assert StepMessage.model_validate_json(first.body).job_id == started.id
    handle_message(b, first.body, first.delivery_count)
    b.queue.complete(first)  # type: ignore[attr-defined]

    # The waiting jobs' first steps were sent earlier, yet the started job's step 2 comes first.
    [nxt] = b.queue.receive(1)  # type: ignore[attr-defined]
    msg = StepMessage.model_validate_json(nxt.body)
    assert (msg.job_id, msg.step) == (started.id, 2)
    b.queue.abandon(nxt)  # type: ignore[attr-defined]
    assert all(b.jobs.get(w.id).status == "queued" for w in waiting)  # type: ignore[union-attr]
