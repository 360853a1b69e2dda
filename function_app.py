"""The Functions app: every trigger on one screen; each body is one call into a service.

Azure Functions imports this module; the embedded runtime (python -m shared.runtime)
imports it too and discovers the same triggers through app.get_functions().
"""

import azure.functions as func

from shared.api.app import create_api
from shared.composition import get_backends
from shared.steps import handle_step
from shared.telemetry import configure_telemetry

configure_telemetry()

# HTTP: the whole REST API is one ASGI app; it does its own API-key auth, so the host's is off.
app = func.AsgiFunctionApp(app=create_api(), http_auth_level=func.AuthLevel.ANONYMOUS)


@app.function_name("agent_step")
@app.service_bus_queue_trigger(arg_name="msg", queue_name="%AGENT_JOBS_QUEUE%", connection="ServiceBusConnection")
def agent_step(msg: func.ServiceBusMessage) -> None:
    """One agent step per message. Returning completes the message; raising abandons it."""
    handle_step(get_backends(), msg.get_body(), msg.delivery_count or 1)
