"""The embedded runtime: hosts function_app.py on one machine the way Azure Functions would.

- HTTP: the ASGI app of the AsgiFunctionApp, served by uvicorn on 127.0.0.1:7071;
- Service Bus triggers: QueueConsumer over the embedded queue, maxConcurrentCalls at once, in each
  of FUNCTIONS_WORKER_PROCESS_COUNT processes (this one and `--steps-only` workers it supervises);
- timers: TimerScheduler on the same NCRONTAB schedules.
Settings come from the environment, after local.settings.json's "Values" (as `func start` does).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.settings import load_local_settings

if TYPE_CHECKING:
    from shared.engine.backends import Backends
    from shared.runtime.consumer import QueueConsumer
    from shared.runtime.ingest_process import IngestProcess
    from shared.runtime.worker_processes import WorkerProcesses
    from shared.services.health import WorkerPoolState

ROOT = Path(__file__).resolve().parents[2]
log = logging.getLogger("agent.runtime")


# The app setting Azure reads in place of host.json's value (Functions' AzureFunctionsJobHost__ override).
_OVERRIDE = "AzureFunctionsJobHost__extensions__serviceBus__"


def read_host_json(path: Path) -> dict[str, Any]:
    host = json.loads(path.read_text(encoding="utf-8"))
    service_bus = dict(host.get("extensions", {}).get("serviceBus", {}))
    for name in ("maxConcurrentCalls", "maxAutoLockRenewalDuration"):
        if os.environ.get(_OVERRIDE + name):
            service_bus[name] = os.environ[_OVERRIDE + name]
    return {
        "max_concurrent_calls": int(service_bus.get("maxConcurrentCalls", 16)),
        "max_lock_renewal_seconds": _timespan(service_bus.get("maxAutoLockRenewalDuration", "00:05:00")),
    }


def _timespan(value: str) -> float:
    hours, minutes, seconds = value.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.runtime", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("FUNCTIONS_HTTPWORKER_PORT", "7071")))
    parser.add_argument("--data-dir", help="state directory (default DATA_DIR or .data)")
    parser.add_argument("--no-timers", action="store_true", help="do not run timer triggers")
    parser.add_argument(
        "--no-consumers",
        action="store_true",
        help="do not consume the queue (serve the API only; another runtime on the same DATA_DIR runs the steps)",
    )
    parser.add_argument(
        "--steps-only",
        action="store_true",
        help="run the queue triggers only, no HTTP or timers: a worker process the runtime starts itself "
        "when FUNCTIONS_WORKER_PROCESS_COUNT is above 1",
    )
    parser.add_argument("--worker", type=int, default=1, help="this worker process's number, for its logs")
    parser.add_argument("--parent", type=int, help="the runtime's pid: a worker process exits once it is gone")
    args = parser.parse_args(argv)

    load_local_settings(ROOT / "local.settings.json")
    if args.data_dir:
        os.environ["DATA_DIR"] = args.data_dir
    from shared.runtime.worker_processes import WorkerProcesses, calls_per_process, process_count, watch_parent

    try:
        processes = process_count(os.environ.get("FUNCTIONS_WORKER_PROCESS_COUNT"))
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    if args.steps_only:
        _tag_log_records(args.worker)

    import uvicorn

    from shared.observability.telemetry import configure_telemetry
    from shared.settings import get_settings

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    configure_telemetry(settings, log_file=settings.runtime_log_path)

    from shared.adapters.local.queue import LocalQueue
    from shared.bootstrap import get_backends
    from shared.runtime.consumer import QueueConsumer
    from shared.runtime.functions import discover
    from shared.runtime.ingest_process import IngestProcess
    from shared.runtime.timers import TimerScheduler

    found = discover("function_app")
    host = read_host_json(ROOT / "host.json")
    calls = calls_per_process(host["max_concurrent_calls"], processes)
    if len(calls) < processes and not args.steps_only:
        log.warning(
            "FUNCTIONS_WORKER_PROCESS_COUNT=%s is above maxConcurrentCalls (%s), which the processes share: "
            "running %s processes",
            processes,
            host["max_concurrent_calls"],
            len(calls),
            extra={"event": "worker_processes_capped"},
        )
    if args.worker > len(calls):
        return 0  # a worker process beyond the share (only when started by hand): nothing to run
    backends = get_backends()
    consumers = []
    # Ingestion batches run in a child process: their CPU work then never holds the API's GIL.
    ingest = IngestProcess()
    for fn in [] if args.no_consumers else found.queues:
        if not isinstance(backends.queue, LocalQueue):
            raise SystemExit(
                f"{fn.name}: the embedded runtime consumes the embedded queue only; with a Service Bus "
                "connection configured, run the app with Functions Core Tools (`func start`)."
            )
        if fn.queue == settings.agent_continuations_queue:
            # One embedded file serves both: its receive takes continuations first, by priority.
            continue
        if fn.queue != backends.queue.name:
            raise SystemExit(f"{fn.name} listens on {fn.queue!r} but the app sends to {backends.queue.name!r}")
        consumers.append(
            QueueConsumer(
                backends.queue,
                fn,
                concurrency=calls[args.worker - 1],
                max_lock_renewal_seconds=host["max_lock_renewal_seconds"],
                ingest=ingest,
            )
        )
    if args.steps_only:
        # The pid comes from the runtime itself: one read here could already be init's if the runtime
        # died while this process was starting, and the worker would then never notice.
        watch_parent(args.parent or os.getppid())
        return _serve_steps(consumers, ingest, backends, args.worker)
    timers = TimerScheduler([] if args.no_timers else found.timers)
    workers = WorkerProcesses(calls[1:], ROOT) if consumers and len(calls) > 1 else None

    config = uvicorn.Config(
        found.asgi_app, host=args.host, port=args.port, log_level="warning", access_log=False, lifespan="off"
    )
    server = uvicorn.Server(config)
    from shared.services.health import register_worker_pool

    for consumer in consumers:
        consumer.start()
        register_worker_pool(consumer.function.name, _pool_state(consumer, workers))
    if workers is not None:
        workers.start()
    timers.start()
    log.info(
        "embedded runtime on http://%s:%s/api with %s queue function(s) in %s process(es), %s timer(s), data in %s",
        args.host,
        args.port,
        len(consumers),
        len(calls) if consumers else 0,
        len(timers.timers),
        settings.data_dir,
        extra={"event": "runtime_started"},
    )
    signal.signal(signal.SIGTERM, lambda *_: setattr(server, "should_exit", True))
    # What startup loaded lives as long as the process: frozen out of the collector's reach, a full
    # collection (which any allocation-heavy request can trigger, in any thread, GIL held) scans only
    # what requests made since. Measured on a 20,000-document upload: loop stalls of 90 ms become 15 ms.
    gc.collect()
    gc.freeze()
    try:
        server.run()
    finally:
        if workers is not None:
            workers.stop()
        for consumer in consumers:
            consumer.stop()
        ingest.stop()
        timers.stop()
        backends.close()
    return 0


def _pool_state(consumer: QueueConsumer, workers: WorkerProcesses | None) -> Callable[[], WorkerPoolState]:
    """Health's view of one queue function: this process's workers plus those of live worker processes."""
    if workers is None:
        return consumer.pool_state

    from shared.services.health import WorkerPoolState

    def state() -> WorkerPoolState:
        own = consumer.pool_state()
        configured, alive = workers.state()
        return WorkerPoolState(
            configured=own.configured + configured, alive=own.alive + alive, lock_renewer=own.lock_renewer
        )

    return state


def _tag_log_records(worker: int) -> None:
    """Every line this worker process logs says which process wrote it (they share the runtime's log)."""
    make_record = logging.getLogRecordFactory()

    def tagged(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        record.worker = worker
        return record

    logging.setLogRecordFactory(tagged)


def _serve_steps(consumers: list[QueueConsumer], ingest: IngestProcess, backends: Backends, worker: int) -> int:
    """A worker process: the queue consumers until SIGTERM (or until the runtime that started it is gone)."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    for consumer in consumers:
        consumer.start()
    log.info(
        "worker process %s (pid %s): %s queue function(s)",
        worker,
        os.getpid(),
        len(consumers),
        extra={"event": "worker_process_started"},
    )
    gc.collect()
    gc.freeze()
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for consumer in consumers:
            consumer.stop()
        ingest.stop()
        backends.close()
    return 0
