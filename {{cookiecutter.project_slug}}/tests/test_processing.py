"""Unit tests of the processing rules: which messages succeed, retry or go to the dead letters."""

from __future__ import annotations

import json
import time

import pytest
from prometheus_client import REGISTRY
from pydantic import BaseModel

from {{ cookiecutter.project_slug }}.messages import TaskMessage, encode
from {{ cookiecutter.project_slug }}.processing import RETRY_JITTER, Outcome, Processor, RetryDelays
from {{ cookiecutter.project_slug }}.tasks import MAX_RETRY_DELAY_SECONDS, Retry, TaskRegistry

from .fakes import InMemoryBroker, drain, process, verdict_of
from .helpers import Recorder

MAX_RETRIES = 3


def body(type_: str, payload: dict[str, object], task_id: str = "t-1") -> bytes:
    return encode(TaskMessage(id=task_id, type=type_, payload=payload))


@pytest.fixture
def processor(registry: TaskRegistry) -> Processor:
    return Processor(registry, MAX_RETRIES)


def processed(outcome: Outcome) -> float:
    return REGISTRY.get_sample_value("tasks_processed_total", {"outcome": outcome.value}) or 0.0


def test_the_example_handler_succeeds(processor: Processor) -> None:
    before = processed(Outcome.SUCCEEDED)
    outcome = process(processor, body("process_image", {"image_url": "https://example.com/cat.png"}))
    assert outcome is Outcome.SUCCEEDED
    assert processed(Outcome.SUCCEEDED) == before + 1


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"not json", id="not-json"),
        pytest.param(b"\xff\xfe\x00", id="not-utf8"),
        pytest.param(b"[1, 2]", id="not-an-object"),
        pytest.param(b'{"id": "1", "type": "process_image"}', id="no-payload"),
        pytest.param(b'{"id": "", "type": "process_image", "payload": {}}', id="empty-id"),
        pytest.param(body("no_such_type", {}), id="unknown-type"),
        pytest.param(body("process_image", {"image_url": "ftp://example.com/a.png"}), id="payload-not-http"),
        pytest.param(body("process_image", {}), id="payload-missing-field"),
        pytest.param(body("record", {"seconds": "soon"}), id="payload-wrong-type"),
    ],
)
def test_a_bad_message_is_dead_lettered_at_once(processor: Processor, recorder: Recorder, raw: bytes) -> None:
    broker = InMemoryBroker()
    broker.put_raw(raw)
    assert drain(broker, processor) == [Outcome.DEAD_LETTERED]
    assert [envelope.body for envelope, _ in broker.dead_letters] == [raw]
    assert recorder.started == []


