"""The embedded runtime: hosts function_app.py on one machine the way Azure Functions would.

- HTTP: the ASGI app of the AsgiFunctionApp, served by uvicorn on 127.0.0.1:7071;
- Service Bus triggers: QueueConsumer over the embedded queue, maxConcurrentCalls at once;
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
from pathlib import Path
from typing import Any

from shared.settings import load_local_settings

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
    args = parser.parse_args(argv)

    load_local_settings(ROOT / "local.settings.json")
    if args.data_dir:
        os.environ["DATA_DIR"] = args.data_dir

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
                concurrency=host["max_concurrent_calls"],
                max_lock_renewal_seconds=host["max_lock_renewal_seconds"],
                ingest=ingest,
            )
        )
    timers = TimerScheduler([] if args.no_timers else found.timers)

    config = uvicorn.Config(
        found.asgi_app, host=args.host, port=args.port, log_level="warning", access_log=False, lifespan="off"
    )
    server = uvicorn.Server(config)
    from shared.services.health import register_worker_pool

    for consumer in consumers:
        consumer.start()
        register_worker_pool(consumer.function.name, consumer.pool_state)
    timers.start()
    log.info(
        "embedded runtime on http://%s:%s/api with %s queue function(s), %s timer(s), data in %s",
        args.host,
        args.port,
        len(consumers),
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
        for consumer in consumers:
            consumer.stop()
        ingest.stop()
        timers.stop()
        backends.close()
    return 0
