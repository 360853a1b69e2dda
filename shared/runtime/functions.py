"""Discover the triggers of function_app.py from app.get_functions(): the only list of functions."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from shared.settings import resolve_binding_expression


@dataclass
class QueueFunction:
    name: str
    queue: str
    connection: str
    run: Callable[..., Any]
    arg_name: str


@dataclass
class TimerFunction:
    name: str
    schedule: str
    run_on_startup: bool
    run: Callable[..., Any]
    arg_name: str


@dataclass
class Discovered:
    asgi_app: Any
    queues: list[QueueFunction]
    timers: list[TimerFunction]


def discover(module_name: str = "function_app") -> Discovered:
    module = importlib.import_module(module_name)
    app = module.app
    asgi_app = None
    queues: list[QueueFunction] = []
    timers: list[TimerFunction] = []
    for fn in app.get_functions():
        trigger = fn.get_trigger()
        binding = trigger.get_dict_repr()
        user_function = fn.get_user_function()
        if trigger.type == "httpTrigger":
            # AsgiFunctionApp registers one catch-all HTTP function around its ASGI app.
            middleware = getattr(app, "middleware", None)
            asgi_app = getattr(middleware, "_app", None)
            if asgi_app is None:
                raise RuntimeError(f"HTTP function {fn.get_function_name()} is not an AsgiFunctionApp route")
        elif trigger.type == "serviceBusTrigger":
            queues.append(QueueFunction(
                name=fn.get_function_name(), queue=resolve_binding_expression(binding["queueName"]),
                connection=binding["connection"], run=user_function, arg_name=binding["name"],
            ))
        elif trigger.type == "timerTrigger":
            timers.append(TimerFunction(
                name=fn.get_function_name(), schedule=resolve_binding_expression(binding["schedule"]),
                run_on_startup=bool(binding.get("runOnStartup", False)), run=user_function, arg_name=binding["name"],
            ))
        else:
            raise RuntimeError(f"the embedded runtime cannot host trigger type {trigger.type}")
    return Discovered(asgi_app=asgi_app, queues=queues, timers=timers)
