"""The registry of task types: each name maps to a payload model and the handler that runs it."""

from __future__ import annotations
{%- if cookiecutter.consumer == "async" %}

from collections.abc import Awaitable, Callable
{%- else %}

from collections.abc import Callable
{%- endif %}
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from .messages import TaskMessage

P = TypeVar("P", bound=BaseModel)
{%- if cookiecutter.consumer == "async" %}
Handler = Callable[[P, TaskMessage], Awaitable[None]]
{%- else %}
Handler = Callable[[P, TaskMessage], None]
{%- endif %}


@dataclass(frozen=True)
class TaskType(Generic[P]):
    name: str
    payload_model: type[P]
    handler: Handler[P]


class TaskRegistry:
    """Task types by name. The API validates against it; the consumer dispatches through it."""

    def __init__(self) -> None:
        self._types: dict[str, TaskType[Any]] = {}

    def task(self, name: str, payload_model: type[P]) -> Callable[[Handler[P]], Handler[P]]:
        """Register the decorated function as the handler of task type `name`."""

        def register(handler: Handler[P]) -> Handler[P]:
            if name in self._types:
                raise ValueError(f"task type {name!r} is registered twice")
            self._types[name] = TaskType(name, payload_model, handler)
            return handler

        return register

    def get(self, name: str) -> TaskType[Any] | None:
        return self._types.get(name)

    def names(self) -> list[str]:
        return sorted(self._types)
