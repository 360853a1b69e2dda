"""Discover the triggers of function_app.py from app.get_functions(): the only list of functions."""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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


def app_functions(module_name: str = "function_app") -> tuple[Any, list[Any]]:
    """(app, functions): get_functions() indexes the app and may be called once per process."""
    return _indexed(module_name)


@functools.cache
def _indexed(module_name: str) -> tuple[Any, list[Any]]:
    app = importlib.import_module(module_name).app
    return app, app.get_functions()


def discover(module_name: str = "function_app") -> Discovered:
    app, functions = app_functions(module_name)
    asgi_app = None
    queues: list[QueueFunction] = []
    timers: list[TimerFunction] = []
    for fn in functions:
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
            queues.append(
                QueueFunction(
                    name=fn.get_function_name(),
                    queue=resolve_binding_expression(binding["queueName"]),
                    connection=binding["connection"],
                    run=user_function,
                    arg_name=binding["name"],
                )
            )
        elif trigger.type == "timerTrigger":
            timers.append(
                TimerFunction(
                    name=fn.get_function_name(),
                    schedule=resolve_binding_expression(binding["schedule"]),
                    run_on_startup=bool(binding.get("runOnStartup", False)),
                    run=user_function,
                    arg_name=binding["name"],
                )
            )
        else:
            raise RuntimeError(f"the embedded runtime cannot host trigger type {trigger.type}")
    return Discovered(asgi_app=asgi_app, queues=queues, timers=timers)