def test_a_message_only_the_one_pass_validation_refuses_is_dead_lettered_unhandled(
    processor: Processor, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should the one-pass model ever disagree with the envelope and payload models, refuse, don't guess."""
    monkeypatch.setattr(processor.registry, "parse", lambda _: None)
    broker = InMemoryBroker()
    broker.put_raw(body("record", {}))
    assert drain(broker, processor) == [Outcome.DEAD_LETTERED]
    assert [reason for _, reason in broker.dead_letters] == ["refused by the task type's message model"]
    assert recorder.started == []


def test_a_task_its_handler_rejects_is_dead_lettered_at_once_with_the_reason(
    processor: Processor, recorder: Recorder
) -> None:
    broker = InMemoryBroker()
    broker.put_raw(body("refuse", {}, task_id="r-1"))
    assert drain(broker, processor) == [Outcome.DEAD_LETTERED]
    assert [reason for _, reason in broker.dead_letters] == ["rejected: the image is gone for good"]
    assert recorder.started == ["r-1"]


def near(value: float, nominal: float) -> bool:
    return nominal * (1 - RETRY_JITTER) <= value <= nominal * (1 + RETRY_JITTER)


def test_each_retry_waits_twice_as_long_as_the_one_before_up_to_the_longest(registry: TaskRegistry) -> None:
    processor = Processor(registry, max_retries=5, delays=RetryDelays(first=0.5, longest=3.0))
    delays = [verdict_of(processor, body("explode", {}), retries).delay_seconds for retries in range(5)]
    assert all(map(near, delays, [0.5, 1.0, 2.0, 3.0, 3.0])), delays


def test_a_handler_asking_for_a_retry_gets_that_wait_and_spends_a_retry(processor: Processor) -> None:
    asked = verdict_of(processor, body("later", {"seconds": 7}, task_id="l-1"))
    assert (asked.outcome, asked.delay_seconds, asked.reason) == (Outcome.RETRIED, 7.0, "come back later")
    spent = verdict_of(processor, body("later", {"seconds": 7}, task_id="l-2"), retries=MAX_RETRIES)
    assert spent.outcome is Outcome.DEAD_LETTERED
    assert spent.reason == f"failed after {MAX_RETRIES} retries: come back later"


@pytest.mark.parametrize("delay", [-1.0, MAX_RETRY_DELAY_SECONDS + 1, float("nan"), float("inf")])
def test_a_retry_cannot_ask_for_a_wait_out_of_range(delay: float) -> None:
    with pytest.raises(ValueError, match="delay_seconds must be from 0 to 86400"):
        Retry(delay_seconds=delay)


def test_unknown_fields_are_ignored(processor: Processor, recorder: Recorder) -> None:
    raw = json.dumps({"id": "x-1", "type": "record", "payload": {}, "priority": 5, "trace": {"a": 1}}).encode()
    assert process(processor, raw) is Outcome.SUCCEEDED
    assert recorder.finished == ["x-1"]


def test_a_failing_handler_is_retried_max_retries_times_then_dead_lettered(
    processor: Processor, recorder: Recorder
) -> None:
    broker = InMemoryBroker()
    broker.put_raw(body("explode", {}, task_id="bad"))
    broker.put_raw(body("record", {}, task_id="good"))
    outcomes = drain(broker, processor)
    assert recorder.started.count("bad") == MAX_RETRIES + 1
    assert outcomes.count(Outcome.RETRIED) == MAX_RETRIES
    assert len(broker.dead_letters) == 1
    envelope, reason = broker.dead_letters[0]
    assert json.loads(envelope.body)["id"] == "bad"
    assert "this handler always fails" in reason
    # No head-of-line blocking: the good message was handled before the retries ran out.
    assert recorder.finished == ["good"]
    assert recorder.started.index("good") < len(recorder.started) - 1


@pytest.mark.parametrize("retries", [0, 1, MAX_RETRIES - 1])
def test_retries_below_the_limit_retry(processor: Processor, retries: int) -> None:
    assert process(processor, body("explode", {}), retries) is Outcome.RETRIED


def test_the_last_retry_dead_letters(processor: Processor) -> None:
    assert process(processor, body("explode", {}), MAX_RETRIES) is Outcome.DEAD_LETTERED


def test_zero_retries_dead_letters_on_first_failure(registry: TaskRegistry) -> None:
    assert process(Processor(registry, 0), body("explode", {})) is Outcome.DEAD_LETTERED


def test_the_registry_reads_envelope_and_payload_in_one_pass(registry: TaskRegistry) -> None:
    from {{ cookiecutter.project_slug }}.handlers import ProcessImagePayload

    parsed = registry.parse(body("process_image", {"image_url": "https://example.com/cat.png"}, task_id="t-9"))
    assert parsed is not None
    task_type, message, payload = parsed
    assert task_type.name == "process_image"
    assert isinstance(payload, ProcessImagePayload)
    assert (message.id, message.payload) == ("t-9", {"image_url": "https://example.com/cat.png"})
    assert json.loads(encode(message)) == {"id": "t-9", "type": "process_image", "payload": message.payload}
    assert registry.parse(body("record", {"seconds": 1})) is not None  # the other types too
    assert registry.parse(body("no_such_type", {})) is None
    assert registry.parse(body("record", {"seconds": "soon"})) is None


def test_a_type_registered_after_a_parse_is_parsed_too(registry: TaskRegistry) -> None:
    assert registry.parse(body("late", {})) is None

    class LatePayload(BaseModel):
        pass

    @registry.task("late", LatePayload)
{%- if cookiecutter.consumer == "async" %}
    async def late(payload: LatePayload, message: TaskMessage) -> None:
{%- else %}
    def late(payload: LatePayload, message: TaskMessage) -> None:
{%- endif %}
        pass

    assert registry.parse(body("late", {})) is not None


def test_a_task_type_cannot_be_registered_twice(registry: TaskRegistry) -> None:
    from {{ cookiecutter.project_slug }}.handlers import ProcessImagePayload, process_image

    with pytest.raises(ValueError, match="registered twice"):
        registry.task("process_image", ProcessImagePayload)(process_image)


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_handling_moves_the_queue_wait_and_handler_duration_histograms(processor: Processor) -> None:
    waits, waited = sample("task_queue_wait_seconds_count"), sample("task_queue_wait_seconds_sum")
    succeeded = {"type": "record", "outcome": "succeeded"}
    durations = sample("task_handler_duration_seconds_count", succeeded)
    published_two_seconds_ago = {"x-published-at": f"{time.time() - 2:.6f}"}
    assert process(processor, body("record", {}), headers=published_two_seconds_ago) is Outcome.SUCCEEDED
    assert sample("task_queue_wait_seconds_count") == waits + 1
    assert sample("task_queue_wait_seconds_sum") - waited >= 2
    assert sample("task_handler_duration_seconds_count", succeeded) == durations + 1


def test_a_failed_attempt_is_timed_under_its_outcome_and_retries_do_not_count_as_waiting(
    processor: Processor,
) -> None:
    retried = {"type": "explode", "outcome": "retried"}
    before, waits = sample("task_handler_duration_seconds_count", retried), sample("task_queue_wait_seconds_count")
    process(processor, body("explode", {}), retries=1, headers={"x-published-at": f"{time.time():.6f}"})
    assert sample("task_handler_duration_seconds_count", retried) == before + 1
    assert sample("task_queue_wait_seconds_count") == waits
