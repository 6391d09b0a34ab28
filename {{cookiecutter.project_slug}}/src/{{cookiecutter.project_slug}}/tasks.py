"""The registry of task types: each name maps to a payload model and the handler that runs it."""

from __future__ import annotations
{%- if cookiecutter.consumer == "async" %}

from collections.abc import Awaitable, Callable
{%- else %}

from collections.abc import Callable
{%- endif %}
from dataclasses import dataclass
from typing import Annotated, Any, Generic, Literal, TypeVar, Union

from pydantic import BaseModel, Field, TypeAdapter, ValidationError, create_model

from .messages import TaskMessage

P = TypeVar("P", bound=BaseModel)
{%- if cookiecutter.consumer == "async" %}
Handler = Callable[[P, TaskMessage], Awaitable[object]]
{%- else %}
Handler = Callable[[P, TaskMessage], object]
{%- endif %}


MAX_RETRY_DELAY_SECONDS = 86_400.0  # the longest wait a handler may ask for: a day


class Retry(Exception):
    """Raised by a handler: retry the message after `delay_seconds` (a service says when it is back,
    a rate limit resets). It counts as one of the MAX_RETRIES; once they are spent, the message is
    dead-lettered."""

    def __init__(self, delay_seconds: float, reason: str = "") -> None:
        if not 0 <= delay_seconds <= MAX_RETRY_DELAY_SECONDS:
            raise ValueError(f"delay_seconds must be from 0 to {MAX_RETRY_DELAY_SECONDS:g}, not {delay_seconds!r}")
        super().__init__(reason or f"retry asked for in {delay_seconds:g} s")
        self.delay_seconds = float(delay_seconds)
        self.reason = reason or "the handler asked for a retry"


class Reject(Exception):
    """Raised by a handler: dead-letter the message at once with `reason`, never retry it (a task
    that can never succeed: a record that no longer exists, a request refused for good)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class TaskType(Generic[P]):
    name: str
    payload_model: type[P]
    handler: Handler[P]


class TaskRegistry:
    """Task types by name. The API validates against it; the consumer dispatches through it."""

    def __init__(self) -> None:
        self._types: dict[str, TaskType[Any]] = {}
        self._envelopes: TypeAdapter[Any] | None = None  # made at the first parse after a registration

    def task(self, name: str, payload_model: type[P]) -> Callable[[Handler[P]], Handler[P]]:
        """Register the decorated function as the handler of task type `name`."""

        def register(handler: Handler[P]) -> Handler[P]:
            if name in self._types:
                raise ValueError(f"task type {name!r} is registered twice")
            self._types[name] = TaskType(name, payload_model, handler)
            self._envelopes = None
            return handler

        return register

    def get(self, name: str) -> TaskType[Any] | None:
        return self._types.get(name)

    def names(self) -> list[str]:
        return sorted(self._types)

    def parse(self, body: bytes) -> tuple[TaskType[Any], TaskMessage, BaseModel] | None:
        """A message of a registered type, its envelope and payload validated in one pass; None for
        anything else, which `messages.decode` and the payload model then explain."""
        if not self._types:
            return None
        if self._envelopes is None:
            self._envelopes = envelopes(list(self._types.values()))
        try:
            message = self._envelopes.validate_json(body)
        except ValidationError:
            return None
        return self._types[message.type], message, message.validated_payload


def envelopes(types: list[TaskType[Any]]) -> TypeAdapter[Any]:
    """One model per task type: a TaskMessage (so its `payload` stays the message's own dict) whose
    `type` is that one name and whose `validated_payload` is the payload read by the type's model."""
    models = [envelope(task_type) for task_type in types]
    if len(models) == 1:
        return TypeAdapter(models[0])
    one_of: Any = Annotated[Union[tuple(models)], Field(discriminator="type")]  # noqa: UP007 (built at run time)
    return TypeAdapter(one_of)


def envelope(task_type: TaskType[Any]) -> type[TaskMessage]:
    name: Any = Literal[task_type.name]  # a type made at run time, which a type checker cannot follow
    return create_model(
        f"{task_type.name}_message",
        __base__=TaskMessage,
        type=(name, ...),
        validated_payload=(task_type.payload_model, Field(validation_alias="payload", exclude=True)),
    )
