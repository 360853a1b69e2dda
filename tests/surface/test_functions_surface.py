"""The Functions surface: what Azure will index when it loads function_app.py."""

from shared.runtime.functions import app_functions


def test_triggers_registered_once_with_their_settings() -> None:
    # app_functions() calls function_app.app.get_functions() once per process (it may only run once).
    _, indexed = app_functions()
    functions = {f.get_function_name(): f for f in indexed}

    http = [f for f in functions.values() if f.get_trigger().type == "httpTrigger"]
    assert len(http) == 1, "one ASGI catch-all HTTP function serves the whole API"
    http_binding = http[0].get_trigger().get_dict_repr()
    assert http_binding["route"] == "/{*route}"
    assert str(http_binding["authLevel"]).lower().endswith("anonymous")

    step = functions["agent_step"].get_trigger().get_dict_repr()
    assert step["type"] == "serviceBusTrigger"
    assert step["queueName"] == "%AGENT_JOBS_QUEUE%"
    assert step["connection"] == "ServiceBusConnection"

    # Later steps of started jobs arrive on their own queue and trigger, served apart from first steps.
    more = functions["agent_continue"].get_trigger().get_dict_repr()
    assert more["type"] == "serviceBusTrigger"
    assert more["queueName"] == "%AGENT_CONTINUATIONS_QUEUE%"
    assert more["connection"] == "ServiceBusConnection"
