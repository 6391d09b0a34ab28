"""HTTP routes: publish a task, report health, expose metrics."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Iterable, Mapping
from typing import Annotated, Any, Literal

{% if cookiecutter.task_store == "none" -%}
from fastapi import APIRouter, Depends, HTTPException, Request, Response
{% else -%}
from fastapi import APIRouter, Depends, HTTPException, Path, Request, Response
{% endif -%}
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .brokers import BrokerUnavailable, Consumer, Publisher
from .brokers.memory import is_memory
from .logs import current_request_id, log_context
from .messages import TaskMessage
{%- if cookiecutter.task_store != "none" %}
from .metrics import TASK_STORE_ERRORS
{%- endif %}
{% if cookiecutter.task_store == "none" -%}
from .publishing import publish
{% else -%}
from .publishing import PublishFailed, publish
{% endif -%}
from .settings import Settings
{%- if cookiecutter.task_store != "none" %}
from .store import StoreUnavailable
from .store.http import (
    REPLAYED_HEADER,
    IdempotencyKey,
    StoreDep,
    TaskStatus,
    bounded,
    forget,
    location,
    mark_accepted,
    new_record,
    replay,
    request_hash,
    store_down,
    task_status,
)
{%- endif %}
from .tasks import TaskRegistry

logger = logging.getLogger(__name__)

router = APIRouter()


class TaskRequest(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"type": "process_image", "payload": {"image_url": "https://example.com/a.png"}}]
        }
    )

    type: str = Field(description="A registered task type, such as process_image.")
    payload: dict[str, Any] = Field(description="The task's input; its schema depends on the type.")
    delay_seconds: float = Field(
        0.0, ge=0, allow_inf_nan=False, description="Start the task no sooner; at most MAX_DELAY_SECONDS."
    )


class TaskAccepted(BaseModel):
    id: str = Field(description="The message id; handlers use it to recognise a redelivery.")
    type: str
    status: Literal["accepted"] = "accepted"


class ErrorDetail(BaseModel):
    detail: str


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    broker: Literal["ok", "unavailable", "memory"]  # memory: BROKER_URL=memory://, nothing durable
    consumer: Literal["running", "stopped", "disabled"]
{%- if cookiecutter.task_store != "none" %}
    task_store: Literal["ok", "unavailable"]
{%- endif %}


class Liveness(BaseModel):
    status: Literal["alive"] = "alive"


# The dependencies only read app.state: async, because FastAPI runs a plain `def` one in its
# threadpool, a hand-over to another thread and back for each, on every request.
async def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_publisher(request: Request) -> Publisher:
    publisher: Publisher = request.app.state.publisher
    return publisher


async def get_consumer(request: Request) -> Consumer | None:
    consumer: Consumer | None = request.app.state.consumer
    return consumer


async def get_registry(request: Request) -> TaskRegistry:
    registry: TaskRegistry = request.app.state.registry
    return registry


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
PublisherDep = Annotated[Publisher, Depends(get_publisher)]
ConsumerDep = Annotated["Consumer | None", Depends(get_consumer)]
RegistryDep = Annotated[TaskRegistry, Depends(get_registry)]


class ValidationErrors(BaseModel):
    detail: list[dict[str, Any]]


def invalid(errors: Iterable[Mapping[str, Any]], *prefix: str | int) -> RequestValidationError:
    """A 422 in FastAPI's error shape, located under `body`. The input is not echoed: it may be
    large, binary or secret."""
    return RequestValidationError(
        [{"type": error["type"], "loc": ("body", *prefix, *error["loc"]), "msg": error["msg"]} for error in errors]
    )


async def read_task_request(request: Request, registry: RegistryDep, settings: SettingsDep) -> TaskRequest:
    """Parse and validate the body ourselves, so that any malformed input, even JSON nested too
    deeply for Python's parser, is a 422 and never a 400 or a 500. A body declared as anything
    but JSON is a 415; no Content-Type at all is taken as JSON."""
    media_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise HTTPException(status_code=415, detail="Content-Type must be application/json")
    try:
        task = TaskRequest.model_validate_json(await request.body())
    except ValidationError as error:
        raise invalid(error.errors(include_url=False, include_context=False)) from None
    if task.delay_seconds > settings.max_delay_seconds:
        limit = f"Input should be less than or equal to {settings.max_delay_seconds:g} (MAX_DELAY_SECONDS)"
        raise invalid([{"type": "less_than_equal", "loc": ("delay_seconds",), "msg": limit}])
    task_type = registry.get(task.type)
    if task_type is None:
        known = ", ".join(registry.names())
        raise invalid([{"type": "unknown_task_type", "loc": ("type",), "msg": f"unknown task type; known: {known}"}])
    try:
        task_type.payload_model.model_validate(task.payload)
    except ValidationError as error:
        raise invalid(error.errors(include_url=False, include_context=False), "payload") from None
    return task


@router.post(
    "/tasks",
    status_code=202,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": TaskRequest.model_json_schema()}},
        }
    },
    responses={
{%- if cookiecutter.task_store != "none" %}
        202: {
            "description": "Accepted.",
            "headers": {
                "Location": {"description": "The task's record: GET it.", "schema": {"type": "string"}},
                REPLAYED_HEADER: {
                    "description": "true: the answer to an earlier request with this Idempotency-Key.",
                    "schema": {"type": "string"},
                },
            },
        },
        409: {"model": ErrorDetail, "description": "A request with this Idempotency-Key is still in progress."},
{%- endif %}
        413: {"model": ErrorDetail, "description": "The body is over 1 MiB."},
        415: {"model": ErrorDetail, "description": "The Content-Type is not application/json."},
{%- if cookiecutter.task_store == "none" %}
        422: {"model": ValidationErrors, "description": "The body is not a valid task."},
        503: {"model": ErrorDetail, "description": "The broker did not take the task, for certain; retry later."},
        504: {
            "model": ErrorDetail,
            "description": "The broker did not confirm the task in time: outcome unknown, the task may run.",
        },
{%- else %}
        422: {
            "model": ValidationErrors,
            "description": "The body is not a valid task, or the Idempotency-Key was used with another body.",
        },
        503: {
            "model": ErrorDetail,
            "description": "The broker or the task store did not take the task, for certain; retry later.",
        },
        504: {
            "model": ErrorDetail,
            "description": "The broker did not confirm the task in time: outcome unknown, the task may run. "
            "A retry with the same Idempotency-Key publishes it at most once more, under the same id.",
        },
{%- endif %}
    },
)
{%- if cookiecutter.task_store == "none" %}
async def create_task(
    task: Annotated[TaskRequest, Depends(read_task_request)], settings: SettingsDep, publisher: PublisherDep
) -> TaskAccepted:
    """Queue a task, to start at once or after `delay_seconds`. 202 means the broker has durably accepted it.
    An Idempotency-Key header is ignored: this service keeps no record of its tasks."""
    message = TaskMessage(id=str(uuid.uuid4()), type=task.type, payload=task.payload)
    with log_context(task_id=message.id, request_id=current_request_id(), task_type=message.type):
        await publish(message, task.delay_seconds, settings, publisher)
    return TaskAccepted(id=message.id, type=message.type)
{%- else %}
async def create_task(
    task: Annotated[TaskRequest, Depends(read_task_request)],
    settings: SettingsDep,
    publisher: PublisherDep,
    store: StoreDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> TaskAccepted:
    """Queue a task, to start at once or after `delay_seconds`. 202 means the broker has durably accepted it;
    the task's record, at the Location header's address, was written before it was published."""
    message = TaskMessage(id=str(uuid.uuid4()), type=task.type, payload=task.payload)
    asked = request_hash(task)
    with log_context(task_id=message.id, request_id=current_request_id(), task_type=message.type):
        try:
            holder = await bounded(store.create(new_record(message, task.delay_seconds, idempotency_key, asked)))
        except StoreUnavailable as error:
            raise store_down(error) from None
        if holder is not None:
            first = await replay(holder, asked, store, settings)
            if first.publish_again:  # at worst the task runs twice, under one id, as at-least-once allows
                logger.warning("task %s: its first publish timed out; publishing it again", first.record.id)
                again = TaskMessage(id=first.record.id, type=first.record.type, payload=task.payload)
                await publish(again, task.delay_seconds, settings, publisher)
                await mark_accepted(store, again.id)
            logger.info("task %s: the answer to an earlier request with this Idempotency-Key", first.record.id)
            response.headers[REPLAYED_HEADER] = "true"
            location(response, first.record.id)
            return TaskAccepted(id=first.record.id, type=first.record.type)
        try:
            await publish(message, task.delay_seconds, settings, publisher)
        except PublishFailed as failed:
            if not failed.outcome_unknown:  # the broker did not take it: no record of it may stay
                await forget(store, message.id, idempotency_key)
            raise
        if idempotency_key is not None:
            await mark_accepted(store, message.id)
    location(response, message.id)
    return TaskAccepted(id=message.id, type=message.type)


@router.get(
    "/tasks/{task_id}",
    responses={
        404: {"model": ErrorDetail, "description": "No such task, or its record expired."},
        503: {"model": ErrorDetail, "description": "The task store did not answer; retry later."},
    },
)
async def get_task(task_id: Annotated[str, Path(max_length=200)], store: StoreDep) -> TaskStatus:
    """Where the task is: its status, attempts and, once known, its error or result."""
    try:
        record = await bounded(store.get(task_id))
    except StoreUnavailable as error:
        TASK_STORE_ERRORS.inc()
        logger.warning("task record not read, the task store did not answer: %s", error)
        raise HTTPException(status_code=503, detail="task store unavailable; retry later") from None
    if record is None:
        raise HTTPException(status_code=404, detail="no such task (or its record expired)")
    return task_status(record)
{%- endif %}


@router.get("/health/live")
async def live() -> Liveness:
    """200 while the process runs."""
    return Liveness()
{%- if cookiecutter.task_store == "none" %}


@router.get("/health/ready", responses={503: {"model": Readiness, "description": "Not ready."}})
async def ready(response: Response, settings: SettingsDep, publisher: PublisherDep, consumer: ConsumerDep) -> Readiness:
    """200 when the broker answers and, where enabled, the consumer runs."""
    broker_ok = await answers(publisher.ping(), settings.ready_timeout_seconds, BrokerUnavailable)
{%- else %}


@router.get("/health/ready", responses={503: {"model": Readiness, "description": "Not ready."}})
async def ready(
    response: Response, settings: SettingsDep, publisher: PublisherDep, consumer: ConsumerDep, store: StoreDep
) -> Readiness:
    """200 when the broker and the task store answer and, where enabled, the consumer runs."""
    broker_ok, store_ok = await asyncio.gather(
        answers(publisher.ping(), settings.ready_timeout_seconds, BrokerUnavailable),
        answers(store.ping(), settings.ready_timeout_seconds, StoreUnavailable),
    )
{%- endif %}
    consumer_state: Literal["running", "stopped", "disabled"] = (
        "disabled" if consumer is None else "running" if consumer.is_running() else "stopped"
    )
{%- if cookiecutter.task_store == "none" %}
    is_ready = broker_ok and consumer_state != "stopped"
{%- else %}
    is_ready = broker_ok and store_ok and consumer_state != "stopped"
{%- endif %}
    response.status_code = 200 if is_ready else 503
    return Readiness(
        status="ready" if is_ready else "not ready",
        broker="memory" if is_memory(settings) else "ok" if broker_ok else "unavailable",
        consumer=consumer_state,
{%- if cookiecutter.task_store != "none" %}
        task_store="ok" if store_ok else "unavailable",
{%- endif %}
    )


async def answers(ping: Awaitable[None], seconds: float, unavailable: type[Exception]) -> bool:
    """Whether `ping` returns within `seconds`."""
    try:
        await asyncio.wait_for(ping, timeout=seconds)
    except (unavailable, TimeoutError):
        return False
    return True


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}, "description": "Prometheus text."}
    },
)
def metrics() -> Response:
    """Prometheus text format."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
