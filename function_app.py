"""The Functions app: every trigger on one screen; each body is one call into a service.

Azure Functions imports this module; the embedded runtime (python -m shared.runtime)
imports it too and discovers the same triggers through app.get_functions().
"""

import azure.functions as func

from shared.api.app import create_api
from shared.bootstrap import get_backends
from shared.maintenance import run_scheduled
from shared.observability.telemetry import configure_telemetry
from shared.services.messages import handle_message
from shared.services.schedules import fire_due
from shared.settings import get_settings

configure_telemetry()

# HTTP: the whole REST API is one ASGI app; it does its own API-key auth, so the host's is off.
# The backends are built on first use, not at import: the host indexes this module before any call.
app = func.AsgiFunctionApp(app=create_api(get_backends, get_settings()), http_auth_level=func.AuthLevel.ANONYMOUS)


@app.function_name("agent_step")
@app.service_bus_queue_trigger(arg_name="msg", queue_name="%AGENT_JOBS_QUEUE%", connection="ServiceBusConnection")
def agent_step(msg: func.ServiceBusMessage) -> None:
    """One agent step, one batch of an ingestion job or one webhook delivery attempt per message. Returning
    completes it; raising abandons it."""
    handle_message(get_backends(), msg.get_body(), msg.delivery_count or 1)


@app.function_name("agent_continue")
@app.service_bus_queue_trigger(
    arg_name="msg", queue_name="%AGENT_CONTINUATIONS_QUEUE%", connection="ServiceBusConnection"
)
def agent_continue(msg: func.ServiceBusMessage) -> None:
    """A later step of a started job: its own queue, so first steps of new jobs never hold it back."""
    handle_message(get_backends(), msg.get_body(), msg.delivery_count or 1)


# Timers: schedules are app settings (six-field NCRONTAB). Each task holds a lease and runs once per
# occurrence, so instances that fire together do the work once; past_due runs are logged and still run.


@app.function_name("backup")
@app.timer_trigger(schedule="%BACKUP_SCHEDULE%", arg_name="timer", run_on_startup=False)
def backup(timer: func.TimerRequest) -> None:
    """Daily: export the knowledge index and job state to backups/{id}/; keep the last BACKUPS_TO_KEEP."""
    run_scheduled(get_backends(), "backup", past_due=timer.past_due)


@app.function_name("dlq_sweep")
@app.timer_trigger(schedule="%DLQ_SWEEP_SCHEDULE%", arg_name="timer", run_on_startup=False)
def dlq_sweep(timer: func.TimerRequest) -> None:
    """Every 15 minutes: re-submit transient dead letters, fail the jobs of permanent ones."""
    run_scheduled(get_backends(), "dlq_sweep", past_due=timer.past_due)


@app.function_name("weekly_checks")
@app.timer_trigger(schedule="%WEEKLY_CHECKS_SCHEDULE%", arg_name="timer", run_on_startup=False)
def weekly_checks(timer: func.TimerRequest) -> None:
    """Weekly: the operations report (ops/reports/) and a warning per runbook threshold crossed."""
    run_scheduled(get_backends(), "weekly_checks", past_due=timer.past_due)


@app.function_name("retention")
@app.timer_trigger(schedule="%RETENTION_SCHEDULE%", arg_name="timer", run_on_startup=False)
def retention(timer: func.TimerRequest) -> None:
    """Daily: every container's retention rule (old checkpoints, aged-out jobs, records past their window)."""
    run_scheduled(get_backends(), "retention", past_due=timer.past_due)


@app.function_name("schedules")
@app.timer_trigger(schedule="%SCHEDULES_SCHEDULE%", arg_name="timer", run_on_startup=False)
def schedules(timer: func.TimerRequest) -> None:
    """Every minute: submit one job per due occurrence of each tenant's schedules (missed ones run once)."""
    fire_due(get_backends())


@app.function_name("stuck_jobs")
@app.timer_trigger(schedule="%STUCK_JOBS_SCHEDULE%", arg_name="timer", run_on_startup=False)
def stuck_jobs(timer: func.TimerRequest) -> None:
    """Every 5 minutes: re-send the lost next step of stuck jobs (or fail them past STUCK_MAX_REPAIRS)."""
    run_scheduled(get_backends(), "stuck_jobs", past_due=timer.past_due)
